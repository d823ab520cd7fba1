// Chrome-trace recording (--trace FILE.json): every rank records spans in memory, timed with a
// steady clock aligned to rank 0's; at the end they are gathered on rank 0 and written as one
// JSON file (atomically), which Perfetto (ui.perfetto.dev) and chrome://tracing open.
//
// One process per rank (pid = rank, named after its role), one row (tid) per activity. Spans
// carry the round and, where they have one, the logical owner, micro-batch, peer rank and bytes,
// and the CPU time the rank's process used during them (cpu_ms: below the span's length when
// the rank waited for a core, as ranks sharing cores do). While tracing is off a span costs one
// load of a flag; recording is a push into a vector.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace mpsl::obs {

enum class Activity : uint8_t {
  kForward = 0,
  kBackward,
  kOptimizer,
  kSend,
  kReceive,
  kWait,
  kAggregation,
  kCheckpoint,
  kEval,
  kStep,    // a whole training step of the single-process path
  kCopyIn,  // the MPI calls that completed receives (Open MPI's single copy happens in them)
  kCount
};
const char* activity_name(Activity a);

struct TraceEvent {
  double start_us;  // on rank 0's clock, from the start of the run
  double dur_us;
  int32_t round;
  int32_t owner;  // -1: none
  int32_t micro;  // -1: none
  int32_t peer;   // -1: none
  int64_t bytes;  // -1: none
  float cpu_us;   // the process's CPU time during the span; -1: not measured
  uint8_t activity;
};

class Tracer {
 public:
  static Tracer& instance();

  static bool on() { return enabled_.load(std::memory_order_relaxed); }

  // Starts recording on every rank of `comm` (collective): measures this rank's clock offset
  // against rank 0's by ping-pong (the exchange with the smallest round trip wins) and sets the
  // common time origin.
  void start(MPI_Comm comm);
  // Microseconds since the origin, on rank 0's clock.
  double now_us() const;
  // Microseconds of CPU time this process has used (all its threads).
  static double process_cpu_us();
  void set_round(int round) { round_ = round; }
  int round() const { return round_; }
  void set_process_name(std::string name) { process_name_ = std::move(name); }

  void record(Activity a, double start_us, double end_us, int owner = -1, int micro = -1,
              int peer = -1, int64_t bytes = -1, double cpu_us = -1);

  // Collective on `comm`: gathers every rank's spans on rank 0, which writes `path` (temporary
  // file, fsync, rename). Stops recording.
  void write(MPI_Comm comm, const std::string& path);

  size_t size() const { return events_.size(); }

 private:
  Tracer() = default;
  static std::atomic<bool> enabled_;
  std::chrono::steady_clock::time_point origin_{};  // local time of the common origin
  double offset_us_ = 0;                            // rank 0's clock minus this rank's
  int round_ = 0;
  std::string process_name_;
  std::vector<TraceEvent> events_;
  int64_t dropped_ = 0;
};

// Writes a Chrome trace (atomically, through a temporary file): process r is named names[r]
// ("rank r" when empty) and holds the next counts[r] spans of `events`. `other_data` is appended
// to the file's otherData object (",\"key\":value,...").
void write_chrome_trace(const std::string& path, const std::vector<std::string>& names,
                        const std::vector<TraceEvent>& events, const std::vector<int64_t>& counts,
                        const std::string& other_data = "");

// Records a span from construction to destruction (or to end()) when tracing is on.
class Span {
 public:
  explicit Span(Activity a, int owner = -1, int micro = -1, int peer = -1, int64_t bytes = -1)
      : on_(Tracer::on()), a_(a), owner_(owner), micro_(micro), peer_(peer), bytes_(bytes) {
    if (on_) {
      start_ = Tracer::instance().now_us();
      cpu_start_ = Tracer::process_cpu_us();
    }
  }
  ~Span() { end(); }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;
  void end() {
    if (!on_) return;
    on_ = false;
    Tracer::instance().record(a_, start_, Tracer::instance().now_us(), owner_, micro_, peer_,
                              bytes_, Tracer::process_cpu_us() - cpu_start_);
  }

 private:
  bool on_;
  Activity a_;
  int owner_, micro_, peer_;
  int64_t bytes_;
  double start_ = 0;
  double cpu_start_ = 0;
};

}  // namespace mpsl::obs
