// The multihop runtime: what an owner rank and a compute-stage rank do in a round, how they
// aggregate at its end, and how the aggregated model is evaluated through the pipeline.
//
// Schedules. Each owner's batch runs as M micro-batches (M = 1 for the paper's "mpsl"
// schedule, where every owner has exactly one batch in flight). An owner keeps up to W
// micro-batches in flight (W = 1 for mpsl, min(M, N + 2) for 1f1b) and always handles arrived
// work (outputs to finish, gradients to apply) before starting a new forward pass. Stages serve
// what has arrived: gradients first, then work from neighbouring stages, then the earliest.
// Every part copy steps once per batch, after the backward of its last micro-batch, so the
// update equals the whole-batch update.
#pragma once

#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "mpsl/comm/mailbox.hpp"
#include "mpsl/data/dataset.hpp"
#include "mpsl/emulate/emulate.hpp"
#include "mpsl/io/checkpoint.hpp"
#include "mpsl/nn/model.hpp"
#include "mpsl/optim/fedavg.hpp"
#include "mpsl/optim/sgd.hpp"
#include "mpsl/pipeline/topology.hpp"
#include "mpsl/train/federation.hpp"

namespace mpsl::pipeline {

struct Settings {
  const nn::Model* model = nullptr;
  Topology topology;
  train::FederationPlan plan;
  int micro_batches = 1;
  bool one_f_one_b = false;
  optim::SgdConfig sgd;
  optim::OptimizerStatePolicy policy = optim::OptimizerStatePolicy::kReset;
  uint64_t seed = 1;
  std::string init_model;  // --init-model: starting weights from a model file
  int64_t eval_batch = 1000;
  // Called on an owner rank each time one of its owners finishes a batch (progress display).
  std::function<void()> on_step;
  emulate::Emulation emulation;  // --emulate: devices and links (disabled by default)
  train::StragglerPolicy stragglers;
  // A non-finite loss, activation or gradient: false = end the job (RuntimeFailure naming rank,
  // owner, round, step), true = skip that owner's batch (no update anywhere it was seen).
  bool nan_skip = false;
  // Memory reserved at the start (--max-in-flight; train_command.cpp takes it from the cost
  // model's prediction for this rank). in_flight: activation slots created up front; on a
  // stage also the most micro-batches it holds at once (an activation that arrives beyond
  // that waits in its receive buffer until a gradient frees a slot). send_buffers: send
  // buffers, as large as this rank's largest message, created up front. 0: none (grow on
  // demand, no limit).
  struct Reservation {
    int in_flight = 0;
    int send_buffers = 0;
  } reservation;
};

// One owner's round, for the metrics ("round_owners").
struct OwnerRound {
  int owner = 0;
  int64_t steps = 0;       // steps taken in the round
  bool late = false;       // not finished when the round ended (or --late-owners)
  double finished_s = -1;  // when it finished its steps, from the round's start (-1: never)
  double busy_s = 0;       // its compute (emulated: scaled by its device's factor)
};

struct RoundResult {
  double loss_sum = 0;  // over this rank's owners (summed over ranks on rank 0)
  int64_t correct = 0;
  int64_t images = 0;
  std::vector<OwnerRound> owners;  // every owner, on rank 0
  int64_t skipped = 0;             // batches skipped for non-finite values (--nan-policy skip)
};

struct RankTimes {
  double busy_s = 0, wait_s = 0, comm_s = 0;
};

// What a rank keeps that a checkpoint must hold: a record per data owner on the rank (cursor,
// round tallies) and every part copy (pointers into the runtime, valid while it lives).
struct RankState {
  std::vector<io::OwnerRecord> owners;
  std::vector<io::PartRecord> parts;
};

class RankRuntime {
 public:
  virtual ~RankRuntime() = default;
  // Starts `round` with every owner `start_step` steps into it (0, or where a checkpoint was
  // taken: owner k then stands at step min(start_step, its round steps)).
  virtual void begin_round(int round, int64_t start_step) = 0;
  // Trains steps [from, to) of the round: owner k takes its steps min(to, R_k) - min(from, R_k)
  // (R_k = its steps in the round). Returns with nothing in flight, so the ranks' states form a
  // consistent cut (what a mid-round checkpoint needs). Windows must follow each other.
  virtual void run_steps(int64_t from, int64_t to) = 0;
  // Ends the round's training: the loss tallies summed over the owner ranks, on rank 0.
  virtual RoundResult finish_round() = 0;
  // Trains one whole round (every owner's batches of that round).
  RoundResult run_round(int round) {
    begin_round(round, 0);
    run_steps(0, std::numeric_limits<int64_t>::max());
    return finish_round();
  }
  // The state a checkpoint holds (owner records describe where begin_round/run_steps left off).
  virtual RankState checkpoint_state() = 0;
  // After loading a checkpoint into checkpoint_state()'s parts: the round tallies so far of a
  // round resumed in its middle (call after begin_round).
  virtual void restore_tallies(const std::vector<io::OwnerRecord>& owners) = 0;
  // FedAvg of the owner parts (owner ranks) and of the per-owner copies (stages).
  virtual void aggregate() = 0;
  // Evaluates the aggregated model through the pipeline; `test` is given on rank 0 only.
  // Returns (loss, accuracy) on rank 0.
  virtual std::pair<double, double> evaluate(const data::Dataset* test) = 0;
  // The aggregated model's parts, gathered on rank 0 as one whole-model state.
  virtual std::optional<nn::PartState> gather_model() = 0;
  virtual RankTimes times() const = 0;
  // What the emulation (--emulate) added on this rank.
  virtual emulate::EmulationStats emulation_stats() const = 0;
  virtual const comm::Mailbox& mailbox() const = 0;
  virtual const char* role() const = 0;
  // The most micro-batches this rank held activations for at once.
  virtual int max_in_flight() const = 0;
  // The activation slots it created (reserved up front, or grown to).
  virtual int reserved_in_flight() const = 0;
};

// Builds the runtime for this rank. `train` is the training set (owner ranks only).
std::unique_ptr<RankRuntime> make_runtime(const Settings& settings, const data::Dataset* train,
                                          int rank);

}  // namespace mpsl::pipeline
