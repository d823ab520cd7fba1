// Composite units: a chain of layers run as one unit, and the residual block
// out = relu(main(x) + shortcut(x)). Their parameters are their members' parameters, in order.
#include <sstream>

#include "detail.hpp"
#include "mpsl/nn/layers.hpp"

namespace mpsl::nn {
namespace {

using namespace detail;
using dnnl::algorithm;
using dnnl::prop_kind;

using Layers = std::vector<std::unique_ptr<Layer>>;

struct ChainSlot : LayerSlot {
  std::vector<std::unique_ptr<LayerSlot>> slots;
  std::vector<const memory*> outputs;
};

// Offsets of each member's parameters and buffers inside the composite's arrays.
struct MemberOffsets {
  std::vector<int64_t> param, buffer;
  std::vector<int> tensors;  // index of each member's first parameter tensor
  std::vector<Shape> in;     // each member's input shape
};

MemberOffsets offsets_of(const Layers& layers, Shape in) {
  MemberOffsets o;
  int64_t p = 0, b = 0;
  int t = 0;
  for (const auto& l : layers) {
    o.param.push_back(p);
    o.buffer.push_back(b);
    o.tensors.push_back(t);
    o.in.push_back(in);
    const auto specs = l->params(in);
    p += total_elements(specs);
    t += static_cast<int>(specs.size());
    b += total_elements(l->buffers(in));
    in = l->output_shape(in);
  }
  o.param.push_back(p);
  o.buffer.push_back(b);
  o.tensors.push_back(t);
  o.in.push_back(in);
  return o;
}

ParamRefs member_refs(const ParamRefs& p, const MemberOffsets& o, size_t i) {
  ParamRefs r = p;
  if (p.params) r.params = p.params + o.param[i];
  if (p.grads) r.grads = p.grads + o.param[i];
  if (p.buffers) r.buffers = p.buffers + o.buffer[i];
  if (p.formats) r.formats = p.formats + o.tensors[i];
  return r;
}

// A chain of execs; the building block of Sequence and of both residual branches.
class ChainExec : public LayerExec {
 public:
  ChainExec(const Layers& layers, const BindArgs& a) : offsets_(offsets_of(layers, a.in)) {
    memory::desc src = a.src_desc;
    for (size_t i = 0; i < layers.size(); ++i) {
      BindArgs b = a;
      b.src_desc = src;
      b.in = offsets_.in[i];
      b.need_diff_src = i > 0 || a.need_diff_src;
      b.layer_id = mix64(a.layer_id) + i + 1;  // distinct random streams for members
      execs_.push_back(layers[i]->bind(b));
      src = execs_.back()->dst_desc();
    }
    dst_desc_ = src;
  }
  bool empty() const { return execs_.empty(); }
  void param_formats(std::vector<memory::desc>& out) const override {
    for (const auto& e : execs_) e->param_formats(out);
  }
  std::unique_ptr<LayerSlot> make_slot() const override {
    auto s = std::make_unique<ChainSlot>();
    for (const auto& e : execs_) s->slots.push_back(e->make_slot());
    s->outputs.resize(execs_.size());
    return s;
  }
  const memory::desc& dst_desc() const override { return dst_desc_; }
  const memory& forward(const memory& src, LayerSlot& sb, const ParamRefs& p,
                        const StepInfo& info) override {
    auto& s = slot_as<ChainSlot>(sb);
    const memory* x = &src;
    for (size_t i = 0; i < execs_.size(); ++i) {
      x = &execs_[i]->forward(*x, *s.slots[i], member_refs(p, offsets_, i), info);
      s.outputs[i] = x;
    }
    return *x;
  }
  const memory& backward(const memory& src, const memory& diff_dst, LayerSlot& sb,
                         const ParamRefs& p, const StepInfo& info, bool accumulate) override {
    auto& s = slot_as<ChainSlot>(sb);
    const memory* d = &diff_dst;
    for (size_t i = execs_.size(); i-- > 0;) {
      const memory& x = i == 0 ? src : *s.outputs[i - 1];
      d = &execs_[i]->backward(x, *d, *s.slots[i], member_refs(p, offsets_, i), info, accumulate);
    }
    return *d;
  }

 private:
  MemberOffsets offsets_;
  std::vector<std::unique_ptr<LayerExec>> execs_;
  memory::desc dst_desc_;
};

std::string describe_chain(const Layers& layers) {
  std::ostringstream o;
  for (size_t i = 0; i < layers.size(); ++i) o << (i ? ", " : "") << layers[i]->describe();
  return o.str();
}

class Sequence : public Layer {
 public:
  Sequence(std::string name, Layers layers) : name_(std::move(name)), layers_(std::move(layers)) {}
  std::string type() const override { return "sequence"; }
  std::string describe() const override { return name_ + " [" + describe_chain(layers_) + "]"; }
  Shape output_shape(const Shape& in) const override { return offsets_of(layers_, in).in.back(); }
  int output_ndims(int nd) const override {
    for (const auto& l : layers_) nd = l->output_ndims(nd);
    return nd;
  }
  std::vector<TensorSpec> params(const Shape& in) const override { return collect(in, false); }
  std::vector<TensorSpec> buffers(const Shape& in) const override { return collect(in, true); }
  void init(const Shape& in, Rng& rng, float* p, float* b) const override {
    const MemberOffsets o = offsets_of(layers_, in);
    for (size_t i = 0; i < layers_.size(); ++i)
      layers_[i]->init(o.in[i], rng, p + o.param[i], b ? b + o.buffer[i] : nullptr);
  }
  double forward_flops(const Shape& in) const override {
    const MemberOffsets o = offsets_of(layers_, in);
    double f = 0;
    for (size_t i = 0; i < layers_.size(); ++i) f += layers_[i]->forward_flops(o.in[i]);
    return f;
  }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    return std::make_unique<ChainExec>(layers_, a);
  }

 protected:
  std::vector<TensorSpec> collect(const Shape& in, bool buffers) const {
    std::vector<TensorSpec> all;
    const MemberOffsets o = offsets_of(layers_, in);
    for (size_t i = 0; i < layers_.size(); ++i)
      for (auto t : buffers ? layers_[i]->buffers(o.in[i]) : layers_[i]->params(o.in[i])) {
        t.name = std::to_string(i) + "." + t.name;
        all.push_back(std::move(t));
      }
    return all;
  }
  std::string name_;
  Layers layers_;
};

// ---- residual block -----------------------------------------------------------------------

struct ResidualSlot : LayerSlot {
  std::unique_ptr<LayerSlot> main, shortcut;
  memory dst;
};

class ResidualExec : public LayerExec {
 public:
  // The shortcut's members get their own random streams.
  static BindArgs shortcut_args(BindArgs a) {
    a.layer_id = ~a.layer_id;
    return a;
  }
  ResidualExec(const Layers& main, const Layers& shortcut, const BindArgs& a)
      : eng_(a.engine), strm_(a.stream), main_(main, a), shortcut_(shortcut, shortcut_args(a)) {
    const memory::desc m = main_.dst_desc();
    const memory::desc s = shortcut_.empty() ? a.src_desc : shortcut_.dst_desc();
    MPSL_INPUT_CHECK(m.dims() == s.dims(), "residual: branch shapes differ");
    dst_desc_ = m;
    dnnl::post_ops ops;
    ops.append_eltwise(1.f, algorithm::eltwise_relu, 0.f, 0.f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    add_ = dnnl::binary(dnnl::binary::primitive_desc(
        dnnl::binary::desc(algorithm::binary_add, m, s, dst_desc_), attr, eng_));
    if (!a.training) return;
    auto relu_fwd = dnnl::eltwise_forward::primitive_desc(
        dnnl::eltwise_forward::desc(prop_kind::forward_training,
                                    algorithm::eltwise_relu_use_dst_for_bwd, dst_desc_, 0.f, 0.f),
        eng_);
    relu_bwd_ = dnnl::eltwise_backward(dnnl::eltwise_backward::primitive_desc(
        dnnl::eltwise_backward::desc(algorithm::eltwise_relu_use_dst_for_bwd, dst_desc_, dst_desc_,
                                     0.f, 0.f),
        eng_, relu_fwd));
    d_out_ = memory(dst_desc_, eng_);
    if (a.need_diff_src) diff_src_ = memory(a.src_desc, eng_);
    src_desc_ = a.src_desc;
    n_main_params_ = 0;
  }
  void set_param_split(int64_t p, int64_t b, int t) {
    split_params_ = p;
    split_buffers_ = b;
    split_tensors_ = t;
  }
  void param_formats(std::vector<memory::desc>& out) const override {
    main_.param_formats(out);
    shortcut_.param_formats(out);
  }
  std::unique_ptr<LayerSlot> make_slot() const override {
    auto s = std::make_unique<ResidualSlot>();
    s->main = main_.make_slot();
    s->shortcut = shortcut_.make_slot();
    s->dst = memory(dst_desc_, eng_);
    return s;
  }
  const memory::desc& dst_desc() const override { return dst_desc_; }
  const memory& forward(const memory& src, LayerSlot& sb, const ParamRefs& p,
                        const StepInfo& info) override {
    auto& s = slot_as<ResidualSlot>(sb);
    const memory& m = main_.forward(src, *s.main, p, info);
    const memory& sc =
        shortcut_.empty() ? src : shortcut_.forward(src, *s.shortcut, short_refs(p), info);
    add_.execute(strm_, {{DNNL_ARG_SRC_0, m}, {DNNL_ARG_SRC_1, sc}, {DNNL_ARG_DST, s.dst}});
    return s.dst;
  }
  const memory& backward(const memory& src, const memory& diff_dst, LayerSlot& sb,
                         const ParamRefs& p, const StepInfo& info, bool accumulate) override {
    auto& s = slot_as<ResidualSlot>(sb);
    const memory& dd = dd_conv_.to(diff_dst, dst_desc_, eng_, strm_);
    relu_bwd_.execute(
        strm_, {{DNNL_ARG_DST, s.dst}, {DNNL_ARG_DIFF_DST, dd}, {DNNL_ARG_DIFF_SRC, d_out_}});
    const memory& dm = main_.backward(src, d_out_, *s.main, p, info, accumulate);
    const memory& ds = shortcut_.empty() ? d_out_
                                         : shortcut_.backward(src, d_out_, *s.shortcut,
                                                              short_refs(p), info, accumulate);
    if (!diff_src_) return diff_src_;
    // diff_src = dm + ds, each brought to the input's layout.
    const memory& a = a_conv_.to(dm, src_desc_, eng_, strm_);
    const memory& b = b_conv_.to(ds, src_desc_, eng_, strm_);
    if (!sum_) {
      sum_ = dnnl::binary(dnnl::binary::primitive_desc(
          dnnl::binary::desc(algorithm::binary_add, src_desc_, src_desc_, src_desc_), eng_));
    }
    sum_.execute(strm_, {{DNNL_ARG_SRC_0, a}, {DNNL_ARG_SRC_1, b}, {DNNL_ARG_DST, diff_src_}});
    return diff_src_;
  }

 private:
  ParamRefs short_refs(const ParamRefs& p) const {
    ParamRefs r = p;
    if (p.params) r.params = p.params + split_params_;
    if (p.grads) r.grads = p.grads + split_params_;
    if (p.buffers) r.buffers = p.buffers + split_buffers_;
    if (p.formats) r.formats = p.formats + split_tensors_;
    return r;
  }
  dnnl::engine eng_;
  dnnl::stream strm_;
  ChainExec main_, shortcut_;
  memory::desc dst_desc_, src_desc_;
  dnnl::binary add_, sum_;
  dnnl::eltwise_backward relu_bwd_;
  memory d_out_, diff_src_;
  Converter dd_conv_, a_conv_, b_conv_;
  int split_tensors_ = 0;
  int64_t split_params_ = 0, split_buffers_ = 0, n_main_params_ = 0;
};

class Residual : public Layer {
 public:
  Residual(std::string name, Layers main, Layers shortcut)
      : name_(std::move(name)), main_(std::move(main)), shortcut_(std::move(shortcut)) {}
  std::string type() const override { return "residual"; }
  std::string describe() const override {
    return name_ + " [" + describe_chain(main_) + "] + [" +
           (shortcut_.empty() ? std::string("identity") : describe_chain(shortcut_)) + "] +relu";
  }
  Shape output_shape(const Shape& in) const override { return offsets_of(main_, in).in.back(); }
  std::vector<TensorSpec> params(const Shape& in) const override { return collect(in, false); }
  std::vector<TensorSpec> buffers(const Shape& in) const override { return collect(in, true); }
  void init(const Shape& in, Rng& rng, float* p, float* b) const override {
    const MemberOffsets m = offsets_of(main_, in), s = offsets_of(shortcut_, in);
    for (size_t i = 0; i < main_.size(); ++i)
      main_[i]->init(m.in[i], rng, p + m.param[i], b + m.buffer[i]);
    for (size_t i = 0; i < shortcut_.size(); ++i)
      shortcut_[i]->init(s.in[i], rng, p + m.param.back() + s.param[i],
                         b + m.buffer.back() + s.buffer[i]);
  }
  double forward_flops(const Shape& in) const override {
    const MemberOffsets m = offsets_of(main_, in), s = offsets_of(shortcut_, in);
    double f = static_cast<double>(output_shape(in).elements()) * 2;  // add + relu
    for (size_t i = 0; i < main_.size(); ++i) f += main_[i]->forward_flops(m.in[i]);
    for (size_t i = 0; i < shortcut_.size(); ++i) f += shortcut_[i]->forward_flops(s.in[i]);
    return f;
  }
  std::unique_ptr<LayerExec> bind(const BindArgs& a) const override {
    auto e = std::make_unique<ResidualExec>(main_, shortcut_, a);
    const MemberOffsets m = offsets_of(main_, a.in);
    e->set_param_split(m.param.back(), m.buffer.back(), m.tensors.back());
    return e;
  }

 private:
  std::vector<TensorSpec> collect(const Shape& in, bool buffers) const {
    std::vector<TensorSpec> all;
    auto add = [&](const Layers& ls, const char* prefix) {
      const MemberOffsets o = offsets_of(ls, in);
      for (size_t i = 0; i < ls.size(); ++i)
        for (auto t : buffers ? ls[i]->buffers(o.in[i]) : ls[i]->params(o.in[i])) {
          t.name = std::string(prefix) + std::to_string(i) + "." + t.name;
          all.push_back(std::move(t));
        }
    };
    add(main_, "main.");
    add(shortcut_, "shortcut.");
    return all;
  }
  std::string name_;
  Layers main_, shortcut_;
};

}  // namespace

std::unique_ptr<Layer> sequence(std::string name, Layers layers) {
  return std::make_unique<Sequence>(std::move(name), std::move(layers));
}
std::unique_ptr<Layer> residual(std::string name, Layers main, Layers shortcut) {
  return std::make_unique<Residual>(std::move(name), std::move(main), std::move(shortcut));
}

}  // namespace mpsl::nn
