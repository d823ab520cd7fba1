// The training core allocates no tensors in the steady state: once a part's primitives, slots
// and state exist, a training step (micro-batches forward and backward, then the optimiser step)
// makes only the small bookkeeping allocations that oneDNN's execute() needs (argument maps),
// never a buffer the size of a tensor. This executable replaces malloc and its relatives with
// counting wrappers around glibc's own (symbol interposition reaches libdnnl too), so it is a
// separate test binary; under AddressSanitizer, which owns malloc, it skips.
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "../../src/nn/detail.hpp"  // WeightsCache
#include "mpsl/data/dataset.hpp"
#include "mpsl/nn/model.hpp"
#include "mpsl/nn/zoo.hpp"
#include "mpsl/optim/fedavg.hpp"
#include "mpsl/optim/sgd.hpp"
#include "mpsl/train/local.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define MPSL_COUNT_ALLOCATIONS 0
#else
#define MPSL_COUNT_ALLOCATIONS 1
#endif

namespace {

std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_count{0}, g_bytes{0}, g_largest{0};
// Allocations of at least g_large_threshold bytes (when > 0) while counting.
std::atomic<int64_t> g_large_threshold{0}, g_large_count{0};

void note(size_t n) {
  if (!g_counting.load(std::memory_order_relaxed)) return;
  g_count.fetch_add(1, std::memory_order_relaxed);
  const int64_t t = g_large_threshold.load(std::memory_order_relaxed);
  if (t > 0 && static_cast<int64_t>(n) >= t) g_large_count.fetch_add(1, std::memory_order_relaxed);
  g_bytes.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
  int64_t seen = g_largest.load(std::memory_order_relaxed);
  while (static_cast<int64_t>(n) > seen &&
         !g_largest.compare_exchange_weak(seen, static_cast<int64_t>(n))) {
  }
}

struct Counted {
  int64_t count = 0, bytes = 0, largest = 0;
};

// Counts the allocations `body` makes (on every thread).
template <class F>
Counted count_allocations(F&& body) {
  g_count = 0;
  g_bytes = 0;
  g_largest = 0;
  g_large_count = 0;
  g_counting = true;
  body();
  g_counting = false;
  return {g_count.load(), g_bytes.load(), g_largest.load()};
}

}  // namespace

#if MPSL_COUNT_ALLOCATIONS
extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
void __libc_free(void*);

void* malloc(size_t n) {
  note(n);
  return __libc_malloc(n);
}
void* calloc(size_t a, size_t b) {
  note(a * b);
  return __libc_calloc(a, b);
}
void* realloc(void* p, size_t n) {
  note(n);
  return __libc_realloc(p, n);
}
void* memalign(size_t a, size_t n) {
  note(n);
  return __libc_memalign(a, n);
}
void* aligned_alloc(size_t a, size_t n) {
  note(n);
  return __libc_memalign(a, n);
}
int posix_memalign(void** p, size_t a, size_t n) {
  note(n);
  *p = __libc_memalign(a, n);
  return *p ? 0 : 12;  // ENOMEM
}
void free(void* p) {
  __libc_free(p);
}
}
#endif

namespace mpsl {
namespace {

// Every activation, gradient and parameter tensor of the parts below but their logits is larger
// than this; oneDNN's per-execution bookkeeping (argument maps, execution contexts) is smaller
// (measured: at most 1.4 KiB).
constexpr int64_t kLargestBookkeeping = 4096;

TEST(SteadyStateAllocation, TheCounterSeesAllocationsOfEveryKind) {
  if (!MPSL_COUNT_ALLOCATIONS) GTEST_SKIP() << "AddressSanitizer owns malloc";
  const Counted c = count_allocations([] {
    std::vector<float> v(100000);
    auto p = std::make_unique<double[]>(10);
    void* aligned = nullptr;
    ASSERT_EQ(posix_memalign(&aligned, 64, 4096), 0);
    free(aligned);
  });
  EXPECT_EQ(c.count, 3);
  EXPECT_EQ(c.largest, 400000);
  EXPECT_EQ(c.bytes, 400000 + 80 + 4096);
}

struct Case {
  std::string model;
  int64_t micro_batch;
  int begin, end;  // the part; end < 0: to the model's end
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.model << " at micro-batch " << c.micro_batch << ", units " << c.begin << " to "
      << (c.end < 0 ? std::string("the end") : std::to_string(c.end - 1));
}

class SteadyStateStep : public ::testing::TestWithParam<Case> {};

TEST_P(SteadyStateStep, AllocatesNoTensors) {
  if (!MPSL_COUNT_ALLOCATIONS) GTEST_SKIP() << "AddressSanitizer owns malloc";
  const Case& k = GetParam();
  auto model = nn::make_model(k.model);
  const int b = k.begin, e = k.end < 0 ? model->num_units() : k.end;
  const nn::Shape in = model->shape_before(b, k.micro_batch),
                  out = model->shape_before(e, k.micro_batch);
  std::vector<float> input(in.elements(), 0.1f), output(out.elements(), 1e-3f),
      diff_input(in.elements());
  nn::PartProgram program(*model, b, e, k.micro_batch, b > 0, true);
  nn::PartState state(*model, b, e);
  state.initialise(*model, 1);
  state.adopt_formats(program);
  auto slot = program.make_slot();
  const optim::SgdConfig sgd{0.01f, 0.9f, 1e-4f};
  // Two micro-batches per step (the second accumulates its gradients), then the step.
  auto step = [&] {
    for (int m = 0; m < 2; ++m) {
      const nn::StepInfo info{1, state.steps, m * k.micro_batch, true, 0};
      program.forward(*slot, state, input.data(), output.data(), info);
      program.backward(*slot, state, output.data(), b > 0 ? diff_input.data() : nullptr, info,
                       m > 0);
    }
    optim::sgd_step(state, sgd);
  };
  for (int i = 0; i < 2; ++i) step();  // warm-up: lazy buffers, weight conversions
  const Counted c = count_allocations([&] {
    for (int i = 0; i < 3; ++i) step();
  });
  EXPECT_LE(c.largest, kLargestBookkeeping)
      << k.model << " units " << b << "-" << e - 1 << ": " << c.count << " allocations, " << c.bytes
      << " bytes in 3 steps";
}

INSTANTIATE_TEST_SUITE_P(Models, SteadyStateStep,
                         ::testing::Values(Case{"fmnist-cnn", 32, 0, -1},
                                           Case{"fmnist-cnn", 16, 1, 8}, Case{"lenet5", 16, 0, -1},
                                           Case{"resnet18", 4, 0, -1}, Case{"vgg11", 4, 2, 12}),
                         [](const auto& info) {
                           std::string n = info.param.model + "_from_" +
                                           std::to_string(info.param.begin) + "_to_" +
                                           (info.param.end < 0 ? std::string("end")
                                                               : std::to_string(info.param.end));
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

// FedAvg at a round's end allocates nothing the size of a tensor: the stages and the single
// process average in place (no sums at all); the owner ranks and replicated stages, which reduce
// sums over ranks, keep theirs from round to round (freshly allocated sums are new pages every
// round). Both give the average that fresh sums give.
TEST(SteadyStateAllocation, FedAvgAllocatesNoTensors) {
  if (!MPSL_COUNT_ALLOCATIONS) GTEST_SKIP() << "AddressSanitizer owns malloc";
  auto model = nn::make_model("fmnist-cnn");
  std::vector<nn::PartState> in_place, kept, fresh;
  for (int k = 0; k < 3; ++k) {
    in_place.emplace_back(*model, 0, model->num_units());
    in_place.back().initialise(*model, 1 + k);
  }
  kept = fresh = in_place;
  const std::vector<double> weights{1.0, 2.0, 3.0};
  auto pointers = [](std::vector<nn::PartState>& v) {
    std::vector<nn::PartState*> p;
    for (auto& c : v) p.push_back(&c);
    return p;
  };
  const auto in_place_ptrs = pointers(in_place), kept_ptrs = pointers(kept),
             fresh_ptrs = pointers(fresh);
  const std::vector<const nn::PartState*> in_place_sources(in_place_ptrs.begin(),
                                                           in_place_ptrs.end()),
      kept_sources(kept_ptrs.begin(), kept_ptrs.end()),
      fresh_sources(fresh_ptrs.begin(), fresh_ptrs.end());
  for (const auto policy :
       {optim::OptimizerStatePolicy::kAverage, optim::OptimizerStatePolicy::kReset}) {
    const bool momentum = policy == optim::OptimizerStatePolicy::kAverage;
    optim::PartSums sums;
    auto two_steps = [&](const std::vector<const nn::PartState*>& sources,
                         const std::vector<nn::PartState*>& targets, optim::PartSums& s) {
      optim::weighted_sums_into(sources, weights, momentum, s);
      optim::assign_average(s, 6.0, targets, policy);
    };
    two_steps(kept_sources, kept_ptrs, sums);  // round 1: allocates the sums
    for (auto* v : {&in_place, &kept, &fresh})
      for (auto& c : *v) c.params[0] += 1.f;  // round 2 averages something new
    const Counted a = count_allocations(
        [&] { optim::average_in_place(in_place_sources, weights, 6.0, in_place_ptrs, policy); });
    const Counted b = count_allocations([&] { two_steps(kept_sources, kept_ptrs, sums); });
    optim::PartSums new_sums;
    two_steps(fresh_sources, fresh_ptrs, new_sums);
    EXPECT_LE(a.largest, kLargestBookkeeping) << a.count << " allocations, " << a.bytes << " bytes";
    EXPECT_LE(b.largest, kLargestBookkeeping) << b.count << " allocations, " << b.bytes << " bytes";
    for (size_t k = 0; k < fresh.size(); ++k)
      for (int64_t i = 0; i < fresh[k].params.size(); ++i) {
        ASSERT_EQ(kept[k].params[i], fresh[k].params[i]) << "copy " << k << ", parameter " << i;
        ASSERT_EQ(in_place[k].params[i], fresh[k].params[i]) << "copy " << k << ", parameter " << i;
      }
  }
}

// A weights cache (the copy of a layer's weights in the layout its primitive wants) is allocated
// on first use: weights stored in that layout (PartState::adopt_formats, as every runtime stores
// them) never need it. vgg19's 25088 x 4096 layer held such a 392 MiB copy, never touched.
TEST(SteadyStateAllocation, WeightsCacheAllocatesItsCopyOnlyWhenItConverts) {
  if (!MPSL_COUNT_ALLOCATIONS) GTEST_SKIP() << "AddressSanitizer owns malloc";
  using dnnl::memory;
  const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  const memory::dims dims{512, 1024};  // 2 MiB of weights
  const int64_t bytes = 512 * 1024 * 4;
  const memory::desc plain(dims, memory::data_type::f32, memory::format_tag::ab);
  const memory::desc want(dims, memory::data_type::f32, memory::format_tag::ba);
  std::vector<float> w(512 * 1024, 0.5f);
  nn::ParamRefs p;
  p.owner = &w;
  p.version = 1;
  std::unique_ptr<nn::detail::WeightsCache> cache;
  g_large_threshold = bytes;
  count_allocations([&] {
    cache = std::make_unique<nn::detail::WeightsCache>(plain, want, eng);
    cache->get(w.data(), p, strm, want);  // stored as wanted: used in place
  });
  EXPECT_EQ(g_large_count.load(), 0) << "a copy of the weights allocated that is never used";
  count_allocations([&] { cache->get(w.data(), p, strm); });  // plain: converted
  g_large_threshold = 0;
  EXPECT_EQ(g_large_count.load(), 1);
}

TEST(SteadyStateAllocation, EvaluationKeepsItsBuffers) {
  // Evaluation after every round: the second run over the test set allocates no batch buffer
  // (an evaluation batch of 1000 images is 3 MB; fresh pages each round cost on some VMs).
  if (!MPSL_COUNT_ALLOCATIONS) GTEST_SKIP() << "AddressSanitizer owns malloc";
  auto model = nn::make_model("fmnist-cnn");
  nn::PartState state(*model, 0, model->num_units());
  state.initialise(*model, 1);
  const data::Dataset test = data::make_synthetic(250, 1, 28, 28, 10, 3);
  train::Evaluator evaluator(*model, 100);  // batches of 100, 100, 50
  const train::EvalResult first = evaluator.run(state, test);
  train::EvalResult second;
  const Counted c = count_allocations([&] { second = evaluator.run(state, test); });
  EXPECT_LE(c.largest, kLargestBookkeeping) << c.count << " allocations, " << c.bytes << " bytes";
  EXPECT_EQ(first.accuracy, second.accuracy);
  EXPECT_EQ(first.loss, second.loss);
}
}  // namespace
}  // namespace mpsl
