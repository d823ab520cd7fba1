// Splitting a training set over K data owners, seeded, the same on every rank.
#pragma once

#include <cstdint>
#include <vector>

#include "mpsl/data/dataset.hpp"

namespace mpsl::data {

using Shards = std::vector<std::vector<int64_t>>;  // per owner, sorted sample indices

// IID: a seeded shuffle cut into K shards whose sizes differ by at most one.
Shards partition_iid(int64_t count, int owners, uint64_t seed);

// Non-IID: for every class, proportions p ~ Dirichlet(alpha, ..., alpha) over the owners, and
// that class's samples are dealt out in those proportions (smaller alpha, more skew).
Shards partition_dirichlet(const Dataset& ds, int owners, float alpha, uint64_t seed);

}  // namespace mpsl::data
