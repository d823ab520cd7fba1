// Normalisation statistics, synthetic data, batch assembly and dataset checks.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "mpsl/core/error.hpp"
#include "mpsl/core/rng.hpp"
#include "mpsl/data/dataset.hpp"

namespace mpsl::data {

void channel_statistics(const Dataset& ds, std::vector<float>& mean, std::vector<float>& std) {
  const int64_t C = ds.channels, plane = ds.height * ds.width;
  MPSL_CHECK(static_cast<int64_t>(ds.images.size()) == ds.count * C * plane,
             "dataset image buffer does not match its shape");
  // Exact integer sums (order-independent); doubles only for the final division.
  std::vector<uint64_t> sum(static_cast<size_t>(C), 0), sum_sq(static_cast<size_t>(C), 0);
  const uint8_t* px = ds.images.data();
  for (int64_t i = 0; i < ds.count; ++i) {
    for (int64_t c = 0; c < C; ++c, px += plane) {
      uint64_t s = 0, ss = 0;
      for (int64_t p = 0; p < plane; ++p) {
        const uint64_t v = px[p];
        s += v;
        ss += v * v;
      }
      sum[c] += s;
      sum_sq[c] += ss;
    }
  }
  mean.assign(static_cast<size_t>(C), 0.0f);
  std.assign(static_cast<size_t>(C), 1.0f);
  const auto n = static_cast<uint64_t>(ds.count) * static_cast<uint64_t>(plane);
  if (n == 0) return;
  const double nd = static_cast<double>(n);
  for (int64_t c = 0; c < C; ++c) {
    // n^2 var = n * sum(x^2) - sum(x)^2, exact in 128-bit integers (no cancellation).
    const unsigned __int128 num = static_cast<unsigned __int128>(n) * sum_sq[c] -
                                  static_cast<unsigned __int128>(sum[c]) * sum[c];
    const double var = static_cast<double>(num) / (nd * nd) / (255.0 * 255.0);
    mean[c] = static_cast<float>(static_cast<double>(sum[c]) / nd / 255.0);
    // A constant channel would divide by zero when normalising: keep its scale at 1.
    std[c] = num > 0 ? static_cast<float>(std::sqrt(var)) : 1.0f;
  }
}

void compute_normalisation(Dataset& ds) {
  channel_statistics(ds, ds.mean, ds.std);
}

void check_consistent(const Dataset& ds, const std::string& what) {
  auto fail = [&](const std::string& msg) {
    throw RuntimeFailure("inconsistent dataset (" + what + "): " + msg);
  };
  if (ds.count < 0 || ds.channels <= 0 || ds.height <= 0 || ds.width <= 0)
    fail("bad shape " + std::to_string(ds.count) + "x" + std::to_string(ds.channels) + "x" +
         std::to_string(ds.height) + "x" + std::to_string(ds.width));
  if (static_cast<int64_t>(ds.images.size()) != ds.count * ds.image_size())
    fail(std::to_string(ds.images.size()) + " pixel bytes for " + std::to_string(ds.count) +
         " images of " + std::to_string(ds.image_size()));
  if (static_cast<int64_t>(ds.labels.size()) != ds.count)
    fail(std::to_string(ds.labels.size()) + " labels for " + std::to_string(ds.count) + " images");
  if (ds.class_names.empty() || ds.class_names.size() > 256)
    fail(std::to_string(ds.class_names.size()) + " class names (expected 1..256)");
  for (int64_t i = 0; i < ds.count; ++i)
    if (ds.labels[i] >= ds.num_classes())
      fail("label " + std::to_string(ds.labels[i]) + " of image " + std::to_string(i) +
           " is not below " + std::to_string(ds.num_classes()));
  for (const auto* v : {&ds.mean, &ds.std})
    if (!v->empty() && static_cast<int64_t>(v->size()) != ds.channels)
      fail("mean/std have " + std::to_string(v->size()) + " values for " +
           std::to_string(ds.channels) + " channels");
}

Dataset make_synthetic(int64_t count, int64_t channels, int64_t height, int64_t width, int classes,
                       uint64_t seed) {
  if (count <= 0 || channels <= 0 || height <= 0 || width <= 0)
    throw InputError("synthetic data needs a positive count and image shape, got " +
                     std::to_string(count) + " images of " + std::to_string(channels) + "x" +
                     std::to_string(height) + "x" + std::to_string(width));
  if (classes < 1 || classes > 256)
    throw InputError("synthetic data needs 1..256 classes, got " + std::to_string(classes));
  Dataset ds;
  ds.count = count;
  ds.channels = channels;
  ds.height = height;
  ds.width = width;
  ds.images.resize(static_cast<size_t>(count * ds.image_size()));
  ds.labels.resize(static_cast<size_t>(count));
  // Separate streams for pixels and labels: each depends only on the seed.
  Rng pixels(seed, 0x5917e1), labels(seed, 0x1abe1);
  const size_t total = ds.images.size();
  size_t i = 0;
  for (; i + 8 <= total; i += 8) {
    uint64_t bits = pixels.next();
    for (int b = 0; b < 8; ++b, bits >>= 8) ds.images[i + b] = static_cast<uint8_t>(bits);
  }
  for (uint64_t bits = pixels.next(); i < total; ++i, bits >>= 8)
    ds.images[i] = static_cast<uint8_t>(bits);
  for (auto& l : ds.labels) l = static_cast<uint8_t>(labels.below(static_cast<uint64_t>(classes)));
  for (int c = 0; c < classes; ++c) ds.class_names.push_back("class" + std::to_string(c));
  ds.source = "synthetic seed " + std::to_string(seed);
  compute_normalisation(ds);
  return ds;
}

void assemble_batch(const Dataset& ds, const int64_t* indices, int64_t n, float* images_out,
                    int32_t* labels_out) {
  const int64_t C = ds.channels, plane = ds.height * ds.width, image = C * plane;
  MPSL_CHECK(ds.mean.empty() || static_cast<int64_t>(ds.mean.size()) == C,
             "mean has one value per channel");
  MPSL_CHECK(ds.std.empty() || static_cast<int64_t>(ds.std.size()) == C,
             "std has one value per channel");
  // (pixel/255 - mean) / std  ==  pixel * scale + shift, scale = 1/(255 std), shift = -mean/std.
  // Empty mean/std mean no normalisation beyond pixel/255.
  std::vector<float> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    const double m = ds.mean.empty() ? 0.0 : ds.mean[c];
    const double s = ds.std.empty() ? 1.0 : ds.std[c];
    scale[c] = static_cast<float>(1.0 / (255.0 * s));
    shift[c] = static_cast<float>(-m / s);
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t idx = indices[i];
    MPSL_CHECK(idx >= 0 && idx < ds.count, "batch index " + std::to_string(idx) +
                                               " outside the dataset of " +
                                               std::to_string(ds.count));
    const uint8_t* src = ds.images.data() + idx * image;
    float* dst = images_out + i * image;
    for (int64_t c = 0; c < C; ++c) {
      const float a = scale[c], b = shift[c];
      const uint8_t* s = src + c * plane;
      float* d = dst + c * plane;
      for (int64_t p = 0; p < plane; ++p) d[p] = static_cast<float>(s[p]) * a + b;
    }
    if (labels_out != nullptr) labels_out[i] = ds.labels[idx];
  }
}

std::string summary(const Dataset& ds) {
  auto list = [](const std::vector<float>& v) {
    std::string s;
    char buf[32];
    for (size_t i = 0; i < v.size(); ++i) {
      std::snprintf(buf, sizeof buf, "%s%.4f", i ? "," : "", v[i]);
      s += buf;
    }
    return s.empty() ? std::string("-") : s;
  };
  return std::to_string(ds.count) + " images " + std::to_string(ds.channels) + "x" +
         std::to_string(ds.height) + "x" + std::to_string(ds.width) + ", " +
         std::to_string(ds.num_classes()) + " classes, mean " + list(ds.mean) + " std " +
         list(ds.std);
}

}  // namespace mpsl::data
