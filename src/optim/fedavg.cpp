#include "mpsl/optim/fedavg.hpp"

#include "mpsl/core/error.hpp"

namespace mpsl::optim {

OptimizerStatePolicy parse_optimizer_state_policy(const std::string& text) {
  if (text == "reset") return OptimizerStatePolicy::kReset;
  if (text == "average") return OptimizerStatePolicy::kAverage;
  if (text == "keep") return OptimizerStatePolicy::kKeep;
  throw InputError("--optimizer-state must be reset, average or keep, got '" + text + "'");
}

void accumulate_weighted(const float* src, double weight, int64_t n, double* acc) {
  for (int64_t i = 0; i < n; ++i) acc[i] += weight * static_cast<double>(src[i]);
}

void weighted_sums_into(const std::vector<const nn::PartState*>& copies,
                        const std::vector<double>& weights, bool with_momentum, PartSums& s) {
  MPSL_CHECK(!copies.empty() && copies.size() == weights.size(), "copies and weights differ");
  const auto& l = copies.front()->layout;
  // assign() within the capacity writes in place: no new pages.
  s.params.assign(l.param_count, 0.0);
  s.buffers.assign(l.buffer_count, 0.0);
  if (with_momentum)
    s.momentum.assign(l.param_count, 0.0);
  else
    s.momentum.clear();
  for (size_t k = 0; k < copies.size(); ++k) {
    const nn::PartState& c = *copies[k];
    accumulate_weighted(c.params.data(), weights[k], l.param_count, s.params.data());
    accumulate_weighted(c.buffers.data(), weights[k], l.buffer_count, s.buffers.data());
    if (with_momentum)
      accumulate_weighted(c.momentum.data(), weights[k], l.param_count, s.momentum.data());
  }
}

void assign_average(const PartSums& sums, double total_weight,
                    const std::vector<nn::PartState*>& copies, OptimizerStatePolicy policy) {
  for (nn::PartState* c : copies) {
    for (size_t i = 0; i < sums.params.size(); ++i)
      c->params[i] = static_cast<float>(sums.params[i] / total_weight);
    for (size_t i = 0; i < sums.buffers.size(); ++i)
      c->buffers[i] = static_cast<float>(sums.buffers[i] / total_weight);
    if (policy == OptimizerStatePolicy::kReset) c->momentum.fill(0.f);
    if (policy == OptimizerStatePolicy::kAverage)
      for (size_t i = 0; i < sums.momentum.size(); ++i)
        c->momentum[i] = static_cast<float>(sums.momentum[i] / total_weight);
    ++c->version;
  }
}

void average_copies(const std::vector<nn::PartState*>& copies, const std::vector<double>& weights,
                    OptimizerStatePolicy policy, PartSums* workspace) {
  std::vector<const nn::PartState*> in(copies.begin(), copies.end());
  PartSums local;
  PartSums& s = workspace ? *workspace : local;
  weighted_sums_into(in, weights, policy == OptimizerStatePolicy::kAverage, s);
  double total = 0;
  for (double w : weights) total += w;
  assign_average(s, total, copies, policy);
}

}  // namespace mpsl::optim
