// The concrete layers (units) mpsl models are made of.
#pragma once

#include <memory>
#include <vector>

#include "mpsl/nn/layer.hpp"

namespace mpsl::nn {

enum class Init {
  kTorchDefault,      // torch.nn default: U(+-1/sqrt(fan_in)) for weight and bias
  kKaimingNormalOut,  // torchvision VGG/ResNet convs: N(0, sqrt(2/fan_out)), bias 0
  kNormal001,         // torchvision VGG linears: N(0, 0.01), bias 0
};

struct ConvSpec {
  int64_t out_channels = 0;
  int64_t kernel = 3, stride = 1, pad = 1, groups = 1;
  bool bias = true;
  bool relu = false;  // ReLU fused as a post-op
  Init init = Init::kTorchDefault;
};

struct PoolSpec {
  int64_t kernel = 2, stride = 2, pad = 0;
};

std::unique_ptr<Layer> conv2d(ConvSpec spec);
std::unique_ptr<Layer> linear(int64_t out_features, bool relu = false,
                              Init init = Init::kTorchDefault);
std::unique_ptr<Layer> relu();
std::unique_ptr<Layer> max_pool(PoolSpec spec);
// Average pooling counting padded zeros (torch's count_include_pad=True).
std::unique_ptr<Layer> avg_pool(PoolSpec spec);
std::unique_ptr<Layer> global_avg_pool();
// torch.nn.AdaptiveAvgPool2d((out_h, out_w)).
std::unique_ptr<Layer> adaptive_avg_pool(int64_t out_h, int64_t out_w);
// BatchNorm2d (eps 1e-5, momentum 0.1, affine, running statistics), optionally with ReLU.
std::unique_ptr<Layer> batch_norm(bool relu = false);
// Inverted dropout with probability p; masks depend only on (seed, unit, step, sample, element).
std::unique_ptr<Layer> dropout(float p);
std::unique_ptr<Layer> flatten();

// A residual block is one indivisible unit: out = relu(main(x) + shortcut(x)), where the
// shortcut is the identity when `shortcut` is empty.
std::unique_ptr<Layer> residual(std::string name, std::vector<std::unique_ptr<Layer>> main,
                                std::vector<std::unique_ptr<Layer>> shortcut);

// A chain of layers run as one unit (e.g. a stem conv + bn + relu + pool).
std::unique_ptr<Layer> sequence(std::string name, std::vector<std::unique_ptr<Layer>> layers);

}  // namespace mpsl::nn
