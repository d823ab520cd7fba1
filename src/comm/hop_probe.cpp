#include "mpsl/comm/hop_probe.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "mpsl/comm/mailbox.hpp"
#include "mpsl/comm/mpi_environment.hpp"
#include "mpsl/core/error.hpp"

namespace mpsl::comm {
namespace {

using Clock = std::chrono::steady_clock;

double now_s() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

// Busy arithmetic, as a training step keeps a core busy (the scheduler sees the same thing).
void compute_for(double seconds) {
  const double t0 = now_s();
  volatile double x = 0;
  while (now_s() - t0 < seconds) x = x + 1;
}

void wait_for(MPI_Request& r, const char* what) {
  wait_watched(r, [what] { return std::string("the hop probe's ") + what; });
}

void sleep_barrier(MPI_Comm comm) {
  MPI_Request r;
  MPSL_MPI_CHECK(MPI_Ibarrier(comm, &r));
  wait_for(r, "barrier");
}

constexpr int kTagStop = 3, kTagResult = 4;

// Ends this process (exit code 1, one line saying why) if the probe has not finished by its
// deadline: neither MPI_Comm_spawn nor a wait on spawned processes can be cancelled, and a
// runtime that cannot start them, or a child that never answers, would otherwise hang
// `mpsl profile` for good. Nothing has been written yet (the profile is written at the end), and
// the children go with this process's MPI runtime.
class ProbeDeadline {
 public:
  ProbeDeadline(double seconds, int processes) {
    thread_ = std::thread([this, seconds, processes] {
      std::unique_lock<std::mutex> lock(mutex_);
      if (done_cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return done_; }))
        return;
      char line[512];
      std::snprintf(line, sizeof line,
                    "mpsl: error: profile: the hop probe (%d processes started with "
                    "MPI_Comm_spawn) has not finished after %.0f s; no profile was written. Rerun "
                    "with --concurrency 0 to profile without placement and hop times, or set "
                    "MPSL_HOP_PROBE_DEADLINE_S to wait longer\n",
                    processes, seconds);
      const ssize_t rc = ::write(STDERR_FILENO, line, std::strlen(line));
      (void)rc;
      std::_Exit(1);
    });
  }
  ~ProbeDeadline() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    done_cv_.notify_all();
    thread_.join();
  }
  ProbeDeadline(const ProbeDeadline&) = delete;
  ProbeDeadline& operator=(const ProbeDeadline&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::thread thread_;
};

// The probe's deadline: a minute plus two seconds per process (a 2-core host's probe takes about
// 3 s; one on a 64-core node, 66 processes, runs 65 process counts), or MPSL_HOP_PROBE_DEADLINE_S.
double probe_deadline_s(int processes) {
  if (const char* v = std::getenv("MPSL_HOP_PROBE_DEADLINE_S"); v && *v) {
    char* end = nullptr;
    const double s = std::strtod(v, &end);
    MPSL_INPUT_CHECK(end && *end == '\0' && s > 0,
                     std::string("MPSL_HOP_PROBE_DEADLINE_S must be a positive number of "
                                 "seconds, not '") +
                         v + "'");
    return s;
  }
  return 60.0 + 2.0 * processes;
}

// One message size, `repeats` times, between children 0 (sender) and 1 (receiver) while children
// 2..n-1 compute; returns the receiver's median one-way time (0 on the other children).
double probe_n(int n, int64_t bytes, int repeats, MPI_Comm world) {
  int rank = 0;
  MPSL_MPI_CHECK(MPI_Comm_rank(world, &rank));
  // The mailbox on a communicator of its own: its receives take any tag, and must not take
  // the stop and result messages sent on `world`. Both collective: every child.
  const Communicator box_comm = Communicator(world, false).dup();
  Mailbox box(box_comm.get());
  sleep_barrier(world);
  double median = 0;
  if (rank >= 2 && rank < n) {  // a busy neighbour, until child 0 says stop
    int stop = 0, done = 0;
    MPI_Request r;
    MPSL_MPI_CHECK(MPI_Irecv(&stop, 1, MPI_INT, 0, kTagStop, world, &r));
    while (!done) {
      compute_for(0.002);
      MPSL_MPI_CHECK(MPI_Test(&r, &done, MPI_STATUS_IGNORE));
    }
  } else if (rank < 2) {
    // The pair sends and waits with the runtime's own mailbox (its doorbell and back-off); the
    // sender's clock travels in the message's first two floats.
    const int64_t floats = std::max<int64_t>(2, bytes / 4);
    std::vector<double> hops;
    if (rank == 0) box.listen(1, 1, 1);
    if (rank == 1) box.listen(0, floats, 1);
    for (int i = 0; i < repeats; ++i) {
      const int micro = i % 1024;
      if (rank == 0) {  // computes, sends its "activation", computes on, waits until it is sent
        compute_for(0.003);
        float* b = box.send_buffer(floats);
        std::fill(b, b + floats, 1.f);
        const double sent = now_s();
        std::memcpy(b, &sent, sizeof sent);
        box.send(b, floats, 1, MessageKind::kActivation, 0, micro);
        compute_for(0.001);
        box.flush();
        // Until the receiver has it: the next repeat starts from a quiet pair.
        box.release(box.wait());
      } else {
        const Mailbox::Message m = box.wait();
        double sent = 0;
        std::memcpy(&sent, m.data, sizeof sent);
        hops.push_back(now_s() - sent);
        box.release(m);
        float* ack = box.send_buffer(1);
        ack[0] = 1.f;
        box.send(ack, 1, 0, MessageKind::kActivationGrad, 0, micro);
        box.flush();
      }
    }
    if (rank == 0)
      for (int k = 2; k < n; ++k) {
        int stop = 1;
        MPSL_MPI_CHECK(MPI_Send(&stop, 1, MPI_INT, k, kTagStop, world));
      }
    if (rank == 1) {
      std::sort(hops.begin(), hops.end());
      median = hops[hops.size() / 2];
    }
  }
  return median;
}

}  // namespace

HopTimes measure_hop_times(const std::string& executable, int processes, int64_t bytes,
                           int repeats) {
  HopTimes out;
  if (processes < 2 || repeats < 1 || bytes < 4) {
    out.problem = "nothing to measure";
    return out;
  }
  // MPI is initialised once per process; the environment lives until the process ends.
  static std::unique_ptr<MpiEnvironment> env;
  try {
    if (!MpiEnvironment::initialized()) env = std::make_unique<MpiEnvironment>(nullptr, nullptr);
  } catch (const std::exception& e) {
    out.problem = e.what();
    return out;
  }
  if (MpiEnvironment::finalized()) {
    out.problem = "MPI is already finalised";
    return out;
  }
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  // The children are started by Open MPI's daemon, to which /proc/self/exe is itself.
  std::string program = executable;
  std::error_code ec;
  if (const auto target = std::filesystem::read_symlink(executable, ec); !ec)
    program = target.string();
  const std::string b = std::to_string(bytes), r = std::to_string(repeats);
  std::vector<char*> args = {const_cast<char*>(kHopProbeChildArg), const_cast<char*>(b.c_str()),
                             const_cast<char*>(r.c_str()), nullptr};
  const ProbeDeadline deadline(probe_deadline_s(processes), processes);
  MPI_Comm children = MPI_COMM_NULL;
  std::vector<int> codes(static_cast<size_t>(processes), MPI_SUCCESS);
  // More processes than cores is the point, whatever the user's Open MPI defaults; unbound, as
  // mpirun leaves the ranks of an oversubscribed job.
  MPI_Info info = MPI_INFO_NULL;
  MPSL_MPI_CHECK(MPI_Info_create(&info));
  MPSL_MPI_CHECK(MPI_Info_set(info, "map_by", "slot:OVERSUBSCRIBE"));
  MPSL_MPI_CHECK(MPI_Info_set(info, "bind_to", "none"));
  const int rc = MPI_Comm_spawn(program.c_str(), args.data(), processes, info, 0, MPI_COMM_SELF,
                                &children, codes.data());
  MPI_Info_free(&info);
  if (rc != MPI_SUCCESS || children == MPI_COMM_NULL) {
    char text[MPI_MAX_ERROR_STRING] = {0};
    int len = 0;
    MPI_Error_string(rc, text, &len);
    out.problem = std::string("MPI_Comm_spawn of ") + std::to_string(processes) +
                  " probe processes failed: " + text;
    // Slurm's PMIx, which starts srun's tasks, cannot spawn processes; mpirun's runtime can.
    if (std::getenv("SLURM_STEP_ID") && !std::getenv("OMPI_COMM_WORLD_SIZE"))
      out.problem +=
          "; a process started by srun cannot spawn others: run mpsl profile "
          "directly in the job script, or under mpirun -n 1";
    return out;
  }
  MPI_Comm_set_errhandler(children, MPI_ERRORS_RETURN);
  out.hop_s.assign(static_cast<size_t>(processes), 0.0);
  MPI_Request req;
  // Child 0 sends the medians; this process sleeps meanwhile (it must not take a core).
  MPSL_MPI_CHECK(MPI_Irecv(out.hop_s.data(), processes, MPI_DOUBLE, 0, kTagResult, children, &req));
  wait_for(req, "results");
  MPSL_MPI_CHECK(MPI_Comm_disconnect(&children));
  return out;
}

int run_hop_probe_child(int argc, char** argv) {
  MpiEnvironment env(&argc, &argv);
  MPI_Comm parent = MPI_COMM_NULL;
  MPSL_MPI_CHECK(MPI_Comm_get_parent(&parent));
  if (parent == MPI_COMM_NULL || argc < 4) return 2;
  const int64_t bytes = std::max<int64_t>(4, std::atoll(argv[2]));
  const int repeats = std::max(1, std::atoi(argv[3]));
  const int size = env.size();
  std::vector<double> hop_s(static_cast<size_t>(size), 0.0);
  for (int n = 2; n <= size; ++n) {
    const double m = probe_n(n, bytes, repeats, MPI_COMM_WORLD);
    // Child 1 measured it; child 0 collects.
    if (env.rank() == 1) MPSL_MPI_CHECK(MPI_Send(&m, 1, MPI_DOUBLE, 0, kTagResult, MPI_COMM_WORLD));
    if (env.rank() == 0) {
      MPI_Request r;
      MPSL_MPI_CHECK(MPI_Irecv(&hop_s[n - 1], 1, MPI_DOUBLE, 1, kTagResult, MPI_COMM_WORLD, &r));
      wait_for(r, "median from its receiver");
    }
  }
  // Test hook: a probe that never answers (tests/integration/plan_profile.sh).
  if (const char* v = std::getenv("MPSL_TEST_HOP_PROBE_STALL_S"); v && *v && env.rank() == 0)
    std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(v)));
  if (env.rank() == 0)
    MPSL_MPI_CHECK(MPI_Send(hop_s.data(), size, MPI_DOUBLE, 0, kTagResult, parent));
  MPSL_MPI_CHECK(MPI_Comm_disconnect(&parent));
  return 0;
}

}  // namespace mpsl::comm
