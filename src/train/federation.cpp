#include "mpsl/train/federation.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "mpsl/core/error.hpp"
#include "mpsl/data/partition.hpp"

namespace mpsl::train {

int64_t FederationPlan::steps(int k, int round, int epoch) const {
  const int64_t spe = steps_per_epoch.at(k);
  if (max_steps <= 0) return spe;
  const int64_t before = (static_cast<int64_t>(round - 1) * local_epochs + epoch) * spe;
  return std::clamp<int64_t>(max_steps - before, 0, spe);
}

int64_t FederationPlan::round_steps(int k, int round) const {
  int64_t s = 0;
  for (int e = 0; e < local_epochs; ++e) s += steps(k, round, e);
  return s;
}

int64_t FederationPlan::round_length(int round) const {
  int64_t longest = 0;
  for (int k = 0; k < owners; ++k) longest = std::max(longest, round_steps(k, round));
  return longest;
}

std::pair<int, int64_t> FederationPlan::cursor(int k, int round, int64_t done) const {
  int epoch = 0;
  int64_t left = std::min(done, round_steps(k, round));
  while (epoch + 1 < local_epochs && left >= steps(k, round, epoch)) {
    left -= steps(k, round, epoch);
    ++epoch;
  }
  return {epoch, left};
}

std::vector<double> FederationPlan::weights() const {
  return std::vector<double>(samples.begin(), samples.end());
}

double FederationPlan::total_weight() const {
  double t = 0;
  for (auto s : samples) t += static_cast<double>(s);
  return t;
}

bool StragglerPolicy::forced_late(int k) const {
  return std::find(late_owners.begin(), late_owners.end(), k) != late_owners.end();
}

int StragglerPolicy::needed(int owners) const {
  const int n = static_cast<int>(std::ceil(min_fraction * owners - 1e-9));
  return std::clamp(n, 1, owners);
}

StragglerPolicy make_straggler_policy(const cli::TrainOptions& o, bool multihop) {
  StragglerPolicy p;
  p.deadline_s = o.round_deadline;
  p.min_fraction = o.min_owners_fraction;
  p.carry = o.late_policy == "carry";
  MPSL_INPUT_CHECK(p.min_fraction <= 1, "--min-owners-fraction " + std::to_string(p.min_fraction) +
                                            " must be in (0, 1]");
  if (!o.late_owners.empty()) {
    std::stringstream ss(o.late_owners);
    std::string item;
    while (std::getline(ss, item, ',')) {
      size_t used = 0;
      int k = -1;
      try {
        k = std::stoi(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      MPSL_INPUT_CHECK(used == item.size() && !item.empty() && k >= 0 && k < o.owners,
                       "--late-owners '" + o.late_owners + "': '" + item +
                           "' is not an owner index in 0.." + std::to_string(o.owners - 1));
      if (!p.forced_late(k)) p.late_owners.push_back(k);
    }
    MPSL_INPUT_CHECK(static_cast<int>(p.late_owners.size()) < o.owners,
                     "--late-owners '" + o.late_owners +
                         "' lists every owner: at least one must finish each round");
  }
  if (p.coordinated()) {
    MPSL_INPUT_CHECK(multihop,
                     std::string(p.deadline_s > 0 ? "--round-deadline" : "--min-owners-fraction") +
                         " needs a multihop run (--stages N); the single-process "
                         "simulation takes --late-owners instead");
    MPSL_INPUT_CHECK(o.checkpoint_every_steps == 0 && o.checkpoint_every_seconds == 0,
                     "--checkpoint-every " + o.checkpoint_every_text +
                         " (mid-round checkpoints) cannot be combined with --round-deadline or "
                         "--min-owners-fraction; checkpoint every N rounds instead");
  }
  return p;
}

FederationPlan make_federation_plan(const data::Dataset& train, const cli::TrainOptions& o,
                                    uint64_t seed) {
  FederationPlan p;
  p.owners = o.owners;
  p.batch = o.batch;
  p.rounds = o.rounds;
  p.local_epochs = o.local_epochs;
  p.max_steps = o.max_steps;
  if (o.owners == 1) {
    p.shards.assign(1, std::vector<int64_t>(train.count));
    for (int64_t i = 0; i < train.count; ++i) p.shards[0][i] = i;
  } else if (o.partition == "dirichlet") {
    p.shards = data::partition_dirichlet(train, o.owners, o.alpha, seed);
  } else {
    p.shards = data::partition_iid(train.count, o.owners, seed);
  }
  for (int k = 0; k < o.owners; ++k) {
    const int64_t n = static_cast<int64_t>(p.shards[k].size());
    if (n < o.batch)
      throw InputError("owner " + std::to_string(k) + " gets " + std::to_string(n) +
                       " training samples, fewer than --batch " + std::to_string(o.batch) +
                       (o.partition == "dirichlet" ? "; use a larger --alpha, " : "; use ") +
                       "fewer --owners or a smaller --batch");
    int64_t spe = n / o.batch;
    if (o.batches_per_epoch > 0) spe = std::min<int64_t>(spe, o.batches_per_epoch);
    p.samples.push_back(n);
    p.steps_per_epoch.push_back(spe);
  }
  return p;
}

}  // namespace mpsl::train
