#include "mpsl/data/partition.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "mpsl/core/error.hpp"
#include "mpsl/core/rng.hpp"

namespace mpsl::data {

namespace {

void shuffle(std::vector<int64_t>& v, Rng& rng) {
  for (int64_t i = static_cast<int64_t>(v.size()) - 1; i > 0; --i)
    std::swap(v[i], v[static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)))]);
}

// Gamma(shape, 1) by Marsaglia and Tsang (shape < 1 via the boost u^(1/shape)).
double gamma_sample(Rng& rng, double shape) {
  if (shape < 1.0) {
    const double u = (static_cast<double>(rng.next() >> 11) + 1.0) / 9007199254740993.0;
    return gamma_sample(rng, shape + 1.0) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = rng.normal();
      v = 1.0 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const double u = (static_cast<double>(rng.next() >> 11) + 1.0) / 9007199254740993.0;
    if (u < 1 - 0.0331 * x * x * x * x) return d * v;
    if (std::log(u) < 0.5 * x * x + d * (1 - v + std::log(v))) return d * v;
  }
}

}  // namespace

Shards partition_iid(int64_t count, int owners, uint64_t seed) {
  MPSL_CHECK(owners >= 1, "owners must be positive");
  std::vector<int64_t> all(count);
  std::iota(all.begin(), all.end(), 0);
  Rng rng(seed, 0x9a27);
  shuffle(all, rng);
  Shards shards(owners);
  for (int k = 0; k < owners; ++k) {
    const int64_t lo = count * k / owners, hi = count * (k + 1) / owners;
    shards[k].assign(all.begin() + lo, all.begin() + hi);
    std::sort(shards[k].begin(), shards[k].end());
  }
  return shards;
}

Shards partition_dirichlet(const Dataset& ds, int owners, float alpha, uint64_t seed) {
  MPSL_INPUT_CHECK(alpha > 0, "--alpha must be positive");
  const int classes = std::max(ds.num_classes(), 1);
  std::vector<std::vector<int64_t>> by_class(classes);
  for (int64_t i = 0; i < ds.count; ++i) by_class[ds.labels[i] % classes].push_back(i);
  Rng rng(seed, 0xd1c7);
  Shards shards(owners);
  for (int c = 0; c < classes; ++c) {
    auto& idx = by_class[c];
    shuffle(idx, rng);
    std::vector<double> p(owners);
    double sum = 0;
    for (auto& x : p) sum += (x = gamma_sample(rng, alpha));
    // Cut points from the cumulative proportions.
    double acc = 0;
    int64_t start = 0;
    for (int k = 0; k < owners; ++k) {
      acc += p[k] / sum;
      const int64_t end = k == owners - 1 ? static_cast<int64_t>(idx.size())
                                          : std::llround(acc * static_cast<double>(idx.size()));
      for (int64_t i = start; i < std::max(start, end); ++i) shards[k].push_back(idx[i]);
      start = std::max(start, end);
    }
  }
  for (auto& s : shards) std::sort(s.begin(), s.end());
  return shards;
}

}  // namespace mpsl::data
