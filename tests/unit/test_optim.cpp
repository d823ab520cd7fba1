// Unit tests of the optimiser: SGD with torch.optim.SGD's semantics (dampening 0):
//   g = grad + weight_decay * w;  buf = momentum * buf + g;  w -= lr * buf
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <vector>

#include "mpsl/core/rng.hpp"
#include "mpsl/nn/layers.hpp"
#include "mpsl/nn/model.hpp"
#include "mpsl/nn/zoo.hpp"
#include "mpsl/optim/fedavg.hpp"
#include "mpsl/optim/sgd.hpp"

namespace mpsl::optim {
namespace {

TEST(Sgd, TwoStepsMatchTorchByHand) {
  const SgdConfig cfg{0.1f, 0.9f, 0.01f};
  std::vector<float> w{1.f, -2.f, 0.f}, buf(3, 0.f);
  // Step 1: grads 0.5, 0.25, 0.
  std::vector<float> g{0.5f, 0.25f, 0.f};
  sgd_update(w.data(), g.data(), buf.data(), 3, cfg);
  // w0: g = 0.5 + 0.01 = 0.51, buf = 0.51, w = 1 - 0.051 = 0.949
  // w1: g = 0.25 - 0.02 = 0.23, buf = 0.23, w = -2 - 0.023 = -2.023
  EXPECT_NEAR(buf[0], 0.51, 1e-6);
  EXPECT_NEAR(w[0], 0.949, 1e-6);
  EXPECT_NEAR(buf[1], 0.23, 1e-6);
  EXPECT_NEAR(w[1], -2.023, 1e-6);
  EXPECT_EQ(w[2], 0.f);
  EXPECT_EQ(buf[2], 0.f);
  // Step 2: grads 0.5, -1, 0.
  g = {0.5f, -1.f, 0.f};
  sgd_update(w.data(), g.data(), buf.data(), 3, cfg);
  // w0: g = 0.5 + 0.00949 = 0.50949, buf = 0.459 + 0.50949 = 0.96849, w = 0.949 - 0.096849
  // w1: g = -1 - 0.02023 = -1.02023, buf = 0.207 - 1.02023 = -0.81323, w = -2.023 + 0.081323
  EXPECT_NEAR(buf[0], 0.96849, 1e-6);
  EXPECT_NEAR(w[0], 0.852151, 1e-6);
  EXPECT_NEAR(buf[1], -0.81323, 1e-6);
  EXPECT_NEAR(w[1], -1.941677, 1e-6);
}

TEST(Sgd, NoMomentumNoDecayIsPlainGradientDescent) {
  const SgdConfig cfg{0.5f, 0.f, 0.f};
  std::vector<float> w{1.f, 2.f}, g{0.25f, -4.f}, buf(2, 0.f);
  sgd_update(w.data(), g.data(), buf.data(), 2, cfg);
  EXPECT_FLOAT_EQ(w[0], 0.875f);
  EXPECT_FLOAT_EQ(w[1], 4.f);
}

// Large arrays take the OpenMP path; it must agree with the element-wise rule.
TEST(Sgd, LargeArrayMatchesScalarRule) {
  const int64_t n = (1 << 17) + 3;
  const SgdConfig cfg{0.05f, 0.9f, 1e-4f};
  Rng rng(1, 2);
  std::vector<float> w(n), g(n), buf(n);
  for (int64_t i = 0; i < n; ++i) {
    w[i] = rng.uniform(-1, 1);
    g[i] = rng.uniform(-1, 1);
    buf[i] = rng.uniform(-1, 1);
  }
  std::vector<float> w2 = w, buf2 = buf;
  sgd_update(w.data(), g.data(), buf.data(), n, cfg);
  for (int64_t i = 0; i < n; ++i) {
    const double gg = static_cast<double>(g[i]) + cfg.weight_decay * static_cast<double>(w2[i]);
    const double b = cfg.momentum * static_cast<double>(buf2[i]) + gg;
    const double ww = w2[i] - cfg.lr * b;
    ASSERT_NEAR(buf[i], b, 1e-6) << i;
    ASSERT_NEAR(w[i], ww, 1e-6) << i;
  }
}

TEST(Sgd, StepUpdatesStateVersionAndCount) {
  nn::Model m("t", nn::Shape{1, 3, 1, 1}, 2);
  m.add(nn::linear(2));
  nn::PartState st(m, 0, 1);
  st.initialise(m, 1);
  const uint64_t v = st.version;
  const std::vector<float> w0(st.params.data(), st.params.data() + st.params.size());
  st.grads.fill(1.f);
  const SgdConfig cfg{0.1f, 0.9f, 0.f};
  sgd_step(st, cfg);
  EXPECT_EQ(st.version, v + 1);
  EXPECT_EQ(st.steps, 1u);
  for (int64_t i = 0; i < st.params.size(); ++i) {
    EXPECT_NEAR(st.params[i], w0[i] - 0.1f, 1e-6);
    EXPECT_FLOAT_EQ(st.momentum[i], 1.f);
  }
  sgd_step(st, cfg);
  EXPECT_EQ(st.steps, 2u);
  for (int64_t i = 0; i < st.params.size(); ++i) {
    EXPECT_FLOAT_EQ(st.momentum[i], 1.9f);
    EXPECT_NEAR(st.params[i], w0[i] - 0.1f - 0.19f, 1e-6);
  }
}

// FedAvg in place (the stages, the single process): the weighted average in double, written to
// every target, over units whose tensors span many of its chunks (resnet18's stem and first
// blocks: 150k parameters, batch-norm buffers), and bitwise what the two steps over kept sums
// (the owner ranks, replicated stages) give.
class FedAvgInPlace : public ::testing::TestWithParam<OptimizerStatePolicy> {};

TEST_P(FedAvgInPlace, IsTheWeightedAverageOfTheSources) {
  const OptimizerStatePolicy policy = GetParam();
  auto model = nn::make_model("resnet18");
  std::vector<nn::PartState> c;
  for (int k = 0; k < 3; ++k) {
    c.emplace_back(*model, 0, 4);
    c.back().initialise(*model, 11 + k);
    for (int64_t i = 0; i < c.back().momentum.size(); ++i)
      c.back().momentum[i] = 0.001f * static_cast<float>((i + k) % 97);
    for (int64_t i = 0; i < c.back().buffers.size(); ++i)
      c.back().buffers[i] = 0.5f + 0.01f * static_cast<float>((i * (k + 1)) % 53);
  }
  ASSERT_GT(c[0].layout.param_count, 10 * 4096);
  ASSERT_GT(c[0].layout.buffer_count, 0);
  nn::PartState aggregate(*model, 0, 4);  // a target outside the sources (late owners kept)
  const std::vector<nn::PartState> before = c;
  // Owner 2 is late: weight 0, not a target, keeps its copy.
  const std::vector<double> weights{1.0, 3.0, 0.0};
  const uint64_t v2 = c[2].version;
  average_in_place({&c[0], &c[1], &c[2]}, weights, 4.0, {&c[0], &c[1], &aggregate}, policy);

  auto expect_average = [&](nn::FloatBuffer nn::PartState::*member, const char* what) {
    for (const nn::PartState* t : {&c[0], &c[1], &aggregate})
      for (int64_t i = 0; i < (before[0].*member).size(); ++i) {
        const double sum = 1.0 * (before[0].*member)[i] + 3.0 * (before[1].*member)[i];
        ASSERT_EQ((t->*member)[i], static_cast<float>(sum / 4.0)) << what << " " << i;
      }
  };
  expect_average(&nn::PartState::params, "parameter");
  expect_average(&nn::PartState::buffers, "buffer");
  if (policy == OptimizerStatePolicy::kAverage)
    expect_average(&nn::PartState::momentum, "momentum");
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(c[k].version, before[k].version + 1);
    for (int64_t i = 0; i < c[k].momentum.size(); ++i) {
      if (policy == OptimizerStatePolicy::kReset) ASSERT_EQ(c[k].momentum[i], 0.f);
      if (policy == OptimizerStatePolicy::kKeep) ASSERT_EQ(c[k].momentum[i], before[k].momentum[i]);
    }
  }
  // The late owner's copy, not a target, is untouched.
  EXPECT_EQ(c[2].version, v2);
  EXPECT_EQ(std::memcmp(c[2].params.data(), before[2].params.data(), c[2].params.size() * 4), 0);

  // The two steps over sums, from the same copies, give the same bits.
  std::vector<nn::PartState> d = before;
  PartSums sums;
  weighted_sums_into({&d[0], &d[1], &d[2]}, weights, policy == OptimizerStatePolicy::kAverage,
                     sums);
  assign_average(sums, 4.0, {&d[0], &d[1]}, policy);
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(std::memcmp(c[k].params.data(), d[k].params.data(), d[k].params.size() * 4), 0);
    EXPECT_EQ(std::memcmp(c[k].buffers.data(), d[k].buffers.data(), d[k].buffers.size() * 4), 0);
    EXPECT_EQ(std::memcmp(c[k].momentum.data(), d[k].momentum.data(), d[k].momentum.size() * 4), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, FedAvgInPlace,
                         ::testing::Values(OptimizerStatePolicy::kReset,
                                           OptimizerStatePolicy::kAverage,
                                           OptimizerStatePolicy::kKeep));

TEST(FedAvg, InPlaceAverageIsTheSameBitsForAnyThreadCount) {
  // A rank with --threads T shares the chunks over T threads; every element is still summed
  // in owner order. vgg11 units 0-5 (90 chunks, the last one partial).
  auto model = nn::make_model("vgg11");
  std::vector<nn::PartState> c;
  for (int k = 0; k < 4; ++k) {
    c.emplace_back(*model, 0, 5);
    c.back().initialise(*model, 40 + k);
  }
  ASSERT_GT(c[0].layout.param_count, 50 * 4096);
  ASSERT_NE(c[0].layout.param_count % 4096, 0);
  const std::vector<double> weights{5.0, 1.0, 2.0, 7.0};
  std::vector<nn::PartState> one = c, three = c;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  average_in_place({&one[0], &one[1], &one[2], &one[3]}, weights, 15.0, {&one[0]},
                   OptimizerStatePolicy::kAverage);
  omp_set_num_threads(3);
  average_in_place({&three[0], &three[1], &three[2], &three[3]}, weights, 15.0, {&three[0]},
                   OptimizerStatePolicy::kAverage);
  omp_set_num_threads(threads);
  EXPECT_EQ(std::memcmp(one[0].params.data(), three[0].params.data(), one[0].params.size() * 4), 0);
  EXPECT_EQ(
      std::memcmp(one[0].momentum.data(), three[0].momentum.data(), one[0].momentum.size() * 4), 0);
  EXPECT_NE(std::memcmp(one[0].params.data(), c[0].params.data(), c[0].params.size() * 4), 0);
}

TEST(FedAvg, CopiesOfDifferentPartsAreRefused) {
  auto model = nn::make_model("fmnist-cnn");
  nn::PartState a(*model, 0, 2), b(*model, 2, 4);
  EXPECT_THROW(average_in_place({&a, &b}, {1.0, 1.0}, 2.0, {&a, &b}, OptimizerStatePolicy::kReset),
               std::exception);
}

}  // namespace
}  // namespace mpsl::optim
