// Layers that work on plain NCHW data with simple loops: dropout, adaptive average pooling and
// flatten. They sit where activations are small (classifier heads), so loops are cheap there.
#include <cmath>

#include "detail.hpp"
#include "mpsl/nn/layers.hpp"

namespace mpsl::nn {
namespace {

using namespace detail;

struct PlainSlot : LayerSlot {
  memory plain_src;  // input reordered to plain (when it arrives blocked)
  memory dst;
};

// Base for plain-layout execs: converts the input to plain and owns dst and diff_src.
class PlainExec : public LayerExec {
 public:
  PlainExec(const BindArgs& a, const Shape& out, bool out_flat_2d)
      : eng_(a.engine), strm_(a.stream), in_(a.in), out_(out) {
    src_plain_ = plain_desc(a.src_desc.dims());
    dst_desc_ = plain_desc(out_flat_2d ? memory::dims{out.n, out.c} : dims4(out));
    if (a.training && a.need_diff_src) diff_src_ = memory(src_plain_, eng_);
  }
  std::unique_ptr<LayerSlot> make_slot() const override {
    auto s = std::make_unique<PlainSlot>();
    s->dst = memory(dst_desc_, eng_);
    return s;
  }
  const memory::desc& dst_desc() const override { return dst_desc_; }

 protected:
  const float* plain_input(const memory& src, PlainSlot& s) {
    if (src.get_desc() == src_plain_) return fptr(src);
    if (!s.plain_src) s.plain_src = memory(src_plain_, eng_);
    in_conv_.copy(src, s.plain_src, strm_);
    return fptr(s.plain_src);
  }
  const float* plain_diff(const memory& diff_dst) {
    // diff_dst has the output's dims; we want the plain layout of dst_desc_.
    return fptr(dd_conv_.to(diff_dst, dst_desc_, eng_, strm_));
  }

  dnnl::engine eng_;
  dnnl::stream strm_;
  Shape in_, out_;
  memory::desc src_plain_, dst_desc_;
  memory diff_src_;
  Converter in_conv_, dd_conv_;
};

// ---- dropout ------------------------------------------------------------------------------

class DropoutExec : public PlainExec {
 public:
  DropoutExec(float p, const BindArgs& a)
      : PlainExec(a, a.in, a.src_desc.dims().size() == 2),
        p_(p),
        layer_id_(a.layer_id),
        training_(a.training) {
    if (diff_src_) diff_src_ = memory(dst_desc_, eng_);
  }
  const memory::desc& dst_desc() const override { return dst_desc_; }
  // The mask bit of one element depends only on (seed, unit, step, sample, feature).
  bool keep(const StepInfo& info, int64_t sample, int64_t feature) const {
    const uint64_t stream = mix64(mix64(layer_id_ + 1) + info.owner) + info.step;
    const uint64_t counter = (static_cast<uint64_t>(sample) << 32) ^ static_cast<uint64_t>(feature);
    return to_unit_float(hash3(info.seed, stream, counter)) >= p_;
  }
  const memory& forward(const memory& src, LayerSlot& sb, const ParamRefs&,
                        const StepInfo& info) override {
    auto& s = slot_as<PlainSlot>(sb);
    const float* x = plain_input(src, s);
    float* y = fptr_mut(s.dst);
    const int64_t per = in_.per_sample();
    if (!training_ || !info.training || p_ <= 0.f) {
      std::copy(x, x + in_.elements(), y);
      return s.dst;
    }
    const float scale = 1.f / (1.f - p_);
    for (int64_t n = 0; n < in_.n; ++n)
      for (int64_t j = 0; j < per; ++j)
        y[n * per + j] = keep(info, info.sample_offset + n, j) ? x[n * per + j] * scale : 0.f;
    return s.dst;
  }
  const memory& backward(const memory&, const memory& diff_dst, LayerSlot&, const ParamRefs&,
                         const StepInfo& info, bool) override {
    if (!diff_src_) return diff_src_;
    const float* d = plain_diff(diff_dst);
    float* g = fptr_mut(diff_src_);
    if (!info.training || p_ <= 0.f) {  // forward was the identity
      std::copy(d, d + in_.elements(), g);
      return diff_src_;
    }
    const int64_t per = in_.per_sample();
    const float scale = 1.f / (1.f - p_);
    for (int64_t n = 0; n < in_.n; ++n)
      for (int64_t j = 0; j < per; ++j)
        g[n * per + j] = keep(info, info.sample_offset + n, j) ? d[n * per + j] * scale : 0.f;
    return diff_src_;
  }

 private:
  float p_;
  uint64_t layer_id_;
  bool training_;
};

class Dropout : public Layer {
 public:
  explicit Dropout(float p) : p_(p) {}
  std::string type() const override { return "dropout"; }
  int output_ndims(int input_ndims) const override { return input_ndims; }
  std::string describe() const override {
    char b[32];
    std::snprintf(b, sizeof b, "dropout %.2g", p_);
    return b;
  }
  Shape output_shape(const Shape& in) const override { return in; }
  double forward_flops(const Shape& in) const override {
    return static_cast<double>(in.elements());
  }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    return std::make_unique<DropoutExec>(p_, a);
  }

 private:
  float p_;
};

// ---- adaptive average pooling (torch's bins: [floor(i*H/O), ceil((i+1)*H/O))) --------------

class AdaptiveExec : public PlainExec {
 public:
  AdaptiveExec(const BindArgs& a, const Shape& out) : PlainExec(a, out, false) {}
  static int64_t lo(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
  static int64_t hi(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }
  const memory& forward(const memory& src, LayerSlot& sb, const ParamRefs&,
                        const StepInfo&) override {
    auto& s = slot_as<PlainSlot>(sb);
    const float* x = plain_input(src, s);
    float* y = fptr_mut(s.dst);
    for (int64_t nc = 0; nc < in_.n * in_.c; ++nc) {
      const float* xp = x + nc * in_.h * in_.w;
      float* yp = y + nc * out_.h * out_.w;
      for (int64_t i = 0; i < out_.h; ++i)
        for (int64_t j = 0; j < out_.w; ++j) {
          const int64_t h0 = lo(i, in_.h, out_.h), h1 = hi(i, in_.h, out_.h);
          const int64_t w0 = lo(j, in_.w, out_.w), w1 = hi(j, in_.w, out_.w);
          float acc = 0.f;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) acc += xp[h * in_.w + w];
          yp[i * out_.w + j] = acc / static_cast<float>((h1 - h0) * (w1 - w0));
        }
    }
    return s.dst;
  }
  const memory& backward(const memory&, const memory& diff_dst, LayerSlot&, const ParamRefs&,
                         const StepInfo&, bool) override {
    if (!diff_src_) return diff_src_;
    const float* d = plain_diff(diff_dst);
    float* g = fptr_mut(diff_src_);
    std::fill(g, g + in_.elements(), 0.f);
    for (int64_t nc = 0; nc < in_.n * in_.c; ++nc) {
      const float* dp = d + nc * out_.h * out_.w;
      float* gp = g + nc * in_.h * in_.w;
      for (int64_t i = 0; i < out_.h; ++i)
        for (int64_t j = 0; j < out_.w; ++j) {
          const int64_t h0 = lo(i, in_.h, out_.h), h1 = hi(i, in_.h, out_.h);
          const int64_t w0 = lo(j, in_.w, out_.w), w1 = hi(j, in_.w, out_.w);
          const float v = dp[i * out_.w + j] / static_cast<float>((h1 - h0) * (w1 - w0));
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) gp[h * in_.w + w] += v;
        }
    }
    return diff_src_;
  }
};

class AdaptiveAvgPool : public Layer {
 public:
  AdaptiveAvgPool(int64_t oh, int64_t ow) : oh_(oh), ow_(ow) {}
  std::string type() const override { return "adaptive_avg_pool"; }
  std::string describe() const override {
    return "adaptive avgpool ->" + std::to_string(oh_) + "x" + std::to_string(ow_);
  }
  Shape output_shape(const Shape& in) const override { return {in.n, in.c, oh_, ow_}; }
  double forward_flops(const Shape& in) const override {
    return static_cast<double>(std::max(in.elements(), output_shape(in).elements()));
  }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    return std::make_unique<AdaptiveExec>(a, output_shape(a.in));
  }

 private:
  int64_t oh_, ow_;
};

// ---- flatten: [N,C,H,W] -> [N, C*H*W] in NCHW order ---------------------------------------

class FlattenExec : public PlainExec {
 public:
  explicit FlattenExec(const BindArgs& a)
      : PlainExec(a, Shape{a.in.n, a.in.per_sample(), 1, 1}, true) {
    view_in_ = memory(src_plain_, eng_, DNNL_MEMORY_NONE);
  }
  std::unique_ptr<LayerSlot> make_slot() const override {
    return std::make_unique<PlainSlot>();  // dst is a view, nothing to own but the plain copy
  }
  const memory& forward(const memory& src, LayerSlot& sb, const ParamRefs&,
                        const StepInfo&) override {
    auto& s = slot_as<PlainSlot>(sb);
    const float* x = plain_input(src, s);
    if (!s.dst) s.dst = memory(dst_desc_, eng_, DNNL_MEMORY_NONE);
    s.dst.set_data_handle(const_cast<float*>(x));
    return s.dst;
  }
  const memory& backward(const memory&, const memory& diff_dst, LayerSlot&, const ParamRefs&,
                         const StepInfo&, bool) override {
    if (!diff_src_) return diff_src_;
    const float* d = plain_diff(diff_dst);
    std::copy(d, d + in_.elements(), fptr_mut(diff_src_));
    return diff_src_;
  }

 private:
  memory view_in_;
};

class Flatten : public Layer {
 public:
  std::string type() const override { return "flatten"; }
  std::string describe() const override { return "flatten"; }
  Shape output_shape(const Shape& in) const override { return {in.n, in.per_sample(), 1, 1}; }
  int output_ndims(int) const override { return 2; }
  double forward_flops(const Shape&) const override { return 0; }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    return std::make_unique<FlattenExec>(a);
  }
};

}  // namespace

std::unique_ptr<Layer> dropout(float p) {
  MPSL_INPUT_CHECK(p >= 0.f && p < 1.f, "dropout probability must be in [0, 1)");
  return std::make_unique<Dropout>(p);
}
std::unique_ptr<Layer> adaptive_avg_pool(int64_t oh, int64_t ow) {
  return std::make_unique<AdaptiveAvgPool>(oh, ow);
}
std::unique_ptr<Layer> flatten() {
  return std::make_unique<Flatten>();
}

}  // namespace mpsl::nn
