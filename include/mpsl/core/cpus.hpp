// Which CPUs a process may run on. Launchers bind ranks (mpirun binds one or two ranks to a
// core each, Slurm confines a job to its cgroup's CPUs), so the host's CPU count is not what
// the ranks share, and a process bound to one core forks children bound to that core too.
#pragma once

#include <sched.h>

#include <vector>

namespace mpsl {

// The CPUs in this process's affinity mask, ascending.
std::vector<int> affinity_cpus();

// The number of distinct CPUs in the union of byte masks (each kCpuMaskBytes long, one per
// process, bit c of byte c / 8 set = CPU c), e.g. gathered from the ranks of one host.
inline constexpr int kCpuMaskBytes = CPU_SETSIZE / 8;
std::vector<unsigned char> affinity_mask_bytes();
int union_cpu_count(const std::vector<unsigned char>& masks);

// Widens this process's affinity to every CPU its cpuset (cgroup) allows while it lives, and
// puts the old mask back when it ends: forked children then run wherever the scheduler puts
// them, as unbound ranks do. cpus_before() and cpus() say how many CPUs it had and has.
class WidenedAffinity {
 public:
  WidenedAffinity();
  ~WidenedAffinity();
  WidenedAffinity(const WidenedAffinity&) = delete;
  WidenedAffinity& operator=(const WidenedAffinity&) = delete;
  int cpus_before() const { return before_count_; }
  int cpus() const { return after_count_; }

 private:
  cpu_set_t before_;
  bool restore_ = false;
  int before_count_ = 0, after_count_ = 0;
};

}  // namespace mpsl
