// Stand-alone ReLU (most ReLUs are fused into the preceding conv, linear or batch norm).
#include "detail.hpp"
#include "mpsl/nn/layers.hpp"

namespace mpsl::nn {
namespace {

using namespace detail;
using dnnl::algorithm;
using dnnl::prop_kind;

struct ReluSlot : LayerSlot {
  memory dst;
};

class ReluExec : public LayerExec {
 public:
  explicit ReluExec(const BindArgs& a) : eng_(a.engine), strm_(a.stream) {
    dst_desc_ = a.src_desc;
    auto fwd_pd = dnnl::eltwise_forward::primitive_desc(
        dnnl::eltwise_forward::desc(prop_kind::forward_training,
                                    algorithm::eltwise_relu_use_dst_for_bwd, dst_desc_, 0.f, 0.f),
        eng_);
    fwd_ = dnnl::eltwise_forward(fwd_pd);
    if (a.training && a.need_diff_src) {
      bwd_ = dnnl::eltwise_backward(dnnl::eltwise_backward::primitive_desc(
          dnnl::eltwise_backward::desc(algorithm::eltwise_relu_use_dst_for_bwd, dst_desc_,
                                       dst_desc_, 0.f, 0.f),
          eng_, fwd_pd));
      diff_src_ = memory(dst_desc_, eng_);
    }
  }
  std::unique_ptr<LayerSlot> make_slot() const override {
    auto s = std::make_unique<ReluSlot>();
    s->dst = memory(dst_desc_, eng_);
    return s;
  }
  const memory::desc& dst_desc() const override { return dst_desc_; }
  const memory& forward(const memory& src, LayerSlot& sb, const ParamRefs&,
                        const StepInfo&) override {
    auto& s = slot_as<ReluSlot>(sb);
    fwd_.execute(strm_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, s.dst}});
    return s.dst;
  }
  const memory& backward(const memory&, const memory& diff_dst, LayerSlot& sb, const ParamRefs&,
                         const StepInfo&, bool) override {
    if (!diff_src_) return diff_src_;
    auto& s = slot_as<ReluSlot>(sb);
    const memory& dd = dd_conv_.to(diff_dst, dst_desc_, eng_, strm_);
    bwd_.execute(strm_,
                 {{DNNL_ARG_DST, s.dst}, {DNNL_ARG_DIFF_DST, dd}, {DNNL_ARG_DIFF_SRC, diff_src_}});
    return diff_src_;
  }

 private:
  dnnl::engine eng_;
  dnnl::stream strm_;
  memory::desc dst_desc_;
  dnnl::eltwise_forward fwd_;
  dnnl::eltwise_backward bwd_;
  memory diff_src_;
  Converter dd_conv_;
};

class Relu : public Layer {
 public:
  std::string type() const override { return "relu"; }
  std::string describe() const override { return "relu"; }
  Shape output_shape(const Shape& in) const override { return in; }
  int output_ndims(int input_ndims) const override { return input_ndims; }
  double forward_flops(const Shape& in) const override {
    return static_cast<double>(in.elements());
  }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    return std::make_unique<ReluExec>(a);
  }
};

}  // namespace

std::unique_ptr<Layer> relu() {
  return std::make_unique<Relu>();
}

}  // namespace mpsl::nn
