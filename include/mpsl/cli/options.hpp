// What the command line and config files resolve to, one struct per command
// (names as in the user interface, ../shared/CLI.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpsl::cli {

struct CommonOptions {
  std::string config;              // --config FILE.ini
  uint64_t seed = 1;               // --seed
  int threads = 0;                 // --threads (oneDNN/OpenMP threads per rank); 0 = OMP default
  std::string metrics;             // --metrics FILE (JSON lines, rank 0)
  std::string log_level = "info";  // --log-level error|warn|info|debug
  bool quiet = false;              // --quiet
};

struct ConvertOptions {
  std::string format;           // fashion-mnist | cifar10
  std::string input;            // default for fashion-mnist: /usr/share/datasets/fashion-mnist
  std::string output;           // FILE.h5
  std::string split = "train";  // train | test
};

struct TrainOptions {
  std::string model;       // zoo name
  std::string data;        // TRAIN.h5
  std::string test_data;   // TEST.h5 (optional)
  bool synthetic = false;  // random data of the model's input shape (benchmarks)
  int64_t synthetic_count = 8192;
  // optimisation
  int batch = 128;
  float lr = 0.01f;
  float momentum = 0.9f;
  float weight_decay = 1e-4f;
  // rounds
  int rounds = 1;
  int local_epochs = 1;
  int batches_per_epoch = 0;  // 0 = the whole shard
  int64_t max_steps = 0;      // 0 = no cap (benchmarks stop early with it)
  int warmup_steps = 3;       // steps left out of the throughput figure
  // owners
  int owners = 1;
  std::string partition = "iid";  // iid | dirichlet
  float alpha = 0.5f;
  // stages
  int stages = 0;
  int replicas = 1;           // copies of the stage pipeline (horizontal scaling)
  std::string replica_speed;  // "s1,...,sH": owners spread in proportion (default k mod H)
  std::string split;          // "i,j,..." unit indices
  std::string plan;           // plan file
  std::string profile;        // profile file (predictions); a plan carries its own
  // schedule
  std::string schedule = "mpsl";  // mpsl | 1f1b
  int micro_batches = 1;
  // --max-in-flight: -1 auto (a stage holds at most the micro-batches the cost model predicts
  // for it, and every rank creates its predicted slots and send buffers up front; no limit
  // without a profile), 0 off, N: a stage holds at most N
  int max_in_flight = -1;
  std::string optimizer_state = "reset";  // reset | average | keep (at aggregation)
  // stragglers (README "Stragglers"): when a round may end before every owner has finished
  float round_deadline = 0;          // seconds from the round's start; 0 = none
  float min_owners_fraction = 0;     // the round needs this fraction of owners finished; 0 = none
  std::string late_policy = "drop";  // drop | carry: what happens to late owners' updates
  std::string late_owners;           // "K,K,...": owners treated as late in every round
  // state
  // --checkpoint-every N | Nrounds | Nsteps | Ns/Nm/Nh: exactly one of the three below is set
  // when it is given (checkpoint_every_text keeps the text). Not given with --checkpoint-dir:
  // every round. Whatever the interval, a run with --checkpoint-dir also checkpoints at its end.
  std::string checkpoint_dir;
  std::string checkpoint_every_text;
  int checkpoint_every = 0;             // rounds
  int64_t checkpoint_every_steps = 0;   // steps (mid-round: consistent cuts between steps)
  double checkpoint_every_seconds = 0;  // wall clock; taken at the next agreed step boundary
  int checkpoint_keep = 0;              // keep the newest N checkpoints (0 = all)
  std::string resume;                   // latest | a checkpoint folder
  std::string save_model;
  std::string init_model;  // start from these weights instead of the seeded initialisation
  // observe / emulate
  std::string trace;
  std::string audit_dir;  // per-rank message audit (privacy checks)
  bool dry_run = false;
  std::string emulate;
  int eval_batch = 1000;
  // reliability
  double stall_warn_seconds = 60;    // --stall-warn SECONDS|off (0 = off)
  double stall_abort_seconds = 0;    // --stall-abort SECONDS|off (0 = off, the default)
  std::string nan_policy = "abort";  // abort | skip (a batch with a non-finite value)
};

struct EvalOptions {
  std::string model_file;  // --model-file FILE.h5
  std::string checkpoint;  // --checkpoint DIR
  std::string test_data;   // --test-data TEST.h5
  int eval_batch = 1000;
};

struct InspectOptions {
  std::string path;   // positional: checkpoint dir, model file, plan or profile
  std::string model;  // --model NAME: a zoo model's units
  int batch = 1;      // --batch: for activation sizes and FLOPs
};

struct ProfileOptions {
  std::string model;
  int batch = 128;
  int micro_batches = 1;
  int repeats = 5;        // timed steps (medians); 0 = bytes only
  float min_time = 2.0f;  // and timed for at least this many seconds
  int concurrency = -1;   // measure placement with up to N processes (-1: cores + 2; 0: not)
  // Calibrate with real runs of 2..R ranks (-1: cores + 2, at most 8; 0: not, the default: one
  // grid with it, val29, predicted no better; docs/cost-model-validation).
  int pipeline_ranks = 0;
  std::string output;
  std::string device;   // --device SPEC: describe another device (plan/profile.hpp)
  std::string from;     // --from PROFILE: rescale (--device) or retime an existing profile
  bool retime = false;  // --retime: measure --from's times again on this host
};

struct PlanOptions {
  std::string profile;
  int owners = 1;
  int stages = 1;       // 0 = the smallest count that fits (and meets --target-round)
  int owner_ranks = 1;  // ranks holding the owners (memory of their mailboxes, simulation)
  std::string output;
  std::string node_memory;   // --node-memory: bytes per node, "a,b,..." (suffixes K/M/G allowed)
  std::string node_speed;    // --node-speed: relative speed per node, "a,b,..."
  std::string node_device;   // --node-device SPEC: every compute node
  std::string owner_device;  // --owner-device SPEC: every data owner
  std::string owner_cuts;    // "i,j" (end of part 1, start of part P) or "auto"
  std::string schedule = "mpsl";
  int batches = 16;         // --batches-per-round: batches each owner trains per round
  double target_round = 0;  // --target-round SECONDS (with --stages 0)
  int cores = 0;            // --cores: all ranks share this many cores (0 = a node each)
  int threads = 1;          // threads per rank (with --cores)
};

}  // namespace mpsl::cli
