// RAII ownership of the MPI library (in the style of Boost.MPI's environment and Kokkos'
// ScopeGuard) and checked MPI calls.
//
// One MpiEnvironment lives in main() for the commands that need MPI. Every MPI call goes through
// MPSL_MPI_CHECK, which turns an error code into a RuntimeFailure naming the call, the rank and
// the source line (MPI_COMM_WORLD's error handler is MPI_ERRORS_RETURN, so errors come back as
// codes instead of killing the job without a word).
#pragma once

// The deprecated MPI C++ bindings are not used; skipping them keeps their warnings out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <string>

namespace mpsl::comm {

class MpiEnvironment {
 public:
  // MPI_Init_thread(MPI_THREAD_FUNNELED): only the main thread calls MPI; OpenMP threads inside
  // oneDNN do not. Throws RuntimeFailure if MPI is already initialised or finalised.
  MpiEnvironment(int* argc, char*** argv);
  // MPI_Finalize (unless the job was aborted). Never throws.
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  MpiEnvironment(MpiEnvironment&&) = delete;
  MpiEnvironment& operator=(MpiEnvironment&&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int thread_level() const { return provided_; }  // what MPI_Init_thread provided

  static bool initialized();  // MPI_Init has run
  static bool finalized();    // MPI_Finalize has run

 private:
  int rank_ = 0;
  int size_ = 1;
  int provided_ = MPI_THREAD_SINGLE;
};

// This process's rank in MPI_COMM_WORLD: from MPI when it is initialised, else from the
// launcher's environment (OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK, SLURM_PROCID), else 0.
int world_rank();
// The job's size, likewise (OMPI_COMM_WORLD_SIZE, SLURM_NTASKS, ...; else 1).
int world_size();

// Throws RuntimeFailure("<call> failed on rank R (<file>:<line>): <MPI error string>") when
// rc != MPI_SUCCESS. Use through MPSL_MPI_CHECK.
void check_mpi(int rc, const char* call, const char* file, int line);

// Ends the whole job: MPI_Abort(MPI_COMM_WORLD, code) when MPI is initialised (every rank
// ends, none is left waiting), else std::exit(code). `why` is logged first unless empty.
[[noreturn]] void abort_job(int code, const std::string& why);

}  // namespace mpsl::comm

#define MPSL_MPI_CHECK(call) ::mpsl::comm::check_mpi((call), #call, __FILE__, __LINE__)
