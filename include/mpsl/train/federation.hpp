// Which data owner trains on what, and for how many steps: the same on every rank, so compute
// stages know how many tasks a round brings without any extra messages.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "mpsl/cli/options.hpp"
#include "mpsl/data/dataset.hpp"

namespace mpsl::train {

struct FederationPlan {
  int owners = 1;
  int64_t batch = 0;
  int rounds = 1;
  int local_epochs = 1;
  int64_t max_steps = 0;                     // per owner over the whole run; 0 = no cap
  std::vector<std::vector<int64_t>> shards;  // per owner (empty on compute stages)
  std::vector<int64_t> samples;              // per owner: shard size (the FedAvg weight)
  std::vector<int64_t> steps_per_epoch;      // per owner

  // Steps owner k takes in `round` (1-based), local epoch `epoch` (0-based).
  int64_t steps(int k, int round, int epoch) const;
  int64_t round_steps(int k, int round) const;
  // The round's length in steps: the longest owner's round_steps. Step windows and mid-round
  // checkpoints count in these steps (owner k is done after step round_steps(k, round)).
  int64_t round_length(int round) const;
  // Where owner k stands after `done` steps of `round`: (local epoch, steps taken in it). A
  // completed epoch moves on to the next one, except the round's last.
  std::pair<int, int64_t> cursor(int k, int round, int64_t done) const;
  std::vector<double> weights() const;  // samples as doubles
  double total_weight() const;
};

// When a round may end before every owner has finished, and what happens to the late owners
// (--round-deadline, --min-owners-fraction, --late-policy, --late-owners; README "Stragglers").
struct StragglerPolicy {
  double deadline_s = 0;         // 0 = none
  double min_fraction = 0;       // 0 = none
  bool carry = false;            // late updates: false = dropped, true = carried to the next round
  std::vector<int> late_owners;  // forced late in every round
  // The owner ranks coordinate the end of each round (a deadline or a minimum fraction).
  bool coordinated() const { return deadline_s > 0 || min_fraction > 0; }
  bool active() const { return coordinated() || !late_owners.empty(); }
  bool forced_late(int k) const;
  // Owners that must have finished before a round may end early: ceil(F K), at least 1.
  int needed(int owners) const;
};

// Validates the straggler options against the run (multihop or not, checkpoint interval);
// InputError naming the option otherwise.
StragglerPolicy make_straggler_policy(const cli::TrainOptions& opts, bool multihop);

// Partitions the training set (iid or dirichlet) and validates that every owner has at least
// one batch; InputError naming the owner and the fix otherwise.
FederationPlan make_federation_plan(const data::Dataset& train, const cli::TrainOptions& opts,
                                    uint64_t seed);

}  // namespace mpsl::train
