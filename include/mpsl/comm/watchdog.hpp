// Failing fast and loudly in a multi-rank job: who is who (the role map), the stall watchdog
// (in the spirit of Horovod's stall check), and the line a rank prints when the launcher ends
// it because another rank died.
//
// Every wait of the pipeline polls (MPI_Test plus a short sleep, or a doorbell sleep of at most
// 1 ms), so the waiting rank itself watches the clock: after --stall-warn seconds it says what
// it waits for and from whom; after --stall-abort seconds (off by default) it ends the job with
// MPI_Abort. When a rank dies (signal, out of memory), mpirun names it and ends the others with
// SIGTERM; each survivor then prints one line naming itself, its role and what it was waiting
// for (usually the dead rank).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "mpsl/comm/mpi_environment.hpp"

namespace mpsl::comm {

// ---- role map ------------------------------------------------------------------------------

// roles[r] describes rank r, e.g. "stage 1/2, units 1-2" (set once, before training).
void set_role_map(std::vector<std::string> roles, int my_rank);
// "rank 2 (stage 1/2, units 1-2)", or "rank 2" without a role map. Negative: "all ranks".
std::string describe_rank(int rank);

// ---- stall watchdog ------------------------------------------------------------------------

struct StallSettings {
  double warn_seconds = 60;  // 0 = never warn
  double abort_seconds = 0;  // 0 = never abort
};
void set_stall_settings(const StallSettings& s);
const StallSettings& stall_settings();

// One wait: construct when the wait begins, call check() in the polling loop. `describe` says
// what is awaited and from whom; it is called only when a report is due.
class StallClock {
 public:
  explicit StallClock(std::function<std::string()> describe);
  ~StallClock();
  StallClock(const StallClock&) = delete;
  StallClock& operator=(const StallClock&) = delete;
  // Warns after warn_seconds (and again every warn_seconds), aborts the job after
  // abort_seconds. Also prints the termination line and exits when SIGTERM arrived meanwhile.
  void check();
  double seconds() const;

 private:
  std::chrono::steady_clock::time_point start_;
  std::function<std::string()> describe_;
  double next_warn_;
  bool published_ = false;
};

// ---- termination report --------------------------------------------------------------------

// Installs SIGTERM/SIGINT handlers (once training runs): the rank prints one line
//   mpsl: [rank 3] stage 2/2, units 3-7: stopped by signal 15 (the launcher ends the job, e.g.
//   because another rank failed) while waiting 2.1 s for <what>
// and ends with the default action of the signal.
void arm_termination_report();
void disarm_termination_report();

// ---- dead peers ----------------------------------------------------------------------------

// Watches the processes of the other ranks on this node (PIDs and host names are gathered when
// it starts: collective over MPI_COMM_WORLD). When one is gone (killed by a signal, the OOM
// killer, a crash) this rank prints, within about half a second,
//   mpsl: [rank 0 (owner rank, owners {0,2})] rank 1 (owner rank, owners {1,3}) is gone (its
//   process ended during training); the job cannot continue
// and, if no launcher has ended it 10 s later (e.g. srun without --kill-on-bad-exit), exits
// with code 1 itself. Stop it (destroy it) before any rank may end normally.
class PeerWatch {
 public:
  PeerWatch();
  ~PeerWatch();
  PeerWatch(const PeerWatch&) = delete;
  PeerWatch& operator=(const PeerWatch&) = delete;

 private:
  void run();
  std::vector<int> pids_;  // per rank; 0 for ranks on other nodes and this one
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// ---- test hooks ----------------------------------------------------------------------------

// Call where a rank handles a message of the pipeline. Environment:
//   MPSL_TEST_STALL="RANK:SECONDS[:AFTER]": rank RANK sleeps SECONDS before handling its
//     AFTER-th message (default 1) of the run;
//   MPSL_TEST_FAIL="RANK:AFTER:HOW": rank RANK fails there, HOW = throw (a RuntimeFailure),
//     oom (std::bad_alloc), terminate (an exception escaping a noexcept function).
void test_message_hook(int rank);

}  // namespace mpsl::comm
