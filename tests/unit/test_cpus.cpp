// Which CPUs a process may run on (core/cpus.hpp): the union of the ranks' masks, and the
// widened affinity the profile's placement processes run with.
#include <gtest/gtest.h>

#include <sched.h>

#include <vector>

#include "mpsl/core/cpus.hpp"

namespace mpsl {
namespace {

std::vector<unsigned char> mask_of(const std::vector<int>& cpus) {
  std::vector<unsigned char> m(kCpuMaskBytes, 0);
  for (int c : cpus) m[c / 8] |= static_cast<unsigned char>(1u << (c % 8));
  return m;
}

TEST(Cpus, UnionCountsEachCpuOnce) {
  // mpirun's binding of 2 ranks: a core each; unbound ranks: both CPUs each; a rank per CPU
  // pair of a larger cpuset.
  std::vector<unsigned char> all;
  for (const auto& cpus : {std::vector<int>{0}, std::vector<int>{1}}) {
    const auto m = mask_of(cpus);
    all.insert(all.end(), m.begin(), m.end());
  }
  EXPECT_EQ(union_cpu_count(all), 2);
  all.clear();
  for (int r = 0; r < 4; ++r) {
    const auto m = mask_of({0, 1});
    all.insert(all.end(), m.begin(), m.end());
  }
  EXPECT_EQ(union_cpu_count(all), 2);
  all = mask_of({0, 9, 200, 1023});
  const auto m = mask_of({9, 64});
  all.insert(all.end(), m.begin(), m.end());
  EXPECT_EQ(union_cpu_count(all), 5);
  EXPECT_EQ(union_cpu_count({}), 0);
}

TEST(Cpus, WidenedAffinityLetsABoundProcessUseItsCpusetAndRestoresTheMask) {
  const std::vector<int> own = affinity_cpus();
  ASSERT_FALSE(own.empty());
  EXPECT_EQ(union_cpu_count(affinity_mask_bytes()), static_cast<int>(own.size()));
  // Bind to the first CPU, as mpirun binds one rank to a core.
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(own.front(), &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  {
    const WidenedAffinity widened;
    EXPECT_EQ(widened.cpus_before(), 1);
    EXPECT_EQ(widened.cpus(), static_cast<int>(affinity_cpus().size()));
    // At least the CPUs the test started with (the cpuset may hold more).
    EXPECT_GE(widened.cpus(), static_cast<int>(own.size()));
  }
  EXPECT_EQ(affinity_cpus(), std::vector<int>{own.front()});
  // Back to where the test began.
  cpu_set_t start;
  CPU_ZERO(&start);
  for (int c : own) CPU_SET(c, &start);
  ASSERT_EQ(sched_setaffinity(0, sizeof(start), &start), 0);
  EXPECT_EQ(affinity_cpus(), own);
}

}  // namespace
}  // namespace mpsl
