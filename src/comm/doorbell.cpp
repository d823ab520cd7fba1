#include "mpsl/comm/doorbell.hpp"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>
#include <string>

#include "mpsl/comm/mailbox.hpp"  // Communicator
#include "mpsl/core/error.hpp"

namespace mpsl::comm {

namespace {
// Not FUTEX_PRIVATE_FLAG: the word lives in memory other processes map.
long futex(std::atomic<uint32_t>* word, int op, uint32_t value, const timespec* timeout) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value, timeout, nullptr, 0);
}

std::string errno_text(const char* call) {
  return std::string(call) + ": " + std::strerror(errno);
}
}  // namespace

Doorbells::Doorbells(MPI_Comm comm) {
  // Freed when the constructor is done with it.
  const Communicator node = Communicator(comm, false).split_by_host();
  const int node_rank = node.rank(), node_size = node.size();
  segment_bytes_ = sizeof(Bell) * static_cast<size_t>(node_size);

  int size = 0;
  MPSL_MPI_CHECK(MPI_Comm_size(comm, &size));
  bells_.assign(static_cast<size_t>(size), nullptr);

  // The node's first rank creates the segment under a fresh name and tells the others; every
  // rank maps it; the name is removed once all have, so nothing is left behind in /dev/shm.
  // Should any of it fail on this node, its ranks go without doorbells (they poll).
  static int created = 0;
  std::array<char, 64> name{};
  int failed = 0;
  if (node_rank == 0) {
    int fd = -1;
    // A name left by a process that died before removing it (its pid reused) is skipped.
    for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
      std::snprintf(name.data(), name.size(), "/mpsl-doorbells-%ld-%d", static_cast<long>(getpid()),
                    created++);
      fd = shm_open(name.data(), O_CREAT | O_EXCL | O_RDWR, 0600);
      if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
      problem_ = errno_text("shm_open");
    } else if (ftruncate(fd, static_cast<off_t>(segment_bytes_)) != 0) {
      problem_ = errno_text("ftruncate");
      shm_unlink(name.data());
    }
    if (fd >= 0) close(fd);
    failed = problem_.empty() ? 0 : 1;
  }
  MPSL_MPI_CHECK(MPI_Bcast(name.data(), static_cast<int>(name.size()), MPI_CHAR, 0, node.get()));
  MPSL_MPI_CHECK(MPI_Bcast(&failed, 1, MPI_INT, 0, node.get()));
  if (failed) {
    if (problem_.empty()) problem_ = "the node's first rank could not create it";
    return;
  }
  const int fd = shm_open(name.data(), O_RDWR, 0600);
  if (fd < 0) {
    problem_ = errno_text("shm_open");
  } else {
    void* at = mmap(nullptr, segment_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (at == MAP_FAILED)
      problem_ = errno_text("mmap");
    else
      segment_ = at;
    close(fd);
  }
  int bad = problem_.empty() ? 0 : 1, any_bad = 0;
  MPSL_MPI_CHECK(MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, node.get()));
  if (node_rank == 0) shm_unlink(name.data());
  if (any_bad) {
    if (segment_) munmap(segment_, segment_bytes_);
    segment_ = nullptr;
    if (problem_.empty()) problem_ = "another rank of this node could not map it";
    return;
  }

  // ftruncate zero-filled the segment; each rank starts its own bell's life.
  Bell* bells = static_cast<Bell*>(segment_);
  mine_ = new (&bells[node_rank]) Bell{};
  MPSL_MPI_CHECK(MPI_Barrier(node.get()));  // every bell is live before anyone rings

  // Which rank of `comm` is which rank of the node.
  std::vector<int> ranks(static_cast<size_t>(size)), on_node(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) ranks[static_cast<size_t>(r)] = r;
  MPI_Group group = MPI_GROUP_NULL, node_group = MPI_GROUP_NULL;
  MPSL_MPI_CHECK(MPI_Comm_group(comm, &group));
  MPSL_MPI_CHECK(MPI_Comm_group(node.get(), &node_group));
  const int rc = MPI_Group_translate_ranks(group, size, ranks.data(), node_group, on_node.data());
  MPI_Group_free(&group);
  MPI_Group_free(&node_group);
  MPSL_MPI_CHECK(rc);
  for (int r = 0; r < size; ++r) {
    const int n = on_node[static_cast<size_t>(r)];
    if (n != MPI_UNDEFINED) bells_[static_cast<size_t>(r)] = &bells[n];
  }
}

Doorbells::~Doorbells() {
  if (segment_) munmap(segment_, segment_bytes_);
}

void Doorbells::ring(int r) {
  Bell* b = bells_.at(static_cast<size_t>(r));
  if (!b) return;
  b->count.fetch_add(1);
  if (b->sleepers.load() != 0) futex(&b->count, FUTEX_WAKE, 1, nullptr);
}

uint32_t Doorbells::arm() {
  mine_->sleepers.store(1);
  return mine_->count.load();
}

void Doorbells::sleep(uint32_t armed_count, double timeout_s) {
  if (timeout_s <= 0) return;
  timespec t{};
  t.tv_sec = static_cast<time_t>(timeout_s);
  t.tv_nsec = static_cast<long>(std::lround((timeout_s - static_cast<double>(t.tv_sec)) * 1e9));
  if (t.tv_nsec >= 1000000000L) {
    ++t.tv_sec;
    t.tv_nsec -= 1000000000L;
  }
  // 0: woken by a ring; EAGAIN: rung between arm() and here; ETIMEDOUT, EINTR: poll anyway.
  if (futex(&mine_->count, FUTEX_WAIT, armed_count, &t) == 0) ++wakeups_;
}

void Doorbells::disarm() {
  mine_->sleepers.store(0);
}

}  // namespace mpsl::comm
