#include "mpsl/nn/model.hpp"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "detail.hpp"
#include "mpsl/core/error.hpp"

namespace mpsl::nn {

using namespace detail;

std::string Shape::str() const {
  std::ostringstream o;
  o << n << "x" << c;
  if (!flat()) o << "x" << h << "x" << w;
  return o.str();
}

int64_t TensorSpec::elements() const {
  int64_t e = 1;
  for (auto d : dims) e *= d;
  return e;
}

int64_t total_elements(const std::vector<TensorSpec>& specs) {
  int64_t t = 0;
  for (const auto& s : specs) t += s.elements();
  return t;
}

// ---- Model ----------------------------------------------------------------------------------

Model::Model(std::string name, Shape input, int classes)
    : name_(std::move(name)), input_(input), classes_(classes) {}

void Model::add(std::unique_ptr<Layer> unit) {
  units_.push_back(std::move(unit));
}

Shape Model::shape_before(int i, int64_t batch) const {
  MPSL_CHECK(i >= 0 && i <= num_units(), "unit index out of range");
  Shape s = input_shape(batch);
  for (int u = 0; u < i; ++u) s = units_[u]->output_shape(s);
  return s;
}

int Model::ndims_before(int i) const {
  MPSL_CHECK(i >= 0 && i <= num_units(), "unit index out of range");
  int nd = 4;
  for (int u = 0; u < i; ++u) nd = units_[u]->output_ndims(nd);
  return nd;
}

// ---- FloatBuffer ----------------------------------------------------------------------------

void FloatBuffer::Free::operator()(float* p) const {
  std::free(p);
}

FloatBuffer::FloatBuffer(int64_t size) : size_(size) {
  const size_t bytes =
      ((static_cast<size_t>(std::max<int64_t>(size, 1)) * sizeof(float) + 63) / 64) * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw RuntimeFailure("out of memory allocating " + std::to_string(bytes) + " bytes");
  data_.reset(p);
  std::memset(p, 0, bytes);
}

FloatBuffer::FloatBuffer(const FloatBuffer& o) : FloatBuffer(o.size_) {
  if (size_) std::memcpy(data(), o.data(), size_ * sizeof(float));
}

FloatBuffer& FloatBuffer::operator=(const FloatBuffer& o) {
  if (this != &o) {
    if (size_ != o.size_) *this = FloatBuffer(o.size_);
    if (size_) std::memcpy(data(), o.data(), size_ * sizeof(float));
  }
  return *this;
}

void FloatBuffer::fill(float v) {
  std::fill(data(), data() + size_, v);
}

// ---- PartLayout / PartState -----------------------------------------------------------------

PartLayout PartLayout::make(const Model& model, int begin, int end) {
  MPSL_CHECK(0 <= begin && begin <= end && end <= model.num_units(), "bad part range");
  PartLayout l;
  l.begin = begin;
  l.end = end;
  Shape in = model.shape_before(begin, 1);
  for (int u = begin; u < end; ++u) {
    const Layer& layer = model.unit(u);
    l.unit_param_offset.push_back(l.param_count);
    l.unit_buffer_offset.push_back(l.buffer_count);
    for (const auto& t : layer.params(in)) {
      l.tensors.push_back({u, std::to_string(u) + "." + t.name, t.dims, l.param_count, false});
      l.param_count += t.elements();
    }
    for (const auto& t : layer.buffers(in)) {
      l.tensors.push_back({u, std::to_string(u) + "." + t.name, t.dims, l.buffer_count, true});
      l.buffer_count += t.elements();
    }
    in = layer.output_shape(in);
  }
  l.unit_param_offset.push_back(l.param_count);
  l.unit_buffer_offset.push_back(l.buffer_count);
  return l;
}

PartState::PartState(const Model& model, int begin, int end)
    : layout(PartLayout::make(model, begin, end)),
      params(layout.param_count),
      grads(layout.param_count),
      momentum(layout.param_count),
      buffers(layout.buffer_count) {}

void PartState::initialise(const Model& model, uint64_t seed) {
  for (int u = layout.begin; u < layout.end; ++u) {
    Rng rng(seed, 0x1000 + static_cast<uint64_t>(u));
    const int k = u - layout.begin;
    model.unit(u).init(model.shape_before(u, 1), rng, params.data() + layout.unit_param_offset[k],
                       buffers.data() + layout.unit_buffer_offset[k]);
  }
  grads.fill(0.f);
  momentum.fill(0.f);
  ++version;
  steps = 0;
}

Runtime& cpu_runtime() {
  static Runtime rt;
  return rt;
}

// ---- PartProgram ----------------------------------------------------------------------------

PartProgram::PartProgram(const Model& model, int begin, int end, int64_t batch,
                         bool need_input_grad, bool training)
    : begin_(begin), end_(end), need_input_grad_(need_input_grad) {
  MPSL_CHECK(0 <= begin && begin < end && end <= model.num_units(), "bad part range");
  Runtime& rt = cpu_runtime();
  in_ = model.shape_before(begin, batch);
  out_ = model.shape_before(end, batch);
  plain_in_desc_ =
      plain_desc(model.ndims_before(begin) == 2 ? memory::dims{in_.n, in_.c} : dims4(in_));
  memory::desc src = plain_in_desc_;
  for (int u = begin; u < end; ++u) {
    BindArgs a{rt.engine,
               rt.stream,
               src,
               model.shape_before(u, batch),
               u > begin || need_input_grad,
               training,
               static_cast<uint64_t>(u)};
    src_descs_.push_back(src);
    execs_.push_back(model.unit(u).bind(a));
    src = execs_.back()->dst_desc();
  }
  plain_out_desc_ = plain_desc(src.dims());
}

std::unique_ptr<PartSlot> PartProgram::make_slot() const {
  auto s = std::make_unique<PartSlot>();
  s->input = memory(plain_in_desc_, cpu_runtime().engine);
  for (const auto& e : execs_) s->layers.push_back(e->make_slot());
  s->outputs.resize(execs_.size());
  return s;
}

ParamRefs PartProgram::refs(PartState& st, int k) const {
  ParamRefs r;
  r.params = st.params.data() + st.layout.unit_param_offset[k];
  r.grads = st.grads.data() + st.layout.unit_param_offset[k];
  r.buffers = st.buffers.data() + st.layout.unit_buffer_offset[k];
  r.version = st.version;
  r.owner = &st;
  return r;
}

void PartProgram::forward(PartSlot& slot, PartState& state, const float* input, float* output,
                          const StepInfo& info) {
  MPSL_CHECK(state.layout.begin == begin_ && state.layout.end == end_, "state of another part");
  Runtime& rt = cpu_runtime();
  std::memcpy(slot.input.get_data_handle(), input, in_.elements() * sizeof(float));
  const memory* x = &slot.input;
  for (size_t k = 0; k < execs_.size(); ++k) {
    x = &execs_[k]->forward(*x, *slot.layers[k], refs(state, static_cast<int>(k)), info);
    slot.outputs[k] = x;
  }
  if (output) {
    memory out(plain_out_desc_, rt.engine, output);
    if (x->get_desc() == plain_out_desc_)
      std::memcpy(output, x->get_data_handle(), out_.elements() * sizeof(float));
    else
      dnnl::reorder(*x, out).execute(rt.stream, const_cast<memory&>(*x), out);
  }
  rt.stream.wait();
}

void PartProgram::backward(PartSlot& slot, PartState& state, const float* diff_output,
                           float* diff_input, const StepInfo& info, bool accumulate) {
  Runtime& rt = cpu_runtime();
  memory d(plain_out_desc_, rt.engine, const_cast<float*>(diff_output));
  const memory* dd = &d;
  for (size_t k = execs_.size(); k-- > 0;) {
    const memory& x = k == 0 ? slot.input : *slot.outputs[k - 1];
    dd = &execs_[k]->backward(x, *dd, *slot.layers[k], refs(state, static_cast<int>(k)), info,
                              accumulate);
  }
  if (diff_input) {
    MPSL_CHECK(need_input_grad_ && *dd, "program bound without input gradient");
    memory out(plain_in_desc_, rt.engine, diff_input);
    if (dd->get_desc() == plain_in_desc_)
      std::memcpy(diff_input, dd->get_data_handle(), in_.elements() * sizeof(float));
    else
      dnnl::reorder(*dd, out).execute(rt.stream, const_cast<memory&>(*dd), out);
  }
  rt.stream.wait();
}

}  // namespace mpsl::nn
