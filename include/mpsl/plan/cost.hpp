// The cost model: round time and per-rank peak memory of a multihop configuration, from a
// profile.
//
// Two estimates of the round time:
// - paper_round_seconds: the paper's closed form (PAPER.md) with link times added:
//     T = startT + sum_i (F_i + B_i) + (r*B*K - 1) * (max_i F_i + max_i B_i) + endT + T_aggr
//   where F_i, B_i are stage i's forward / backward(+step) time of one batch plus what it sends.
//   With --emulate or --replicas it is a rough figure (the slowest owner's device stands for
//   all, the busiest replica for the pipeline).
// - simulate(): an event simulation of what the runtime does (pipeline/multihop.hpp): the same
//   task order rules (owners handle arrivals first, then start forwards round-robin; stages take
//   gradients first, then neighbours, then the earliest), micro-batches with the 1f1b window,
//   K owners on O owner ranks, H replicas of the stage pipeline (--replicas), link times, and
//   placement: ranks that share a node's cores (Device::cores) share them equally while busy
//   (processor sharing), which is what happens on this 2-core machine and on oversubscribed
//   nodes. It also gives each rank's busy time and the largest number of batches in flight per
//   rank (activation memory).
//   With Scenario::emulated it follows emulate/emulate.hpp: device clocks per logical owner and
//   per stage (a span measured at t ends factor * t after it began); a stage rank sleeps until
//   then (not using its core), an owner rank goes on and holds the span's message back; each
//   message then queues for its emulated link (one per sending rank, sender and receiver
//   device), occupies it 8 b / min(up, down) and arrives the two latencies later, when the
//   sender's mailbox posts it (between tasks); FedAvg first waits for the slowest owner's
//   upload and download of its parts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpsl/plan/profile.hpp"

namespace mpsl::plan {

// What an MPI rank holds beyond `mpsl profile`'s baseline process: Open MPI's libraries and
// shared-memory segments. Measured (/proc/PID/smaps): ranks of 2- and 4-rank fmnist-cnn and
// vgg19 jobs hold 25-27 MiB resident outside their heap, where the profile's process, with its
// heap, holds 15 MiB.
inline constexpr int64_t kMpiRssBytes = int64_t{11} << 20;

// Send buffers of a stage's mailbox: two messages in transfer at once (measured: 1-2 of the
// largest), created up front when the run reserves its memory (pipeline::Settings::Reservation).
inline constexpr int kStageSendBuffers = 2;

// Heap that a part allocates but that never becomes resident when it runs one micro-batch per
// batch: every layer with parameters keeps a gradient scratch as large as them, which only
// accumulating micro-batch gradients touches (nn/detail.hpp GradTarget; measured: the first
// accumulating step grows the RSS by exactly the part's parameter bytes, the heap by nothing).
// The profile measures heap, so this comes off a part's working memory at one micro-batch.
int64_t untouched_gradient_scratch_bytes(const Profile& p, int b, int e);

// A device as --emulate describes it (emulate/emulate.hpp): compute factor and a link in each
// direction ("up" = what the device sends, "down" = what it receives).
struct EmulatedLink {
  double bps = 0;  // bits per second; 0 = unlimited
  double latency_s = 0;
};
struct EmulatedDevice {
  double factor = 1;
  EmulatedLink up, down;
};

// Seconds a message of `bytes` from `from` to `to` occupies their link: 8 b / min(up, down).
double emulated_wire_s(const EmulatedDevice& from, const EmulatedDevice& to, int64_t bytes);
// Seconds owner `d` needs to upload and then download `bytes` over its link (FedAvg).
double emulated_aggregation_s(const EmulatedDevice& d, int64_t bytes);

struct Scenario {
  const Profile* profile = nullptr;
  std::vector<int> split;  // N + 1 cut points (topology.hpp)
  int owners = 1;          // K
  int owner_ranks = 1;     // O (owner k on rank k mod O)
  bool one_f_one_b = false;
  int micro_batches = 1;  // must match the profile's micro-batch size (checked)
  // train --max-in-flight N: a stage holds at most N micro-batches (further activations wait
  // in its inbox until a gradient frees a slot) and reserves N slots; 0: no limit.
  int stage_in_flight_limit = 0;
  std::vector<int64_t> steps;         // optimiser steps of each owner in the round (size K)
  Device owner_device;                // every owner rank
  std::vector<Device> owner_devices;  // per logical owner (size K); empty = all `owner_device`
  std::vector<Device> stage_devices;  // one per stage (size N); empty = all like `node_device`
  Device node_device;
  // All ranks share `cores` cores (0 = every rank has its own node). A rank uses `threads`.
  int cores = 0;
  int threads = 1;
  int64_t test_samples = 0;   // evaluated after aggregation (0 = no test set)
  int64_t train_samples = 0;  // held by each owner rank (dataset bytes)
  int64_t image_bytes = 0;    // bytes of one stored image (uint8)
  int64_t eval_batch = 1000;
  // --optimizer-state average: FedAvg also sums the momentum (in double, kept like the rest).
  bool average_momentum = false;
  // --emulate: the devices above are the hosts the ranks run on (normally the profiled
  // machine); the emulation slows spans down by delays and sends messages over emulated links.
  bool emulated = false;
  std::vector<EmulatedDevice> emulated_owners;  // per logical owner (size K)
  std::vector<EmulatedDevice> emulated_stages;  // per stage (size N), the same in every replica
  // --replicas H: ranks O + h N .. O + h N + N - 1 are replica h's stages; owner k is served by
  // replica owner_replica[k] (pipeline::spread_owners), or k mod H when empty.
  int replicas = 1;
  std::vector<int> owner_replica;

  int stages() const { return static_cast<int>(split.size()) - 1; }
  int ranks() const { return owner_ranks + replicas * stages(); }
  const Device& stage_device(int i) const {
    return stage_devices.empty() ? node_device : stage_devices.at(i);
  }
  const Device& owner_device_of(int k) const {
    return owner_devices.empty() ? owner_device : owner_devices.at(k);
  }
  int replica_of(int k) const { return owner_replica.empty() ? k % replicas : owner_replica.at(k); }
  int owners_of_replica(int h) const;
};

// Checks a scenario against its profile (split in range, micro-batch size) -> InputError.
void check_scenario(const Scenario& s);

struct RankPrediction {
  std::string role;                    // owner | stage
  int stage = 0;                       // 1-based, 0 for owners
  int replica = 0;                     // 0-based (stages with --replicas)
  int units_begin = 0, units_end = 0;  // stage part, or part 1 for owners
  int owners_served = 0;
  double busy_s = 0;          // compute per round (training + aggregation)
  double cpu_s = 0;           // of which its own work at full speed (its CPU time)
  int max_in_flight = 0;      // slots the rank keeps (batches or micro-batches in flight)
  int send_buffers = 0;       // the mailbox's send pool, buffers of the rank's largest message
  int64_t peak_bytes = 0;     // predicted peak resident memory
  int64_t model_bytes = 0;    // of which: part copies (params, gradients, momentum, buffers)
  int64_t receive_bytes = 0;  // of which: the mailbox's posted receive buffers
};

struct Prediction {
  double train_s = 0;      // the round's training (barrier to the last step)
  double aggregate_s = 0;  // FedAvg
  double evaluate_s = 0;   // evaluation of the test set through the pipeline
  // What round_end's "seconds" measures on rank 0: training, FedAvg until every rank has
  // averaged its copies (a barrier ends each round) and, with a test set, the evaluation.
  double round_s = 0;
  double paper_round_s = 0;  // the paper's closed form (+ links, aggregation)
  std::vector<RankPrediction> ranks;
  int64_t max_stage_bytes() const;
};

// Forward / backward (with the optimiser step, per batch) time of stage i for one batch,
// including sending its output (forward) or its input gradient (backward).
double stage_forward_s(const Scenario& s, int i);
double stage_backward_s(const Scenario& s, int i);

// One span of the simulated round (simulate_spans): what a rank does, when, and its CPU time
// (the work at full speed; below the span's length while the rank shares a core).
struct SimulatedSpan {
  // (train_command.cpp maps them to trace rows in this order.)
  enum class Kind { kForward, kBackward, kOptimizer, kCopyIn, kAggregation, kEval };
  int rank = 0;
  Kind kind = Kind::kForward;
  int owner = -1, micro = -1;  // -1: none
  int peer = -1;               // kCopyIn: the sender of the first message taken in
  int64_t bytes = -1;          // kCopyIn: the bytes taken in
  double start_s = 0, end_s = 0, cpu_s = 0;
};

double paper_round_seconds(const Scenario& s);
// The event simulation: round time, per-rank busy time and peak memory. Memory counts the most
// micro-batches in flight also when any one stage is kInFlightSpeedMargin slower or faster.
Prediction simulate(const Scenario& s);
// The round as the event simulation runs it, span by span, from 0 (the round's start) to
// round_s: what `mpsl train --dry-run --trace FILE` writes, to lay beside a real run's trace.
// A task that does two things (the owner's last part forward then backward, a backward with the
// optimiser step) is split where its work at full speed is split (exact at a constant rate).
std::vector<SimulatedSpan> simulate_spans(const Scenario& s);
// The simulated round time alone (one simulation: what the planner's search compares).
double simulate_round_s(const Scenario& s);
inline constexpr double kInFlightSpeedMargin = 0.10;

// Peak memory of stage `stage` of `stages`, holding units [b, e) for K owners (spread over
// `owner_ranks`) with `in_flight` micro-batches in flight and `window` micro-batches per owner
// in the pipeline (the planner's memory constraint; simulate() uses the same formula).
// `replicated`: the stage has replicas (--replicas), whose FedAvg keeps sums of its copies in
// double; `momentum_sums`: --optimizer-state average (those sums hold the momentum too).
int64_t stage_memory_bytes(const Profile& p, int b, int e, int owners, int in_flight,
                           int owner_ranks, int stage, int stages, int window,
                           bool momentum_sums = false, bool replicated = false);
// Of which: the receive buffers it posts (in_b, out_b: the messages at its input and output).
int64_t stage_receive_bytes(int64_t in_b, int64_t out_b, int owners, int owner_ranks, int stage,
                            int stages, int window);

}  // namespace mpsl::plan
