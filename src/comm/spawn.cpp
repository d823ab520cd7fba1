#include "mpsl/comm/spawn.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "mpsl/comm/mpi_environment.hpp"
#include "mpsl/core/error.hpp"

namespace mpsl::comm {
namespace {
constexpr int kTagExitCode = 5;
}  // namespace

double deadline_seconds(const char* env_name, double default_s) {
  const char* v = std::getenv(env_name);
  if (!v || !*v) return default_s;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  MPSL_INPUT_CHECK(end && *end == '\0' && s > 0, std::string(env_name) +
                                                     " must be a positive number of seconds, "
                                                     "not '" +
                                                     v + "'");
  return s;
}

Deadline::Deadline(double seconds, std::string message, std::function<void()> on_expiry) {
  thread_ = std::thread([this, seconds, message = std::move(message),
                         on_expiry = std::move(on_expiry)] {
    std::unique_lock<std::mutex> lock(mutex_);
    if (done_cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return done_; }))
      return;
    if (on_expiry) {
      try {
        on_expiry();
      } catch (...) {  // the exit below matters more than the clean-up
      }
    }
    const std::string line = message + "\n";
    const ssize_t rc = ::write(STDERR_FILENO, line.data(), line.size());
    (void)rc;
    std::_Exit(1);
  });
}

Deadline::~Deadline() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
  }
  done_cv_.notify_all();
  thread_.join();
}

MPI_Comm spawn_children(const std::string& executable, const std::vector<std::string>& args,
                        int processes, std::string& problem) {
  // MPI is initialised once per process; the environment lives until the process ends.
  static std::unique_ptr<MpiEnvironment> env;
  try {
    if (!MpiEnvironment::initialized()) env = std::make_unique<MpiEnvironment>(nullptr, nullptr);
  } catch (const std::exception& e) {
    problem = e.what();
    return MPI_COMM_NULL;
  }
  if (MpiEnvironment::finalized()) {
    problem = "MPI is already finalised";
    return MPI_COMM_NULL;
  }
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  // The children are started by Open MPI's daemon, to which /proc/self/exe is itself.
  std::string program = executable;
  std::error_code ec;
  if (const auto target = std::filesystem::read_symlink(executable, ec); !ec)
    program = target.string();
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  MPI_Comm children = MPI_COMM_NULL;
  std::vector<int> codes(static_cast<size_t>(processes), MPI_SUCCESS);
  // More processes than cores is the point, whatever the user's Open MPI defaults; unbound, as
  // mpirun leaves the ranks of an oversubscribed job.
  MPI_Info info = MPI_INFO_NULL;
  MPSL_MPI_CHECK(MPI_Info_create(&info));
  MPSL_MPI_CHECK(MPI_Info_set(info, "map_by", "slot:OVERSUBSCRIBE"));
  MPSL_MPI_CHECK(MPI_Info_set(info, "bind_to", "none"));
  const int rc = MPI_Comm_spawn(program.c_str(), argv.data(), processes, info, 0, MPI_COMM_SELF,
                                &children, codes.data());
  MPI_Info_free(&info);
  if (rc != MPI_SUCCESS || children == MPI_COMM_NULL) {
    char text[MPI_MAX_ERROR_STRING] = {0};
    int len = 0;
    MPI_Error_string(rc, text, &len);
    problem = "MPI_Comm_spawn of " + std::to_string(processes) + " processes failed: " + text;
    // Slurm's PMIx, which starts srun's tasks, cannot spawn processes; mpirun's runtime can.
    if (std::getenv("SLURM_STEP_ID") && !std::getenv("OMPI_COMM_WORLD_SIZE"))
      problem +=
          "; a process started by srun cannot spawn others: run mpsl profile directly in the "
          "job script, or under mpirun -n 1";
    return MPI_COMM_NULL;
  }
  MPI_Comm_set_errhandler(children, MPI_ERRORS_RETURN);
  return children;
}

int run_spawned_command(const std::string& executable, const std::vector<std::string>& args,
                        int processes, std::string& problem) {
  std::vector<std::string> full = {kSpawnedChildArg};
  full.insert(full.end(), args.begin(), args.end());
  MPI_Comm children = spawn_children(executable, full, processes, problem);
  if (children == MPI_COMM_NULL) return -1;
  int code = -1;
  MPI_Request req;
  // This process sleeps meanwhile, waking 200 times a second: it must take neither a core nor
  // the children's time slices (wake-ups on a busy core slow its process by a few percent at
  // thousands a second; docs/cost-model-validation). Callers put a Deadline around it.
  MPSL_MPI_CHECK(MPI_Irecv(&code, 1, MPI_INT, MPI_ANY_SOURCE, kTagExitCode, children, &req));
  for (int done = 0; !done;) {
    MPSL_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Children that failed are ending their job (MPI_Abort) and will not disconnect: the
  // intercommunicator is left as it is.
  if (code == 0) MPSL_MPI_CHECK(MPI_Comm_disconnect(&children));
  return code;
}

namespace {
MPI_Comm parent_comm() {
  if (!MpiEnvironment::initialized() || MpiEnvironment::finalized()) return MPI_COMM_NULL;
  MPI_Comm parent = MPI_COMM_NULL;
  MPI_Comm_get_parent(&parent);
  return parent;
}
}  // namespace

void report_to_parent(int exit_code) {
  MPI_Comm parent = parent_comm();
  if (parent == MPI_COMM_NULL) return;
  int rank = 0;
  MPSL_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  if (rank == 0) MPSL_MPI_CHECK(MPI_Send(&exit_code, 1, MPI_INT, 0, kTagExitCode, parent));
  MPSL_MPI_CHECK(MPI_Comm_disconnect(&parent));
}

void tell_parent_before_abort(int exit_code) {
  MPI_Comm parent = parent_comm();
  if (parent == MPI_COMM_NULL) return;
  // Unchecked: this rank is ending the job whatever happens here; a small message goes out
  // eagerly, so the send does not wait for the parent.
  MPI_Send(&exit_code, 1, MPI_INT, 0, kTagExitCode, parent);
}

}  // namespace mpsl::comm
