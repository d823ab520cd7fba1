// FedAvg of K copies of a part, the two ways the runtimes do it, side by side:
//   sums     weighted sums in double, then every copy assigned (owner ranks, replicated stages)
//   in_place chunk by chunk, every copy read and written once (other stages, single process)
// The part: vgg19's classifier-sized tensors, 64 Mi parameters (256 MiB per copy; the last stage
// of vgg19 at N = 3 holds 525 MB per copy). Bytes processed = K copies' parameters.
//
//   build/tools/bench/mpsl_micro_bench --benchmark_filter=FedAvg --benchmark_repetitions=3
#include <benchmark/benchmark.h>

#include <vector>

#include "mpsl/nn/model.hpp"
#include "mpsl/optim/fedavg.hpp"

namespace {

using mpsl::nn::PartState;
using mpsl::optim::OptimizerStatePolicy;

constexpr int64_t kParams = int64_t{64} << 20;

std::vector<PartState> make_copies(int k) {
  std::vector<PartState> copies(k);
  for (int i = 0; i < k; ++i) {
    PartState& c = copies[i];
    c.layout.param_count = kParams;
    c.params = mpsl::nn::FloatBuffer(kParams);
    c.momentum = mpsl::nn::FloatBuffer(kParams);
    for (int64_t j = 0; j < kParams; ++j) c.params[j] = 0.001f * static_cast<float>((j + i) % 1000);
    c.momentum.fill(0.5f);
  }
  return copies;
}

void run(benchmark::State& state, bool in_place) {
  const int k = static_cast<int>(state.range(0));
  std::vector<PartState> copies = make_copies(k);
  std::vector<PartState*> targets;
  std::vector<const PartState*> sources;
  for (auto& c : copies) {
    targets.push_back(&c);
    sources.push_back(&c);
  }
  const std::vector<double> weights(k, 1.0);
  mpsl::optim::PartSums sums;  // kept across rounds, as the runtimes keep theirs
  auto average = [&] {
    if (in_place) {
      mpsl::optim::average_in_place(sources, weights, k, targets, OptimizerStatePolicy::kReset);
    } else {
      mpsl::optim::weighted_sums_into(sources, weights, false, sums);
      mpsl::optim::assign_average(sums, k, targets, OptimizerStatePolicy::kReset);
    }
  };
  average();  // round 1 faults the sums' pages in (slow on this VM); time the rounds after it
  for (auto _ : state) {
    average();
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * k * kParams * 4);
}

void FedAvgSums(benchmark::State& state) {
  run(state, false);
}
void FedAvgInPlace(benchmark::State& state) {
  run(state, true);
}

BENCHMARK(FedAvgSums)->Arg(2)->Arg(4)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(FedAvgInPlace)->Arg(2)->Arg(4)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
