#include "detail.hpp"

#include <cmath>

namespace mpsl::nn::detail {

memory::desc plain_desc(const memory::dims& dims) {
  switch (dims.size()) {
    case 1:
      return {dims, dt::f32, tag::a};
    case 2:
      return {dims, dt::f32, tag::ab};
    case 3:
      return {dims, dt::f32, tag::abc};
    case 4:
      return {dims, dt::f32, tag::abcd};
    case 5:
      return {dims, dt::f32, tag::abcde};
  }
  MPSL_CHECK(false, "unsupported rank " + std::to_string(dims.size()));
}

memory::dims dims4(const Shape& s) {
  return {s.n, s.c, s.h, s.w};
}
memory::dims dims_of(const Shape& s) {
  return s.flat() ? memory::dims{s.n, s.c} : memory::dims{s.n, s.c, s.h, s.w};
}

bool is_plain(const memory::desc& d) {
  return d == plain_desc(d.dims());
}

const memory& Converter::to(const memory& src, const memory::desc& want, const dnnl::engine& eng,
                            dnnl::stream& strm) {
  const memory::desc have = src.get_desc();
  if (have == want) return src;
  if (!owned_ || !(owned_.get_desc() == want)) owned_ = memory(want, eng);
  copy(src, owned_, strm);
  return owned_;
}

void Converter::copy(const memory& src, const memory& dst, dnnl::stream& strm, bool accumulate) {
  const memory::desc sd = src.get_desc(), dd = dst.get_desc();
  if (!prim_ || !(sd == src_desc_) || !(dd == dst_desc_) || accumulate != accumulate_) {
    dnnl::primitive_attr attr;
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.f);
      attr.set_post_ops(ops);
    }
    prim_ = dnnl::reorder(dnnl::reorder::primitive_desc(src, dst, attr));
    src_desc_ = sd;
    dst_desc_ = dd;
    accumulate_ = accumulate;
  }
  prim_.execute(strm, const_cast<memory&>(src), const_cast<memory&>(dst));
}

WeightsCache::WeightsCache(const memory::desc& plain, const memory::desc& want,
                           const dnnl::engine& eng)
    : plain_(plain, eng, DNNL_MEMORY_NONE), want_(want), same_(plain == want) {
  direct_ = memory(want, eng, DNNL_MEMORY_NONE);
  // The converted copy is allocated on first use: weights stored as the primitive wants them
  // (PartState::adopt_formats) never need it, and for a large layer it is as large as its
  // weights (vgg19's 25088 x 4096 layer: 392 MiB allocated and never touched).
  if (!same_) prim_ = dnnl::reorder(dnnl::reorder::primitive_desc(eng, plain, eng, want));
}

const memory& WeightsCache::get(float* data, const ParamRefs& p, dnnl::stream& strm,
                                const memory::desc& stored) {
  if (!is_empty(stored)) {
    if (stored == want_) {  // stored as the primitive wants it: no copy at all
      direct_.set_data_handle(data);
      return direct_;
    }
    if (owner_ != p.owner || version_ != p.version || data_ != data) {
      if (!stored_mem_ || !(stored_mem_.get_desc() == stored)) {
        const dnnl::engine eng = plain_.get_engine();
        stored_mem_ = memory(stored, eng, DNNL_MEMORY_NONE);
        if (!converted_) converted_ = memory(want_, eng);
        // Some layouts (Winograd's inference weights) are reachable only from plain: then go
        // through a plain copy.
        try {
          stored_prim_ = dnnl::reorder(dnnl::reorder::primitive_desc(eng, stored, eng, want_));
          via_plain_ = false;
        } catch (const dnnl::error&) {
          via_plain_ = true;
          plain_tmp_ = memory(plain_.get_desc(), eng);
          stored_prim_ =
              dnnl::reorder(dnnl::reorder::primitive_desc(eng, stored, eng, plain_.get_desc()));
          if (!prim_)
            prim_ =
                dnnl::reorder(dnnl::reorder::primitive_desc(eng, plain_.get_desc(), eng, want_));
        }
      }
      stored_mem_.set_data_handle(data);
      if (via_plain_) {
        stored_prim_.execute(strm, stored_mem_, plain_tmp_);
        prim_.execute(strm, plain_tmp_, converted_);
      } else {
        stored_prim_.execute(strm, stored_mem_, converted_);
      }
      owner_ = p.owner;
      version_ = p.version;
      data_ = data;
    }
    return converted_;
  }
  if (plain_.get_data_handle() != data) plain_.set_data_handle(data);
  if (same_) return plain_;
  if (!converted_) converted_ = memory(want_, plain_.get_engine());
  if (owner_ != p.owner || version_ != p.version || data_ != data) {
    prim_.execute(strm, plain_, converted_);
    owner_ = p.owner;
    version_ = p.version;
    data_ = data;
  }
  return converted_;
}

GradTarget::GradTarget(const memory::desc& plain, const memory::desc& prim, const dnnl::engine& eng)
    : plain_(plain, eng, DNNL_MEMORY_NONE), prim_desc_(prim), same_(plain == prim) {
  scratch_ = memory(prim, eng);
  direct_ = memory(prim, eng, DNNL_MEMORY_NONE);
}

const memory& GradTarget::target(float* grad, bool accumulate, const memory::desc& stored) {
  const bool same = is_empty(stored) ? same_ : stored == prim_desc_;
  used_scratch_ = accumulate || !same;
  if (used_scratch_) return scratch_;
  direct_.set_data_handle(grad);
  return direct_;
}

void GradTarget::finish(float* grad, bool accumulate, dnnl::stream& strm,
                        const memory::desc& stored) {
  if (!used_scratch_) return;
  if (is_empty(stored)) {
    plain_.set_data_handle(grad);
    conv_.copy(scratch_, plain_, strm, accumulate);
    return;
  }
  if (!dest_ || !(dest_.get_desc() == stored))
    dest_ = memory(stored, scratch_.get_engine(), DNNL_MEMORY_NONE);
  dest_.set_data_handle(grad);
  conv_.copy(scratch_, dest_, strm, accumulate);
}

void init_uniform(Rng& rng, float* p, int64_t n, float bound) {
  for (int64_t i = 0; i < n; ++i) p[i] = rng.uniform(-bound, bound);
}

void init_normal(Rng& rng, float* p, int64_t n, float stddev) {
  for (int64_t i = 0; i < n; ++i) p[i] = rng.normal() * stddev;
}

}  // namespace mpsl::nn::detail
