#include "mpsl/comm/hop_probe.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "mpsl/comm/mailbox.hpp"
#include "mpsl/comm/mpi_environment.hpp"
#include "mpsl/comm/spawn.hpp"
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

// The probe's deadline: a minute plus two seconds per process (a 2-core host's probe takes about
// 3 s; one on a 64-core node, 66 processes, runs 65 process counts), or MPSL_HOP_PROBE_DEADLINE_S.
double probe_deadline_s(int processes) {
  return deadline_seconds("MPSL_HOP_PROBE_DEADLINE_S", 60.0 + 2.0 * processes);
}

// One message size, `repeats` times, between children 0 (sender) and 1 (receiver) while children
// 2..n-1 compute and the others sleep; returns the receiver's median one-way time (0 on the
// other children).
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
  // The children beyond n sleep here meanwhile. Without this they went on to the next n's
  // communicator duplication, whose blocking collective polls: two of them took the cores of a
  // "two processes alone" measurement, which read 0.9-1 ms (in 4 of 5 profiles) instead of
  // 0.03-0.1 ms (docs/cost-model-validation).
  sleep_barrier(world);
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
  const std::string b = std::to_string(bytes), r = std::to_string(repeats);
  const double deadline_s = probe_deadline_s(processes);
  char message[512];
  std::snprintf(message, sizeof message,
                "mpsl: error: profile: the hop probe (%d processes started with MPI_Comm_spawn) "
                "has not finished after %.0f s; no profile was written. Rerun with --concurrency 0 "
                "to profile without placement and hop times, or set MPSL_HOP_PROBE_DEADLINE_S to "
                "wait longer",
                processes, deadline_s);
  const Deadline deadline(deadline_s, message);
  MPI_Comm children = spawn_children(executable, {kHopProbeChildArg, b, r}, processes, out.problem);
  if (children == MPI_COMM_NULL) return out;
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
