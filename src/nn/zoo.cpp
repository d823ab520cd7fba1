#include "mpsl/nn/zoo.hpp"

#include "mpsl/core/error.hpp"
#include "mpsl/nn/layers.hpp"

namespace mpsl::nn {
namespace {

using Layers = std::vector<std::unique_ptr<Layer>>;

template <class... T>
Layers layers(T&&... l) {
  Layers v;
  (v.push_back(std::forward<T>(l)), ...);
  return v;
}

ConvSpec conv(int64_t out, int64_t k, int64_t stride, int64_t pad, bool bias, bool relu,
              Init init) {
  ConvSpec s;
  s.out_channels = out;
  s.kernel = k;
  s.stride = stride;
  s.pad = pad;
  s.bias = bias;
  s.relu = relu;
  s.init = init;
  return s;
}

std::unique_ptr<Model> fmnist_cnn() {
  auto m = std::make_unique<Model>("fmnist-cnn", Shape{1, 1, 28, 28}, 10);
  const Init t = Init::kTorchDefault;
  m->add(conv2d(conv(32, 3, 1, 1, true, true, t)));
  m->add(conv2d(conv(32, 3, 1, 1, true, true, t)));
  m->add(max_pool({2, 2, 0}));
  m->add(conv2d(conv(64, 3, 1, 1, true, true, t)));
  m->add(conv2d(conv(64, 3, 1, 1, true, true, t)));
  m->add(max_pool({2, 2, 0}));
  m->add(flatten());
  m->add(linear(128, true));
  m->add(linear(10, false));
  return m;
}

std::unique_ptr<Model> lenet5() {
  auto m = std::make_unique<Model>("lenet5", Shape{1, 1, 28, 28}, 10);
  const Init t = Init::kTorchDefault;
  m->add(conv2d(conv(6, 5, 1, 2, true, true, t)));
  m->add(max_pool({2, 2, 0}));
  m->add(conv2d(conv(16, 5, 1, 0, true, true, t)));
  m->add(max_pool({2, 2, 0}));
  m->add(flatten());
  m->add(linear(120, true));
  m->add(linear(84, true));
  m->add(linear(10, false));
  return m;
}

// torchvision VGG with 10 classes at 32x32: features, adaptive avgpool 7x7, 3-layer classifier.
std::unique_ptr<Model> vgg(const std::string& name, const std::vector<int>& cfg) {
  auto m = std::make_unique<Model>(name, Shape{1, 3, 32, 32}, 10);
  for (int c : cfg) {
    if (c == 0)
      m->add(max_pool({2, 2, 0}));
    else
      m->add(conv2d(conv(c, 3, 1, 1, true, true, Init::kKaimingNormalOut)));
  }
  m->add(adaptive_avg_pool(7, 7));
  m->add(flatten());
  m->add(linear(4096, true, Init::kNormal001));
  m->add(dropout(0.5f));
  m->add(linear(4096, true, Init::kNormal001));
  m->add(dropout(0.5f));
  m->add(linear(10, false, Init::kNormal001));
  return m;
}

std::unique_ptr<Layer> bn(bool relu) {
  return batch_norm(relu);
}

// torchvision BasicBlock: conv3x3(stride)-bn-relu-conv3x3-bn, 1x1(stride)+bn shortcut.
std::unique_ptr<Layer> basic_block(const std::string& name, int64_t in, int64_t out, int64_t stride,
                                   bool authors_shortcut) {
  const Init k = Init::kKaimingNormalOut;
  Layers main = layers(conv2d(conv(out, 3, stride, 1, false, false, k)), bn(true),
                       conv2d(conv(out, 3, 1, 1, false, false, k)), bn(false));
  Layers shortcut;
  if (authors_shortcut) {
    if (stride != 1 || in != out)
      shortcut = layers(conv2d(conv(out, 3, 2, 1, false, false, k)), bn(false));
  } else if (stride != 1 || in != out) {
    shortcut = layers(conv2d(conv(out, 1, stride, 0, false, false, k)), bn(false));
  }
  return residual(name, std::move(main), std::move(shortcut));
}

// torchvision Bottleneck (v1.5: stride on the 3x3): 1x1-bn-relu-3x3(s)-bn-relu-1x1(x4)-bn.
std::unique_ptr<Layer> bottleneck(const std::string& name, int64_t in, int64_t planes,
                                  int64_t stride) {
  const Init k = Init::kKaimingNormalOut;
  const int64_t out = planes * 4;
  Layers main = layers(conv2d(conv(planes, 1, 1, 0, false, false, k)), bn(true),
                       conv2d(conv(planes, 3, stride, 1, false, false, k)), bn(true),
                       conv2d(conv(out, 1, 1, 0, false, false, k)), bn(false));
  Layers shortcut;
  if (stride != 1 || in != out)
    shortcut = layers(conv2d(conv(out, 1, stride, 0, false, false, k)), bn(false));
  return residual(name, std::move(main), std::move(shortcut));
}

// torchvision ResNet (ImageNet stem) with 10 classes.
std::unique_ptr<Model> resnet(const std::string& name, const std::vector<int>& blocks,
                              bool use_bottleneck) {
  auto m = std::make_unique<Model>(name, Shape{1, 3, 32, 32}, 10);
  m->add(conv2d(conv(64, 7, 2, 3, false, false, Init::kKaimingNormalOut)));
  m->add(bn(true));
  m->add(max_pool({3, 2, 1}));
  int64_t in = 64;
  for (int s = 0; s < 4; ++s) {
    const int64_t planes = 64 << s;
    for (int j = 0; j < blocks[s]; ++j) {
      const int64_t stride = (s > 0 && j == 0) ? 2 : 1;
      const std::string bname = "layer" + std::to_string(s + 1) + "." + std::to_string(j);
      if (use_bottleneck) {
        m->add(bottleneck(bname, in, planes, stride));
        in = planes * 4;
      } else {
        m->add(basic_block(bname, in, planes, stride, false));
        in = planes;
      }
    }
  }
  m->add(global_avg_pool());
  m->add(flatten());
  m->add(linear(10, false));
  return m;
}

// The MP-SL authors' basic-block ResNet-101: stem conv7x7/2 (bias) -> maxpool3/2 -> bn -> relu,
// blocks [3,4,23,3], 3x3/2 conv + bn shortcuts where the shape changes.
std::unique_ptr<Model> resnet101_basic() {
  auto m = std::make_unique<Model>("resnet101-basic", Shape{1, 3, 32, 32}, 10);
  m->add(conv2d(conv(64, 7, 2, 3, true, false, Init::kKaimingNormalOut)));
  m->add(max_pool({3, 2, 1}));
  m->add(bn(true));
  const std::vector<int> blocks{3, 4, 23, 3};
  const int64_t widths[] = {64, 64, 128, 256, 512};
  for (int s = 0; s < 4; ++s) {
    int64_t in = widths[s];
    const int64_t out = widths[s + 1];
    for (int j = 0; j < blocks[s]; ++j) {
      const int64_t stride = (s > 0 && j == 0) ? 2 : 1;
      m->add(basic_block("layer" + std::to_string(s + 1) + "." + std::to_string(j), in, out, stride,
                         true));
      in = out;
    }
  }
  m->add(global_avg_pool());
  m->add(flatten());
  m->add(linear(10, false));
  return m;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> zoo_models() {
  return {{"fmnist-cnn", "conv32-conv32-pool-conv64-conv64-pool-fc128-fc10 (1x28x28)"},
          {"lenet5", "LeNet-5 with ReLU and max pooling (1x28x28)"},
          {"vgg11", "torchvision VGG-11, 10 classes (3x32x32)"},
          {"vgg16", "torchvision VGG-16, 10 classes (3x32x32)"},
          {"vgg19", "torchvision VGG-19, 10 classes (3x32x32), 139.6 M parameters"},
          {"resnet18", "torchvision ResNet-18, 10 classes (3x32x32)"},
          {"resnet101", "torchvision bottleneck ResNet-101, 10 classes (3x32x32)"},
          {"resnet101-basic", "the MP-SL authors' basic-block ResNet-101 (3x32x32)"}};
}

std::unique_ptr<Model> make_model(const std::string& name) {
  // VGG configurations: channel counts, 0 = max-pool.
  if (name == "fmnist-cnn") return fmnist_cnn();
  if (name == "lenet5") return lenet5();
  if (name == "vgg11") return vgg(name, {64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0});
  if (name == "vgg16")
    return vgg(name,
               {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0});
  if (name == "vgg19")
    return vgg(name, {64,  64,  0,   128, 128, 0,   256, 256, 256, 256, 0,
                      512, 512, 512, 512, 0,   512, 512, 512, 512, 0});
  if (name == "resnet18") return resnet(name, {2, 2, 2, 2}, false);
  if (name == "resnet101") return resnet(name, {3, 4, 23, 3}, true);
  if (name == "resnet101-basic") return resnet101_basic();
  std::string known;
  for (const auto& [n, d] : zoo_models()) known += (known.empty() ? "" : ", ") + n;
  throw InputError("unknown model '" + name + "' (known models: " + known + ")");
}

}  // namespace mpsl::nn
