// Device and link emulation (--emulate FILE): lets one machine stand in for a testbed of slow
// data owners on slow links and fast compute nodes.
//
// The file (JSON, format in README "Emulating devices and links") gives every logical owner k
// and every stage s a device: a compute slowdown factor (>= 1) and a link with bandwidth and
// latency in each direction ("up" = what the device sends, "down" = what it receives).
//
// How the runtime applies it:
// - Compute: a span that took t seconds of CPU on the host (span_seconds) ends factor(d) * t
//   after it started on device d, or when it really ended if that is later, where
//   a device starts a span only once its previous span has ended (a device clock). A stage rank
//   sleeps until then; an owner rank (which may hold several logical owners, i.e. several
//   emulated devices) does not sleep but holds back the span's outgoing message until then.
// - Messages: a message of b bytes from device a to device c is ready when its compute span
//   ends; it then waits for the link (a, c) to be free (a link carries one message at a time,
//   in order), occupies it for 8 b / min(up_bps(a), down_bps(c)) seconds and arrives
//   up_latency(a) + down_latency(c) later. The sender's mailbox posts the MPI send then.
// - Aggregation: an owner rank waits, before the FedAvg reduction, until each of its owners'
//   devices has ended its last span (an owner's last backward ends its round on its device,
//   not on the host) and then uploaded and downloaded its parts 1 and P over its own link. A stage
//   rank's sums of its copies are a compute span on its device; with --replicas the reduction over
//   the replicas lasts at least a ring all-reduce over their links (ring_allreduce_seconds).
// - Evaluation is not emulated. Everything emulated is accounted (EmulationStats) and reported
//   per rank in the metrics (rank_summary "emulated").
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mpsl::emulate {

using Clock = std::chrono::steady_clock;

struct Link {
  double bps = 0;  // bits per second; 0 = unlimited
  double latency_s = 0;
};

struct Device {
  std::string class_name;  // the class it was built from ("" = none)
  double compute_factor = 1;
  Link up, down;
};

// The devices of one run. Without --emulate: disabled, every device the identity.
struct Emulation {
  bool enabled = false;
  std::string file;
  std::vector<Device> owners;  // per logical owner
  std::vector<Device> stages;  // per stage (0-based)
};

// Reads and validates an emulation file for a run with `owners` logical owners and `stages`
// stages. InputError naming the file and the entry for anything wrong.
Emulation load_emulation(const std::string& path, int owners, int stages);

// Parses the file's text (for tests); `path` only names it in messages.
Emulation parse_emulation(const std::string& text, const std::string& path, int owners, int stages);

// One emulated device: owner k or stage s.
struct Entity {
  bool stage = false;
  int index = 0;
  bool operator<(const Entity& o) const {
    return std::pair(stage, index) < std::pair(o.stage, o.index);
  }
};
inline Entity owner_entity(int k) {
  return {false, k};
}
inline Entity stage_entity(int s) {
  return {true, s};
}

struct EmulationStats {
  double compute_delay_s = 0;  // sum over spans of (factor - 1) * measured
  double transfer_s = 0;       // sum over messages of bytes / bandwidth + latency
  double link_queue_s = 0;     // time messages waited for a busy link
  double aggregation_s = 0;    // emulated FedAvg upload + download waits
  int64_t messages = 0;        // messages that went through an emulated link
  int64_t bytes = 0;
};

// The start of a compute span. An emulated device takes factor x the CPU time its span cost
// the host (this thread's: with one thread per rank the span runs in it), not factor x its wall
// time: ranks sharing the host's cores stretch a span's wall time, and a 20x slower device would
// stretch 20x as much (an owner's 5 ms backward that waited 43 ms for a core made a fmnist-cnn
// round 0.6 s late). With more threads per rank the span's wall time is taken.
struct SpanStart {
  Clock::time_point wall;
  double cpu_s = 0;  // this thread's CPU clock
};
SpanStart span_start();
// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID), seconds.
double thread_cpu_seconds();
// What a span begun at `start` measured: its CPU time with one thread, else its wall time.
double span_seconds(const SpanStart& start);

// What one rank does with the emulation: device clocks, link queues, accounting.
class RankEmulator {
 public:
  RankEmulator() = default;
  explicit RankEmulator(const Emulation* e) : e_(e && e->enabled ? e : nullptr) {}
  bool active() const { return e_ != nullptr; }
  const Device& device(Entity who) const;

  // A compute span of `measured` seconds that began at `start` on `who`: when the emulated
  // device finishes it. Inactive: start + measured.
  Clock::time_point compute(Entity who, Clock::time_point start, double measured);
  // The span begun at `start`, measured by span_seconds, that ends now: when its result is
  // ready (its emulated end, or now if the host took longer).
  Clock::time_point compute(Entity who, const SpanStart& start) {
    return std::max(compute(who, start.wall, span_seconds(start)), Clock::now());
  }
  // When `who`'s device ends its last span (the past when it has none).
  Clock::time_point free_at(Entity who) const;
  // When a message of `bytes` from `from` to `to`, ready at `ready`, arrives.
  Clock::time_point transfer(Entity from, Entity to, int64_t bytes, Clock::time_point ready);
  // Seconds owner k needs to upload and then download `bytes` (its parts 1 and P) over its
  // link; accounted once per call to account_aggregation.
  double aggregation_seconds(int owner, int64_t bytes) const;
  // Seconds a ring all-reduce of `bytes` over `ranks` devices like `who` takes on their links:
  // 2 (ranks - 1) steps, each sends bytes / ranks from one device to the next (its up link,
  // the next one's down link) and waits their latency. How the replicas of a stage (each on a
  // node of its own) reduce their FedAvg sums; accounted through account_aggregation.
  double ring_allreduce_seconds(Entity who, int64_t bytes, int ranks) const;
  void account_aggregation(double seconds) { stats_.aggregation_s += seconds; }

  const EmulationStats& stats() const { return stats_; }
  static void sleep_until(Clock::time_point t);

 private:
  const Emulation* e_ = nullptr;
  std::map<Entity, Clock::time_point> device_free_;
  std::map<std::pair<Entity, Entity>, Clock::time_point> link_free_;
  EmulationStats stats_;
};

}  // namespace mpsl::emulate
