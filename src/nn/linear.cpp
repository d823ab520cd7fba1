// Fully connected layer (oneDNN inner product) with ReLU fused as a post-op. A 4D input is
// flattened in NCHW order, so the plain weights are [out, C*H*W] like torch's nn.Linear.
#include <cmath>

#include "detail.hpp"
#include "mpsl/nn/layers.hpp"

namespace mpsl::nn {
namespace {

using namespace detail;
using dnnl::algorithm;
using dnnl::prop_kind;

struct LinearSlot : LayerSlot {
  memory src, dst;
};

class LinearExec : public LayerExec {
 public:
  LinearExec(int64_t out, bool relu, const BindArgs& a)
      : out_(out), relu_(relu), eng_(a.engine), strm_(a.stream) {
    const Shape in = a.in;
    // The weights follow the rank of what arrives: [out, C] for [N, C], [out, C, H, W] for
    // [N, C, H, W] (the same bytes as the plain [out, C*H*W]).
    const bool flat_input = a.src_desc.dims().size() == 2;
    memory::dims wdims = flat_input ? memory::dims{out, in.c} : memory::dims{out, in.c, in.h, in.w};
    auto any = [](const memory::dims& d) { return memory::desc(d, dt::f32, tag::any); };
    memory::desc src_md = any(flat_input ? memory::dims{in.n, in.c} : dims4(in)), w_md = any(wdims),
                 b_md({out}, dt::f32, tag::a), dst_md = any({in.n, out});
    dnnl::primitive_attr attr;
    if (relu) {
      dnnl::post_ops ops;
      ops.append_eltwise(1.f, algorithm::eltwise_relu, 0.f, 0.f);
      attr.set_post_ops(ops);
    }
    fwd_pd_ = dnnl::inner_product_forward::primitive_desc(
        dnnl::inner_product_forward::desc(
            a.training ? prop_kind::forward_training : prop_kind::forward_inference, src_md, w_md,
            b_md, dst_md),
        attr, eng_);
    fwd_ = dnnl::inner_product_forward(fwd_pd_);
    w_plain_ = plain_desc(wdims);
    w_elems_ = out * in.per_sample();
    w_fwd_ = WeightsCache(w_plain_, fwd_pd_.weights_desc(), eng_);
    dst_desc_ = fwd_pd_.dst_desc();
    bias_mem_ = memory(b_md, eng_, DNNL_MEMORY_NONE);
    if (!a.training) return;
    if (relu) {
      relu_bwd_ = dnnl::eltwise_backward(dnnl::eltwise_backward::primitive_desc(
          dnnl::eltwise_backward::desc(algorithm::eltwise_relu_use_dst_for_bwd, dst_desc_,
                                       dst_desc_, 0.f, 0.f),
          eng_,
          dnnl::eltwise_forward::primitive_desc(
              dnnl::eltwise_forward::desc(prop_kind::forward_training,
                                          algorithm::eltwise_relu_use_dst_for_bwd, dst_desc_, 0.f,
                                          0.f),
              eng_)));
      relu_diff_ = memory(dst_desc_, eng_);
    }
    bwd_w_pd_ = dnnl::inner_product_backward_weights::primitive_desc(
        dnnl::inner_product_backward_weights::desc(src_md, w_md, b_md, dst_md), eng_, fwd_pd_);
    bwd_w_ = dnnl::inner_product_backward_weights(bwd_w_pd_);
    w_grad_ = GradTarget(w_plain_, bwd_w_pd_.diff_weights_desc(), eng_);
    b_grad_ = GradTarget(b_md, bwd_w_pd_.diff_bias_desc(), eng_);
    if (a.need_diff_src) {
      bwd_d_pd_ = dnnl::inner_product_backward_data::primitive_desc(
          dnnl::inner_product_backward_data::desc(src_md, w_md, dst_md), eng_, fwd_pd_);
      bwd_d_ = dnnl::inner_product_backward_data(bwd_d_pd_);
      // Backward-data reuses the forward copy of the weights when it wants the same layout.
      bwd_shares_weights_ = bwd_d_pd_.weights_desc() == fwd_pd_.weights_desc();
      if (!bwd_shares_weights_) w_bwd_ = WeightsCache(w_plain_, bwd_d_pd_.weights_desc(), eng_);
      diff_src_ = memory(bwd_d_pd_.diff_src_desc(), eng_);
    }
  }

  std::unique_ptr<LayerSlot> make_slot() const override {
    auto s = std::make_unique<LinearSlot>();
    s->dst = memory(dst_desc_, eng_);
    return s;
  }
  const memory::desc& dst_desc() const override { return dst_desc_; }
  void param_formats(std::vector<memory::desc>& out) const override {
    out.push_back(fwd_pd_.weights_desc());
    out.push_back(memory::desc());
  }

  const memory& forward(const memory& src, LayerSlot& slot_base, const ParamRefs& p,
                        const StepInfo&) override {
    auto& slot = slot_as<LinearSlot>(slot_base);
    const memory* x = &src;
    if (!(src.get_desc() == fwd_pd_.src_desc())) {
      if (!slot.src) slot.src = memory(fwd_pd_.src_desc(), eng_);
      in_conv_.copy(src, slot.src, strm_);
      x = &slot.src;
    }
    bias_mem_.set_data_handle(p.params + w_elems_);
    fwd_.execute(strm_, {{DNNL_ARG_SRC, *x},
                         {DNNL_ARG_WEIGHTS, w_fwd_.get(p.params, p, strm_, stored_format(p, 0))},
                         {DNNL_ARG_BIAS, bias_mem_},
                         {DNNL_ARG_DST, slot.dst}});
    return slot.dst;
  }

  const memory& backward(const memory& src, const memory& diff_dst, LayerSlot& slot_base,
                         const ParamRefs& p, const StepInfo&, bool accumulate) override {
    auto& slot = slot_as<LinearSlot>(slot_base);
    const memory* dd = &dd_conv_.to(diff_dst, dst_desc_, eng_, strm_);
    if (relu_) {
      relu_bwd_.execute(
          strm_,
          {{DNNL_ARG_DST, slot.dst}, {DNNL_ARG_DIFF_DST, *dd}, {DNNL_ARG_DIFF_SRC, relu_diff_}});
      dd = &relu_diff_;
    }
    const memory& x = slot.src ? slot.src : src;
    const memory& xw = src_w_conv_.to(x, bwd_w_pd_.src_desc(), eng_, strm_);
    const memory& dw = ddw_conv_.to(*dd, bwd_w_pd_.diff_dst_desc(), eng_, strm_);
    float* bias_grad = p.grads + w_elems_;
    bwd_w_.execute(
        strm_, {{DNNL_ARG_SRC, xw},
                {DNNL_ARG_DIFF_DST, dw},
                {DNNL_ARG_DIFF_WEIGHTS, w_grad_.target(p.grads, accumulate, stored_format(p, 0))},
                {DNNL_ARG_DIFF_BIAS, b_grad_.target(bias_grad, accumulate)}});
    w_grad_.finish(p.grads, accumulate, strm_, stored_format(p, 0));
    b_grad_.finish(bias_grad, accumulate, strm_);
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
  int64_t out_;
  bool relu_;
  int64_t w_elems_ = 0;
  dnnl::engine eng_;
  dnnl::stream strm_;
  dnnl::inner_product_forward::primitive_desc fwd_pd_;
  dnnl::inner_product_forward fwd_;
  dnnl::inner_product_backward_weights::primitive_desc bwd_w_pd_;
  dnnl::inner_product_backward_weights bwd_w_;
  dnnl::inner_product_backward_data::primitive_desc bwd_d_pd_;
  dnnl::inner_product_backward_data bwd_d_;
  dnnl::eltwise_backward relu_bwd_;
  memory::desc w_plain_, dst_desc_;
  WeightsCache w_fwd_, w_bwd_;
  bool bwd_shares_weights_ = false;
  GradTarget w_grad_, b_grad_;
  memory bias_mem_, diff_src_, relu_diff_;
  Converter in_conv_, dd_conv_, src_w_conv_, ddw_conv_, ddd_conv_;
};

class Linear : public Layer {
 public:
  Linear(int64_t out, bool relu, Init init) : out_(out), relu_(relu), init_(init) {}
  std::string type() const override { return "linear"; }
  std::string describe() const override {
    return "fc ->" + std::to_string(out_) + (relu_ ? " +relu" : "");
  }
  Shape output_shape(const Shape& in) const override { return {in.n, out_, 1, 1}; }
  int output_ndims(int) const override { return 2; }
  std::vector<TensorSpec> params(const Shape& in) const override {
    return {{"weight", {out_, in.per_sample()}}, {"bias", {out_}}};
  }
  void init(const Shape& in, Rng& rng, float* p, float*) const override {
    const int64_t fan_in = in.per_sample(), n = out_ * fan_in;
    if (init_ == Init::kTorchDefault) {
      const float bound = 1.f / std::sqrt(static_cast<float>(fan_in));
      detail::init_uniform(rng, p, n, bound);
      detail::init_uniform(rng, p + n, out_, bound);
    } else {
      detail::init_normal(rng, p, n, 0.01f);
      std::fill(p + n, p + n + out_, 0.f);
    }
  }
  double forward_flops(const Shape& in) const override {
    return 2.0 * in.n * in.per_sample() * out_;
  }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    return std::make_unique<LinearExec>(out_, relu_, a);
  }

 private:
  int64_t out_;
  bool relu_;
  Init init_;
};

}  // namespace

std::unique_ptr<Layer> linear(int64_t out, bool relu, Init init) {
  return std::make_unique<Linear>(out, relu, init);
}

}  // namespace mpsl::nn
