// When checkpoints are taken, how every rank writes its part of one, and how a run resumes from
// one (the file format is in io/checkpoint.hpp). Every function marked "collective" must be
// called by every rank at the same point; world size 1 (the single-process trainer) works too.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mpsl/cli/options.hpp"
#include "mpsl/data/dataset.hpp"
#include "mpsl/io/checkpoint.hpp"
#include "mpsl/nn/model.hpp"
#include "mpsl/obs/metrics.hpp"
#include "mpsl/pipeline/multihop.hpp"
#include "mpsl/pipeline/topology.hpp"
#include "mpsl/train/federation.hpp"

namespace mpsl::train {

// What the manifest records of the run, and what a resume compares.
nlohmann::json config_json(const cli::CommonOptions& common, const cli::TrainOptions& o);
nlohmann::json topology_json(const pipeline::Topology& t, const cli::TrainOptions& o);
// The training set's identity: image count, labels' CRC-32, normalisation, source.
nlohmann::json data_json(const data::Dataset& train, const cli::TrainOptions& o);

// The role a rank's file is written under: single | owner | stage.
std::string rank_role(const pipeline::Topology& t, int rank);

// Where training continues after a resume.
struct ResumePoint {
  std::string folder;  // empty: no checkpoint, start from the beginning
  io::Manifest manifest;
  bool resumed() const { return !folder.empty(); }
  int start_round() const { return manifest.round_complete ? manifest.round + 1 : manifest.round; }
  int64_t start_step() const { return manifest.round_complete ? 0 : manifest.step_in_round; }
};

// Collective. Resolves --resume (nothing to do without it), then rank 0 reads the manifest,
// compares it with this run's configuration, topology and training set (`data` is only needed
// on rank 0) and checks that every rank file is there with its recorded size; the manifest then
// goes to every rank. InputError (from rank 0) saying what differs or what is wrong.
ResumePoint find_resume_point(const cli::CommonOptions& common, const cli::TrainOptions& o,
                              const pipeline::Topology& t, const nlohmann::json& data, int rank);

// Collective. Loads this rank's file into `state` (its parts and owner records) and checks the
// owner records against the plan. A problem on any rank is thrown by rank 0 as one InputError
// naming the file and the problem (the other ranks throw too and are ended by rank 0's abort).
void load_rank_state(const ResumePoint& rp, const nn::Model& model, const pipeline::Topology& t,
                     const FederationPlan& plan, int rank, pipeline::RankState& state);

// Decides when checkpoints are due and writes them.
class Checkpointer {
 public:
  Checkpointer(const cli::CommonOptions& common, const cli::TrainOptions& o, const nn::Model& model,
               const pipeline::Topology& t, const FederationPlan& plan, nlohmann::json data,
               int rank);

  bool enabled() const { return !dir_.empty(); }

  // The step at which the window that starts at `step` of `round` should stop: the next
  // mid-round checkpoint point (or, with a wall-clock interval, the next point where rank 0
  // looks at the clock), at most the round's length.
  int64_t next_stop(int round, int64_t step) const;
  // Collective. At a mid-round stop: whether to checkpoint now (the clock is rank 0's).
  bool due_mid_round(int round, int64_t step);
  // Collective. After the FedAvg of `round`.
  bool due_round_end(int round);

  // Collective. Writes the checkpoint of (round, step), every rank its own file. Rank 0 then
  // publishes it and writes a "checkpoint" metrics event (per-rank bytes and write seconds).
  void write(int round, int64_t step, bool round_complete, pipeline::RankState& state,
             obs::MetricsWriter& metrics);
  // The last checkpoint written or resumed from ("" if none), to skip writing it twice.
  const std::string& last_name() const { return last_name_; }
  void set_last_name(std::string name) { last_name_ = std::move(name); }
  // Tests only (MPSL_TEST_EXIT_AFTER_CHECKPOINTS=N): true once N checkpoints were written, when
  // the run should stop as if killed right after the N-th.
  bool stop_requested() const { return stop_after_ > 0 && written_ >= stop_after_; }

 private:
  int64_t steps_before(int round) const;  // round lengths of the rounds before `round`
  bool rank0_decides(bool mine);

  const cli::CommonOptions& common_;
  const cli::TrainOptions& o_;
  const nn::Model& model_;
  const pipeline::Topology& t_;
  const FederationPlan& plan_;
  nlohmann::json data_;
  int rank_;
  std::string dir_;
  int every_rounds_ = 0;
  int64_t every_steps_ = 0;
  double every_seconds_ = 0;
  int64_t probe_steps_ = 1;  // wall clock: steps between looks at the clock (set by rank 0)
  double last_time_ = 0, probe_time_ = 0;
  int64_t probe_from_ = 0;
  mutable std::vector<int64_t> prefix_;  // steps_before cache
  std::string last_name_;
  int written_ = 0, stop_after_ = 0;
};

}  // namespace mpsl::train
