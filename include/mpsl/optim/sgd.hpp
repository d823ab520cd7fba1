// SGD with momentum and weight decay, with torch.optim.SGD's semantics (dampening 0):
//   g = grad + weight_decay * w;  buf = momentum * buf + g;  w -= lr * buf
#pragma once

#include <cstdint>

#include "mpsl/nn/model.hpp"

namespace mpsl::optim {

struct SgdConfig {
  float lr = 0.01f;
  float momentum = 0.9f;
  float weight_decay = 1e-4f;
};

// Updates params from grads over n elements (momentum buffer in `buf`).
void sgd_update(float* params, const float* grads, float* buf, int64_t n, const SgdConfig& cfg);

// One optimiser step on a part copy; bumps its version and step count.
void sgd_step(nn::PartState& state, const SgdConfig& cfg);

}  // namespace mpsl::optim
