// Activation shapes. Every activation is NCHW; fully connected outputs are [N, C, 1, 1].
#pragma once

#include <cstdint>
#include <string>

namespace mpsl::nn {

struct Shape {
  int64_t n = 0, c = 0, h = 1, w = 1;

  int64_t per_sample() const { return c * h * w; }
  int64_t elements() const { return n * c * h * w; }
  bool flat() const { return h == 1 && w == 1; }
  Shape with_batch(int64_t batch) const { return {batch, c, h, w}; }
  bool operator==(const Shape&) const = default;
  std::string str() const;  // "64x32x28x28" or "64x10"
};

}  // namespace mpsl::nn
