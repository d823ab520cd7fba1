#include "mpsl/nn/model.hpp"

#include <chrono>
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

FloatBuffer::FloatBuffer(int64_t size, Uninitialised) : size_(size) {
  const size_t used = static_cast<size_t>(std::max<int64_t>(size, 0)) * sizeof(float);
  const size_t bytes = ((std::max<size_t>(used, sizeof(float)) + 63) / 64) * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw RuntimeFailure("out of memory allocating " + std::to_string(bytes) + " bytes");
  data_.reset(p);
  std::memset(reinterpret_cast<char*>(p) + used, 0, bytes - used);
}

FloatBuffer::FloatBuffer(int64_t size) : FloatBuffer(size, Uninitialised{}) {
  if (size_ > 0) std::memset(data(), 0, size_ * sizeof(float));
}

// A copy writes every element once: zeroing them first would be a second pass over memory the
// size of a model part (vgg19's FC stage: 1.5 GB per copy).
FloatBuffer::FloatBuffer(const FloatBuffer& o) : FloatBuffer(o.size_, Uninitialised{}) {
  if (size_ > 0) std::memcpy(data(), o.data(), size_ * sizeof(float));
}

FloatBuffer& FloatBuffer::operator=(const FloatBuffer& o) {
  if (this != &o) {
    if (size_ != o.size_) *this = FloatBuffer(o.size_, Uninitialised{});
    if (size_ > 0) std::memcpy(data(), o.data(), size_ * sizeof(float));
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

int PartState::first_tensor_of_unit(int unit) const {
  for (size_t i = 0; i < layout.tensors.size(); ++i)
    if (layout.tensors[i].unit == unit) return static_cast<int>(i);
  return static_cast<int>(layout.tensors.size());
}

bool PartState::plain() const {
  for (const auto& f : formats)
    if (f.data.ndims != 0) return false;
  return true;
}

namespace {
// Reorders `n` floats at `src` (layout from) to `dst` (layout to), through oneDNN.
void reorder_tensor(const memory::desc& from, const float* src, const memory::desc& to,
                    float* dst) {
  Runtime& rt = cpu_runtime();
  memory a(from, rt.engine, const_cast<float*>(src)), b(to, rt.engine, dst);
  dnnl::reorder(a, b).execute(rt.stream, a, b);
  rt.stream.wait();
}
}  // namespace

void PartState::adopt_formats(const PartProgram& program) {
  const std::vector<memory::desc> wanted = program.param_formats();
  formats.resize(layout.tensors.size());
  size_t next = 0;
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const auto& e = layout.tensors[i];
    if (e.buffer) continue;
    MPSL_CHECK(next < wanted.size(), "program and state disagree on the parameter tensors");
    const memory::desc want = wanted[next++];
    if (want.data.ndims == 0 || formats[i] == want) continue;
    const memory::desc plain = plain_desc(want.dims());
    const int64_t n = TensorSpec{e.name, e.dims}.elements();
    // Only layouts without padding fit in the tensor's place in the flat arrays.
    if (want == plain || want.get_size() != static_cast<size_t>(n) * sizeof(float)) continue;
    for (FloatBuffer* a : {&params, &momentum}) {
      std::vector<float> values = plain_values(e, *a);
      reorder_tensor(plain, values.data(), want, a->data() + e.offset);
    }
    formats[i] = want;
  }
  grads.fill(0.f);
  ++version;
}

std::vector<float> PartState::plain_values(const PartLayout::Entry& e,
                                           const FloatBuffer& array) const {
  const int64_t n = TensorSpec{e.name, e.dims}.elements();
  std::vector<float> out(n);
  const size_t i = &e - layout.tensors.data();
  const float* src = array.data() + e.offset;
  if (e.buffer || i >= formats.size() || formats[i].data.ndims == 0) {
    std::copy(src, src + n, out.begin());
  } else {
    reorder_tensor(formats[i], src, plain_desc(formats[i].dims()), out.data());
  }
  return out;
}

void PartState::set_plain_values(const PartLayout::Entry& e, const float* values,
                                 FloatBuffer& array) {
  const int64_t n = TensorSpec{e.name, e.dims}.elements();
  const size_t i = &e - layout.tensors.data();
  float* dst = array.data() + e.offset;
  if (e.buffer || i >= formats.size() || formats[i].data.ndims == 0) {
    std::copy(values, values + n, dst);
  } else {
    reorder_tensor(plain_desc(formats[i].dims()), values, formats[i], dst);
  }
  if (&array == &params) ++version;
}

FloatBuffer PartState::plain_array(const FloatBuffer& array) const {
  FloatBuffer out(array.size());
  for (const auto& e : layout.tensors) {
    if (e.buffer) continue;
    const std::vector<float> v = plain_values(e, array);
    std::copy(v.begin(), v.end(), out.data() + e.offset);
  }
  return out;
}

void PartState::initialise(const Model& model, uint64_t seed) {
  formats.assign(layout.tensors.size(), memory::desc());  // initial values are plain
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
  if (!st.formats.empty() && !st.plain())
    r.formats = st.formats.data() + st.first_tensor_of_unit(begin_ + k);
  return r;
}

std::vector<memory::desc> PartProgram::param_formats() const {
  std::vector<memory::desc> out;
  for (const auto& e : execs_) e->param_formats(out);
  return out;
}

void PartProgram::forward(PartSlot& slot, PartState& state, const float* input, float* output,
                          const StepInfo& info) {
  MPSL_CHECK(state.layout.begin == begin_ && state.layout.end == end_, "state of another part");
  Runtime& rt = cpu_runtime();
  using Clock = std::chrono::steady_clock;
  auto t = times_ ? Clock::now() : Clock::time_point();
  auto lap = [&](std::vector<double>& v, size_t k) {
    if (!times_) return;
    rt.stream.wait();
    const auto now = Clock::now();
    v[k] += std::chrono::duration<double>(now - t).count();
    t = now;
  };
  if (times_) {
    times_->forward.resize(execs_.size(), 0.0);
    times_->backward.resize(execs_.size(), 0.0);
  }
  std::memcpy(slot.input.get_data_handle(), input, in_.elements() * sizeof(float));
  const memory* x = &slot.input;
  for (size_t k = 0; k < execs_.size(); ++k) {
    x = &execs_[k]->forward(*x, *slot.layers[k], refs(state, static_cast<int>(k)), info);
    slot.outputs[k] = x;
    if (k + 1 < execs_.size() && times_) lap(times_->forward, k);
  }
  if (output) {
    memory out(plain_out_desc_, rt.engine, output);
    if (x->get_desc() == plain_out_desc_)
      std::memcpy(output, x->get_data_handle(), out_.elements() * sizeof(float));
    else
      dnnl::reorder(*x, out).execute(rt.stream, const_cast<memory&>(*x), out);
  }
  rt.stream.wait();
  if (times_) lap(times_->forward, execs_.size() - 1);
}

void PartProgram::backward(PartSlot& slot, PartState& state, const float* diff_output,
                           float* diff_input, const StepInfo& info, bool accumulate) {
  Runtime& rt = cpu_runtime();
  using Clock = std::chrono::steady_clock;
  auto t = times_ ? Clock::now() : Clock::time_point();
  memory d(plain_out_desc_, rt.engine, const_cast<float*>(diff_output));
  const memory* dd = &d;
  for (size_t k = execs_.size(); k-- > 0;) {
    const memory& x = k == 0 ? slot.input : *slot.outputs[k - 1];
    dd = &execs_[k]->backward(x, *dd, *slot.layers[k], refs(state, static_cast<int>(k)), info,
                              accumulate);
    if (times_ && k > 0) {
      rt.stream.wait();
      const auto now = Clock::now();
      times_->backward[k] += std::chrono::duration<double>(now - t).count();
      t = now;
    }
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
  if (times_) times_->backward[0] += std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace mpsl::nn
