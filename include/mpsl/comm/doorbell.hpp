// Doorbells: how a rank that has nothing to do sleeps until a message for it is sent, instead
// of polling MPI with short sleeps.
//
// Open MPI's shared-memory transport has no blocking receive: a waiting rank must call into MPI
// to see a message, and when ranks outnumber cores each such call yields the core (Open MPI's
// yield_when_idle) while the sleeps between calls wake the poller thousands of times a second.
// On 2 cores with 4 ranks the pollers took cores from the ranks that had work to do
// (docs/cost-model-validation, "3-4 ranks on 2 cores").
//
// So every rank on a node has a doorbell: a counter in one shared-memory segment of the node's
// ranks (POSIX shared memory, mapped by each; not an MPI window, whose MPI_Win_free is
// collective and would hang a rank that unwinds from an error while the others still train). A
// sender rings the receiver's doorbell after posting a message to it; a receiver with nothing to do
// sleeps on its own doorbell with a Linux futex until it rings or a timeout passes, then polls MPI
// as before. The ring only wakes: messages still travel through MPI, and a receiver that sleeps
// through a ring (a message MPI queued inside the sender) polls at the timeout, so the doorbell can
// speed a wait up but never lose a message. Ranks on other nodes have no doorbell here (ring() does
// nothing for them).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "mpsl/comm/mpi_environment.hpp"

namespace mpsl::comm {

class Doorbells {
 public:
  // Collective over `comm`: every rank of it constructs its Doorbells at the same point.
  explicit Doorbells(MPI_Comm comm);
  ~Doorbells();  // unmaps the segment: local, never waits for other ranks
  Doorbells(const Doorbells&) = delete;
  Doorbells& operator=(const Doorbells&) = delete;

  // False when this node's segment could not be made (`problem()` says why): ring() does
  // nothing then and the other calls must not be used; waiting ranks poll instead.
  bool available() const { return mine_ != nullptr; }
  const std::string& problem() const { return problem_; }

  // Whether rank `r` of the communicator shares this node's segment (its doorbell can be rung).
  bool local(int r) const { return bells_.at(static_cast<size_t>(r)) != nullptr; }

  // Wakes rank `r` if it sleeps on its doorbell; makes its next sleep return at once otherwise.
  // A no-op for ranks on other nodes.
  void ring(int r);

  // The waiting side, in this order: `arm()` (returns the doorbell's count), then poll MPI
  // once more, then, if nothing arrived, `sleep(count, timeout_s)`: returns when the doorbell
  // has been rung since arm(), at the timeout, or on a signal. `disarm()` after each arm().
  uint32_t arm();
  void sleep(uint32_t armed_count, double timeout_s);
  void disarm();

  // Rings this rank has received (wake-ups that found it asleep), for tests and statistics.
  int64_t wakeups() const { return wakeups_; }

 private:
  struct alignas(64) Bell {
    std::atomic<uint32_t> count;     // bumped by every ring
    std::atomic<uint32_t> sleepers;  // 1 while the owner is armed
  };
  static_assert(std::atomic<uint32_t>::is_always_lock_free);

  void* segment_ = nullptr;
  size_t segment_bytes_ = 0;
  Bell* mine_ = nullptr;
  std::vector<Bell*> bells_;  // per rank of the communicator; null on other nodes
  int64_t wakeups_ = 0;
  std::string problem_;
};

}  // namespace mpsl::comm
