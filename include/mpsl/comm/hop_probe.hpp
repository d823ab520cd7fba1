// The hop probe: what a message between two ranks of this host costs when other ranks compute
// beside them, measured with Open MPI itself (`mpsl profile` runs it; the cost model reads it).
//
// On a host with more busy processes than cores, a rank that waits in its mailbox (polling, then
// sleeping 20-200 us: comm::PollBackOff) is not running when its message arrives; it has to be
// scheduled back, and so has the sender to progress its side. Measured with tools/bench_hop.sh: a
// 64 KiB message takes 0.01 ms between two ranks on idle cores but 1-2 ms beside two computing
// processes on 2 cores, whatever its size. The probe measures this directly:
//
//   measure_hop_times(P, bytes, repeats) spawns P processes of this executable
//   (MPI_Comm_spawn from a singleton; the children run run_hop_probe_child()). For n = 2..P,
//   child 0 computes, sends `bytes` and computes on, child 1 waits for it as comm::Mailbox
//   does, and children 2..n-1 compute all the while; the rest sleep. Result: hop_s[n - 1] =
//   median one-way time (sender's send to receiver's completed receive) with n processes, index
//   0 unused (0). A probe that has not finished by its deadline (60 s + 2 s per process, or
//   MPSL_HOP_PROBE_DEADLINE_S) ends this process with exit code 1 and a line saying so: neither
//   the spawn nor a wait on the children can be cancelled.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpsl::comm {

// The first argument that makes `mpsl` a probe child (main() checks it before parsing).
inline constexpr const char* kHopProbeChildArg = "--internal-hop-probe-child";

struct HopTimes {
  std::vector<double> hop_s;  // see above; empty when the probe could not run
  std::string problem;        // why it could not run (empty on success)
};

// Initialises MPI as a singleton if it is not initialised (and leaves it so: MPI cannot be
// initialised twice in one process). `executable` is this program (e.g. /proc/self/exe).
HopTimes measure_hop_times(const std::string& executable, int processes, int64_t bytes,
                           int repeats);

// The children's side; returns the process exit code.
int run_hop_probe_child(int argc, char** argv);

}  // namespace mpsl::comm
