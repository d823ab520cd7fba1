#include "mpsl/core/cpus.hpp"

#include <unistd.h>

namespace mpsl {
namespace {

cpu_set_t current_mask() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {
    // Unknown: every configured CPU.
    const long n = sysconf(_SC_NPROCESSORS_CONF);
    for (long c = 0; c < n && c < CPU_SETSIZE; ++c) CPU_SET(static_cast<int>(c), &set);
  }
  return set;
}

}  // namespace

std::vector<int> affinity_cpus() {
  const cpu_set_t set = current_mask();
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

std::vector<unsigned char> affinity_mask_bytes() {
  std::vector<unsigned char> bytes(kCpuMaskBytes, 0);
  for (int c : affinity_cpus()) bytes[c / 8] |= static_cast<unsigned char>(1u << (c % 8));
  return bytes;
}

int union_cpu_count(const std::vector<unsigned char>& masks) {
  std::vector<unsigned char> all(kCpuMaskBytes, 0);
  for (size_t i = 0; i < masks.size(); ++i) all[i % kCpuMaskBytes] |= masks[i];
  int n = 0;
  for (unsigned char b : all) n += __builtin_popcount(b);
  return n;
}

WidenedAffinity::WidenedAffinity() : before_(current_mask()) {
  before_count_ = CPU_COUNT(&before_);
  after_count_ = before_count_;
  // The kernel intersects the requested mask with the cpuset's CPUs.
  cpu_set_t all;
  CPU_ZERO(&all);
  const long n = sysconf(_SC_NPROCESSORS_CONF);
  for (long c = 0; c < n && c < CPU_SETSIZE; ++c) CPU_SET(static_cast<int>(c), &all);
  if (sched_setaffinity(0, sizeof(all), &all) == 0) {
    restore_ = true;
    const cpu_set_t now = current_mask();
    after_count_ = CPU_COUNT(&now);
  }
}

WidenedAffinity::~WidenedAffinity() {
  if (restore_) sched_setaffinity(0, sizeof(before_), &before_);
}

}  // namespace mpsl
