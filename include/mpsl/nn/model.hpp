// A model is a sequence of units that can be cut between any two of them. A Part is a contiguous
// range of units; a PartState holds one copy of a part's parameters, gradients, buffers and
// optimiser state, each in one flat array; a PartProgram runs a part for one batch shape.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <dnnl.hpp>

#include "mpsl/nn/layer.hpp"

namespace mpsl::nn {

class Model {
 public:
  Model(std::string name, Shape input /* batch ignored */, int classes);
  void add(std::unique_ptr<Layer> unit);

  const std::string& name() const { return name_; }
  Shape input_shape(int64_t batch) const { return input_.with_batch(batch); }
  int classes() const { return classes_; }
  int num_units() const { return static_cast<int>(units_.size()); }
  const Layer& unit(int i) const { return *units_.at(i); }
  // Input shape of unit i (i == num_units() gives the model output).
  Shape shape_before(int i, int64_t batch) const;
  // Rank of the activation memory entering unit i in a whole-model run (4 or 2); a part that
  // starts at unit i takes its input with this rank.
  int ndims_before(int i) const;

 private:
  std::string name_;
  Shape input_;
  int classes_;
  std::vector<std::unique_ptr<Layer>> units_;
};

// 64-byte aligned float array (no per-step allocation: sized once).
class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(int64_t size);
  FloatBuffer(const FloatBuffer& o);
  FloatBuffer& operator=(const FloatBuffer& o);
  FloatBuffer(FloatBuffer&&) noexcept = default;
  FloatBuffer& operator=(FloatBuffer&&) noexcept = default;
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  int64_t size() const { return size_; }
  float& operator[](int64_t i) { return data_[i]; }
  float operator[](int64_t i) const { return data_[i]; }
  void fill(float v);

 private:
  struct Uninitialised {};
  // Allocated, with only the rounding past `size` zeroed: for a copy that writes every element.
  FloatBuffer(int64_t size, Uninitialised);
  struct Free {
    void operator()(float* p) const;
  };
  std::unique_ptr<float[], Free> data_;
  int64_t size_ = 0;
};

// Where each unit's tensors sit inside a part's flat arrays.
struct PartLayout {
  int begin = 0, end = 0;  // units [begin, end)
  struct Entry {
    int unit;
    std::string name;  // "<unit>.<tensor>", e.g. "3.weight"
    std::vector<int64_t> dims;
    int64_t offset;
    bool buffer;  // true: in the buffers array, false: in params/grads
  };
  std::vector<Entry> tensors;
  std::vector<int64_t> unit_param_offset, unit_buffer_offset;  // per unit in range, + end
  int64_t param_count = 0, buffer_count = 0;

  static PartLayout make(const Model& model, int begin, int end);
};

class PartProgram;

// One copy of a part: the state an owner (or a stage, per owner) keeps.
//
// Parameters (and their gradients and momentum) are plain by default. adopt_formats() stores
// each weight tensor in the layout its forward primitive wants instead (where that layout has
// no padding), which saves two reorders of every weight per step; averaging and SGD work on the
// arrays element by element, so copies with the same formats combine as before. Code that
// needs plain values (model files, checkpoints, transfers) uses plain_values/set_plain_values.
struct PartState {
  PartLayout layout;
  FloatBuffer params, grads, momentum, buffers;
  std::vector<dnnl::memory::desc> formats;  // per layout.tensors entry; empty = plain
  uint64_t version = 1;                     // bump after every change to params
  uint64_t steps = 0;                       // optimiser steps taken

  PartState() = default;
  PartState(const Model& model, int begin, int end);
  // Torch-compatible initialisation from a counter-based stream per unit: the values of unit i
  // depend only on (seed, i), whatever the cut points.
  void initialise(const Model& model, uint64_t seed);

  // Re-stores weights (params and momentum) in the layouts `program` wants.
  void adopt_formats(const PartProgram& program);
  bool plain() const;
  // One tensor's values in its plain layout (`array` = params or momentum of this state).
  std::vector<float> plain_values(const PartLayout::Entry& e, const FloatBuffer& array) const;
  void set_plain_values(const PartLayout::Entry& e, const float* values, FloatBuffer& array);
  // The whole params (or momentum) array in plain layouts.
  FloatBuffer plain_array(const FloatBuffer& array) const;
  // Index (in layout.tensors) of unit `unit`'s first tensor.
  int first_tensor_of_unit(int unit) const;
};

// Activations of one batch in flight through a part.
struct PartSlot {
  dnnl::memory input;  // copy of the part's input in the first layer's layout
  std::vector<std::unique_ptr<LayerSlot>> layers;
  std::vector<const dnnl::memory*> outputs;  // per layer, the forward result
};

struct Runtime {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};
Runtime& cpu_runtime();

// A part bound to one batch size: primitives built once, reused every step.
class PartProgram {
 public:
  PartProgram(const Model& model, int begin, int end, int64_t batch, bool need_input_grad,
              bool training);
  int64_t batch() const { return in_.n; }
  Shape input_shape() const { return in_; }
  Shape output_shape() const { return out_; }
  std::unique_ptr<PartSlot> make_slot() const;
  // The layout the forward primitives want for each parameter tensor (layout order).
  std::vector<dnnl::memory::desc> param_formats() const;

  // input: plain NCHW floats; output: plain NCHW floats (both batch x per_sample).
  void forward(PartSlot& slot, PartState& state, const float* input, float* output,
               const StepInfo& info);
  // diff_output: plain; diff_input: plain, or nullptr when not needed. Gradients are written
  // to state.grads, or added to them when accumulate is true (micro-batches).
  void backward(PartSlot& slot, PartState& state, const float* diff_output, float* diff_input,
                const StepInfo& info, bool accumulate);

  // Profiling: when set, forward and backward add each unit's seconds to these vectors (one
  // entry per unit of the part; the plain input copy and output reorder count to the first and
  // last unit). oneDNN's CPU primitives run synchronously, so the split is exact.
  struct UnitTimes {
    std::vector<double> forward, backward;
  };
  void set_unit_times(UnitTimes* times) { times_ = times; }

 private:
  UnitTimes* times_ = nullptr;
  ParamRefs refs(PartState& state, int i) const;
  int begin_, end_;
  Shape in_, out_;
  bool need_input_grad_;
  std::vector<std::unique_ptr<LayerExec>> execs_;
  dnnl::memory::desc input_desc_, plain_in_desc_, plain_out_desc_;
  std::vector<dnnl::memory::desc> src_descs_;
  dnnl::memory diff_scratch_;  // plain diff_output reordered to the last layer's layout
};

}  // namespace mpsl::nn
