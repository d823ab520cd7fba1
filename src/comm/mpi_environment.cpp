#include "mpsl/comm/mpi_environment.hpp"

#include "mpsl/comm/spawn.hpp"

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "mpsl/comm/spawn.hpp"
#include "mpsl/comm/watchdog.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/obs/log.hpp"

namespace mpsl::comm {
namespace {

// Set when abort_job ran, so the guard's destructor does not call MPI_Finalize afterwards.
bool g_aborted = false;

int env_int(const char* const names[], int fallback) {
  for (const char* const* n = names; *n; ++n) {
    const char* v = std::getenv(*n);
    if (v && *v) {
      char* end = nullptr;
      long x = std::strtol(v, &end, 10);
      if (end && *end == '\0' && x >= 0) return static_cast<int>(x);
    }
  }
  return fallback;
}

// Any exception that escapes (or a noexcept violation) on one rank of a running job ends the
// whole job instead of leaving the other ranks blocked in a receive.
[[noreturn]] void terminate_handler() {
  std::string why = "terminate called";
  if (auto e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      why = std::string("uncaught exception: ") + ex.what();
    } catch (...) {
      why = "uncaught exception of unknown type";
    }
  }
  abort_job(1, why);
}

}  // namespace

bool MpiEnvironment::initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  return flag != 0;
}

bool MpiEnvironment::finalized() {
  int flag = 0;
  MPI_Finalized(&flag);
  return flag != 0;
}

MpiEnvironment::MpiEnvironment(int* argc, char*** argv) {
  if (initialized() || finalized())
    throw RuntimeFailure("MpiEnvironment: MPI is already initialised or finalised");
  int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided_);
  if (rc != MPI_SUCCESS)
    throw RuntimeFailure("MPI_Init_thread failed (code " + std::to_string(rc) + ")");
  MPSL_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPSL_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  MPSL_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  obs::set_log_rank(rank_, size_);
  if (provided_ < MPI_THREAD_FUNNELED)
    obs::log_warn("MPI provides thread level " + std::to_string(provided_) +
                  ", below MPI_THREAD_FUNNELED; continuing (only the main thread calls MPI)");
  std::set_terminate(terminate_handler);
}

MpiEnvironment::~MpiEnvironment() {
  if (g_aborted || finalized()) return;
  int rc = MPI_Finalize();
  if (rc != MPI_SUCCESS)
    std::fprintf(stderr, "mpsl: [rank %d] MPI_Finalize failed (code %d)\n", rank_, rc);
}

int world_rank() {
  if (MpiEnvironment::initialized() && !MpiEnvironment::finalized()) {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
  }
  static const char* const names[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK",
                                      "SLURM_PROCID", nullptr};
  return env_int(names, 0);
}

int world_size() {
  if (MpiEnvironment::initialized() && !MpiEnvironment::finalized()) {
    int s = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
  }
  static const char* const names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", nullptr};
  return env_int(names, 1);
}

void check_mpi(int rc, const char* call, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) std::snprintf(text, sizeof text, "?");
  throw RuntimeFailure(std::string(call) + " failed on rank " + std::to_string(world_rank()) +
                       " (" + file + ":" + std::to_string(line) + "): " + text + " (code " +
                       std::to_string(rc) + ")");
}

void abort_job(int code, const std::string& why) {
  disarm_termination_report();  // this rank ends the job; it was not ended by another
  if (!why.empty()) {
    std::string line = "mpsl: [" + describe_rank(world_rank()) + "] " + why + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
  }
  std::fflush(stdout);
  if (MpiEnvironment::initialized() && !MpiEnvironment::finalized()) {
    g_aborted = true;
    tell_parent_before_abort(code);  // a job that `mpsl profile` spawned (comm/spawn.hpp)
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; this is for a library that does
  }
  std::exit(code);
}

}  // namespace mpsl::comm
