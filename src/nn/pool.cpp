// Max and average pooling (incl. global average pooling) on oneDNN, in whatever layout the
// input arrives; max pooling keeps its workspace per batch in flight for backward.
#include "detail.hpp"
#include "mpsl/nn/layers.hpp"

namespace mpsl::nn {
namespace {

using namespace detail;
using dnnl::algorithm;
using dnnl::prop_kind;

struct PoolSlot : LayerSlot {
  memory dst, workspace;
};

struct PoolGeom {
  int64_t kh, kw, sh, sw, ph, pw;
};

class PoolExec : public LayerExec {
 public:
  PoolExec(algorithm alg, PoolGeom g, Shape out, const BindArgs& a)
      : eng_(a.engine), strm_(a.stream), training_(a.training) {
    memory::desc src_md = a.src_desc;
    memory::desc dst_md(dims4(out), dt::f32, tag::any);
    memory::dims strides{g.sh, g.sw}, kernel{g.kh, g.kw}, pad{g.ph, g.pw};
    fwd_pd_ = dnnl::pooling_forward::primitive_desc(
        dnnl::pooling_forward::desc(
            a.training ? prop_kind::forward_training : prop_kind::forward_inference, alg, src_md,
            dst_md, strides, kernel, pad, pad),
        eng_);
    fwd_ = dnnl::pooling_forward(fwd_pd_);
    dst_desc_ = fwd_pd_.dst_desc();
    has_ws_ = a.training && fwd_pd_.workspace_desc().get_size() > 0;
    if (a.training && a.need_diff_src) {
      memory::desc dsrc_md(dims4(a.in), dt::f32, tag::any);
      bwd_pd_ = dnnl::pooling_backward::primitive_desc(
          dnnl::pooling_backward::desc(alg, dsrc_md, dst_md, strides, kernel, pad, pad), eng_,
          fwd_pd_);
      bwd_ = dnnl::pooling_backward(bwd_pd_);
      diff_src_ = memory(bwd_pd_.diff_src_desc(), eng_);
    }
  }
  std::unique_ptr<LayerSlot> make_slot() const override {
    auto s = std::make_unique<PoolSlot>();
    s->dst = memory(dst_desc_, eng_);
    if (has_ws_) s->workspace = memory(fwd_pd_.workspace_desc(), eng_);
    return s;
  }
  const memory::desc& dst_desc() const override { return dst_desc_; }
  const memory& forward(const memory& src, LayerSlot& sb, const ParamRefs&,
                        const StepInfo&) override {
    auto& s = slot_as<PoolSlot>(sb);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, s.dst}};
    if (has_ws_) args[DNNL_ARG_WORKSPACE] = s.workspace;
    fwd_.execute(strm_, args);
    return s.dst;
  }
  const memory& backward(const memory&, const memory& diff_dst, LayerSlot& sb, const ParamRefs&,
                         const StepInfo&, bool) override {
    if (!diff_src_) return diff_src_;
    auto& s = slot_as<PoolSlot>(sb);
    const memory& dd = dd_conv_.to(diff_dst, bwd_pd_.diff_dst_desc(), eng_, strm_);
    std::unordered_map<int, memory> args{{DNNL_ARG_DIFF_DST, dd}, {DNNL_ARG_DIFF_SRC, diff_src_}};
    if (has_ws_) args[DNNL_ARG_WORKSPACE] = s.workspace;
    bwd_.execute(strm_, args);
    return diff_src_;
  }

 private:
  dnnl::engine eng_;
  dnnl::stream strm_;
  bool training_;
  bool has_ws_ = false;
  dnnl::pooling_forward::primitive_desc fwd_pd_;
  dnnl::pooling_forward fwd_;
  dnnl::pooling_backward::primitive_desc bwd_pd_;
  dnnl::pooling_backward bwd_;
  memory::desc dst_desc_;
  memory diff_src_;
  Converter dd_conv_;
};

class Pool : public Layer {
 public:
  Pool(algorithm alg, PoolSpec s, bool global) : alg_(alg), s_(s), global_(global) {}
  std::string type() const override {
    return global_ ? "global_avg_pool" : alg_ == algorithm::pooling_max ? "max_pool" : "avg_pool";
  }
  std::string describe() const override {
    if (global_) return "global avgpool";
    std::string d = (alg_ == algorithm::pooling_max ? "maxpool" : "avgpool") +
                    std::to_string(s_.kernel) + "x" + std::to_string(s_.kernel);
    if (s_.stride != s_.kernel) d += " s" + std::to_string(s_.stride);
    if (s_.pad) d += " p" + std::to_string(s_.pad);
    return d;
  }
  PoolGeom geom(const Shape& in) const {
    if (global_) return {in.h, in.w, 1, 1, 0, 0};
    return {s_.kernel, s_.kernel, s_.stride, s_.stride, s_.pad, s_.pad};
  }
  Shape output_shape(const Shape& in) const override {
    const PoolGeom g = geom(in);
    return {in.n, in.c, (in.h + 2 * g.ph - g.kh) / g.sh + 1, (in.w + 2 * g.pw - g.kw) / g.sw + 1};
  }
  double forward_flops(const Shape& in) const override {
    const PoolGeom g = geom(in);
    return static_cast<double>(output_shape(in).elements()) * g.kh * g.kw;
  }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    const PoolGeom g = geom(a.in);
    MPSL_INPUT_CHECK(a.in.h + 2 * g.ph >= g.kh && a.in.w + 2 * g.pw >= g.kw,
                     type() + ": input " + a.in.str() + " smaller than the window");
    return std::make_unique<PoolExec>(alg_, g, output_shape(a.in), a);
  }

 private:
  algorithm alg_;
  PoolSpec s_;
  bool global_;
};

}  // namespace

std::unique_ptr<Layer> max_pool(PoolSpec s) {
  return std::make_unique<Pool>(algorithm::pooling_max, s, false);
}
std::unique_ptr<Layer> avg_pool(PoolSpec s) {
  return std::make_unique<Pool>(algorithm::pooling_avg_include_padding, s, false);
}
std::unique_ptr<Layer> global_avg_pool() {
  return std::make_unique<Pool>(algorithm::pooling_avg_include_padding, PoolSpec{}, true);
}

}  // namespace mpsl::nn
