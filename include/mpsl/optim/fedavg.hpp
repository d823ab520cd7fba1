// Federated averaging of part copies, weighted by the owners' sample counts.
//
// Sums are taken in double, in owner order, and converted to float once at the end, so the
// single-process simulation and the multihop runtime (which adds per-rank partial sums with an
// MPI reduction) agree to the float rounding of that final conversion.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpsl/nn/model.hpp"

namespace mpsl::optim {

// What happens to the momentum buffers when copies are averaged at a round's end.
enum class OptimizerStatePolicy {
  kReset,    // zeroed: every round starts with fresh optimiser state (torch_fedavg.py's recipe)
  kAverage,  // averaged with the same weights as the parameters
  kKeep,     // each copy keeps its own
};
OptimizerStatePolicy parse_optimizer_state_policy(const std::string& text);

// acc[i] += weight * src[i] for i < n.
void accumulate_weighted(const float* src, double weight, int64_t n, double* acc);

// The weighted sums of params, buffers and (policy kAverage) momentum of `copies`.
struct PartSums {
  std::vector<double> params, buffers, momentum;
};
// Into `sums`, reusing its vectors' storage. The runtimes keep one PartSums across
// rounds: freshly allocated, a large part's sums are new pages that the kernel has to fault in
// at every round's end (a vgg19 stage of 2 copies: 1.1 GB; on a VM whose first touch of a page
// runs at 0.43 GB/s, that was 2.6 of the 4.3 s its FedAvg took).
void weighted_sums_into(const std::vector<const nn::PartState*>& copies,
                        const std::vector<double>& weights, bool with_momentum, PartSums& sums);

// Sets every copy to sums / total_weight, applying the optimiser-state policy.
void assign_average(const PartSums& sums, double total_weight,
                    const std::vector<nn::PartState*>& copies, OptimizerStatePolicy policy);

// FedAvg of copies that all live in this process, with no sums kept: a chunk of a few thousand
// elements at a time, summed over every copy (the same double arithmetic, in owner order, as
// weighted_sums_into) and written to every target before the next chunk. Every copy is read and
// written once; the two steps above stream sums of twice a copy's size once per copy and back
// (a vgg19 stage of 8 copies of 525 MB: 2.7 s against 0.8). `sources` and `targets` may
// overlap; a target outside `sources` (an aggregate kept aside) receives the average too.
// Bitwise the same result as weighted_sums_into + assign_average. The chunks are shared over
// the OpenMP threads (--threads), with the same bits for any count.
void average_in_place(const std::vector<const nn::PartState*>& sources,
                      const std::vector<double>& weights, double total_weight,
                      const std::vector<nn::PartState*>& targets, OptimizerStatePolicy policy);

}  // namespace mpsl::optim
