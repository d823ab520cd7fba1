// Cheap checks for non-finite values (NaN, +-inf) in float arrays, and the test hook that
// injects one (MPSL_TEST_NAN).
#pragma once

#include <cstdint>

namespace mpsl {

// Index of the first NaN or infinity in data[0, n), or -1 when every value is finite. Reads
// the bits (no floating-point compare), vectorised; about memory speed.
int64_t first_non_finite(const float* data, int64_t n);
inline bool all_finite(const float* data, int64_t n) {
  return first_non_finite(data, n) < 0;
}

// Tests only. MPSL_TEST_NAN="RANK:OWNER:ROUND:STEP" (STEP counted from 1 within the round):
// true when this is the batch at which rank RANK should put a NaN into the first value it
// produces for owner OWNER (the input images in a single process, part 1's output on an owner
// rank, the stage's output on a stage rank).
bool test_nan_due(int rank, int owner, int round, int64_t step);

}  // namespace mpsl
