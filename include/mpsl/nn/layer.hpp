// The unit of a model: a layer (or an indivisible block such as a residual block) that can be
// cut from its neighbours. A Layer is a description (shapes, parameters, FLOPs); binding it to
// an engine and a batch shape gives a LayerExec that holds oneDNN primitives built once and
// reused every step. Activations of one batch in flight live in a LayerSlot, so one program
// can serve several batches (owners, micro-batches) in flight at the same time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <dnnl.hpp>

#include "mpsl/core/rng.hpp"
#include "mpsl/nn/shape.hpp"

namespace mpsl::nn {

// A named tensor inside a part's flat parameter (or buffer) array, in a plain layout:
// conv [O, I/groups, KH, KW], linear [out, in] (inputs in NCHW flatten order), bias [O],
// batch-norm gamma, beta [C]; buffers: running_mean, running_var [C].
struct TensorSpec {
  std::string name;  // e.g. "weight", "bias", "bn1.running_mean"
  std::vector<int64_t> dims;
  int64_t elements() const;
};

// What a step needs to know besides the data: for counter-based randomness (dropout masks) and
// the loss scaling of micro-batches.
struct StepInfo {
  uint64_t seed = 0;          // run seed
  uint64_t step = 0;          // global optimiser step of this copy
  int64_t sample_offset = 0;  // index of this (micro-)batch's first sample within the batch
  bool training = true;
  uint64_t owner = 0;  // logical data owner whose batch this is
};

// Per-batch-in-flight state of one layer (its output activation, pooling workspace, ...).
struct LayerSlot {
  virtual ~LayerSlot() = default;
};

// Where a layer finds its parameters, gradients and buffers for the copy being run.
struct ParamRefs {
  float* params = nullptr;      // this layer's trainable parameters
  float* grads = nullptr;       // same size: gradients (written or accumulated by backward)
  float* buffers = nullptr;     // non-trained state (BN running statistics)
  uint64_t version = 0;         // changes whenever params change (lets execs cache reorders)
  const void* owner = nullptr;  // identity of the copy (with version, the cache key)
  // How each parameter tensor is stored, one per tensor in params() order: an empty descriptor
  // (or a null array) means the plain layout; otherwise oneDNN's layout for the tensor, which
  // saves reorders every step (see PartState::adopt_formats).
  const dnnl::memory::desc* formats = nullptr;
};

class LayerExec {
 public:
  virtual ~LayerExec() = default;
  // Appends the layout the forward primitive wants for each parameter tensor (params()
  // order; an empty descriptor where plain is best or the tensor is not a weight).
  virtual void param_formats(std::vector<dnnl::memory::desc>& out) const {}
  virtual std::unique_ptr<LayerSlot> make_slot() const = 0;
  // The descriptor of the memory forward() returns.
  virtual const dnnl::memory::desc& dst_desc() const = 0;
  // Runs forward on src (whose descriptor is the one given at bind time). The returned memory
  // lives in the slot and stays valid until the slot runs forward again.
  virtual const dnnl::memory& forward(const dnnl::memory& src, LayerSlot& slot, const ParamRefs& p,
                                      const StepInfo& info) = 0;
  // Runs backward. src is the memory forward received; diff_dst may have any layout with the
  // output's dims. Writes (accumulate=false) or adds (accumulate=true) the parameter gradients
  // into p.grads. Returns diff_src (an empty memory when the exec was bound without it).
  virtual const dnnl::memory& backward(const dnnl::memory& src, const dnnl::memory& diff_dst,
                                       LayerSlot& slot, const ParamRefs& p, const StepInfo& info,
                                       bool accumulate) = 0;
};

struct BindArgs {
  dnnl::engine engine;
  dnnl::stream stream;
  dnnl::memory::desc src_desc;  // the layout the src will arrive in
  Shape in;                     // logical input shape (batch included)
  bool need_diff_src = true;    // false for the first layer of the model
  bool training = true;
  uint64_t layer_id = 0;  // unit index in the model (keys dropout randomness)
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::string type() const = 0;
  // One line for `mpsl inspect`, e.g. "conv3x3 1->32 s1 p1 +relu".
  virtual std::string describe() const = 0;
  virtual Shape output_shape(const Shape& in) const = 0;
  // Rank of the output memory (4 = [N,C,H,W], 2 = [N,C]) given the input's rank.
  virtual int output_ndims(int input_ndims) const { return 4; }
  virtual std::vector<TensorSpec> params(const Shape& in) const { return {}; }
  virtual std::vector<TensorSpec> buffers(const Shape& in) const { return {}; }
  // Fills params and buffers with their initial values (torch-compatible distributions).
  virtual void init(const Shape& in, Rng& rng, float* params, float* buffers) const {}
  // Multiply-adds counted as 2 FLOPs, for one forward pass over `in`.
  virtual double forward_flops(const Shape& in) const = 0;
  virtual std::unique_ptr<LayerExec> bind(const BindArgs& args) const = 0;
};

int64_t total_elements(const std::vector<TensorSpec>& specs);

}  // namespace mpsl::nn
