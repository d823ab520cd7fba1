// mpsl: one binary, `mpsl <command> [options]` (../shared/CLI.md).
//
// Exit codes: 0 success, 2 bad input (InputError), 1 any other failure. A bad input is printed
// once ("mpsl: error: ..."), by rank 0 when several ranks run. Only `train` initialises MPI; the
// other commands run without mpirun.
#include <omp.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <thread>

#include "mpsl/cli/commands.hpp"
#include "mpsl/cli/parse.hpp"
#include "mpsl/comm/hop_probe.hpp"
#include "mpsl/comm/mpi_environment.hpp"
#include "mpsl/comm/spawn.hpp"
#include "mpsl/comm/watchdog.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/obs/log.hpp"

namespace {

using mpsl::InputError;
namespace cli = mpsl::cli;
namespace comm = mpsl::comm;

void print_line(const std::string& line) {
  std::string text = line + "\n";
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

std::string rank_tag(int rank, int size) {
  return size > 1 ? "[rank " + std::to_string(rank) + "] " : "";
}

// A bad input met before MPI starts (every rank parses the same command line): rank 0 reports
// it and exits at once, which makes the launcher end the other ranks. They wait a moment first:
// one that exited first would have the launcher end rank 0 before its message is out. A problem
// of this rank's own (rank 0 did not end the job meanwhile) is then reported by this rank.
void report_input_error(const std::string& message) {
  const int rank = comm::world_rank(), size = comm::world_size();
  if (rank != 0) {
    // Ended by the launcher meanwhile (rank 0 has reported): still exit code 2, the job's code
    // under srun, which reports the highest of its tasks' codes.
    std::signal(SIGTERM, [](int) { std::_Exit(2); });
    std::this_thread::sleep_for(std::chrono::seconds(3));
    std::signal(SIGTERM, SIG_DFL);
  }
  print_line("mpsl: error: " + (rank != 0 ? rank_tag(rank, size) : std::string()) + message);
}

void report_failure(const std::string& message) {
  print_line("mpsl: " + rank_tag(comm::world_rank(), comm::world_size()) + message);
}

void apply_common(const cli::CommonOptions& common) {
  mpsl::obs::set_log_level(mpsl::obs::parse_log_level(common.log_level));
  mpsl::obs::set_quiet(common.quiet);
  if (common.threads > 0) omp_set_num_threads(common.threads);
}

int dispatch_local(const cli::ParsedCommand& cmd) {
  if (cmd.command == "convert") return cli::run_convert(cmd.common, cmd.convert);
  if (cmd.command == "eval") return cli::run_eval(cmd.common, cmd.eval);
  if (cmd.command == "inspect") return cli::run_inspect(cmd.common, cmd.inspect);
  if (cmd.command == "profile") return cli::run_profile(cmd.common, cmd.profile);
  if (cmd.command == "plan") return cli::run_plan(cmd.common, cmd.plan);
  throw mpsl::RuntimeFailure("no handler for command '" + cmd.command + "'");
}

// `train` under MPI: any exception on a rank of a multi-rank job ends the whole job through
// MPI_Abort with the exit code it stands for, so no rank is left waiting for a message.
int run_train_under_mpi(int argc, char** argv, const cli::ParsedCommand& cmd) {
  std::optional<comm::MpiEnvironment> env;
  try {
    env.emplace(&argc, &argv);
  } catch (const std::exception& e) {
    report_failure(e.what());
    return 1;
  }
  const int rank = env->rank();
  const int size = env->size();
  try {
    int rc = cli::run_train(cmd.common, cmd.train);
    if (rc != 0 && size > 1) comm::abort_job(rc, "");
    comm::report_to_parent(rc);  // a run that `mpsl profile` spawned (comm/spawn.hpp)
    return rc;
  } catch (const InputError& e) {
    if (size == 1) {
      print_line(std::string("mpsl: error: ") + e.what());
      return 2;
    }
    if (rank == 0) {
      print_line(std::string("mpsl: error: ") + e.what());
      comm::abort_job(2, "");
    }
    // Rank 0 normally meets the same problem and ends the job first; if it has not done so
    // shortly, the problem is this rank's own and this rank reports it.
    std::this_thread::sleep_for(std::chrono::seconds(2));
    print_line("mpsl: error: " + rank_tag(rank, size) + e.what());
    comm::abort_job(2, "");
  } catch (const std::exception& e) {
    // The rank and its role (the role map is known once training has begun).
    print_line("mpsl: " + (size > 1 ? "[" + comm::describe_rank(rank) + "] " : std::string()) +
               e.what());
    if (size > 1) comm::abort_job(1, "");
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // A process that `mpsl profile` spawned to measure hops (comm/hop_probe.hpp).
  if (argc > 1 && std::string(argv[1]) == comm::kHopProbeChildArg) {
    try {
      return comm::run_hop_probe_child(argc, argv);
    } catch (const std::exception& e) {
      report_failure(e.what());
      return 1;
    }
  }
  // A command that a running mpsl spawned (comm/spawn.hpp): the same command line after the
  // marker; the command reports its end to the parent.
  const bool spawned = argc > 1 && std::string(argv[1]) == comm::kSpawnedChildArg;
  if (spawned) {
    for (int i = 1; i + 1 < argc; ++i) argv[i] = argv[i + 1];
    argv[--argc] = nullptr;
    // The parent reads the run's metrics; its result line would only clutter the parent's output.
    if (!std::freopen("/dev/null", "w", stdout)) return 1;
  }
  cli::ParsedCommand cmd;
  try {
    cmd = cli::parse_command_line(argc, argv);
    if (cmd.action != cli::Action::kRun) {
      std::fputs(cmd.text.c_str(), stdout);
      return 0;
    }
    apply_common(cmd.common);
  } catch (const InputError& e) {
    report_input_error(e.what());
    if (spawned) {  // the parent waits for the exit code, which needs MPI
      comm::MpiEnvironment env(&argc, &argv);
      comm::report_to_parent(2);
    }
    return 2;
  } catch (const std::exception& e) {
    report_failure(e.what());
    return 1;
  }

  if (!cli::command_available(cmd.command)) {
    report_failure("'" + cmd.command +
                   "' is planned but not available in this build yet (its options are "
                   "accepted; see 'mpsl " +
                   cmd.command + " --help')");
    return 1;
  }
  if (cmd.command == "train") return run_train_under_mpi(argc, argv, cmd);

  try {
    return dispatch_local(cmd);
  } catch (const InputError& e) {
    report_input_error(e.what());
    return 2;
  } catch (const std::exception& e) {
    report_failure(e.what());
    return 1;
  }
}
