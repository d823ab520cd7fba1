// Unit tests of the optimiser: SGD with torch.optim.SGD's semantics (dampening 0):
//   g = grad + weight_decay * w;  buf = momentum * buf + g;  w -= lr * buf
#include <gtest/gtest.h>

#include <vector>

#include "mpsl/core/rng.hpp"
#include "mpsl/nn/layers.hpp"
#include "mpsl/nn/model.hpp"
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

}  // namespace
}  // namespace mpsl::optim
