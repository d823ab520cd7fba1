// Helpers shared by the layer implementations (not part of the public interface).
#pragma once

#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>

#include <dnnl.hpp>

#include "mpsl/core/error.hpp"
#include "mpsl/nn/layer.hpp"

namespace mpsl::nn::detail {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

memory::desc plain_desc(const memory::dims& dims);
memory::dims dims4(const Shape& s);
memory::dims dims_of(const Shape& s);  // 2D [N, C] for flat shapes, else 4D
bool is_plain(const memory::desc& d);

// A reorder built on first use and rebuilt only if the descriptors change, with an optional
// destination memory it owns. Nothing is allocated in the steady state.
class Converter {
 public:
  // Returns src itself when it already has `want`, else reorders into an owned memory.
  const memory& to(const memory& src, const memory::desc& want, const dnnl::engine& eng,
                   dnnl::stream& strm);
  // Reorders src into dst (dst = src, or dst += src when accumulate).
  void copy(const memory& src, const memory& dst, dnnl::stream& strm, bool accumulate = false);

 private:
  memory::desc src_desc_, dst_desc_;
  bool accumulate_ = false;
  dnnl::reorder prim_;
  memory owned_;
};

// A user tensor in a plain layout (wrapping a pointer into a flat array) seen in the layout a
// primitive wants; reordered only when the copy or its version changed.
class WeightsCache {
 public:
  WeightsCache() = default;
  WeightsCache(const memory::desc& plain, const memory::desc& want, const dnnl::engine& eng);
  // `stored`: how the tensor at `data` is laid out (empty = plain).
  const memory& get(float* data, const ParamRefs& p, dnnl::stream& strm,
                    const memory::desc& stored = memory::desc());

 private:
  memory plain_, converted_, stored_mem_, direct_, plain_tmp_;
  bool via_plain_ = false;
  memory::desc want_;
  dnnl::reorder stored_prim_;
  bool same_ = true;
  dnnl::reorder prim_;
  const void* owner_ = nullptr;
  const float* data_ = nullptr;
  uint64_t version_ = 0;
};

// Gradient output of a backward-weights primitive: writes straight into the plain gradient
// array when layouts match and nothing accumulates, else goes through a scratch memory.
class GradTarget {
 public:
  GradTarget() = default;
  GradTarget(const memory::desc& plain, const memory::desc& prim, const dnnl::engine& eng);
  // The memory to hand to the primitive as DIFF_WEIGHTS.
  // `stored`: how the gradient array is laid out (empty = plain), like the parameters.
  const memory& target(float* grad, bool accumulate, const memory::desc& stored = memory::desc());
  // Finishes: moves the scratch into the gradient array (adding when accumulate).
  void finish(float* grad, bool accumulate, dnnl::stream& strm,
              const memory::desc& stored = memory::desc());

 private:
  memory plain_, scratch_, direct_, dest_;
  memory::desc prim_desc_;
  bool same_ = true;
  Converter conv_;
  bool used_scratch_ = false;
};

// The stored format of tensor i of a layer (empty = plain).
inline memory::desc stored_format(const ParamRefs& p, int i) {
  return p.formats ? p.formats[i] : memory::desc();
}
inline bool is_empty(const memory::desc& d) {
  return d.data.ndims == 0;
}

inline const float* fptr(const memory& m) {
  return static_cast<const float*>(m.get_data_handle());
}
inline float* fptr_mut(const memory& m) {
  return static_cast<float*>(m.get_data_handle());
}

// Returns a memory slot for the layer slot type T (checked downcast).
template <class T>
T& slot_as(LayerSlot& s) {
  return static_cast<T&>(s);
}

void init_uniform(Rng& rng, float* p, int64_t n, float bound);
void init_normal(Rng& rng, float* p, int64_t n, float stddev);

}  // namespace mpsl::nn::detail
