#include "mpsl/core/finite.hpp"

#include <bit>
#include <cstdio>
#include <cstdlib>

namespace mpsl {

int64_t first_non_finite(const float* data, int64_t n) {
  constexpr uint32_t kExp = 0x7f800000u;  // all exponent bits set: inf or NaN
  constexpr int64_t kChunk = 4096;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t end = start + kChunk < n ? start + kChunk : n;
    uint32_t bad = 0;
    for (int64_t i = start; i < end; ++i)
      bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(data[i]) & kExp) == kExp);
    if (bad)
      for (int64_t i = start; i < end; ++i)
        if ((std::bit_cast<uint32_t>(data[i]) & kExp) == kExp) return i;
  }
  return -1;
}

bool test_nan_due(int rank, int owner, int round, int64_t step) {
  static const char* spec = std::getenv("MPSL_TEST_NAN");
  if (!spec || !*spec) return false;
  int r = -1, k = -1, rd = -1;
  long long s = -1;
  if (std::sscanf(spec, "%d:%d:%d:%lld", &r, &k, &rd, &s) != 4) return false;
  return r == rank && k == owner && rd == round && s == step;
}

}  // namespace mpsl
