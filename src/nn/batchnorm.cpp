// BatchNorm2d as torch defines it (eps 1e-5, momentum 0.1, running variance unbiased), on
// oneDNN, optionally with ReLU fused (oneDNN's fuse_norm_relu keeps a workspace for backward).
#include "detail.hpp"
#include "mpsl/nn/layers.hpp"

namespace mpsl::nn {
namespace {

using namespace detail;
using dnnl::normalization_flags;
using dnnl::prop_kind;

constexpr float kEps = 1e-5f;
constexpr float kMomentum = 0.1f;

struct BnSlot : LayerSlot {
  memory dst, mean, variance, workspace;
};

class BnExec : public LayerExec {
 public:
  BnExec(bool relu, const BindArgs& a)
      : eng_(a.engine), strm_(a.stream), training_(a.training), c_(a.in.c) {
    data_md_ = a.src_desc;
    auto flags = normalization_flags::use_scale | normalization_flags::use_shift;
    if (relu) flags |= normalization_flags::fuse_norm_relu;
    if (!a.training) flags |= normalization_flags::use_global_stats;
    fwd_pd_ = dnnl::batch_normalization_forward::primitive_desc(
        dnnl::batch_normalization_forward::desc(
            a.training ? prop_kind::forward_training : prop_kind::forward_inference, data_md_, kEps,
            flags),
        eng_);
    fwd_ = dnnl::batch_normalization_forward(fwd_pd_);
    dst_desc_ = fwd_pd_.dst_desc();
    memory::desc c_md({c_}, dt::f32, tag::a);
    scale_ = memory(c_md, eng_, DNNL_MEMORY_NONE);
    shift_ = memory(c_md, eng_, DNNL_MEMORY_NONE);
    run_mean_ = memory(c_md, eng_, DNNL_MEMORY_NONE);
    run_var_ = memory(c_md, eng_, DNNL_MEMORY_NONE);
    has_ws_ = relu && a.training;
    if (!a.training) return;
    bwd_pd_ = dnnl::batch_normalization_backward::primitive_desc(
        dnnl::batch_normalization_backward::desc(prop_kind::backward, data_md_, data_md_, kEps,
                                                 flags),
        eng_, fwd_pd_);
    bwd_ = dnnl::batch_normalization_backward(bwd_pd_);
    diff_src_ = memory(bwd_pd_.diff_src_desc(), eng_);
    dscale_ = GradTarget(c_md, c_md, eng_);
    dshift_ = GradTarget(c_md, c_md, eng_);
    count_ = a.in.n * a.in.h * a.in.w;
  }
  std::unique_ptr<LayerSlot> make_slot() const override {
    auto s = std::make_unique<BnSlot>();
    s->dst = memory(dst_desc_, eng_);
    if (training_) {
      s->mean = memory(fwd_pd_.mean_desc(), eng_);
      s->variance = memory(fwd_pd_.variance_desc(), eng_);
    }
    if (has_ws_) s->workspace = memory(fwd_pd_.workspace_desc(), eng_);
    return s;
  }
  const memory::desc& dst_desc() const override { return dst_desc_; }
  void param_formats(std::vector<memory::desc>& out) const override {
    out.insert(out.end(), 2, memory::desc());
  }
  const memory& forward(const memory& src, LayerSlot& sb, const ParamRefs& p,
                        const StepInfo& info) override {
    auto& s = slot_as<BnSlot>(sb);
    scale_.set_data_handle(p.params);
    shift_.set_data_handle(p.params + c_);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src},
                                         {DNNL_ARG_DST, s.dst},
                                         {DNNL_ARG_SCALE, scale_},
                                         {DNNL_ARG_SHIFT, shift_}};
    float* rmean = p.buffers;
    float* rvar = p.buffers + c_;
    if (training_) {
      args[DNNL_ARG_MEAN] = s.mean;
      args[DNNL_ARG_VARIANCE] = s.variance;
      if (has_ws_) args[DNNL_ARG_WORKSPACE] = s.workspace;
      fwd_.execute(strm_, args);
      // Running statistics as torch keeps them (unbiased variance).
      const float* m = fptr(s.mean);
      const float* v = fptr(s.variance);
      const float unbias = count_ > 1 ? static_cast<float>(count_) / (count_ - 1) : 1.f;
      for (int64_t c = 0; c < c_; ++c) {
        rmean[c] = (1 - kMomentum) * rmean[c] + kMomentum * m[c];
        rvar[c] = (1 - kMomentum) * rvar[c] + kMomentum * v[c] * unbias;
      }
    } else {
      run_mean_.set_data_handle(rmean);
      run_var_.set_data_handle(rvar);
      args[DNNL_ARG_MEAN] = run_mean_;
      args[DNNL_ARG_VARIANCE] = run_var_;
      fwd_.execute(strm_, args);
    }
    return s.dst;
  }
  const memory& backward(const memory& src, const memory& diff_dst, LayerSlot& sb,
                         const ParamRefs& p, const StepInfo&, bool accumulate) override {
    auto& s = slot_as<BnSlot>(sb);
    const memory& dd = dd_conv_.to(diff_dst, bwd_pd_.diff_dst_desc(), eng_, strm_);
    scale_.set_data_handle(p.params);
    shift_.set_data_handle(p.params + c_);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, src},
        {DNNL_ARG_MEAN, s.mean},
        {DNNL_ARG_VARIANCE, s.variance},
        {DNNL_ARG_DIFF_DST, dd},
        {DNNL_ARG_SCALE, scale_},
        {DNNL_ARG_SHIFT, shift_},
        {DNNL_ARG_DIFF_SRC, diff_src_},
        {DNNL_ARG_DIFF_SCALE, dscale_.target(p.grads, accumulate)},
        {DNNL_ARG_DIFF_SHIFT, dshift_.target(p.grads + c_, accumulate)}};
    if (has_ws_) args[DNNL_ARG_WORKSPACE] = s.workspace;
    bwd_.execute(strm_, args);
    dscale_.finish(p.grads, accumulate, strm_);
    dshift_.finish(p.grads + c_, accumulate, strm_);
    return diff_src_;
  }

 private:
  dnnl::engine eng_;
  dnnl::stream strm_;
  bool training_;
  int64_t c_;
  int64_t count_ = 1;
  bool has_ws_ = false;
  memory::desc data_md_, dst_desc_;
  dnnl::batch_normalization_forward::primitive_desc fwd_pd_;
  dnnl::batch_normalization_forward fwd_;
  dnnl::batch_normalization_backward::primitive_desc bwd_pd_;
  dnnl::batch_normalization_backward bwd_;
  memory scale_, shift_, run_mean_, run_var_, diff_src_;
  GradTarget dscale_, dshift_;
  Converter dd_conv_;
};

class BatchNorm : public Layer {
 public:
  explicit BatchNorm(bool relu) : relu_(relu) {}
  std::string type() const override { return "batch_norm"; }
  std::string describe() const override { return relu_ ? "bn +relu" : "bn"; }
  Shape output_shape(const Shape& in) const override { return in; }
  std::vector<TensorSpec> params(const Shape& in) const override {
    return {{"weight", {in.c}}, {"bias", {in.c}}};
  }
  std::vector<TensorSpec> buffers(const Shape& in) const override {
    return {{"running_mean", {in.c}}, {"running_var", {in.c}}};
  }
  void init(const Shape& in, Rng&, float* p, float* b) const override {
    std::fill(p, p + in.c, 1.f);
    std::fill(p + in.c, p + 2 * in.c, 0.f);
    std::fill(b, b + in.c, 0.f);
    std::fill(b + in.c, b + 2 * in.c, 1.f);
  }
  double forward_flops(const Shape& in) const override { return 4.0 * in.elements(); }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    return std::make_unique<BnExec>(relu_, a);
  }

 private:
  bool relu_;
};

}  // namespace

std::unique_ptr<Layer> batch_norm(bool relu) {
  return std::make_unique<BatchNorm>(relu);
}

}  // namespace mpsl::nn
