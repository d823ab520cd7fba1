// Convolution (stride, padding, groups, optional bias) with ReLU fused as a post-op.
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "detail.hpp"
#include "mpsl/nn/layers.hpp"

namespace mpsl::nn {
namespace {

using namespace detail;
using dnnl::algorithm;
using dnnl::prop_kind;

// MPSL_CONV_ALGO=direct turns Winograd off (for comparisons and tests of the direct path);
// MPSL_CONV_BWD_WEIGHTS=direct keeps it for forward and backward-data only.
bool winograd_enabled() {
  const char* v = std::getenv("MPSL_CONV_ALGO");
  return !(v && std::string(v) == "direct");
}
algorithm bwd_weights_alg(algorithm fwd) {
  const char* v = std::getenv("MPSL_CONV_BWD_WEIGHTS");
  return (v && std::string(v) == "direct") ? algorithm::convolution_direct : fwd;
}

struct ConvSlot : LayerSlot {
  memory src;  // input in the primitive's layout (only when it differs from what arrives)
  memory dst;
};

class ConvExec : public LayerExec {
 public:
  ConvExec(const ConvSpec& s, const BindArgs& a) : spec_(s), eng_(a.engine), strm_(a.stream) {
    const Shape in = a.in;
    const int64_t oh = (in.h + 2 * s.pad - s.kernel) / s.stride + 1;
    const int64_t ow = (in.w + 2 * s.pad - s.kernel) / s.stride + 1;
    memory::dims wdims = s.groups == 1 ? memory::dims{s.out_channels, in.c, s.kernel, s.kernel}
                                       : memory::dims{s.groups, s.out_channels / s.groups,
                                                      in.c / s.groups, s.kernel, s.kernel};
    auto any = [](const memory::dims& d) { return memory::desc(d, dt::f32, tag::any); };
    memory::desc src_md = any(dims4(in)), w_md = any(wdims),
                 b_md = s.bias ? memory::desc({s.out_channels}, dt::f32, tag::a) : memory::desc(),
                 dst_md = any({in.n, s.out_channels, oh, ow});
    memory::dims strides{s.stride, s.stride}, pad{s.pad, s.pad};
    dnnl::primitive_attr attr;
    if (s.relu) {
      dnnl::post_ops ops;
      ops.append_eltwise(1.f, algorithm::eltwise_relu, 0.f, 0.f);
      attr.set_post_ops(ops);
    }
    // Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions with enough channels and pixels to fill
    // its tiles (it is slower for the first layer of an image net); direct otherwise, or where this
    // CPU has no Winograd implementation.
    // Small maps waste most of Winograd's 6x6 tiles, so they stay direct.
    const bool try_winograd = s.kernel == 3 && s.stride == 1 && s.groups == 1 && in.c >= 16 &&
                              s.out_channels >= 16 && oh >= 4 && ow >= 4 && winograd_enabled();
    auto make_fwd = [&](algorithm alg) {
      return dnnl::convolution_forward::primitive_desc(
          dnnl::convolution_forward::desc(
              a.training ? prop_kind::forward_training : prop_kind::forward_inference, alg, src_md,
              w_md, b_md, dst_md, strides, pad, pad),
          attr, eng_);
    };
    algorithm alg = algorithm::convolution_direct;
    if (try_winograd) {
      try {
        fwd_pd_ = make_fwd(algorithm::convolution_winograd);
        alg = algorithm::convolution_winograd;
      } catch (const dnnl::error&) {
      }
    }
    if (alg == algorithm::convolution_direct) fwd_pd_ = make_fwd(alg);
    fwd_ = dnnl::convolution_forward(fwd_pd_);
    w_plain_ = plain_desc(wdims);
    w_fwd_ = WeightsCache(w_plain_, fwd_pd_.weights_desc(), eng_);
    dst_desc_ = fwd_pd_.dst_desc();
    bias_mem_ = s.bias ? memory(b_md, eng_, DNNL_MEMORY_NONE) : memory();
    if (!a.training) return;
    if (s.relu) {
      relu_pd_ = dnnl::eltwise_backward::primitive_desc(
          dnnl::eltwise_backward::desc(algorithm::eltwise_relu_use_dst_for_bwd, dst_desc_,
                                       dst_desc_, 0.f, 0.f),
          eng_,
          dnnl::eltwise_forward::primitive_desc(
              dnnl::eltwise_forward::desc(prop_kind::forward_training,
                                          algorithm::eltwise_relu_use_dst_for_bwd, dst_desc_, 0.f,
                                          0.f),
              eng_));
      relu_bwd_ = dnnl::eltwise_backward(relu_pd_);
      relu_diff_ = memory(dst_desc_, eng_);
    }
    bwd_w_pd_ = dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(bwd_weights_alg(alg), src_md, w_md, b_md, dst_md,
                                                 strides, pad, pad),
        eng_, fwd_pd_);
    bwd_w_ = dnnl::convolution_backward_weights(bwd_w_pd_);
    w_grad_ = GradTarget(w_plain_, bwd_w_pd_.diff_weights_desc(), eng_);
    if (s.bias) b_grad_ = GradTarget(b_md, bwd_w_pd_.diff_bias_desc(), eng_);
    if (a.need_diff_src) {
      bwd_d_pd_ = dnnl::convolution_backward_data::primitive_desc(
          dnnl::convolution_backward_data::desc(alg, src_md, w_md, dst_md, strides, pad, pad), eng_,
          fwd_pd_);
      bwd_d_ = dnnl::convolution_backward_data(bwd_d_pd_);
      // Backward-data reuses the forward copy of the weights when it wants the same layout.
      bwd_shares_weights_ = bwd_d_pd_.weights_desc() == fwd_pd_.weights_desc();
      if (!bwd_shares_weights_) w_bwd_ = WeightsCache(w_plain_, bwd_d_pd_.weights_desc(), eng_);
      diff_src_ = memory(bwd_d_pd_.diff_src_desc(), eng_);
    }
  }

  std::unique_ptr<LayerSlot> make_slot() const override {
    auto s = std::make_unique<ConvSlot>();
    s->dst = memory(dst_desc_, eng_);
    return s;
  }
  const memory::desc& dst_desc() const override { return dst_desc_; }
  void param_formats(std::vector<memory::desc>& out) const override {
    out.push_back(fwd_pd_.weights_desc());
    if (spec_.bias) out.push_back(memory::desc());
  }

  const memory& forward(const memory& src, LayerSlot& slot_base, const ParamRefs& p,
                        const StepInfo&) override {
    auto& slot = slot_as<ConvSlot>(slot_base);
    const memory* x = &src;
    if (!(src.get_desc() == fwd_pd_.src_desc())) {
      if (!slot.src) slot.src = memory(fwd_pd_.src_desc(), eng_);
      in_conv_.copy(src, slot.src, strm_);
      x = &slot.src;
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, *x},
        {DNNL_ARG_WEIGHTS, w_fwd_.get(p.params, p, strm_, stored_format(p, 0))},
        {DNNL_ARG_DST, slot.dst}};
    if (spec_.bias) {
      bias_mem_.set_data_handle(p.params + weight_elems());
      args[DNNL_ARG_BIAS] = bias_mem_;
    }
    fwd_.execute(strm_, args);
    return slot.dst;
  }

  const memory& backward(const memory& src, const memory& diff_dst, LayerSlot& slot_base,
                         const ParamRefs& p, const StepInfo&, bool accumulate) override {
    auto& slot = slot_as<ConvSlot>(slot_base);
    const memory* dd = &diff_dst;
    if (spec_.relu) {
      const memory& d = dd_conv_.to(diff_dst, dst_desc_, eng_, strm_);
      relu_bwd_.execute(
          strm_,
          {{DNNL_ARG_DST, slot.dst}, {DNNL_ARG_DIFF_DST, d}, {DNNL_ARG_DIFF_SRC, relu_diff_}});
      dd = &relu_diff_;
    }
    const memory& x = slot.src ? slot.src : src;
    // Backward weights.
    {
      const memory& xw = src_w_conv_.to(x, bwd_w_pd_.src_desc(), eng_, strm_);
      const memory& dw = ddw_conv_.to(*dd, bwd_w_pd_.diff_dst_desc(), eng_, strm_);
      std::unordered_map<int, memory> args{
          {DNNL_ARG_SRC, xw},
          {DNNL_ARG_DIFF_DST, dw},
          {DNNL_ARG_DIFF_WEIGHTS, w_grad_.target(p.grads, accumulate, stored_format(p, 0))}};
      float* bias_grad = p.grads + weight_elems();
      if (spec_.bias) args[DNNL_ARG_DIFF_BIAS] = b_grad_.target(bias_grad, accumulate);
      bwd_w_.execute(strm_, args);
      w_grad_.finish(p.grads, accumulate, strm_, stored_format(p, 0));
      if (spec_.bias) b_grad_.finish(bias_grad, accumulate, strm_);
    }
    if (!diff_src_) return diff_src_;
    const memory& dd_data = ddd_conv_.to(*dd, bwd_d_pd_.diff_dst_desc(), eng_, strm_);
    bwd_d_.execute(
        strm_,
        {{DNNL_ARG_DIFF_DST, dd_data},
         {DNNL_ARG_WEIGHTS,
          (bwd_shares_weights_ ? w_fwd_ : w_bwd_).get(p.params, p, strm_, stored_format(p, 0))},
         {DNNL_ARG_DIFF_SRC, diff_src_}});
    return diff_src_;
  }

 private:
  int64_t weight_elems() const { return memory::desc(w_plain_).get_size() / sizeof(float); }

  ConvSpec spec_;
  dnnl::engine eng_;
  dnnl::stream strm_;
  dnnl::convolution_forward::primitive_desc fwd_pd_;
  dnnl::convolution_forward fwd_;
  dnnl::convolution_backward_weights::primitive_desc bwd_w_pd_;
  dnnl::convolution_backward_weights bwd_w_;
  dnnl::convolution_backward_data::primitive_desc bwd_d_pd_;
  dnnl::convolution_backward_data bwd_d_;
  dnnl::eltwise_backward::primitive_desc relu_pd_;
  dnnl::eltwise_backward relu_bwd_;
  memory::desc w_plain_, dst_desc_;
  WeightsCache w_fwd_, w_bwd_;
  bool bwd_shares_weights_ = false;
  GradTarget w_grad_, b_grad_;
  memory bias_mem_, diff_src_, relu_diff_;
  Converter in_conv_, dd_conv_, src_w_conv_, ddw_conv_, ddd_conv_;
};

class Conv2d : public Layer {
 public:
  explicit Conv2d(ConvSpec s) : s_(s) {}
  std::string type() const override { return "conv"; }
  std::string describe() const override {
    std::ostringstream o;
    o << "conv" << s_.kernel << "x" << s_.kernel << " ->" << s_.out_channels;
    if (s_.stride != 1) o << " s" << s_.stride;
    if (s_.pad != 0) o << " p" << s_.pad;
    if (s_.groups != 1) o << " g" << s_.groups;
    if (!s_.bias) o << " nobias";
    if (s_.relu) o << " +relu";
    return o.str();
  }
  Shape output_shape(const Shape& in) const override {
    return {in.n, s_.out_channels, (in.h + 2 * s_.pad - s_.kernel) / s_.stride + 1,
            (in.w + 2 * s_.pad - s_.kernel) / s_.stride + 1};
  }
  std::vector<TensorSpec> params(const Shape& in) const override {
    std::vector<TensorSpec> t{
        {"weight", {s_.out_channels, in.c / s_.groups, s_.kernel, s_.kernel}}};
    if (s_.bias) t.push_back({"bias", {s_.out_channels}});
    return t;
  }
  void init(const Shape& in, Rng& rng, float* p, float*) const override {
    const int64_t fan_in = in.c / s_.groups * s_.kernel * s_.kernel;
    const int64_t n = s_.out_channels * fan_in;
    switch (s_.init) {
      case Init::kTorchDefault: {
        // kaiming_uniform(a=sqrt(5)) gives bound 1/sqrt(fan_in), as does the bias init.
        const float bound = 1.f / std::sqrt(static_cast<float>(fan_in));
        detail::init_uniform(rng, p, n, bound);
        if (s_.bias) detail::init_uniform(rng, p + n, s_.out_channels, bound);
        break;
      }
      default: {
        // torch: fan_out = weight.size(0) * kh * kw, not divided by groups.
        const int64_t fan_out = s_.out_channels * s_.kernel * s_.kernel;
        detail::init_normal(rng, p, n, std::sqrt(2.f / static_cast<float>(fan_out)));
        if (s_.bias) std::fill(p + n, p + n + s_.out_channels, 0.f);
      }
    }
  }
  double forward_flops(const Shape& in) const override {
    const Shape o = output_shape(in);
    return 2.0 * o.elements() * (in.c / s_.groups) * s_.kernel * s_.kernel;
  }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    MPSL_INPUT_CHECK(a.in.c % s_.groups == 0 && s_.out_channels % s_.groups == 0,
                     "conv: channels not divisible by groups");
    MPSL_INPUT_CHECK(a.in.h + 2 * s_.pad >= s_.kernel && a.in.w + 2 * s_.pad >= s_.kernel,
                     "conv: input " + a.in.str() + " smaller than the kernel");
    return std::make_unique<ConvExec>(s_, a);
  }

 private:
  ConvSpec s_;
};

}  // namespace

std::unique_ptr<Layer> conv2d(ConvSpec spec) {
  return std::make_unique<Conv2d>(spec);
}

}  // namespace mpsl::nn
