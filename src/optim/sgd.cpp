#include "mpsl/optim/sgd.hpp"

namespace mpsl::optim {

void sgd_update(float* __restrict params, const float* __restrict grads, float* __restrict buf,
                int64_t n, const SgdConfig& cfg) {
  const float lr = cfg.lr, mom = cfg.momentum, wd = cfg.weight_decay;
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const float g = grads[i] + wd * params[i];
    const float b = mom * buf[i] + g;
    buf[i] = b;
    params[i] -= lr * b;
  }
}

void sgd_step(nn::PartState& state, const SgdConfig& cfg) {
  sgd_update(state.params.data(), state.grads.data(), state.momentum.data(), state.params.size(),
             cfg);
  ++state.version;
  ++state.steps;
}

}  // namespace mpsl::optim
