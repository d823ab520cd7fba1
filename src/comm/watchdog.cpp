#include "mpsl/comm/watchdog.hpp"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>

#include "mpsl/comm/audit.hpp"
#include "mpsl/comm/mpi_environment.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/obs/log.hpp"

namespace mpsl::comm {

namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string>& roles() {
  static std::vector<std::string> r;
  return r;
}
int g_my_rank = 0;
StallSettings g_settings;

// ---- what the signal handler prints (static buffers: the handler may not allocate) ----------
char g_self[256] = "mpsl: ";              // "mpsl: [rank 3 (stage 2/2, units 3-7)]"
char g_wait[2][640];                      // double-buffered description of the current wait
std::atomic<int> g_wait_index{-1};        // which g_wait is valid; -1: not waiting
std::atomic<int64_t> g_wait_start_ns{0};  // CLOCK_MONOTONIC when the wait began
std::atomic<bool> g_armed{false};
std::atomic<int> g_gone_rank{-1};       // a peer whose process is gone (PeerWatch)
std::atomic<int64_t> g_gone_ns{0};      // when that was noticed (CLOCK_MONOTONIC)
std::vector<std::string> g_peer_lines;  // describe_rank(r) per rank, fixed while watching

int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Async-signal-safe text building.
struct Line {
  char buf[1200];
  size_t n = 0;
  void put(const char* s) {
    while (*s && n < sizeof buf - 2) buf[n++] = *s++;
  }
  void put_int(int64_t v) {
    char tmp[24];
    int i = 0;
    if (v < 0) put("-"), v = -v;
    do tmp[i++] = static_cast<char>('0' + v % 10), v /= 10;
    while (v && i < 23);
    while (i) {
      char c[2] = {tmp[--i], 0};
      put(c);
    }
  }
};

void on_signal(int sig) {
  if (g_armed.exchange(false)) {
    Line l;
    l.put(g_self);
    l.put(" stopped by signal ");
    l.put_int(sig);
    // A peer that vanished well before this signal died first; one that vanished moments
    // before was most likely ended by the same launcher.
    const int gone = g_gone_rank.load();
    if (sig == SIGTERM && gone >= 0 && gone < static_cast<int>(g_peer_lines.size()) &&
        monotonic_ns() - g_gone_ns.load() > 50000000) {
      l.put(" (the launcher ends the job: ");
      l.put(g_peer_lines[gone].c_str());
      l.put(" is gone)");
    } else {
      l.put(sig == SIGTERM ? " (the launcher ends the job: another rank failed or aborted)"
                           : " (interrupted)");
    }
    const int w = g_wait_index.load();
    if (w >= 0) {
      const int64_t ms = (monotonic_ns() - g_wait_start_ns.load()) / 1000000;
      l.put(" while waiting ");
      l.put_int(ms / 1000);
      l.put(".");
      l.put_int((ms % 1000) / 100);
      l.put(" s for ");
      l.put(g_wait[w]);
    } else {
      l.put(" while computing");
    }
    l.put("\n");
    ssize_t rc = ::write(STDERR_FILENO, l.buf, l.n);
    (void)rc;
  }
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void publish_wait(const std::string& what, Clock::time_point start) {
  const int next = g_wait_index.load() == 0 ? 1 : 0;
  std::snprintf(g_wait[next], sizeof g_wait[next], "%s", what.c_str());
  const int64_t waited_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  g_wait_start_ns = monotonic_ns() - waited_ns;
  g_wait_index = next;
}

std::string format_seconds(double s) {
  char b[32];
  std::snprintf(b, sizeof b, s < 10 ? "%.1f" : "%.0f", s);
  return b;
}

}  // namespace

void set_role_map(std::vector<std::string> r, int my_rank) {
  roles() = std::move(r);
  g_my_rank = my_rank;
  std::snprintf(g_self, sizeof g_self, "mpsl: [%s]", describe_rank(my_rank).c_str());
}

std::string describe_rank(int rank) {
  if (rank < 0) return "all ranks";
  std::string s = "rank " + std::to_string(rank);
  if (rank < static_cast<int>(roles().size())) s += " (" + roles()[rank] + ")";
  return s;
}

void set_stall_settings(const StallSettings& s) {
  g_settings = s;
}
const StallSettings& stall_settings() {
  return g_settings;
}

StallClock::StallClock(std::function<std::string()> describe)
    : start_(Clock::now()),
      describe_(std::move(describe)),
      next_warn_(g_settings.warn_seconds > 0 ? g_settings.warn_seconds : INFINITY) {}

StallClock::~StallClock() {
  if (published_) g_wait_index = -1;
}

double StallClock::seconds() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

void StallClock::check() {
  const double s = seconds();
  // Say what this rank waits for (for the termination line) once the wait is not a short one;
  // short waits (every message) cost nothing but the clock read.
  if (!published_ && s > 0.25) {
    published_ = true;
    publish_wait(describe_(), start_);
  }
  if (s >= next_warn_) {
    obs::log_warn(describe_rank(g_my_rank) + " has waited " + format_seconds(s) + " s for " +
                  describe_() + " (--stall-warn " + format_seconds(g_settings.warn_seconds) + ")");
    next_warn_ += g_settings.warn_seconds;
  }
  if (g_settings.abort_seconds > 0 && s >= g_settings.abort_seconds) {
    abort_job(1, "stall: " + describe_rank(g_my_rank) + " waited " + format_seconds(s) + " s for " +
                     describe_() + "; --stall-abort " + format_seconds(g_settings.abort_seconds) +
                     " s ends the job");
  }
}

void arm_termination_report() {
  static bool installed = false;
  if (!installed) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    installed = true;
  }
  g_armed = true;
}

void disarm_termination_report() {
  g_armed = false;
}

PeerWatch::PeerWatch() {
  int size = 1, rank = 0;
  MPSL_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  MPSL_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  struct Entry {
    int pid;
    char host[64];
  } mine{};
  mine.pid = static_cast<int>(::getpid());
  ::gethostname(mine.host, sizeof mine.host - 1);
  std::vector<Entry> all(size);
  audit_message("process-ids", -1, sizeof mine, true);  // this rank's PID and host name
  MPSL_MPI_CHECK(MPI_Allgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE,
                               MPI_COMM_WORLD));
  pids_.assign(size, 0);
  g_peer_lines.clear();
  for (int r = 0; r < size; ++r) {
    g_peer_lines.push_back(describe_rank(r));
    if (r != rank && std::strncmp(all[r].host, mine.host, sizeof mine.host) == 0)
      pids_[r] = all[r].pid;
  }
  thread_ = std::thread([this] { run(); });
}

PeerWatch::~PeerWatch() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void PeerWatch::run() {
  using namespace std::chrono_literals;
  while (!stop_) {
    std::this_thread::sleep_for(100ms);
    for (size_t r = 0; r < pids_.size() && !stop_; ++r) {
      if (pids_[r] <= 0 || ::kill(pids_[r], 0) == 0 || errno != ESRCH) continue;
      // Gone. When the launcher is ending every rank, this one goes within moments too; wait
      // a little so only a rank that died first is blamed.
      g_gone_ns = monotonic_ns();
      g_gone_rank = static_cast<int>(r);
      std::this_thread::sleep_for(400ms);
      if (stop_) return;
      const std::string line = "mpsl: [" + describe_rank(g_my_rank) + "] " +
                               describe_rank(static_cast<int>(r)) +
                               " is gone (its process ended during training); the job cannot "
                               "continue\n";
      ssize_t rc = ::write(STDERR_FILENO, line.data(), line.size());
      (void)rc;
      // A launcher normally ends every rank now; if none does, end this one.
      for (int i = 0; i < 100 && !stop_; ++i) std::this_thread::sleep_for(100ms);
      if (stop_) return;
      const std::string bye = "mpsl: [" + describe_rank(g_my_rank) +
                              "] no launcher ended the job 10 s after a rank was lost; exiting\n";
      rc = ::write(STDERR_FILENO, bye.data(), bye.size());
      std::_Exit(1);
    }
  }
}

namespace {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wterminate"
[[noreturn]] void throw_from_noexcept() noexcept {
  throw RuntimeFailure("MPSL_TEST_FAIL: an exception escaping a noexcept function");
}
#pragma GCC diagnostic pop
}  // namespace

void test_message_hook(int rank) {
  static int calls = 0;
  static const char* stall = std::getenv("MPSL_TEST_STALL");
  static const char* fail = std::getenv("MPSL_TEST_FAIL");
  if ((!stall || !*stall) && (!fail || !*fail)) return;
  ++calls;
  int r = -1, after = 1;
  double seconds = 0;
  if (stall && std::sscanf(stall, "%d:%lf:%d", &r, &seconds, &after) >= 2 && r == rank &&
      calls == after) {
    obs::log_warn("MPSL_TEST_STALL: " + describe_rank(rank) + " sleeps " + format_seconds(seconds) +
                  " s (test hook)");
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  }
  char how[16] = {0};
  if (fail && std::sscanf(fail, "%d:%d:%15s", &r, &after, how) == 3 && r == rank &&
      calls == after) {
    const std::string h = how;
    if (h == "oom") throw std::bad_alloc();
    if (h == "terminate") throw_from_noexcept();
    throw RuntimeFailure("MPSL_TEST_FAIL: a failure on " + describe_rank(rank));
  }
}

}  // namespace mpsl::comm
