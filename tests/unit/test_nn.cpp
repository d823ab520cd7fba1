// Unit tests of the nn module: central-difference gradient checks for every layer type, golden
// forward values with hand-set weights, zoo shapes and parameter counts, the loss, part cutting,
// micro-batch accumulation, dropout determinism and initialisation statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "mpsl/core/error.hpp"
#include "mpsl/core/rng.hpp"
#include "mpsl/nn/layers.hpp"
#include "mpsl/nn/loss.hpp"
#include "mpsl/nn/model.hpp"
#include "mpsl/nn/zoo.hpp"

namespace mpsl::nn {
namespace {

using Layers = std::vector<std::unique_ptr<Layer>>;

template <class... T>
Layers layers(T&&... l) {
  Layers v;
  (v.push_back(std::forward<T>(l)), ...);
  return v;
}

std::unique_ptr<Model> model_of(Shape in, Layers units) {
  auto m = std::make_unique<Model>("test", in, 10);
  for (auto& u : units) m->add(std::move(u));
  return m;
}

ConvSpec cs(int64_t out, int64_t k, int64_t stride, int64_t pad, int64_t groups = 1,
            bool bias = true, bool relu = false) {
  ConvSpec s;
  s.out_channels = out;
  s.kernel = k;
  s.stride = stride;
  s.pad = pad;
  s.groups = groups;
  s.bias = bias;
  s.relu = relu;
  return s;
}

std::vector<float> uniform_vec(int64_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  Rng rng(seed, 99);
  std::vector<float> v(n);
  for (auto& x : v) x = rng.uniform(lo, hi);
  return v;
}

double min_abs(const std::vector<float>& v) {
  double m = INFINITY;
  for (float x : v) m = std::min(m, std::fabs(static_cast<double>(x)));
  return m;
}

// Index of the first element where a and b differ bitwise, or -1.
int64_t first_mismatch(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (std::memcmp(a + i, b + i, sizeof(float)) != 0) return i;
  return -1;
}

const PartLayout::Entry& entry(const PartState& st, const std::string& name) {
  for (const auto& e : st.layout.tensors)
    if (e.name == name) return e;
  throw std::runtime_error("no tensor " + name);
}
float* param(PartState& st, const std::string& name) {
  const auto& e = entry(st, name);
  EXPECT_FALSE(e.buffer) << name;
  return st.params.data() + e.offset;
}
float* buffer(PartState& st, const std::string& name) {
  const auto& e = entry(st, name);
  EXPECT_TRUE(e.buffer) << name;
  return st.buffers.data() + e.offset;
}
void set(float* dst, std::initializer_list<float> v) {
  std::copy(v.begin(), v.end(), dst);
}

// A whole model bound to one batch: its state, program and one slot.
struct Net {
  Net(const Model& m, int64_t batch, bool training = true, bool need_input_grad = true,
      uint64_t seed = 1)
      : state(m, 0, m.num_units()),
        program(m, 0, m.num_units(), batch, need_input_grad, training),
        slot(program.make_slot()) {
    state.initialise(m, seed);
  }
  std::vector<float> forward(const std::vector<float>& x, const StepInfo& info) {
    EXPECT_EQ(static_cast<int64_t>(x.size()), program.input_shape().elements());
    std::vector<float> y(program.output_shape().elements());
    program.forward(*slot, state, x.data(), y.data(), info);
    return y;
  }
  std::vector<float> backward(const std::vector<float>& dy, const StepInfo& info,
                              bool accumulate = false) {
    std::vector<float> dx(program.input_shape().elements());
    program.backward(*slot, state, dy.data(), dx.data(), info, accumulate);
    return dx;
  }
  PartState state;
  PartProgram program;
  std::unique_ptr<PartSlot> slot;
};

const StepInfo kInfer{1, 0, 0, false};
const StepInfo kTrain{42, 7, 0, true};

// `units` (a fresh model on the same input shape) run with the parameters and buffers of `src`
// starting at the given offsets, in training mode: the pre-activations of a fused ReLU are the
// outputs of the same layers without it. Used to keep inputs away from ReLU kinks.
struct Twin {
  Twin(Layers units, Shape in, int64_t batch, const PartState& src, int64_t param_offset = 0,
       int64_t buffer_offset = 0)
      : model(model_of(in, std::move(units))), net(*model, batch) {
    std::copy(src.params.data() + param_offset,
              src.params.data() + param_offset + net.state.params.size(), net.state.params.data());
    std::copy(src.buffers.data() + buffer_offset,
              src.buffers.data() + buffer_offset + net.state.buffers.size(),
              net.state.buffers.data());
    ++net.state.version;
  }
  std::vector<float> operator()(const std::vector<float>& x) { return net.forward(x, kTrain); }
  std::unique_ptr<Model> model;
  Net net;
};

// The first input (uniform in [-1, 1], seeds 1, 2, ...) whose pre-activations all keep
// |z| >= margin, so that no central difference crosses a ReLU kink.
std::vector<float> input_with_margin(int64_t n,
                                     const std::function<double(const std::vector<float>&)>& min_z,
                                     double margin) {
  for (uint64_t seed = 1; seed < 2000; ++seed) {
    std::vector<float> x = uniform_vec(n, seed);
    if (min_z(x) >= margin) return x;
  }
  ADD_FAILURE() << "no input keeps the pre-activations " << margin << " away from 0";
  return uniform_vec(n, 1);
}

double rel_err(const std::vector<double>& num, const std::vector<double>& ana) {
  double d = 0, a = 0;
  for (size_t i = 0; i < num.size(); ++i) {
    d += (num[i] - ana[i]) * (num[i] - ana[i]);
    a += ana[i] * ana[i];
  }
  return a > 0 ? std::sqrt(d / a) : std::sqrt(d);
}

double norm2(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

struct GradCheck {
  double eps_x = 1e-2, eps_w = 1e-2, tol = 1e-3;
  StepInfo info = kTrain;
  bool check_input = true;
  int64_t max_per_tensor = 0;  // > 0: check every k-th element of a bigger tensor (for speed)
};

// Central-difference check of dL/dx and of dL/dparams (per parameter tensor) for
// L = sum_i R_i y_i (double), with R fixed and random, against backward().
void grad_check(Net& net, std::vector<float> x, const GradCheck& cfg) {
  PartState& st = net.state;
  const int64_t out_n = net.program.output_shape().elements();
  const std::vector<float> r = uniform_vec(out_n, 1234);
  std::vector<float> y(out_n);
  auto loss = [&]() {
    net.program.forward(*net.slot, st, x.data(), y.data(), cfg.info);
    double l = 0;
    for (int64_t i = 0; i < out_n; ++i) l += static_cast<double>(r[i]) * y[i];
    return l;
  };
  loss();
  std::vector<float> dx(x.size());
  net.program.backward(*net.slot, st, r.data(), cfg.check_input ? dx.data() : nullptr, cfg.info,
                       false);
  const std::vector<float> grads(st.grads.data(), st.grads.data() + st.grads.size());

  // Central difference of the loss in one float, using the step actually represented.
  auto central = [&](float& v, double eps, const std::function<void()>& changed) {
    const float v0 = v, hi = static_cast<float>(v0 + eps), lo = static_cast<float>(v0 - eps);
    v = hi;
    changed();
    const double lp = loss();
    v = lo;
    changed();
    const double lm = loss();
    v = v0;
    changed();
    return (lp - lm) / (static_cast<double>(hi) - static_cast<double>(lo));
  };

  if (cfg.check_input) {
    std::vector<double> num(x.size()), ana(dx.begin(), dx.end());
    for (size_t i = 0; i < x.size(); ++i) num[i] = central(x[i], cfg.eps_x, [] {});
    const double err = rel_err(num, ana);
    EXPECT_GT(norm2(num), 0.0) << "input gradient is zero: the check is void";
    EXPECT_LE(err, cfg.tol) << "input gradient: relative error " << err << " (|numeric| "
                            << norm2(num) << ", |analytic| " << norm2(ana) << ")";
  }
  for (const auto& e : st.layout.tensors) {
    if (e.buffer) continue;
    int64_t n = 1;
    for (auto d : e.dims) n *= d;
    const int64_t step =
        cfg.max_per_tensor > 0 ? (n + cfg.max_per_tensor - 1) / cfg.max_per_tensor : 1;
    std::vector<double> num, ana;
    for (int64_t j = 0; j < n; j += step) {
      num.push_back(central(st.params[e.offset + j], cfg.eps_w, [&] { ++st.version; }));
      ana.push_back(grads[e.offset + j]);
    }
    const double err = rel_err(num, ana);
    EXPECT_GT(norm2(num), 0.0) << e.name << ": gradient is zero: the check is void";
    EXPECT_LE(err, cfg.tol) << "parameter " << e.name << ": relative error " << err
                            << " (|numeric| " << norm2(num) << ", |analytic| " << norm2(ana) << ")";
  }
}

// ---- 1. gradient checks ----------------------------------------------------------------------

// A new buffer is zero; a copy (constructed or assigned, to a buffer of another size or the
// same) holds the source's values, and the source is untouched by changes to the copy.
TEST(FloatBuffer, NewIsZeroAndCopiesHoldTheSourcesValues) {
  FloatBuffer fresh(1000);
  for (int64_t i = 0; i < fresh.size(); ++i) ASSERT_EQ(fresh[i], 0.f) << i;
  FloatBuffer src(1001);
  for (int64_t i = 0; i < src.size(); ++i) src[i] = 0.5f * static_cast<float>(i) - 7.f;
  FloatBuffer copy(src);
  FloatBuffer other_size(3), same_size(1001), empty;
  other_size = src;
  same_size = src;
  empty = src;
  for (const FloatBuffer* b : {&copy, &other_size, &same_size, &empty}) {
    ASSERT_EQ(b->size(), src.size());
    ASSERT_NE(b->data(), src.data());
    for (int64_t i = 0; i < src.size(); ++i) ASSERT_EQ((*b)[i], src[i]) << i;
  }
  copy[5] = 99.f;
  EXPECT_EQ(src[5], 0.5f * 5 - 7.f);
  const FloatBuffer none(0);
  FloatBuffer zero_copy(none);
  EXPECT_EQ(zero_copy.size(), 0);
}

TEST(NnGradCheck, ConvStride2Pad1Bias) {
  auto m = model_of({1, 3, 7, 7}, layers(conv2d(cs(4, 3, 2, 1))));
  Net net(*m, 2);
  grad_check(net, uniform_vec(2 * 3 * 7 * 7, 11), {});
}

TEST(NnGradCheck, ConvGroups2) {
  auto m = model_of({1, 4, 5, 5}, layers(conv2d(cs(6, 3, 1, 1, 2))));
  Net net(*m, 2);
  grad_check(net, uniform_vec(2 * 4 * 5 * 5, 12), {});
}

TEST(NnGradCheck, ConvNoBiasNoPad) {
  auto m = model_of({1, 3, 6, 6}, layers(conv2d(cs(4, 3, 1, 0, 1, false))));
  Net net(*m, 2);
  EXPECT_EQ(net.state.params.size(), 4 * 3 * 9);
  grad_check(net, uniform_vec(2 * 3 * 6 * 6, 13), {});
}

TEST(NnGradCheck, ConvFusedRelu) {
  const Shape in{1, 3, 7, 7};
  auto m = model_of(in, layers(conv2d(cs(4, 3, 2, 1, 1, true, true))));
  Net net(*m, 2);
  Twin z(layers(conv2d(cs(4, 3, 2, 1))), in, 2, net.state);
  auto x = input_with_margin(
      2 * in.per_sample(), [&](const std::vector<float>& x) { return min_abs(z(x)); }, 5e-3);
  grad_check(net, x, {.eps_x = 1e-3, .eps_w = 1e-3});
}

TEST(NnGradCheck, ConvGroups2Stride2NoBiasFusedRelu) {
  const Shape in{1, 4, 6, 6};
  auto m = model_of(in, layers(conv2d(cs(6, 3, 2, 1, 2, false, true))));
  Net net(*m, 2);
  Twin z(layers(conv2d(cs(6, 3, 2, 1, 2, false))), in, 2, net.state);
  auto x = input_with_margin(
      2 * in.per_sample(), [&](const std::vector<float>& x) { return min_abs(z(x)); }, 5e-3);
  grad_check(net, x, {.eps_x = 1e-3, .eps_w = 1e-3});
}

// 3x3 stride-1 convolutions with >= 16 channels in and out run on oneDNN's Winograd kernels
// (forward, backward data and weights) where the CPU has them.
TEST(NnGradCheck, ConvWinogradEligible) {
  auto m = model_of({1, 16, 6, 6}, layers(conv2d(cs(16, 3, 1, 1))));
  Net net(*m, 1);
  // Every 4th weight (4 and 9 are coprime, so all taps are covered).
  grad_check(net, uniform_vec(16 * 36, 14), {.max_per_tensor = 600});
}

TEST(NnGradCheck, ConvWinogradEligibleFusedRelu) {
  const Shape in{1, 16, 4, 4};
  auto m = model_of(in, layers(conv2d(cs(16, 3, 1, 1, 1, true, true))));
  Net net(*m, 2);
  Twin z(layers(conv2d(cs(16, 3, 1, 1))), in, 2, net.state);
  auto x = input_with_margin(
      2 * in.per_sample(), [&](const std::vector<float>& x) { return min_abs(z(x)); }, 5e-3);
  // Winograd's rounding is ~7x the direct conv's, so the input step is larger: it moves any
  // pre-activation by at most eps_x * max|w| = 1e-2 / 12 (and a weight step by |x| eps_w <=
  // 2e-3), both below the 5e-3 margin.
  grad_check(net, x, {.eps_x = 1e-2, .eps_w = 2e-3, .max_per_tensor = 600});
}

TEST(NnGradCheck, Linear2D) {
  auto m = model_of({1, 6, 1, 1}, layers(linear(5)));
  Net net(*m, 3);
  grad_check(net, uniform_vec(3 * 6, 21), {});
}

TEST(NnGradCheck, Linear4DInputImplicitFlatten) {
  auto m = model_of({1, 2, 3, 3}, layers(linear(4)));
  Net net(*m, 3);
  EXPECT_EQ(net.state.params.size(), 4 * 18 + 4);
  grad_check(net, uniform_vec(3 * 18, 22), {});
}

TEST(NnGradCheck, LinearFusedRelu) {
  const Shape in{1, 2, 3, 3};
  auto m = model_of(in, layers(linear(6, true)));
  Net net(*m, 3);
  Twin z(layers(linear(6)), in, 3, net.state);
  auto x = input_with_margin(
      3 * in.per_sample(), [&](const std::vector<float>& x) { return min_abs(z(x)); }, 5e-3);
  grad_check(net, x, {.eps_x = 1e-3, .eps_w = 1e-3});
}

TEST(NnGradCheck, Relu) {
  auto m = model_of({1, 3, 4, 4}, layers(relu()));
  Net net(*m, 2);
  auto x = uniform_vec(2 * 48, 31);
  for (auto& v : x) v = v < 0 ? v - 0.05f : v + 0.05f;  // |x| > 2 eps
  grad_check(net, x, {});
}

// Distinct values spaced 0.05 apart (> 2 eps), in a shuffled order.
std::vector<float> spaced_values(int64_t n, uint64_t seed) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = -0.05f * static_cast<float>(n / 2) + 0.05f * i;
  Rng rng(seed, 3);
  for (int64_t i = n - 1; i > 0; --i) std::swap(v[i], v[rng.below(i + 1)]);
  return v;
}

TEST(NnGradCheck, MaxPool2x2) {
  auto m = model_of({1, 3, 6, 6}, layers(max_pool({2, 2, 0})));
  Net net(*m, 2);
  grad_check(net, spaced_values(2 * 3 * 36, 41), {});
}

TEST(NnGradCheck, MaxPool3x3Stride2Pad1) {
  auto m = model_of({1, 3, 7, 7}, layers(max_pool({3, 2, 1})));
  Net net(*m, 2);
  grad_check(net, spaced_values(2 * 3 * 49, 42), {});
}

TEST(NnGradCheck, AvgPoolWithPadding) {
  auto m = model_of({1, 3, 6, 6}, layers(avg_pool({3, 2, 1})));
  Net net(*m, 2);
  EXPECT_EQ(net.program.output_shape(), (Shape{2, 3, 3, 3}));
  grad_check(net, uniform_vec(2 * 3 * 36, 43), {});
}

TEST(NnGradCheck, GlobalAvgPool) {
  auto m = model_of({1, 3, 5, 5}, layers(global_avg_pool()));
  Net net(*m, 2);
  EXPECT_EQ(net.program.output_shape(), (Shape{2, 3, 1, 1}));
  grad_check(net, uniform_vec(2 * 3 * 25, 44), {});
}

void set_bn_affine(PartState& st, const std::string& prefix, int64_t c, uint64_t seed) {
  Rng rng(seed, 17);
  float* g = param(st, prefix + "weight");
  float* b = param(st, prefix + "bias");
  for (int64_t i = 0; i < c; ++i) {
    g[i] = rng.uniform(0.5f, 1.5f);
    b[i] = rng.uniform(-0.5f, 0.5f);
  }
  ++st.version;
}

TEST(NnGradCheck, BatchNormTraining) {
  auto m = model_of({1, 3, 5, 5}, layers(batch_norm(false)));
  Net net(*m, 2);
  set_bn_affine(net.state, "0.", 3, 1);
  grad_check(net, uniform_vec(2 * 75, 51), {.eps_x = 3e-3, .eps_w = 3e-3});
}

TEST(NnGradCheck, BatchNormTrainingFusedRelu) {
  const Shape in{1, 3, 5, 5};
  auto m = model_of(in, layers(batch_norm(true)));
  Net net(*m, 2);
  set_bn_affine(net.state, "0.", 3, 2);
  Twin z(layers(batch_norm(false)), in, 2, net.state);
  auto x = input_with_margin(
      2 * in.per_sample(), [&](const std::vector<float>& x) { return min_abs(z(x)); }, 0.02);
  grad_check(net, x, {.eps_x = 2e-3, .eps_w = 2e-3});
}

TEST(NnGradCheck, DropoutFixedMask) {
  auto m = model_of({1, 3, 4, 4}, layers(dropout(0.4f)));
  Net net(*m, 2);
  grad_check(net, uniform_vec(2 * 48, 61), {});
}

TEST(NnGradCheck, AdaptiveAvgPool5To3) {
  auto m = model_of({1, 2, 5, 5}, layers(adaptive_avg_pool(3, 3)));
  Net net(*m, 2);
  grad_check(net, uniform_vec(2 * 50, 71), {});
}

TEST(NnGradCheck, AdaptiveAvgPool1To7) {
  auto m = model_of({1, 3, 1, 1}, layers(adaptive_avg_pool(7, 7)));
  Net net(*m, 2);
  EXPECT_EQ(net.program.output_shape(), (Shape{2, 3, 7, 7}));
  grad_check(net, uniform_vec(2 * 3, 72), {});
}

TEST(NnGradCheck, Flatten) {
  auto m = model_of({1, 3, 4, 4}, layers(flatten()));
  Net net(*m, 2);
  EXPECT_EQ(net.program.output_shape(), (Shape{2, 48, 1, 1}));
  grad_check(net, uniform_vec(2 * 48, 81), {});
}

// conv3x3 (no bias) -> bn+relu -> conv3x3 (no bias) -> bn, as in torchvision's BasicBlock.
Layers basic_main(int64_t out, int64_t stride, bool inner_relu) {
  return layers(conv2d(cs(out, 3, stride, 1, 1, false)), batch_norm(inner_relu),
                conv2d(cs(out, 3, 1, 1, 1, false)), batch_norm(false));
}

void randomise_residual_bns(PartState& st, bool shortcut_bn) {
  set_bn_affine(st, "0.main.1.", entry(st, "0.main.1.weight").dims[0], 3);
  set_bn_affine(st, "0.main.3.", entry(st, "0.main.3.weight").dims[0], 4);
  if (shortcut_bn) set_bn_affine(st, "0.shortcut.1.", entry(st, "0.shortcut.1.weight").dims[0], 5);
}

TEST(NnGradCheck, ResidualIdentityShortcut) {
  const Shape in{1, 4, 4, 4};
  const int64_t batch = 2;
  auto m = model_of(in, layers(residual("block", basic_main(4, 1, true), {})));
  Net net(*m, batch);
  randomise_residual_bns(net.state, false);
  // The inner fused ReLU's input z1, and the final z2 = main(x) + x.
  Twin z1(layers(conv2d(cs(4, 3, 1, 1, 1, false)), batch_norm(false)), in, batch, net.state);
  Twin main(basic_main(4, 1, true), in, batch, net.state);
  auto x = input_with_margin(
      batch * in.per_sample(),
      [&](const std::vector<float>& x) {
        auto z2 = main(x);
        for (size_t i = 0; i < z2.size(); ++i) z2[i] += x[i];
        return std::min(min_abs(z1(x)), min_abs(z2));
      },
      0.02);
  grad_check(net, x, {.eps_x = 2e-3, .eps_w = 2e-3});
}

TEST(NnGradCheck, ResidualConvBnShortcut) {
  const Shape in{1, 3, 6, 6};
  const int64_t batch = 2;
  auto m =
      model_of(in, layers(residual("block", basic_main(4, 2, true),
                                   layers(conv2d(cs(4, 1, 2, 0, 1, false)), batch_norm(false)))));
  Net net(*m, batch);
  EXPECT_EQ(net.program.output_shape(), (Shape{batch, 4, 3, 3}));
  randomise_residual_bns(net.state, true);
  const int64_t main_params = 4 * 3 * 9 + 8 + 4 * 4 * 9 + 8, main_buffers = 16;
  Twin z1(layers(conv2d(cs(4, 3, 2, 1, 1, false)), batch_norm(false)), in, batch, net.state);
  Twin main(basic_main(4, 2, true), in, batch, net.state);
  Twin shortcut(layers(conv2d(cs(4, 1, 2, 0, 1, false)), batch_norm(false)), in, batch, net.state,
                main_params, main_buffers);
  auto x = input_with_margin(
      batch * in.per_sample(),
      [&](const std::vector<float>& x) {
        auto z2 = main(x);
        const auto s = shortcut(x);
        for (size_t i = 0; i < z2.size(); ++i) z2[i] += s[i];
        return std::min(min_abs(z1(x)), min_abs(z2));
      },
      0.02);
  grad_check(net, x, {.eps_x = 2e-3, .eps_w = 2e-3});
}

// Smooth layers only (no kinks): conv -> bn -> avg pool -> adaptive pool -> dropout -> flatten
// -> linear. 16 channels make oneDNN pick blocked layouts between the members. The conv has no
// bias: batch norm right after it cancels any per-channel constant, so a bias gradient is 0.
Layers smooth_chain() {
  return layers(conv2d(cs(16, 3, 1, 1, 1, false)), batch_norm(false), avg_pool({2, 2, 0}),
                adaptive_avg_pool(2, 2), dropout(0.25f), flatten(), linear(3));
}

TEST(NnGradCheck, Sequence) {
  auto m = model_of({1, 2, 6, 6}, layers(sequence("seq", smooth_chain())));
  Net net(*m, 2);
  set_bn_affine(net.state, "0.1.", 16, 6);
  grad_check(net, uniform_vec(2 * 72, 91), {.eps_x = 3e-3, .eps_w = 3e-3});
}

TEST(NnGradCheck, ChainOfUnits) {
  auto m = model_of({1, 2, 6, 6}, smooth_chain());
  Net net(*m, 2);
  set_bn_affine(net.state, "1.", 16, 6);
  grad_check(net, uniform_vec(2 * 72, 92), {.eps_x = 3e-3, .eps_w = 3e-3});
}

// Kinks behind a blocked layout: conv 1x1 (16 channels) -> max pool -> relu -> flatten. Only
// input channel 0 has non-zero weights, so inside each pooling window the conv outputs keep the
// order of the (well separated) inputs, and the pooled maxima stay away from the ReLU kink.
TEST(NnGradCheck, ConvThenMaxPoolThenRelu) {
  const Shape in{1, 2, 4, 4};
  auto m = model_of(
      in, layers(conv2d(cs(16, 1, 1, 0, 1, false)), max_pool({2, 2, 0}), relu(), flatten()));
  Net net(*m, 2);
  auto x = spaced_values(2 * 32, 93);
  for (auto& v : x) v = 4.f * v + 0.1f;     // spacing 0.2, |x| >= 0.1
  float* w = param(net.state, "0.weight");  // [16, 2, 1, 1]
  for (int64_t o = 0; o < 16; ++o) {
    w[o * 2 + 0] = (o % 2 ? 1.f : -1.f) * (0.5f + 0.05f * o);
    w[o * 2 + 1] = 0.f;
  }
  ++net.state.version;
  // Pooled values are >= 0.05 from 0 and window entries >= 0.1 apart; eps 1e-3 moves any conv
  // output by at most 6.5e-3.
  Twin pooled(layers(conv2d(cs(16, 1, 1, 0, 1, false)), max_pool({2, 2, 0})), in, 2, net.state);
  ASSERT_GE(min_abs(pooled(x)), 0.04);
  grad_check(net, x, {.eps_x = 1e-3, .eps_w = 1e-3});
}

// A linear layer straight after a unit whose output is [N, C, 1, 1] in 4D (global average
// pooling), with no flatten in between, as in torchvision-style heads.
TEST(NnGradCheck, LinearAfterGlobalAvgPoolWithoutFlatten) {
  auto m = model_of({1, 16, 3, 3}, layers(global_avg_pool(), linear(5)));
  Net net(*m, 2);
  grad_check(net, uniform_vec(2 * 144, 94), {});
}

// ---- 2. golden forward values ----------------------------------------------------------------

TEST(NnGolden, Conv3x3Pad1) {
  // 2 input channels on 4x4: channel 0 holds 1..16, channel 1 holds 101..116 (row major).
  auto m = model_of({1, 2, 4, 4}, layers(conv2d(cs(2, 3, 1, 1))));
  Net net(*m, 1, false, false);
  float* w = param(net.state, "0.weight");  // [2, 2, 3, 3]
  std::fill(w, w + 36, 0.f);
  std::fill(w, w + 9, 1.f);  // out 0 <- in 0, all ones
  w[9 + 9 + 9] = 1.f;        // out 1 <- in 1, only the top-left tap (checks no kernel flip)
  set(param(net.state, "0.bias"), {0.5f, -1.f});
  ++net.state.version;
  std::vector<float> x(32);
  for (int i = 0; i < 16; ++i) x[i] = static_cast<float>(i + 1), x[16 + i] = 101.f + i;
  const auto y = net.forward(x, kInfer);
  ASSERT_EQ(y.size(), 32u);
  // out 0: sums of the 3x3 neighbourhoods (zero padded) + 0.5.
  EXPECT_FLOAT_EQ(y[0 * 4 + 0], 1 + 2 + 5 + 6 + 0.5f);
  EXPECT_FLOAT_EQ(y[1 * 4 + 1], 1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11 + 0.5f);
  EXPECT_FLOAT_EQ(y[0 * 4 + 2], 2 + 3 + 4 + 6 + 7 + 8 + 0.5f);
  EXPECT_FLOAT_EQ(y[3 * 4 + 3], 11 + 12 + 15 + 16 + 0.5f);
  // out 1: y[i][j] = in1[i-1][j-1] - 1, 0 - 1 where that falls in the padding.
  EXPECT_FLOAT_EQ(y[16 + 0], -1.f);
  EXPECT_FLOAT_EQ(y[16 + 1 * 4 + 1], 101.f - 1.f);
  EXPECT_FLOAT_EQ(y[16 + 3 * 4 + 2], 110.f - 1.f);
  EXPECT_FLOAT_EQ(y[16 + 2 * 4 + 0], -1.f);
}

TEST(NnGolden, ConvStride2) {
  // 5x5 input holding 0..24, all-ones 3x3 kernel, stride 2, no padding -> 2x2.
  auto m = model_of({1, 1, 5, 5}, layers(conv2d(cs(1, 3, 2, 0, 1, false))));
  Net net(*m, 1, false, false);
  std::fill(param(net.state, "0.weight"), param(net.state, "0.weight") + 9, 1.f);
  ++net.state.version;
  std::vector<float> x(25);
  std::iota(x.begin(), x.end(), 0.f);
  const auto y = net.forward(x, kInfer);
  ASSERT_EQ(y.size(), 4u);
  EXPECT_FLOAT_EQ(y[0], 0 + 1 + 2 + 5 + 6 + 7 + 10 + 11 + 12);
  EXPECT_FLOAT_EQ(y[1], 2 + 3 + 4 + 7 + 8 + 9 + 12 + 13 + 14);
  EXPECT_FLOAT_EQ(y[2], 10 + 11 + 12 + 15 + 16 + 17 + 20 + 21 + 22);
  EXPECT_FLOAT_EQ(y[3], 12 + 13 + 14 + 17 + 18 + 19 + 22 + 23 + 24);
}

TEST(NnGolden, ConvGroups) {
  // groups=2, 2 -> 2 channels, 1x1: out c = w[c] * in c (each group sees only its channel).
  auto m = model_of({1, 2, 1, 2}, layers(conv2d(cs(2, 1, 1, 0, 2))));
  Net net(*m, 1, false, false);
  set(param(net.state, "0.weight"), {3.f, -2.f});  // [2, 1, 1, 1]
  set(param(net.state, "0.bias"), {1.f, 0.f});
  ++net.state.version;
  const auto y = net.forward({1.f, 2.f, 10.f, 20.f}, kInfer);
  EXPECT_EQ(y, (std::vector<float>{4.f, 7.f, -20.f, -40.f}));
}

// Naive convolution in double: x [n, c, h, w], weights [o, c/groups, k, k], bias [o].
std::vector<double> reference_conv(const std::vector<float>& x, Shape in, const float* w,
                                   const float* b, const ConvSpec& s) {
  const int64_t oh = (in.h + 2 * s.pad - s.kernel) / s.stride + 1;
  const int64_t ow = (in.w + 2 * s.pad - s.kernel) / s.stride + 1;
  const int64_t cg = in.c / s.groups, og = s.out_channels / s.groups;
  std::vector<double> y(in.n * s.out_channels * oh * ow);
  for (int64_t n = 0; n < in.n; ++n)
    for (int64_t o = 0; o < s.out_channels; ++o)
      for (int64_t i = 0; i < oh; ++i)
        for (int64_t j = 0; j < ow; ++j) {
          double acc = b ? b[o] : 0.0;
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t kh = 0; kh < s.kernel; ++kh)
              for (int64_t kw = 0; kw < s.kernel; ++kw) {
                const int64_t h = i * s.stride - s.pad + kh, ww = j * s.stride - s.pad + kw;
                if (h < 0 || h >= in.h || ww < 0 || ww >= in.w) continue;
                const int64_t ci = (o / og) * cg + c;
                acc += static_cast<double>(w[((o * cg + c) * s.kernel + kh) * s.kernel + kw]) *
                       x[((n * in.c + ci) * in.h + h) * in.w + ww];
              }
          if (s.relu) acc = std::max(acc, 0.0);
          y[((n * s.out_channels + o) * oh + i) * ow + j] = acc;
        }
  return y;
}

TEST(NnGolden, ConvMatchesNaiveReference) {
  struct Case {
    Shape in;
    ConvSpec spec;
  };
  const std::vector<Case> cases{
      {{2, 16, 6, 6}, cs(16, 3, 1, 1)},                 // Winograd-eligible
      {{2, 32, 5, 7}, cs(16, 3, 1, 1, 1, true, true)},  // Winograd-eligible, odd sizes, relu
      {{2, 3, 7, 7}, cs(8, 3, 2, 1)},                   // strided
      {{2, 4, 5, 5}, cs(6, 3, 1, 1, 2, false)},         // grouped
      {{1, 3, 9, 9}, cs(4, 7, 2, 3, 1, false, true)},   // ResNet stem shape
      {{2, 16, 4, 4}, cs(32, 1, 2, 0, 1, false)}};      // 1x1 stride-2 shortcut
  for (const auto& c : cases) {
    SCOPED_TRACE(c.in.str() + " k" + std::to_string(c.spec.kernel) + " s" +
                 std::to_string(c.spec.stride) + " g" + std::to_string(c.spec.groups));
    for (bool training : {false, true}) {
      auto m = model_of(c.in.with_batch(1), layers(conv2d(c.spec)));
      Net net(*m, c.in.n, training, false, 21);
      const auto x = uniform_vec(c.in.elements(), 22);
      const auto y = net.forward(x, training ? kTrain : kInfer);
      const auto want = reference_conv(
          x, c.in, net.state.params.data(),
          c.spec.bias ? net.state.params.data() + c.spec.out_channels * c.in.c / c.spec.groups *
                                                      c.spec.kernel * c.spec.kernel
                      : nullptr,
          c.spec);
      ASSERT_EQ(y.size(), want.size());
      double worst = 0, scale = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        worst = std::max(worst, std::fabs(y[i] - want[i]));
        scale = std::max(scale, std::fabs(want[i]));
      }
      EXPECT_LE(worst, 1e-5 * scale) << "max |error| " << worst << ", max |y| " << scale;
    }
  }
}

// MPSL_CONV_ALGO=direct (read when a conv is bound) turns Winograd off: both paths agree.
TEST(NnGolden, WinogradAndDirectAgree) {
  auto m =
      model_of({1, 16, 6, 6}, layers(conv2d(cs(16, 3, 1, 1, 1, true, true)), flatten(), linear(4)));
  Net wino(*m, 2, true, true, 23);
  ::setenv("MPSL_CONV_ALGO", "direct", 1);
  Net direct(*m, 2, true, true, 23);
  ::unsetenv("MPSL_CONV_ALGO");
  const auto x = uniform_vec(2 * 16 * 36, 24);
  const auto dy = uniform_vec(8, 25);
  const auto yw = wino.forward(x, kTrain), yd = direct.forward(x, kTrain);
  const auto dxw = wino.backward(dy, kTrain), dxd = direct.backward(dy, kTrain);
  auto check = [](const float* a, const float* b, int64_t n, const char* what) {
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n; ++i) {
      worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
      scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    }
    EXPECT_GT(scale, 0) << what;
    EXPECT_LE(worst, 1e-5 * scale) << what << ": max |diff| " << worst << ", max " << scale;
  };
  check(yw.data(), yd.data(), yw.size(), "output");
  check(dxw.data(), dxd.data(), dxw.size(), "input gradient");
  check(wino.state.grads.data(), direct.state.grads.data(), wino.state.grads.size(),
        "parameter gradients");
}

TEST(NnGolden, Linear) {
  auto m = model_of({1, 3, 1, 1}, layers(linear(2)));
  Net net(*m, 2, false, false);
  set(param(net.state, "0.weight"), {1, 2, 3, -1, 0, 1});  // [out 2, in 3]
  set(param(net.state, "0.bias"), {0.5f, -1.f});
  ++net.state.version;
  const auto y = net.forward({1, 1, 1, 2, 0, -1}, kInfer);
  EXPECT_EQ(y, (std::vector<float>{6.5f, -1.f, -0.5f, -4.f}));

  auto mr = model_of({1, 3, 1, 1}, layers(linear(2, true)));
  Net netr(*mr, 2, false, false);
  std::copy(net.state.params.data(), net.state.params.data() + 8, netr.state.params.data());
  ++netr.state.version;
  EXPECT_EQ(netr.forward({1, 1, 1, 2, 0, -1}, kInfer), (std::vector<float>{6.5f, 0, 0, 0}));
}

TEST(NnGolden, Linear4DFlattensInNchwOrder) {
  auto m = model_of({1, 2, 1, 2}, layers(linear(1)));
  Net net(*m, 1, false, false);
  set(param(net.state, "0.weight"), {1, 10, 100, 1000});
  set(param(net.state, "0.bias"), {0});
  ++net.state.version;
  // channel 0 = [1, 2], channel 1 = [3, 4]
  EXPECT_EQ(net.forward({1, 2, 3, 4}, kInfer), (std::vector<float>{4321.f}));
}

TEST(NnGolden, MaxPool) {
  auto m = model_of({1, 1, 4, 4}, layers(max_pool({2, 2, 0})));
  Net net(*m, 1, false, false);
  const auto y = net.forward({1, -2, 3, 0, 4, 9, -1, 2, 0, 0, 5, 6, -3, 8, 7, -4}, kInfer);
  EXPECT_EQ(y, (std::vector<float>{9, 3, 8, 7}));
}

TEST(NnGolden, MaxPoolPaddingIsNotZero) {
  // All-negative input: a padded max pool must not return the zero of the padding.
  auto m = model_of({1, 1, 2, 2}, layers(max_pool({3, 2, 1})));
  Net net(*m, 1, false, false);
  EXPECT_EQ(net.forward({-1, -2, -3, -4}, kInfer), (std::vector<float>{-1}));
}

TEST(NnGolden, AvgPoolCountsPadding) {
  // 4x4 input holding 1..16, kernel 3, stride 2, pad 1 -> 2x2; every window divides by 9.
  auto m = model_of({1, 1, 4, 4}, layers(avg_pool({3, 2, 1})));
  Net net(*m, 1, false, false);
  std::vector<float> x(16);
  std::iota(x.begin(), x.end(), 1.f);
  const auto y = net.forward(x, kInfer);
  ASSERT_EQ(y.size(), 4u);
  EXPECT_FLOAT_EQ(y[0], (1 + 2 + 5 + 6) / 9.f);
  EXPECT_FLOAT_EQ(y[1], (2 + 3 + 4 + 6 + 7 + 8) / 9.f);
  EXPECT_FLOAT_EQ(y[2], (5 + 6 + 9 + 10 + 13 + 14) / 9.f);
  EXPECT_FLOAT_EQ(y[3], (6 + 7 + 8 + 10 + 11 + 12 + 14 + 15 + 16) / 9.f);
}

TEST(NnGolden, GlobalAvgPool) {
  auto m = model_of({1, 2, 2, 2}, layers(global_avg_pool()));
  Net net(*m, 1, false, false);
  EXPECT_EQ(net.forward({1, 2, 3, 4, -1, -1, 5, 9}, kInfer), (std::vector<float>{2.5f, 3.f}));
}

TEST(NnGolden, BatchNormInference) {
  for (bool fused_relu : {false, true}) {
    SCOPED_TRACE(fused_relu ? "with relu" : "without relu");
    auto m = model_of({1, 2, 2, 2}, layers(batch_norm(fused_relu)));
    Net net(*m, 1, false, false);
    set(param(net.state, "0.weight"), {2.f, 1.f});
    set(param(net.state, "0.bias"), {0.5f, 0.f});
    set(buffer(net.state, "0.running_mean"), {1.f, -2.f});
    set(buffer(net.state, "0.running_var"), {4.f, 0.25f});
    ++net.state.version;
    const std::vector<float> x{3, -1, 1, 5, -2, -1.5f, -3, 0};
    const auto y = net.forward(x, kInfer);
    const double s0 = 2.0 / std::sqrt(4.0 + 1e-5), s1 = 1.0 / std::sqrt(0.25 + 1e-5);
    for (int i = 0; i < 8; ++i) {
      double want = i < 4 ? s0 * (x[i] - 1.0) + 0.5 : s1 * (x[i] + 2.0);
      if (fused_relu) want = std::max(want, 0.0);
      EXPECT_NEAR(y[i], want, 1e-5) << i;
    }
    // Roughly [2.5, -1.5, 0.5, 4.5] and [0, 1, -2, 4].
    EXPECT_NEAR(y[3], 4.5, 1e-4);
    EXPECT_NEAR(y[7], 4.0, 1e-4);
    // Inference leaves the running statistics alone.
    EXPECT_EQ(buffer(net.state, "0.running_mean")[1], -2.f);
    EXPECT_EQ(buffer(net.state, "0.running_var")[0], 4.f);
  }
}

TEST(NnGolden, BatchNormTrainingNormalisesAndUpdatesRunningStats) {
  // One channel, batch 2, 1x2 maps: values 1, 3, 5, 7 -> mean 4, biased var 5, unbiased 20/3.
  auto m = model_of({1, 1, 1, 2}, layers(batch_norm(false)));
  Net net(*m, 2);
  const auto y = net.forward({1, 3, 5, 7}, kTrain);
  const double sd = std::sqrt(5.0 + 1e-5);
  EXPECT_NEAR(y[0], -3 / sd, 1e-5);
  EXPECT_NEAR(y[3], 3 / sd, 1e-5);
  EXPECT_NEAR(buffer(net.state, "0.running_mean")[0], 0.1 * 4, 1e-6);
  EXPECT_NEAR(buffer(net.state, "0.running_var")[0], 0.9 + 0.1 * 20.0 / 3.0, 1e-5);
}

TEST(NnGolden, AdaptiveAvgPool1x1To7x7Replicates) {
  auto m = model_of({1, 3, 1, 1}, layers(adaptive_avg_pool(7, 7)));
  Net net(*m, 2, false, false);
  const std::vector<float> x{1, -2, 3.5f, 4, 5, -6};
  const auto y = net.forward(x, kInfer);
  ASSERT_EQ(y.size(), 6u * 49);
  for (int nc = 0; nc < 6; ++nc)
    for (int k = 0; k < 49; ++k) ASSERT_EQ(y[nc * 49 + k], x[nc]) << nc << " " << k;
}

TEST(NnGolden, AdaptiveAvgPool5x5To3x3TorchBins) {
  // Bins [floor(i*5/3), ceil((i+1)*5/3)) = [0,2), [1,4), [3,5); input holds 0..24.
  auto m = model_of({1, 1, 5, 5}, layers(adaptive_avg_pool(3, 3)));
  Net net(*m, 1, false, false);
  std::vector<float> x(25);
  std::iota(x.begin(), x.end(), 0.f);
  const auto y = net.forward(x, kInfer);
  ASSERT_EQ(y.size(), 9u);
  EXPECT_FLOAT_EQ(y[0], (0 + 1 + 5 + 6) / 4.f);
  EXPECT_FLOAT_EQ(y[1], (1 + 2 + 3 + 6 + 7 + 8) / 6.f);
  EXPECT_FLOAT_EQ(y[4], 12.f);  // rows 1..3, cols 1..3 centred on 12
  EXPECT_FLOAT_EQ(y[8], (18 + 19 + 23 + 24) / 4.f);
}

TEST(NnGolden, FlattenKeepsNchwOrderAfterBlockedConv) {
  // An identity 1x1 conv on 16 channels (oneDNN keeps its output blocked), then flatten: the
  // output must be the input in NCHW order.
  auto m = model_of({1, 16, 3, 3}, layers(conv2d(cs(16, 1, 1, 0)), flatten()));
  Net net(*m, 2, false, false);
  float* w = param(net.state, "0.weight");
  std::fill(w, w + 256, 0.f);
  for (int c = 0; c < 16; ++c) w[c * 16 + c] = 1.f;
  std::fill(param(net.state, "0.bias"), param(net.state, "0.bias") + 16, 0.f);
  ++net.state.version;
  std::vector<float> x(2 * 144);
  std::iota(x.begin(), x.end(), 0.f);
  EXPECT_EQ(net.program.output_shape(), (Shape{2, 144, 1, 1}));
  EXPECT_EQ(net.forward(x, kInfer), x);
}

TEST(NnGolden, DropoutIsIdentityInInference) {
  auto m = model_of({1, 4, 2, 2}, layers(dropout(0.5f)));
  Net net(*m, 2, false, false);
  const auto x = uniform_vec(32, 5);
  EXPECT_EQ(net.forward(x, kInfer), x);
  EXPECT_EQ(net.forward(x, kTrain), x);  // an inference program ignores StepInfo.training
}

// ---- 3. zoo shapes and parameter counts ------------------------------------------------------

TEST(NnZoo, OutputShapesAndParamCounts) {
  // Hand counts (weights + biases); torchvision's 1000-class counts minus the difference of the
  // final layer (e.g. vgg19: 143,667,240 - 4,097,000 + 40,970).
  //   fmnist-cnn: 32*9+32 + 32*32*9+32 + 64*32*9+64 + 64*64*9+64 + 128*3136+128 + 10*128+10
  //             = 320 + 9,248 + 18,496 + 36,928 + 401,536 + 1,290 = 467,818
  //   lenet5: 6*25+6 + 16*6*25+16 + 120*400+120 + 84*120+84 + 10*84+10 = 61,706
  //   resnet101-basic: stem 64*3*49+64 + bn 128, basic blocks [3,4,23,3] (3x3 convs, 2 bns
  //   each) with 3x3/2 conv + bn shortcuts at the 3 widenings, fc 5130 = 42,737,546
  const std::vector<std::pair<std::string, int64_t>> want{
      {"fmnist-cnn", 467'818},   {"lenet5", 61'706},
      {"vgg11", 128'807'306},    {"vgg16", 134'301'514},
      {"vgg19", 139'611'210},    {"resnet18", 11'181'642},
      {"resnet101", 42'520'650}, {"resnet101-basic", 42'737'546}};
  const auto zoo = zoo_models();
  ASSERT_EQ(zoo.size(), want.size());
  for (const auto& [name, count] : want) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(std::any_of(zoo.begin(), zoo.end(), [&](auto& z) { return z.first == name; }));
    const auto m = make_model(name);
    const int n = m->num_units();
    EXPECT_EQ(PartLayout::make(*m, 0, n).param_count, count);
    EXPECT_EQ(m->shape_before(n, 2), (Shape{2, m->classes(), 1, 1}));
    const auto t0 = std::chrono::steady_clock::now();
    PartProgram prog(*m, 0, n, 2, false, false);
    EXPECT_EQ(prog.input_shape(), m->input_shape(2));
    EXPECT_EQ(prog.output_shape(), m->shape_before(n, 2));
    EXPECT_EQ(prog.output_shape(), (Shape{2, 10, 1, 1}));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(secs, 5.0) << "binding took " << secs << " s";
  }
}

// Every cut point of every zoo model gives a part that binds (training, with input gradient)
// and runs. At 32x32 inputs the ResNets' last stage runs on 1x1 maps, so a part can start on
// an activation whose shape is [N, C, 1, 1].
TEST(NnZoo, EveryCutPointBindsAndRuns) {
  for (const auto& [name, desc] : zoo_models()) {
    const auto m = make_model(name);
    const int n = m->num_units();
    for (int k = 1; k < n; ++k) {
      SCOPED_TRACE(name + " part [" + std::to_string(k) + ", " + std::to_string(n) + ") input " +
                   m->shape_before(k, 1).str());
      try {
        PartProgram prog(*m, k, n, 1, true, true);
        EXPECT_EQ(prog.output_shape(), m->shape_before(n, 1));
      } catch (const std::exception& e) {
        ADD_FAILURE() << "binding failed: " << e.what();
      }
    }
  }
}

TEST(NnZoo, UnknownModelNamesTheKnownOnes) {
  try {
    make_model("vgg-unknown");
    FAIL() << "no exception";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("vgg-unknown"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("resnet18"), std::string::npos);
  }
}

TEST(NnZoo, SmallModelsRunForwardAndBackward) {
  for (const char* name : {"fmnist-cnn", "lenet5", "resnet18"}) {
    SCOPED_TRACE(name);
    const auto m = make_model(name);
    Net net(*m, 2, true, false, 3);
    const auto x = uniform_vec(m->input_shape(2).elements(), 4);
    const auto y = net.forward(x, kTrain);
    ASSERT_EQ(y.size(), 20u);
    for (float v : y) ASSERT_TRUE(std::isfinite(v));
    std::vector<float> dy = uniform_vec(20, 5);
    net.program.backward(*net.slot, net.state, dy.data(), nullptr, kTrain, false);
    double g = 0;
    for (int64_t i = 0; i < net.state.grads.size(); ++i) {
      ASSERT_TRUE(std::isfinite(net.state.grads[i]));
      g += std::fabs(net.state.grads[i]);
    }
    EXPECT_GT(g, 0);
  }
}

// ---- 4. loss ----------------------------------------------------------------------------------

TEST(NnLoss, EqualLogitsGiveLogC) {
  const int C = 10, n = 3;
  std::vector<float> logits(n * C, 0.7f), diff(n * C);
  const std::vector<int32_t> labels{0, 4, 9};
  const auto r = softmax_cross_entropy(logits.data(), labels.data(), n, C, diff.data(), 0.5f);
  EXPECT_NEAR(r.loss_sum, n * std::log(10.0), 1e-6);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < C; ++j)
      EXPECT_NEAR(diff[i * C + j], (0.1 - (j == labels[i] ? 1.0 : 0.0)) * 0.5, 1e-7);
}

TEST(NnLoss, TwoClassGoldenAndStability) {
  // softmax([0, ln 3]) = [0.25, 0.75].
  const std::vector<float> logits{0.f, std::log(3.f), 1000.f, 0.f};
  const std::vector<int32_t> labels{0, 1};
  std::vector<float> diff(4);
  const auto r = softmax_cross_entropy(logits.data(), labels.data(), 2, 2, diff.data(), 1.f);
  EXPECT_NEAR(r.loss_sum, -std::log(0.25) + 1000.0, 1e-4);
  EXPECT_NEAR(diff[0], 0.25 - 1, 1e-6);
  EXPECT_NEAR(diff[1], 0.75, 1e-6);
  EXPECT_NEAR(diff[2], 1.0, 1e-6);
  EXPECT_NEAR(diff[3], -1.0, 1e-6);
  EXPECT_EQ(r.correct, 0);
  // Without diff.
  const auto r2 = softmax_cross_entropy(logits.data(), labels.data(), 2, 2, nullptr, 1.f);
  EXPECT_DOUBLE_EQ(r2.loss_sum, r.loss_sum);
}

TEST(NnLoss, CountCorrect) {
  const std::vector<float> logits{0.1f, 0.9f, 0.0f,    // argmax 1
                                  2.0f, -1.f, 1.9f,    // argmax 0
                                  0.f,  0.f,  3.f,     // argmax 2
                                  -5.f, -4.f, -4.5f};  // argmax 1
  const std::vector<int32_t> labels{1, 2, 2, 1};
  EXPECT_EQ(count_correct(logits.data(), labels.data(), 4, 3), 3);
  EXPECT_EQ(softmax_cross_entropy(logits.data(), labels.data(), 4, 3, nullptr, 1.f).correct, 3);
}

// ---- 6. part cutting ------------------------------------------------------------------------

TEST(NnParts, EveryCutOfFmnistCnnIsBitwiseTheWholeModel) {
  const auto m = make_model("fmnist-cnn");
  const int n = m->num_units();
  const int64_t batch = 4;
  const uint64_t seed = 77;
  Net whole(*m, batch, true, false, seed);
  const auto x = uniform_vec(m->input_shape(batch).elements(), 8);
  const auto y = whole.forward(x, kTrain);
  const auto dy = uniform_vec(y.size(), 9);
  whole.program.backward(*whole.slot, whole.state, dy.data(), nullptr, kTrain, false);

  for (int k = 1; k < n; ++k) {
    SCOPED_TRACE("cut at unit " + std::to_string(k));
    PartState s1(*m, 0, k), s2(*m, k, n);
    s1.initialise(*m, seed);
    s2.initialise(*m, seed);
    ASSERT_EQ(s1.params.size() + s2.params.size(), whole.state.params.size());
    ASSERT_EQ(first_mismatch(s1.params.data(), whole.state.params.data(), s1.params.size()), -1);
    ASSERT_EQ(first_mismatch(s2.params.data(), whole.state.params.data() + s1.params.size(),
                             s2.params.size()),
              -1);
    PartProgram p1(*m, 0, k, batch, false, true), p2(*m, k, n, batch, true, true);
    auto sl1 = p1.make_slot(), sl2 = p2.make_slot();
    std::vector<float> mid(p1.output_shape().elements()), out(y.size()), dmid(mid.size());
    p1.forward(*sl1, s1, x.data(), mid.data(), kTrain);
    p2.forward(*sl2, s2, mid.data(), out.data(), kTrain);
    EXPECT_EQ(first_mismatch(out.data(), y.data(), y.size()), -1);
    p2.backward(*sl2, s2, dy.data(), dmid.data(), kTrain, false);
    p1.backward(*sl1, s1, dmid.data(), nullptr, kTrain, false);
    EXPECT_EQ(first_mismatch(s1.grads.data(), whole.state.grads.data(), s1.grads.size()), -1);
    EXPECT_EQ(first_mismatch(s2.grads.data(), whole.state.grads.data() + s1.grads.size(),
                             s2.grads.size()),
              -1);
  }
}

// A small ResNet-like model with batch norm, residual blocks (identity and conv+bn shortcuts),
// dropout and pooling, cut at every point: the same outputs and gradients as the whole model
// (within rounding: a part receives its input in plain layout, so batch norm may reduce in
// another order than in the whole model's blocked layout).
TEST(NnParts, EveryCutOfASmallResNetMatchesTheWholeModel) {
  auto m = model_of({1, 3, 8, 8},
                    layers(conv2d(cs(8, 3, 1, 1, 1, false)), batch_norm(true), max_pool({3, 2, 1}),
                           residual("id", basic_main(8, 1, true), {}),
                           residual("down", basic_main(16, 2, true),
                                    layers(conv2d(cs(16, 1, 2, 0, 1, false)), batch_norm(false))),
                           dropout(0.2f), global_avg_pool(), flatten(), linear(10)));
  const int n = m->num_units();
  const int64_t batch = 4;
  const StepInfo info{3, 11, 0, true};
  Net whole(*m, batch, true, false, 8);
  const auto x = uniform_vec(m->input_shape(batch).elements(), 18);
  const auto y = whole.forward(x, info);
  const auto dy = uniform_vec(y.size(), 19);
  whole.program.backward(*whole.slot, whole.state, dy.data(), nullptr, info, false);
  auto max_rel = [](const float* a, const float* b, int64_t len) {
    double d = 0, s = 0;
    for (int64_t i = 0; i < len; ++i) {
      d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
      s = std::max(s, std::fabs(static_cast<double>(b[i])));
    }
    return s > 0 ? d / s : d;
  };
  for (int k = 1; k < n; ++k) {
    SCOPED_TRACE("cut at unit " + std::to_string(k));
    PartState s1(*m, 0, k), s2(*m, k, n);
    s1.initialise(*m, 8);
    s2.initialise(*m, 8);
    PartProgram p1(*m, 0, k, batch, false, true), p2(*m, k, n, batch, true, true);
    auto sl1 = p1.make_slot(), sl2 = p2.make_slot();
    std::vector<float> mid(p1.output_shape().elements()), out(y.size()), dmid(mid.size());
    p1.forward(*sl1, s1, x.data(), mid.data(), info);
    p2.forward(*sl2, s2, mid.data(), out.data(), info);
    EXPECT_LE(max_rel(out.data(), y.data(), y.size()), 1e-5);
    p2.backward(*sl2, s2, dy.data(), dmid.data(), info, false);
    p1.backward(*sl1, s1, dmid.data(), nullptr, info, false);
    EXPECT_LE(max_rel(s1.grads.data(), whole.state.grads.data(), s1.grads.size()), 1e-5);
    EXPECT_LE(max_rel(s2.grads.data(), whole.state.grads.data() + s1.grads.size(), s2.grads.size()),
              1e-5);
  }
}

// ---- 7. micro-batch accumulation -------------------------------------------------------------

TEST(NnMicroBatch, TwoMicroBatchesOf4EqualOneBatchOf8) {
  const auto m = make_model("fmnist-cnn");
  const int n = m->num_units();
  const int C = m->classes();
  const int64_t per = m->input_shape(1).elements();
  const auto x = uniform_vec(8 * per, 10);
  std::vector<int32_t> labels(8);
  Rng rng(3, 4);
  for (auto& l : labels) l = static_cast<int32_t>(rng.below(C));

  Net whole(*m, 8, true, false, 5);
  std::vector<float> logits = whole.forward(x, {5, 1, 0, true}), diff(8 * C);
  const auto r8 = softmax_cross_entropy(logits.data(), labels.data(), 8, C, diff.data(), 1.f / 8);
  whole.program.backward(*whole.slot, whole.state, diff.data(), nullptr, {5, 1, 0, true}, false);

  PartState st(*m, 0, n);
  st.initialise(*m, 5);
  PartProgram prog(*m, 0, n, 4, false, true);
  auto slot = prog.make_slot();
  double loss = 0;
  for (int mb = 0; mb < 2; ++mb) {
    const StepInfo info{5, 1, 4 * mb, true};
    std::vector<float> lg(4 * C), d(4 * C);
    prog.forward(*slot, st, x.data() + 4 * mb * per, lg.data(), info);
    loss +=
        softmax_cross_entropy(lg.data(), labels.data() + 4 * mb, 4, C, d.data(), 1.f / 8).loss_sum;
    prog.backward(*slot, st, d.data(), nullptr, info, mb > 0);
  }
  EXPECT_NEAR(loss, r8.loss_sum, 1e-4 * std::fabs(r8.loss_sum));
  double gmax = 0, dmax = 0;
  for (int64_t i = 0; i < st.grads.size(); ++i) {
    gmax = std::max(gmax, std::fabs(static_cast<double>(whole.state.grads[i])));
    dmax = std::max(dmax, std::fabs(static_cast<double>(whole.state.grads[i]) - st.grads[i]));
  }
  ASSERT_GT(gmax, 0);
  EXPECT_LE(dmax / gmax, 1e-5) << "max |diff| " << dmax << ", max |grad| " << gmax;
}

// backward(accumulate=true) adds to what is there, for every parameterised layer type (conv with
// and without bias, grouped conv, linear, batch norm, residual).
TEST(NnMicroBatch, AccumulateAddsForEveryParameterisedLayer) {
  auto m = model_of(
      {1, 3, 6, 6},
      layers(conv2d(cs(16, 3, 1, 1, 1, true, true)), conv2d(cs(16, 3, 1, 1, 2, false)),
             batch_norm(true), residual("r", basic_main(16, 1, true), {}), flatten(), linear(5)));
  Net net(*m, 2);
  const auto x = uniform_vec(2 * 108, 12);
  const auto y = net.forward(x, kTrain);
  const auto dy = uniform_vec(y.size(), 13);
  net.backward(dy, kTrain, false);
  const std::vector<float> g1(net.state.grads.data(),
                              net.state.grads.data() + net.state.grads.size());
  net.forward(x, kTrain);
  net.backward(dy, kTrain, true);
  for (const auto& e : net.state.layout.tensors) {
    if (e.buffer) continue;
    int64_t n = 1;
    for (auto d : e.dims) n *= d;
    double worst = 0, scale = 0;
    for (int64_t i = e.offset; i < e.offset + n; ++i) {
      worst = std::max(worst, std::fabs(net.state.grads[i] - 2.0 * g1[i]));
      scale = std::max(scale, std::fabs(2.0 * g1[i]));
    }
    EXPECT_GT(scale, 0) << e.name;
    EXPECT_LE(worst, 1e-6 * scale) << e.name;
  }
  // And accumulate=false overwrites again.
  net.forward(x, kTrain);
  net.backward(dy, kTrain, false);
  EXPECT_EQ(first_mismatch(net.state.grads.data(), g1.data(), g1.size()), -1);
}

// Two batches in flight on one program (two slots, interleaved) give the results of running
// them one after the other.
TEST(NnMicroBatch, TwoSlotsInFlight) {
  auto m = model_of({1, 3, 6, 6}, layers(conv2d(cs(16, 3, 1, 1)), batch_norm(true),
                                         residual("r", basic_main(16, 1, true), {}),
                                         max_pool({2, 2, 0}), dropout(0.3f), flatten(), linear(5)));
  Net net(*m, 2);
  const auto xa = uniform_vec(2 * 108, 14), xb = uniform_vec(2 * 108, 15);
  const auto dya = uniform_vec(10, 16), dyb = uniform_vec(10, 17);
  const StepInfo ia{1, 2, 0, true}, ib{1, 2, 2, true};
  const auto ya = net.forward(xa, ia);
  const auto dxa = net.backward(dya, ia);
  const std::vector<float> ga(net.state.grads.data(),
                              net.state.grads.data() + net.state.grads.size());
  const auto yb = net.forward(xb, ib);
  const auto dxb = net.backward(dyb, ib);
  const std::vector<float> gb(net.state.grads.data(),
                              net.state.grads.data() + net.state.grads.size());

  auto slot_b = net.program.make_slot();
  std::vector<float> ya2(10), yb2(10), dxa2(xa.size()), dxb2(xb.size());
  net.program.forward(*net.slot, net.state, xa.data(), ya2.data(), ia);
  net.program.forward(*slot_b, net.state, xb.data(), yb2.data(), ib);
  net.program.backward(*net.slot, net.state, dya.data(), dxa2.data(), ia, false);
  EXPECT_EQ(first_mismatch(net.state.grads.data(), ga.data(), ga.size()), -1);
  net.program.backward(*slot_b, net.state, dyb.data(), dxb2.data(), ib, false);
  EXPECT_EQ(first_mismatch(net.state.grads.data(), gb.data(), gb.size()), -1);
  EXPECT_EQ(ya2, ya);
  EXPECT_EQ(yb2, yb);
  EXPECT_EQ(dxa2, dxa);
  EXPECT_EQ(dxb2, dxb);
}

// ---- 8. dropout determinism -----------------------------------------------------------------

std::vector<float> dropout_out(const Model& m, int64_t batch, const StepInfo& info) {
  Net net(m, batch);
  return net.forward(std::vector<float>(m.input_shape(batch).elements(), 1.f), info);
}

TEST(NnDropout, MasksAreDeterministicAndCounterBased) {
  const float p = 0.3f;
  auto m = model_of({1, 256, 1, 1}, layers(dropout(p)));
  const StepInfo info{9, 3, 0, true};
  const auto a = dropout_out(*m, 8, info);
  EXPECT_EQ(dropout_out(*m, 8, info), a);                // same StepInfo -> same mask
  EXPECT_NE(dropout_out(*m, 8, {9, 4, 0, true}), a);     // another step
  EXPECT_NE(dropout_out(*m, 8, {10, 3, 0, true}), a);    // another seed
  EXPECT_NE(dropout_out(*m, 8, {9, 3, 0, true, 1}), a);  // another data owner
  int64_t kept = 0;
  for (float v : a) {
    ASSERT_TRUE(v == 0.f || std::fabs(v - 1.f / (1.f - p)) < 1e-6f) << v;
    kept += v != 0.f;
  }
  const double frac = static_cast<double>(kept) / a.size();  // 2048 elements: sd ~0.01
  EXPECT_NEAR(frac, 1.0 - p, 0.04);
  // Samples differ from each other.
  EXPECT_FALSE(std::equal(a.begin(), a.begin() + 256, a.begin() + 256));

  // Micro-batches: samples 4..7 of a batch of 8 = a batch of 4 at sample_offset 4.
  const auto lo = dropout_out(*m, 4, {9, 3, 0, true});
  const auto hi = dropout_out(*m, 4, {9, 3, 4, true});
  EXPECT_TRUE(std::equal(lo.begin(), lo.end(), a.begin()));
  EXPECT_TRUE(std::equal(hi.begin(), hi.end(), a.begin() + 4 * 256));

  // The mask depends on the unit: the same dropout as unit 1 gives another mask.
  auto m2 = model_of({1, 256, 1, 1}, layers(relu(), dropout(p)));
  EXPECT_NE(dropout_out(*m2, 8, info), a);
}

TEST(NnDropout, BackwardUsesTheForwardMask) {
  auto m = model_of({1, 64, 1, 1}, layers(dropout(0.5f)));
  Net net(*m, 4);
  const StepInfo info{1, 2, 0, true};
  const auto y = net.forward(std::vector<float>(256, 1.f), info);
  const auto dx = net.backward(std::vector<float>(256, 1.f), info);
  EXPECT_EQ(dx, y);
}

// A training program run with StepInfo.training = false forwards dropout as the identity; its
// backward must then be the identity too (the gradient of what forward computed).
TEST(NnDropout, BackwardMatchesForwardWhenStepIsNotTraining) {
  auto m = model_of({1, 64, 1, 1}, layers(dropout(0.5f)));
  Net net(*m, 4);
  const StepInfo info{1, 2, 0, false};
  const auto y = net.forward(std::vector<float>(256, 1.f), info);
  EXPECT_EQ(y, std::vector<float>(256, 1.f));
  const auto dx = net.backward(std::vector<float>(256, 1.f), info);
  EXPECT_EQ(dx, y);
}

// ---- initialisation -------------------------------------------------------------------------

std::pair<double, double> mean_sd(const float* p, int64_t n) {
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < n; ++i) s += p[i], s2 += static_cast<double>(p[i]) * p[i];
  const double mean = s / n;
  return {mean, std::sqrt(s2 / n - mean * mean)};
}

TEST(NnInit, TorchDefaultBoundsAndBatchNorm) {
  auto m = model_of({1, 8, 6, 6}, layers(conv2d(cs(16, 3, 1, 1, 2)), batch_norm(), linear(20)));
  PartState st(*m, 0, 3);
  st.initialise(*m, 4);
  // conv: fan_in = 8/2 * 9 = 36 -> bound 1/6 for weight and bias.
  const float* w = param(st, "0.weight");
  float wmax = 0;
  for (int i = 0; i < 16 * 4 * 9; ++i) wmax = std::max(wmax, std::fabs(w[i]));
  EXPECT_LE(wmax, 1.f / 6.f);
  EXPECT_GT(wmax, 0.9f / 6.f);
  EXPECT_NEAR(mean_sd(w, 16 * 36).second, (1 / 6.0) / std::sqrt(3.0), 0.1 * (1 / 6.0));
  // bn: gamma 1, beta 0, running mean 0, var 1.
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(param(st, "1.weight")[c], 1.f);
    EXPECT_EQ(param(st, "1.bias")[c], 0.f);
    EXPECT_EQ(buffer(st, "1.running_mean")[c], 0.f);
    EXPECT_EQ(buffer(st, "1.running_var")[c], 1.f);
  }
  // linear: fan_in 16*36 = 576 -> bound 1/24.
  const float* lw = param(st, "2.weight");
  float lmax = 0;
  for (int i = 0; i < 20 * 576; ++i) lmax = std::max(lmax, std::fabs(lw[i]));
  EXPECT_LE(lmax, 1.f / 24.f);
  EXPECT_GT(lmax, 0.99f / 24.f);
  // Same seed, same values; another seed, other values; a unit's values do not depend on cuts.
  PartState again(*m, 0, 3), other(*m, 0, 3), tail(*m, 2, 3);
  again.initialise(*m, 4);
  other.initialise(*m, 5);
  tail.initialise(*m, 4);
  EXPECT_EQ(first_mismatch(again.params.data(), st.params.data(), st.params.size()), -1);
  EXPECT_NE(first_mismatch(other.params.data(), st.params.data(), st.params.size()), -1);
  EXPECT_EQ(first_mismatch(tail.params.data(), lw, tail.params.size()), -1);
}

TEST(NnInit, KaimingNormalFanOutLikeTorch) {
  // torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / fan_out),
  // fan_out = weight.size(0) * kh * kw = out_channels * k * k (torch does not divide by groups).
  for (int64_t groups : {1, 4}) {
    SCOPED_TRACE("groups " + std::to_string(groups));
    ConvSpec s = cs(64, 3, 1, 1, groups, false);
    s.init = Init::kKaimingNormalOut;
    auto m = model_of({1, 64, 8, 8}, layers(conv2d(s)));
    PartState st(*m, 0, 1);
    st.initialise(*m, 6);
    const auto [mean, sd] = mean_sd(st.params.data(), st.params.size());
    const double want = std::sqrt(2.0 / (64 * 9));
    EXPECT_NEAR(mean, 0.0, 0.1 * want);
    EXPECT_NEAR(sd, want, 0.05 * want);
  }
  // VGG linears: N(0, 0.01), bias 0.
  auto m = model_of({1, 100, 1, 1}, layers(linear(100, false, Init::kNormal001)));
  PartState st(*m, 0, 1);
  st.initialise(*m, 7);
  EXPECT_NEAR(mean_sd(st.params.data(), 10000).second, 0.01, 0.0005);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(st.params[10000 + i], 0.f);
}

}  // namespace
}  // namespace mpsl::nn
