// Processes of this executable started with MPI_Comm_spawn from a running `mpsl` (the hop probe,
// the pipeline calibration of `mpsl profile`), and a deadline for waiting on them: neither the
// spawn nor a wait on spawned processes can be cancelled, so a runtime that cannot start them or
// a child that never answers would otherwise hang the parent for good.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <mpi.h>

namespace mpsl::comm {

// The first argument of a child that runs an ordinary mpsl command for its parent
// (`mpsl --internal-spawned-child train ...`): main() drops it and, when the command is done,
// the child reports its exit code to the parent (report_to_parent).
inline constexpr const char* kSpawnedChildArg = "--internal-spawned-child";

// A deadline's length: the environment variable `env_name` when set (a positive number of
// seconds, else an input error naming it), else `default_s`.
double deadline_seconds(const char* env_name, double default_s);

// Ends this process with exit code 1 and `message` (one line on stderr) unless destroyed within
// `seconds`; `on_expiry` runs first (on the deadline's thread: it may only clean up what the
// waiting thread does not touch, e.g. remove a temporary folder). Whatever the process spawned
// goes with its MPI runtime.
class Deadline {
 public:
  Deadline(double seconds, std::string message, std::function<void()> on_expiry = {});
  ~Deadline();
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::thread thread_;
};

// MPI_Comm_spawn of `processes` processes of `executable` (resolved from /proc/self/exe when it
// is that link) with `args`, from MPI_COMM_SELF, unbound and oversubscribed, as mpirun leaves
// the ranks of an oversubscribed job. Initialises MPI as a singleton if needed (and leaves it
// so). Returns the intercommunicator, or MPI_COMM_NULL with `problem` saying why.
MPI_Comm spawn_children(const std::string& executable, const std::vector<std::string>& args,
                        int processes, std::string& problem);

// Runs `mpsl <args>` in `processes` spawned processes and waits, asleep, until they end.
// Returns the command's exit code (child 0's), or -1 with `problem` set when they could not be
// started.
int run_spawned_command(const std::string& executable, const std::vector<std::string>& args,
                        int processes, std::string& problem);

// Called by every child at the end of its command (the parent waits for it): rank 0 sends the
// exit code; then every child disconnects. Does nothing in a process that was not spawned.
void report_to_parent(int exit_code);
// A child that ends its job with `exit_code` (comm::abort_job) tells the parent first (any
// child may; the parent takes the first). Does nothing in a process that was not spawned.
void tell_parent_before_abort(int exit_code);

}  // namespace mpsl::comm
