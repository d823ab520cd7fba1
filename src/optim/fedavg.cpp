#include "mpsl/optim/fedavg.hpp"

#include <algorithm>
#include <array>

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

namespace {

// Elements per chunk: the chunk's double sums (32 KiB) stay in the core's L1/L2 cache while
// every copy's slice of it is added.
constexpr int64_t kAverageChunk = 4096;

// Sets dst[i] = float(sum_k weights[k] * src_k[i] / total) for the tensor `member` of every
// source and target, chunk by chunk. Chunks are independent and every element is summed in
// owner order whichever thread takes its chunk, so the rank's oneDNN threads (--threads) share
// them and the result is the same bits for any thread count.
template <typename Member>
void average_tensor(const std::vector<const nn::PartState*>& sources,
                    const std::vector<double>& weights, double total,
                    const std::vector<nn::PartState*>& targets, int64_t n, Member member) {
  const int64_t chunks = (n + kAverageChunk - 1) / kAverageChunk;
#pragma omp parallel if (chunks >= 16)
  {
    std::array<double, kAverageChunk> acc;
    std::array<float, kAverageChunk> average;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * kAverageChunk;
      const int64_t len = std::min(kAverageChunk, n - begin);
      std::fill_n(acc.begin(), len, 0.0);
      for (size_t k = 0; k < sources.size(); ++k)
        accumulate_weighted((sources[k]->*member).data() + begin, weights[k], len, acc.data());
      for (int64_t i = 0; i < len; ++i) average[i] = static_cast<float>(acc[i] / total);
      for (nn::PartState* t : targets)
        std::copy_n(average.data(), len, (t->*member).data() + begin);
    }
  }
}

}  // namespace

void average_in_place(const std::vector<const nn::PartState*>& sources,
                      const std::vector<double>& weights, double total_weight,
                      const std::vector<nn::PartState*>& targets, OptimizerStatePolicy policy) {
  MPSL_CHECK(!sources.empty() && sources.size() == weights.size(), "copies and weights differ");
  const auto& l = sources.front()->layout;
  for (const nn::PartState* c : sources)
    MPSL_CHECK(c->params.size() == l.param_count && c->buffers.size() == l.buffer_count,
               "copies of different parts averaged");
  for (const nn::PartState* c : targets)
    MPSL_CHECK(c->params.size() == l.param_count && c->buffers.size() == l.buffer_count,
               "an average written to a copy of a different part");
  average_tensor(sources, weights, total_weight, targets, l.param_count, &nn::PartState::params);
  average_tensor(sources, weights, total_weight, targets, l.buffer_count, &nn::PartState::buffers);
  if (policy == OptimizerStatePolicy::kAverage)
    average_tensor(sources, weights, total_weight, targets, l.param_count,
                   &nn::PartState::momentum);
  for (nn::PartState* c : targets) {
    if (policy == OptimizerStatePolicy::kReset) c->momentum.fill(0.f);
    ++c->version;
  }
}

}  // namespace mpsl::optim
