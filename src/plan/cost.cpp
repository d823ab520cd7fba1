#include "mpsl/plan/cost.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <initializer_list>
#include <limits>
#include <map>
#include <queue>
#include <tuple>
#include <utility>

#include "mpsl/comm/mailbox.hpp"
#include "mpsl/core/error.hpp"

namespace mpsl::plan {

namespace {

double link_bandwidth(const Device& d) {
  return d.bandwidth > 0 ? d.bandwidth : kLocalBandwidth;
}
double link_latency(const Device& d) {
  return d.latency >= 0 ? d.latency : kLocalLatency;
}
// A message of `bytes` between two devices: the slower link and the longer latency count.
double transfer_s(const Device& a, const Device& b, int64_t bytes) {
  return std::max(link_latency(a), link_latency(b)) +
         static_cast<double>(bytes) / std::min(link_bandwidth(a), link_bandwidth(b));
}

// Activation bytes of one micro-batch in flight through units [b, e) run as one part: each
// unit profiled alone also held a copy of its input; inside a part only the first unit does.
int64_t part_activation_bytes(const Profile& p, int b, int e) {
  int64_t s = p.activation_bytes(b, e);
  for (int u = b + 1; u < e; ++u) s -= p.cut_bytes(u);
  return std::max<int64_t>(s, 0) + p.slot_first_use_bytes(b, e);
}

}  // namespace

double emulated_wire_s(const EmulatedDevice& from, const EmulatedDevice& to, int64_t bytes) {
  double bps = from.up.bps > 0 ? from.up.bps : 0;
  if (to.down.bps > 0) bps = bps > 0 ? std::min(bps, to.down.bps) : to.down.bps;
  return bps > 0 ? 8.0 * static_cast<double>(bytes) / bps : 0.0;
}

double emulated_aggregation_s(const EmulatedDevice& d, int64_t bytes) {
  auto one = [&](const EmulatedLink& l) {
    return (l.bps > 0 ? 8.0 * static_cast<double>(bytes) / l.bps : 0.0) + l.latency_s;
  };
  return one(d.up) + one(d.down);
}

int Scenario::owners_of_replica(int h) const {
  int n = 0;
  for (int k = 0; k < owners; ++k) n += replica_of(k) == h ? 1 : 0;
  return n;
}

void check_scenario(const Scenario& s) {
  MPSL_CHECK(s.profile != nullptr, "scenario without a profile");
  const Profile& p = *s.profile;
  const int S = p.num_units();
  MPSL_INPUT_CHECK(s.stages() >= 1, "a multihop configuration needs at least one stage");
  for (size_t i = 0; i < s.split.size(); ++i) {
    MPSL_INPUT_CHECK(s.split[i] >= 1 && s.split[i] <= S - 1,
                     "cut point " + std::to_string(s.split[i]) + " is outside 1.." +
                         std::to_string(S - 1) + " for profile of '" + p.model + "'");
    MPSL_INPUT_CHECK(i == 0 || s.split[i] > s.split[i - 1], "cut points must increase");
  }
  MPSL_INPUT_CHECK(s.owners >= s.owner_ranks && s.owner_ranks >= 1,
                   "owners must be at least the owner ranks");
  MPSL_INPUT_CHECK(static_cast<int>(s.steps.size()) == s.owners, "steps per owner missing");
  MPSL_INPUT_CHECK(
      s.stage_devices.empty() || static_cast<int>(s.stage_devices.size()) == s.stages(),
      "one device per stage expected");
  MPSL_INPUT_CHECK(s.owner_devices.empty() || static_cast<int>(s.owner_devices.size()) == s.owners,
                   "one device per owner expected");
  MPSL_INPUT_CHECK(!s.emulated || (static_cast<int>(s.emulated_owners.size()) == s.owners &&
                                   static_cast<int>(s.emulated_stages.size()) == s.stages()),
                   "an emulated scenario needs a device per owner and per stage");
  MPSL_INPUT_CHECK(s.replicas >= 1 && s.owners >= s.replicas,
                   "every replica needs at least one owner");
  MPSL_INPUT_CHECK(s.owner_replica.empty() || static_cast<int>(s.owner_replica.size()) == s.owners,
                   "one replica per owner expected");
  for (int k = 0; k < s.owners; ++k)
    MPSL_INPUT_CHECK(s.replica_of(k) >= 0 && s.replica_of(k) < s.replicas,
                     "owner " + std::to_string(k) + " is given to a replica that does not exist");
  for (int h = 0; h < s.replicas; ++h)
    MPSL_INPUT_CHECK(s.owners_of_replica(h) > 0,
                     "replica " + std::to_string(h) + " serves no owner");
  MPSL_INPUT_CHECK(s.micro_batches == p.micro_batches,
                   "the profile was taken with " + std::to_string(p.micro_batches) +
                       " micro-batch(es) of batch " + std::to_string(p.batch) + ", the run uses " +
                       std::to_string(s.micro_batches));
}

double stage_forward_s(const Scenario& s, int i) {
  const Profile& p = *s.profile;
  const Device& d = s.stage_device(i);
  const Device& next = i + 1 < s.stages() ? s.stage_device(i + 1) : s.owner_device;
  const int b = s.split[i], e = s.split[i + 1];
  // Sending is asynchronous: the link between two stages is a pipeline resource of its own, so
  // it bounds the stage's rate rather than adding to its time. Owner links are per owner (they
  // add latency, in startT and endT, not a shared bottleneck).
  const double link = i + 1 < s.stages() ? transfer_s(d, next, p.cut_bytes(e)) : 0.0;
  return s.micro_batches * std::max(d.slowdown * p.forward(b, e), link);
}

double stage_backward_s(const Scenario& s, int i) {
  const Profile& p = *s.profile;
  const Device& d = s.stage_device(i);
  const Device& prev = i > 0 ? s.stage_device(i - 1) : s.owner_device;
  const int b = s.split[i], e = s.split[i + 1];
  const double link = i > 0 ? transfer_s(d, prev, p.cut_bytes(b)) : 0.0;
  return s.micro_batches * std::max(d.slowdown * p.backward(b, e), link) +
         d.slowdown * p.step(b, e);
}

int64_t stage_receive_bytes(int64_t in_b, int64_t out_b, int owners, int owner_ranks, int stage,
                            int stages, int window) {
  // As StageRuntime (multihop.cpp) posts them: per peer, min(owners behind it * window, 16) + 1
  // buffers, as large as the largest message from it. The owners are spread over the owner
  // ranks as evenly as the runtime spreads them.
  const int ranks = std::max(1, std::min(owner_ranks, owners));
  int64_t bytes = 0;
  for (int r = 0; r < ranks; ++r) {
    const int on_rank = owners / ranks + (r < owners % ranks ? 1 : 0);
    const int64_t d = comm::receive_depth(on_rank, window);
    if (stages == 1)
      bytes += 2 * d * std::max(in_b, out_b);  // the owner rank is both neighbours
    else
      bytes += d * ((stage == 0 ? in_b : 0) + (stage == stages - 1 ? out_b : 0));
  }
  const int64_t d = comm::receive_depth(owners, window);
  if (stage > 0) bytes += d * in_b;
  if (stage < stages - 1) bytes += d * out_b;
  return bytes;
}

int64_t untouched_gradient_scratch_bytes(const Profile& p, int b, int e) {
  return p.micro_batches == 1 ? p.param_bytes(b, e) : 0;
}

int64_t stage_memory_bytes(const Profile& p, int b, int e, int owners, int in_flight,
                           int owner_ranks, int stage, int stages, int window, bool momentum_sums,
                           bool replicated) {
  const int64_t in_b = p.cut_bytes(b), out_b = p.cut_bytes(e);
  // FedAvg: a stage with all its owners' copies averages them in place, with no sums. The
  // replicas of a stage sum their copies in double (optim/fedavg.hpp) to reduce the sums over
  // the replicas: twice a copy's parameters and buffers, kept from round to round, also for a
  // replica holding one owner's copy.
  const int64_t sums =
      replicated ? 2 * (p.param_bytes(b, e) * (momentum_sums ? 2 : 1) + p.buffer_bytes(b, e)) : 0;
  // The send pool: two messages in transfer at once (measured: 1-2 of the largest; a run with
  // a reservation creates two up front).
  return p.base_rss_bytes + kMpiRssBytes + owners * p.copy_bytes(b, e) + p.work_bytes(b, e) -
         untouched_gradient_scratch_bytes(p, b, e) + sums +
         in_flight * part_activation_bytes(p, b, e) +
         stage_receive_bytes(in_b, out_b, owners, owner_ranks, stage, stages, window) +
         kStageSendBuffers * std::max(in_b, out_b);
}

namespace {

// As many processes on the profiled host as load its cores the way `processes` ranks load the
// run's s.cores: the profile measured placement and hops with n processes on its
// placement_cpus CPUs (the same count when not known).
double profiled_processes(const Scenario& s, int processes) {
  const int P = s.profile->placement_cpus;
  return P > 0 && s.cores > 0 && P != s.cores ? processes * static_cast<double>(P) / s.cores
                                              : static_cast<double>(processes);
}

// The speed of each of `busy` ranks computing at once: the profile's measured slowdown
// (interpolated; beyond its table, its last slowdown per process), else an even share of the
// cores.
double placement_rate(const Scenario& s, int busy) {
  if (s.cores <= 0 || busy <= 1) return 1.0;
  const auto& c = s.profile->concurrency;
  if (!c.empty() && s.threads == 1) {
    const double n = profiled_processes(s, busy);
    if (n <= 1) return 1.0;
    const double size = static_cast<double>(c.size());
    if (n > size) return 1.0 / (c.back() * n / size);
    const size_t lo = static_cast<size_t>(std::floor(n));
    const double f = n - static_cast<double>(lo);
    const double slowdown = lo >= c.size() ? c.back() : c[lo - 1] + f * (c[lo] - c[lo - 1]);
    return 1.0 / slowdown;
  }
  return std::min(1.0, static_cast<double>(s.cores) / (busy * std::max(1, s.threads)));
}

// The placement rate, slowed by what a real pipeline of as many ranks on the profiled host lost
// beyond it (the profile's pipeline calibration, measured with one thread per rank): ranks that
// wake up, wait and exchange messages between tasks lose time that processes computing all the
// time, as the placement sweep's, do not (docs/cost-model-validation).
double share_rate(const Scenario& s, int busy) {
  if (s.cores <= 0 || s.threads != 1) return placement_rate(s, busy);
  return placement_rate(s, busy) / pipeline_factor(*s.profile, profiled_processes(s, s.ranks()));
}

// FedAvg at the round's end. Owner ranks: the weighted sums of their owners' parts 1 and P and
// the reduction over the owner ranks, after (--emulate) the slowest of their owners has
// uploaded and downloaded its parts. Stage ranks: the average of their copies in place or, with
// replicas, their weighted sums and a reduction over the replicas (a ring all-reduce of the sums,
// in double: 2 (H - 1) steps of a share of them; measured with 4 replicas of a vgg19 stage on 2
// cores, 1.1 GB: 0.5-0.9 s). --emulate: the sums run at the stage device's speed and the
// reduction lasts at least the ring over the replicas' links (multihop.cpp StageRuntime).
struct Aggregation {
  std::vector<double> busy;   // per rank: compute
  std::vector<double> wait;   // per rank: emulated link time before it (sleeping)
  std::vector<double> after;  // per rank: emulated time after it (sleeping)
  double seconds = 0;         // until every rank is done
};

double emulated_ring_allreduce_s(const EmulatedDevice& d, int64_t bytes, int ranks) {
  if (ranks <= 1) return 0;
  const double step = emulated_wire_s(d, d, bytes / ranks) + d.up.latency_s + d.down.latency_s;
  return 2.0 * (ranks - 1) * step;
}

// `owner_tail[k]`: how long after training owner k's emulated device is still busy with its
// last span (--emulate; empty = none): its upload starts then.
Aggregation aggregation(const Scenario& s, const std::vector<double>& owner_tail = {}) {
  const Profile& p = *s.profile;
  const int S = p.num_units(), N = s.stages(), O = s.owner_ranks, H = s.replicas;
  const int a = s.split.front(), z = s.split.back();
  Aggregation g;
  g.busy.assign(O + H * N, 0.0);
  g.wait.assign(O + H * N, 0.0);
  g.after.assign(O + H * N, 0.0);
  const int m = s.average_momentum ? 2 : 1;  // summed tensors of a parameter's size
  const double bytes = static_cast<double>(m * (p.param_bytes(0, a) + p.param_bytes(z, S)));
  // What an emulated owner uploads (and downloads): its parts' parameters, momentum too when
  // it is averaged, and buffers (multihop.cpp OwnerRuntime::aggregate).
  const int64_t emulated_bytes =
      m * (p.param_bytes(0, a) + p.param_bytes(z, S)) + p.buffer_bytes(0, a) + p.buffer_bytes(z, S);
  for (int k = 0; k < s.owners; ++k) {
    const int r = k % O;
    // The runtime first checks each copy's parameters for non-finite values, then sums.
    g.busy[r] +=
        s.owner_device_of(k).slowdown *
        (p.check_s_per_byte * static_cast<double>(p.param_bytes(0, a) + p.param_bytes(z, S)) +
         p.average_s_per_byte * bytes);
    if (s.emulated)
      g.wait[r] =
          std::max(g.wait[r], (owner_tail.empty() ? 0.0 : owner_tail[k]) +
                                  emulated_aggregation_s(s.emulated_owners[k], emulated_bytes));
  }
  if (O > 1)
    for (int r = 0; r < O; ++r)
      g.busy[r] += transfer_s(s.owner_device, s.owner_device, static_cast<int64_t>(2 * bytes));
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < N; ++i) {
      const Device& d = s.stage_device(i);
      const int b = s.split[i], e = s.split[i + 1];
      // Each copy's parameters are first checked for non-finite values. Without replicas, the
      // stage averages its copies in place (optim::average_in_place).
      const int served = s.owners_of_replica(h);
      const double part_bytes = static_cast<double>(m * p.param_bytes(b, e));
      const double sums =
          d.slowdown * (p.check_s_per_byte * static_cast<double>(p.param_bytes(b, e)) * served +
                        (H > 1 ? p.average_s_per_byte * part_bytes * served
                               : p.in_place_average_s(part_bytes, served)));
      const int64_t sum_bytes = 2 * (m * p.param_bytes(b, e) + p.buffer_bytes(b, e));  // doubles
      const double ring = H > 1 ? 2.0 * (H - 1) * transfer_s(d, d, sum_bytes / H) : 0.0;
      const int r = O + h * N + i;
      g.busy[r] = sums + ring;
      if (s.emulated) {
        const EmulatedDevice& ed = s.emulated_stages[i];
        g.after[r] = (ed.factor - 1) * sums +
                     std::max(0.0, emulated_ring_allreduce_s(ed, sum_bytes, H) - ring);
      }
    }
  // Processor sharing: a rank starts its sums after its wait (emulated links) and computes at
  // the shared rate of the ranks busy with it; those done leave their cores to the rest.
  std::vector<double> left = g.busy, done = g.wait;
  double now = 0;
  for (;;) {
    int active = 0, next_start = -1;
    for (size_t r = 0; r < left.size(); ++r) {
      if (left[r] <= 0) continue;
      if (g.wait[r] <= now)
        ++active;
      else if (next_start < 0 || g.wait[r] < g.wait[next_start])
        next_start = static_cast<int>(r);
    }
    if (active == 0 && next_start < 0) break;
    if (active == 0) {
      now = g.wait[next_start];
      continue;
    }
    const double rate = s.cores > 0 ? share_rate(s, active) : 1.0;
    double dt = std::numeric_limits<double>::infinity();
    for (size_t r = 0; r < left.size(); ++r)
      if (left[r] > 0 && g.wait[r] <= now) dt = std::min(dt, left[r] / rate);
    const bool starts = next_start >= 0 && g.wait[next_start] - now < dt;
    if (starts) dt = g.wait[next_start] - now;
    for (size_t r = 0; r < left.size(); ++r)
      if (left[r] > 0 && g.wait[r] <= now) {
        left[r] -= dt * rate;
        if (left[r] <= 1e-9 * g.busy[r]) {
          left[r] = 0;
          done[r] = now + dt;
        }
      }
    now = starts ? g.wait[next_start] : now + dt;
  }
  g.seconds = now;
  // A rank whose emulated sleep follows its compute holds no core meanwhile.
  for (size_t r = 0; r < g.busy.size(); ++r) g.seconds = std::max(g.seconds, done[r] + g.after[r]);
  return g;
}

// Evaluation by rank 0 through the stages, comm::kEvalInFlight batches in flight (multihop.cpp): a
// batch's trip (owner part 1, hop, stage 1, ..., stage N, hop, owner part P) takes L; in steady
// state a batch leaves every max(busiest rank or link, L / batches in flight, the CPU work over
// the cores when fewer cores than batches in flight).
double evaluate_seconds(const Scenario& s) {
  if (s.test_samples <= 0) return 0;
  const Profile& p = *s.profile;
  const int S = p.num_units(), N = s.stages();
  const double whole = p.forward(0, S);
  auto share = [&](int b, int e) { return whole > 0 ? p.forward(b, e) / whole : 0.0; };
  const int64_t eb = std::min<int64_t>(s.eval_batch, s.test_samples);
  const double per_batch = p.evaluate_s_per_sample * static_cast<double>(eb);
  const double scale = static_cast<double>(eb) / static_cast<double>(p.micro_batch());
  // Per batch: CPU seconds of rank 0 (index 0) and of each stage, and each hop's wire time.
  std::vector<double> cpu(N + 1, 0.0), wire(N + 1, 0.0);
  cpu[0] =
      s.owner_device.slowdown * per_batch * (share(0, s.split.front()) + share(s.split.back(), S));
  for (int i = 0; i < N; ++i)
    cpu[i + 1] = s.stage_device(i).slowdown * per_batch * share(s.split[i], s.split[i + 1]);
  // One message per hop and batch: the sender reorders its output to plain, MPI copies it, the
  // receiver reorders it into its program's input.
  for (int i = 0; i <= N; ++i) {
    const Device& from = i == 0 ? s.owner_device : s.stage_device(i - 1);
    const Device& to = i == N ? s.owner_device : s.stage_device(i);
    const auto bytes = static_cast<int64_t>(p.cut_bytes(s.split[i]) * scale);
    cpu[i] += from.slowdown * p.copy_s_per_byte * static_cast<double>(bytes);
    cpu[(i + 1) % (N + 1)] += 2 * to.slowdown * p.copy_s_per_byte * static_cast<double>(bytes);
    wire[i] = transfer_s(from, to, bytes);
  }
  double trip = 0, busiest = 0, work = 0;
  for (int r = 0; r <= N; ++r) {
    trip += cpu[r] + wire[r];
    busiest = std::max({busiest, cpu[r], wire[r]});
    work += cpu[r];
  }
  double every = std::max(busiest, trip / comm::kEvalInFlight);
  if (s.cores > 0 && s.cores < comm::kEvalInFlight) every = std::max(every, work / s.cores);
  const double batches = static_cast<double>(s.test_samples) / static_cast<double>(eb);
  return trip + (batches - 1) * every;
}

// ---- the event simulation -------------------------------------------------------------------

enum class Kind { kActivation, kGrad };

struct Msg {
  double t = 0;  // arrival (in transit), release (held back by the emulation)
  uint64_t seq = 0;
  int src = 0, dest = 0, owner = 0, micro = 0;
  int64_t bytes = 0;
  Kind kind = Kind::kActivation;
  double copy_s = 0;  // receiver's CPU to take it in (shared memory, see post)
};
struct Later {
  bool operator()(const Msg& a, const Msg& b) const {
    return a.t != b.t ? a.t > b.t : a.seq > b.seq;
  }
};

enum class Task {
  kNone,
  kFirstForward,
  kLast,
  kFirstBackward,
  kStageForward,
  kStageBackward,
  kCopyIn
};

struct OwnerState {
  int id = 0;
  int64_t left = 0;  // steps left in the round
  int in_flight = 0, next_micro = 0, grads_done = 0;
  bool active = false;
};

struct RankSim {
  bool owner = false;
  int stage = -1, replica = 0;
  std::vector<int> owners;   // owner ranks: the owners it holds
  std::vector<Msg> inbox;    // arrived, in arrival order
  std::vector<Msg> arrived;  // arrived in shared memory, not yet copied in
  std::vector<Msg> copying;  // being copied in (Task::kCopyIn)
  bool copied = false;       // the last task was a copy-in
  Task task = Task::kNone;
  Msg current;              // the message the task serves (or owner/micro for forwards)
  double remaining = 0;     // seconds of work at full speed
  double work = 0;          // the compute task's work at full speed (its CPU time)
  double started = 0;       // when the task began
  double asleep_until = 0;  // --emulate: a stage sleeps until its device has finished
  std::vector<Msg> held;    // --emulate: messages waiting for their release, by release time
  double busy = 0;
  double cpu = 0;  // work done, at full speed (the rank's CPU time)
  int next = 0;    // round-robin position (owner ranks)
  int in_flight = 0, max_in_flight = 0;
  std::vector<int> preferred;
  double core_wait_s = 0;  // Sharing::kStagesFirst: how long its task has waited for a core
};

// The closed form's view of an emulated or replicated scenario (rough): compute factors folded
// into the devices' slowdowns (the slowest owner's device for every owner), the slower
// direction of each link with the sum of its latencies, and the replica with the most batches
// as the one pipeline.
Scenario flattened(const Scenario& s) {
  Scenario f = s;
  if (s.emulated) {
    auto fold = [](Device d, const EmulatedDevice& e) {
      d.slowdown *= e.factor;
      double bps = e.up.bps;
      if (e.down.bps > 0) bps = bps > 0 ? std::min(bps, e.down.bps) : e.down.bps;
      if (bps > 0) d.bandwidth = d.bandwidth > 0 ? std::min(d.bandwidth, bps / 8) : bps / 8;
      const double latency = e.up.latency_s + e.down.latency_s;
      if (latency > 0) d.latency = latency;
      return d;
    };
    int slowest = 0;
    for (int k = 1; k < s.owners; ++k)
      if (s.emulated_owners[k].factor > s.emulated_owners[slowest].factor) slowest = k;
    f.owner_device = fold(s.owner_device_of(slowest), s.emulated_owners[slowest]);
    f.owner_devices.clear();
    f.stage_devices.clear();
    for (int i = 0; i < s.stages(); ++i)
      f.stage_devices.push_back(fold(s.stage_device(i), s.emulated_stages[i]));
    f.emulated = false;
    f.emulated_owners.clear();
    f.emulated_stages.clear();
  }
  if (s.replicas > 1) {
    int busiest = 0;
    int64_t most = -1;
    for (int h = 0; h < s.replicas; ++h) {
      int64_t n = 0;
      for (int k = 0; k < s.owners; ++k) n += s.replica_of(k) == h ? s.steps[k] : 0;
      if (n > most) most = n, busiest = h;
    }
    f.steps.clear();
    f.owner_devices.clear();
    for (int k = 0; k < s.owners; ++k)
      if (s.replica_of(k) == busiest) {
        f.steps.push_back(s.steps[k]);
        if (!s.owner_devices.empty() && !s.emulated) f.owner_devices.push_back(s.owner_devices[k]);
      }
    f.owners = static_cast<int>(f.steps.size());
    f.owner_ranks = std::min(s.owner_ranks, f.owners);
    f.replicas = 1;
    f.owner_replica.clear();
  }
  return f;
}

}  // namespace

double paper_round_seconds(const Scenario& scenario) {
  check_scenario(scenario);
  const Scenario s = flattened(scenario);
  const Profile& p = *s.profile;
  const int S = p.num_units(), N = s.stages();
  const int a = s.split.front(), z = s.split.back();
  const Device& od = s.owner_device;
  const int M = s.micro_batches;
  double lf = 0, lb = 0, fill = 0;
  for (int i = 0; i < N; ++i) {
    const double f = stage_forward_s(s, i), b = stage_backward_s(s, i);
    lf = std::max(lf, f);
    lb = std::max(lb, b);
    fill += f + b;
  }
  const double start =
      M * (od.slowdown * p.forward(0, a) + transfer_s(od, s.stage_device(0), p.cut_bytes(a)));
  const double end =
      M * (od.slowdown * (p.forward(z, S) + p.loss_s + p.backward(z, S) + p.backward(0, a)) +
           transfer_s(s.stage_device(N - 1), od, p.cut_bytes(z)) +
           transfer_s(od, s.stage_device(N - 1), p.cut_bytes(z)) +
           transfer_s(s.stage_device(0), od, p.cut_bytes(a))) +
      od.slowdown * (p.step(0, a) + p.step(z, S));
  int64_t batches = 0;
  for (int64_t st : s.steps) batches += st;
  const double train = start + fill + std::max<int64_t>(batches - 1, 0) * (lf + lb) + end;
  return train + aggregation(scenario).seconds + evaluate_seconds(scenario);
}

namespace {

// How the busy ranks share the cores when there are more of them than cores.
enum class Sharing {
  kEven,  // equally (processor sharing): round and busy times
  // Stage ranks first. Linux's scheduler favours a rank that has slept over one that has run:
  // stage ranks wait for work most of the time and preempt the busier owner rank when a message
  // wakes them, and the owner rank gets a core again only after a scheduler slice
  // (kOwnerCoreWaitS). Meanwhile the stages behind it keep running forwards whose gradients it
  // holds up (fmnist-cnn 1F1B, 3-4 ranks on 2 cores: last stages held 8-10 micro-batches where
  // even sharing says 2). Memory only.
  kStagesFirst
};

// The longest an owner rank waits for a core while stage ranks hold them (kStagesFirst):
// measured here, a message to a rank waiting for a core is handled 1-2.6 ms after it is sent.
constexpr double kOwnerCoreWaitS = 0.002;

// One event simulation. `in_flight_floor` (per rank): memory counts at least that many
// micro-batches in flight (simulate()).
// `spans`: also the round span by span (simulate_spans).
Prediction simulate_once(const Scenario& s, const std::vector<int>* in_flight_floor,
                         Sharing sharing = Sharing::kEven,
                         std::vector<SimulatedSpan>* spans = nullptr) {
  const Profile& p = *s.profile;
  const int S = p.num_units(), N = s.stages(), O = s.owner_ranks, K = s.owners;
  const int H = s.replicas, R = O + H * N;
  const int M = s.micro_batches;
  const int a = s.split.front(), z = s.split.back();
  const int window = s.one_f_one_b ? std::min(M, N + 2) : 1;

  // Task lengths at full speed. Crossing a cut costs copies on both sides: the sender
  // reorders its output to plain, the receiver copies it out of MPI and into the part's input.
  // The runtime also scans what it sends and receives, and each part's gradient before the
  // step, for non-finite values (ck per byte).
  const double cp = p.copy_s_per_byte, ck = p.check_s_per_byte;
  std::vector<double> t_first_fwd(K), t_last(K), t_first_bwd(K), t_owner_step(K);
  for (int k = 0; k < K; ++k) {
    const double f = s.owner_device_of(k).slowdown;
    t_first_fwd[k] =
        f * (p.forward(0, a) + p.cut_bytes(a) * cp + p.micro_batch() * p.assemble_s_per_sample +
             (p.input_bytes + p.cut_bytes(a)) * ck);
    t_last[k] = f * (p.forward(z, S) + p.loss_s + p.backward(z, S) + 3 * p.cut_bytes(z) * cp +
                     2 * p.cut_bytes(z) * ck);
    t_first_bwd[k] = f * (p.backward(0, a) + 2 * p.cut_bytes(a) * cp + p.cut_bytes(a) * ck);
    t_owner_step[k] = f * (p.step(0, a) + p.step(z, S) +
                           static_cast<double>(p.param_bytes(0, a) + p.param_bytes(z, S)) * ck);
  }
  std::vector<double> t_fwd(N), t_bwd(N), t_step(N);
  for (int i = 0; i < N; ++i) {
    const double f = s.stage_device(i).slowdown;
    const int b = s.split[i], e = s.split[i + 1];
    const int64_t in = p.cut_bytes(b), out = p.cut_bytes(e);
    t_fwd[i] = f * (p.forward(b, e) + (2 * in + out) * cp + (in + out) * ck);
    t_bwd[i] = f * (p.backward(b, e) + (2 * out + in) * cp + (in + out) * ck);
    t_step[i] = f * (p.step(b, e) + static_cast<double>(p.param_bytes(b, e)) * ck);
  }
  auto stage_rank = [&](int i, int h) { return O + h * N + i; };
  // The host device of a rank's end of a message about owner k (owner ranks: that owner's).
  auto device_of = [&](int rank, int k) -> const Device& {
    return rank < O ? s.owner_device_of(k) : s.stage_device((rank - O) % N);
  };

  std::vector<RankSim> ranks(R);
  std::vector<OwnerState> owners(K);
  for (int k = 0; k < K; ++k) {
    owners[k].id = k;
    owners[k].left = s.steps[k];
    ranks[k % O].owners.push_back(k);
  }
  for (int r = 0; r < O; ++r) {
    ranks[r].owner = true;
    for (int h = 0; h < H; ++h) {
      bool served = false;
      for (int k : ranks[r].owners) served |= s.replica_of(k) == h;
      if (!served) continue;
      ranks[r].preferred.push_back(stage_rank(N - 1, h));
      ranks[r].preferred.push_back(stage_rank(0, h));
    }
  }
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < N; ++i) {
      RankSim& r = ranks[stage_rank(i, h)];
      r.stage = i;
      r.replica = h;
      if (i > 0) r.preferred.push_back(stage_rank(i - 1, h));
      if (i < N - 1) r.preferred.push_back(stage_rank(i + 1, h));
    }
  std::vector<std::vector<int>> grads_done(R, std::vector<int>(K, 0));

  // --emulate: device clocks (when each device is free again) and links (when free again,
  // keyed by the rank whose emulator holds them and the two devices; a device is an owner k or
  // K + stage).
  std::vector<double> owner_clock(K, 0.0), stage_clock(R, 0.0);
  std::map<std::tuple<int, int, int>, double> link_free;
  auto emulated_device = [&](int entity) -> const EmulatedDevice& {
    return entity < K ? s.emulated_owners[entity] : s.emulated_stages[entity - K];
  };

  std::priority_queue<Msg, std::vector<Msg>, Later> transit;
  uint64_t seq = 0;
  double now = 0;
  auto message = [&](int src, int dest, Kind kind, int owner, int micro, int64_t bytes) {
    Msg m;
    m.seq = seq++;
    m.src = src;
    m.dest = dest;
    m.owner = owner;
    m.micro = micro;
    m.bytes = bytes;
    m.kind = kind;
    return m;
  };
  // Posts a message now: it crosses the (real) link between the two ranks' hosts.
  //
  // Between ranks on one host (no link given on either side), Open MPI's single-copy transfer
  // (CMA) is done by the receiving process, inside its MPI calls: the message costs its
  // receiver CPU time, when that rank is between tasks, on a core it may share. Over a real
  // link the network moves it and only the time counts.
  auto post = [&](Msg m) {
    const Device& from = device_of(m.src, m.owner);
    const Device& to = device_of(m.dest, m.owner);
    if (from.bandwidth <= 0 && to.bandwidth <= 0) {
      m.t = now + std::max(link_latency(from), link_latency(to));
      m.copy_s = to.slowdown * static_cast<double>(m.bytes) / kLocalBandwidth;
      // Ranks outnumbering the cores: each message wakes a rank that takes a core from another
      // (kOversubscribedMessageCpuS).
      if (s.cores > 0 && s.ranks() * std::max(1, s.threads) > s.cores)
        m.copy_s += to.slowdown * kOversubscribedMessageCpuS;
      // On shared cores the message also waits for both ends to be scheduled: the profile's
      // hop probe with the two ends and every other rank computing now.
      if (s.cores > 0 && s.threads == 1) {
        int n = 2;
        for (int r = 0; r < R; ++r) n += r != m.src && r != m.dest && ranks[r].task != Task::kNone;
        if (n > s.cores)
          m.t += hop_wait_s(p, static_cast<int>(std::lround(profiled_processes(s, n))));
      }
    } else {
      m.t = now + transfer_s(from, to, m.bytes);
    }
    transit.push(m);
  };
  // A message ready at `ready` (its span's emulated end) from device `from` to device `to`:
  // queued on their link, held back until it arrives there (RankEmulator::transfer).
  auto send_emulated = [&](Msg m, int from, int to, double ready) {
    const EmulatedDevice& x = emulated_device(from);
    const EmulatedDevice& y = emulated_device(to);
    double& free = link_free[{m.src, from, to}];
    const double begin = std::max(ready, free);
    free = begin + emulated_wire_s(x, y, m.bytes);
    m.t = free + x.up.latency_s + y.down.latency_s;
    auto& held = ranks[m.src].held;
    held.insert(std::upper_bound(held.begin(), held.end(), m,
                                 [](const Msg& u, const Msg& v) {
                                   return u.t != v.t ? u.t < v.t : u.seq < v.seq;
                                 }),
                m);
  };
  // Mailbox::take: gradients first, then preferred sources in order, then arrival order.
  auto take = [](RankSim& r) {
    size_t pick = r.inbox.size();
    for (size_t i = 0; i < r.inbox.size() && pick == r.inbox.size(); ++i)
      if (r.inbox[i].kind == Kind::kGrad) pick = i;
    for (int src : r.preferred)
      for (size_t i = 0; i < r.inbox.size() && pick == r.inbox.size(); ++i)
        if (r.inbox[i].src == src) pick = i;
    if (pick == r.inbox.size()) pick = 0;
    Msg m = r.inbox[pick];
    r.inbox.erase(r.inbox.begin() + static_cast<long>(pick));
    return m;
  };
  auto can_send = [&](const OwnerState& o) {
    if (o.left <= 0 || o.in_flight >= window) return false;
    return !o.active || o.next_micro < M;
  };

  const double eps = 1e-12;
  // A rank in its mailbox (not computing, not asleep) posts the held messages that are due.
  auto post_due = [&](RankSim& r) {
    size_t n = 0;
    while (n < r.held.size() && r.held[n].t <= now + eps) post(r.held[n++]);
    r.held.erase(r.held.begin(), r.held.begin() + static_cast<long>(n));
  };

  auto start_task = [&](int rank) {
    RankSim& r = ranks[rank];
    if (r.task != Task::kNone || r.asleep_until > now + eps) return;
    post_due(r);
    r.started = now;
    // A rank's MPI progress takes in whatever has arrived, then the rank picks its next task
    // from what is in (Mailbox::wait: what arrives during that copy waits for the next call).
    const bool picked = r.copied && !r.inbox.empty();
    r.copied = false;
    if (!r.arrived.empty() && !picked) {
      r.task = Task::kCopyIn;
      r.remaining = 0;
      for (const Msg& m : r.arrived) r.remaining += m.copy_s;
      r.copying.swap(r.arrived);
      r.arrived.clear();
      return;
    }
    if (r.owner) {
      if (!r.inbox.empty()) {
        Msg m = take(r);
        r.current = m;
        const int k = m.owner;
        if (m.kind == Kind::kActivation) {
          r.task = Task::kLast;
          r.remaining = r.work = t_last[k];
        } else {
          OwnerState& o = owners[k];
          r.task = Task::kFirstBackward;
          r.remaining = r.work = t_first_bwd[k] + (o.grads_done + 1 == M ? t_owner_step[k] : 0.0);
        }
        return;
      }
      const int n = static_cast<int>(r.owners.size());
      for (int i = 0; i < n; ++i) {
        OwnerState& o = owners[r.owners[(r.next + i) % n]];
        if (!can_send(o)) continue;
        if (!o.active) {
          o.active = true;
          o.next_micro = 0;
          o.grads_done = 0;
        }
        r.current = Msg();
        r.current.owner = o.id;
        r.current.micro = o.next_micro++;
        ++o.in_flight;
        r.task = Task::kFirstForward;
        r.remaining = r.work = t_first_fwd[o.id];
        r.next = (r.next + i + 1) % n;
        ++r.in_flight;
        r.max_in_flight = std::max(r.max_in_flight, r.in_flight);
        return;
      }
      return;
    }
    if (r.inbox.empty()) return;
    Msg m;
    if (s.stage_in_flight_limit > 0 && r.in_flight >= s.stage_in_flight_limit) {
      // At its limit a stage takes only gradients; activations wait in the inbox.
      const auto g = std::find_if(r.inbox.begin(), r.inbox.end(),
                                  [](const Msg& x) { return x.kind == Kind::kGrad; });
      if (g == r.inbox.end()) return;
      m = *g;
      r.inbox.erase(g);
    } else {
      m = take(r);
    }
    r.current = m;
    const int i = r.stage;
    if (m.kind == Kind::kActivation) {
      r.task = Task::kStageForward;
      r.remaining = r.work = t_fwd[i];
      ++r.in_flight;
      r.max_in_flight = std::max(r.max_in_flight, r.in_flight);
    } else {
      r.task = Task::kStageBackward;
      r.remaining = r.work = t_bwd[i] + (grads_done[rank][m.owner] + 1 == M ? t_step[i] : 0.0);
    }
  };

  // The span that ends now sends `out` (if any). Emulated: an owner's span ends on its
  // device's clock, factor x its CPU time (its work, unstretched by sharing the host's cores:
  // emulate::span_seconds) after it began, or now if that is later, and its message is held
  // back until then; a stage sleeps until its device is done.
  auto end_span = [&](int rank, const Msg* out, int to_entity) {
    RankSim& r = ranks[rank];
    if (!s.emulated) {
      if (out) post(*out);
      return;
    }
    const double measured = r.work;
    const int k = r.current.owner;
    const int from = r.owner ? k : K + r.stage;
    double& clock = r.owner ? owner_clock[k] : stage_clock[rank];
    const double begin = std::max(r.started, clock);
    clock = begin + emulated_device(from).factor * measured;
    if (!r.owner) r.asleep_until = clock;
    if (out) send_emulated(*out, from, to_entity, std::max(now, clock));
  };

  // The task ending now as spans: `parts` (kind, work at full speed) share its time as they
  // share its work.
  using SpanKind = SimulatedSpan::Kind;
  auto record = [&](int rank, std::initializer_list<std::pair<SpanKind, double>> parts) {
    if (!spans) return;
    const RankSim& r = ranks[rank];
    double total = 0;
    for (const auto& [kind, work] : parts) total += work;
    double at = r.started, done = 0;
    for (const auto& [kind, work] : parts) {
      if (work <= 0) continue;
      done += work;
      SimulatedSpan x;
      x.rank = rank;
      x.kind = kind;
      x.start_s = at;
      x.end_s = total > 0 ? r.started + (now - r.started) * done / total : now;
      x.cpu_s = work;
      if (kind == SpanKind::kCopyIn) {
        x.peer = r.copying.front().src;
        x.bytes = 0;
        for (const Msg& m : r.copying) x.bytes += m.bytes;
      } else {
        x.owner = r.current.owner;
        if (kind != SpanKind::kOptimizer) x.micro = r.current.micro;
      }
      spans->push_back(x);
      at = x.end_s;
    }
  };

  auto finish_task = [&](int rank) {
    RankSim& r = ranks[rank];
    const Msg m = r.current;
    const int k = m.owner;
    if (spans) {
      switch (r.task) {
        case Task::kFirstForward:
        case Task::kStageForward:
          record(rank, {{SpanKind::kForward, r.work}});
          break;
        case Task::kLast: {
          // Forward and loss, then backward, of the last part (copies and checks pro rata).
          const double f = p.forward(z, S) + p.loss_s, b = p.backward(z, S);
          const double fwd = f + b > 0 ? r.work * f / (f + b) : 0;
          record(rank, {{SpanKind::kForward, fwd}, {SpanKind::kBackward, r.work - fwd}});
          break;
        }
        case Task::kFirstBackward:
          record(rank, {{SpanKind::kBackward, t_first_bwd[k]},
                        {SpanKind::kOptimizer, r.work - t_first_bwd[k]}});
          break;
        case Task::kStageBackward:
          record(rank, {{SpanKind::kBackward, t_bwd[r.stage]},
                        {SpanKind::kOptimizer, r.work - t_bwd[r.stage]}});
          break;
        case Task::kCopyIn: {
          double work = 0;
          for (const Msg& x : r.copying) work += x.copy_s;
          if (!r.copying.empty()) record(rank, {{SpanKind::kCopyIn, work}});
          break;
        }
        case Task::kNone:
          break;
      }
    }
    switch (r.task) {
      case Task::kFirstForward: {
        const Msg out = message(rank, stage_rank(0, s.replica_of(k)), Kind::kActivation, k, m.micro,
                                p.cut_bytes(a));
        end_span(rank, &out, K + 0);
        break;
      }
      case Task::kLast: {
        const Msg out = message(rank, stage_rank(N - 1, s.replica_of(k)), Kind::kGrad, k, m.micro,
                                p.cut_bytes(z));
        end_span(rank, &out, K + N - 1);
        break;
      }
      case Task::kFirstBackward: {
        OwnerState& o = owners[k];
        --r.in_flight;
        --o.in_flight;
        if (++o.grads_done == M) {
          o.active = false;
          --o.left;
        }
        end_span(rank, nullptr, 0);
        break;
      }
      case Task::kStageForward: {
        const int i = r.stage;
        const int dest = i == N - 1 ? k % O : stage_rank(i + 1, r.replica);
        const Msg out =
            message(rank, dest, Kind::kActivation, k, m.micro, p.cut_bytes(s.split[i + 1]));
        end_span(rank, &out, i == N - 1 ? k : K + i + 1);
        break;
      }
      case Task::kStageBackward: {
        const int i = r.stage;
        --r.in_flight;
        if (++grads_done[rank][k] == M) grads_done[rank][k] = 0;
        const int dest = i == 0 ? k % O : stage_rank(i - 1, r.replica);
        const Msg out = message(rank, dest, Kind::kGrad, k, m.micro, p.cut_bytes(s.split[i]));
        end_span(rank, &out, i == 0 ? k : K + i - 1);
        break;
      }
      case Task::kCopyIn:
        r.inbox.insert(r.inbox.end(), r.copying.begin(), r.copying.end());
        r.copying.clear();
        r.copied = true;
        break;
      case Task::kNone:
        break;
    }
    r.task = Task::kNone;
    r.core_wait_s = 0;
  };

  auto all_done = [&]() {
    for (const auto& o : owners)
      if (o.left > 0 || o.in_flight > 0) return false;
    return true;
  };

  int64_t guard = 0;
  while (!all_done()) {
    MPSL_CHECK(++guard < 100000000, "cost simulation does not end");
    for (int r = 0; r < R; ++r) start_task(r);
    // Processor sharing: only ranks computing count (a sleeping stage leaves its core free).
    // kStagesFirst: stage ranks, and owner ranks that have waited kOwnerCoreWaitS for a core,
    // come first; the other owner ranks share what cores are left.
    auto first = [&](const RankSim& r) {
      return sharing == Sharing::kEven || !r.owner || r.core_wait_s >= kOwnerCoreWaitS - eps;
    };
    int busy = 0, busy_first = 0;
    for (const auto& r : ranks)
      if (r.task != Task::kNone) {
        ++busy;
        busy_first += first(r);
      }
    const int cores = s.cores / std::max(1, s.threads);
    double rate = share_rate(s, busy), later_rate = rate;
    if (sharing == Sharing::kStagesFirst && s.cores > 0 && busy > cores) {
      if (busy_first >= cores) {
        rate = share_rate(s, busy_first);
        later_rate = 0;
      } else {  // the first each on a core of their own, the others share the rest
        rate = share_rate(s, cores);
        later_rate = rate * (cores - busy_first) / (busy - busy_first);
      }
    }
    auto rate_of = [&](const RankSim& r) { return first(r) ? rate : later_rate; };
    double dt = std::numeric_limits<double>::infinity();
    for (const auto& r : ranks) {
      if (r.task != Task::kNone) {
        if (rate_of(r) > 0)
          dt = std::min(dt, r.remaining / rate_of(r));
        else
          dt = std::min(dt, kOwnerCoreWaitS - r.core_wait_s);
        continue;
      }
      if (r.asleep_until > now + eps) {
        dt = std::min(dt, r.asleep_until - now);
        continue;
      }
      if (!r.held.empty()) dt = std::min(dt, r.held.front().t - now);
    }
    if (!transit.empty()) dt = std::min(dt, transit.top().t - now);
    MPSL_CHECK(std::isfinite(dt), "cost simulation stalled (nothing runs, nothing in transit)");
    dt = std::max(dt, 0.0);
    now += dt;
    for (int r = 0; r < R; ++r) {
      RankSim& x = ranks[r];
      if (x.task == Task::kNone) continue;
      if (rate_of(x) > 0) {
        x.remaining -= dt * rate_of(x);
        x.cpu += dt * rate_of(x);
      } else
        x.core_wait_s += dt;
      x.busy += dt;
      if (x.remaining <= eps) finish_task(r);
    }
    while (!transit.empty() && transit.top().t <= now + eps) {
      RankSim& d = ranks[transit.top().dest];
      (transit.top().copy_s > 0 ? d.arrived : d.inbox).push_back(transit.top());
      transit.pop();
    }
  }

  Prediction out;
  out.train_s = now;
  std::vector<double> owner_tail(K, 0.0);
  for (int k = 0; k < K; ++k) owner_tail[k] = std::max(0.0, owner_clock[k] - now);
  const Aggregation agg = aggregation(s, owner_tail);
  out.aggregate_s = agg.seconds;
  out.evaluate_s = evaluate_seconds(s);
  // What rank 0 measures as a round: training, FedAvg until every rank has averaged its
  // copies (a barrier ends the round), and the evaluation.
  out.round_s = out.train_s + out.aggregate_s + out.evaluate_s;
  out.paper_round_s = paper_round_seconds(s);
  if (spans) {
    for (int r = 0; r < R; ++r) {
      SimulatedSpan x;
      x.rank = r;
      if (out.aggregate_s > 0) {
        x.kind = SimulatedSpan::Kind::kAggregation;
        x.start_s = out.train_s;
        x.end_s = out.train_s + out.aggregate_s;
        x.cpu_s = agg.busy[r];
        spans->push_back(x);
      }
      if (out.evaluate_s > 0) {  // through the pipeline: no per-rank CPU in the model
        x.kind = SimulatedSpan::Kind::kEval;
        x.start_s = out.train_s + out.aggregate_s;
        x.end_s = out.round_s;
        x.cpu_s = -1;
        spans->push_back(x);
      }
    }
  }

  // Memory per rank.
  const int64_t mb = p.micro_batch();
  for (int r = 0; r < R; ++r) {
    RankPrediction rp;
    const RankSim& x = ranks[r];
    rp.busy_s = x.busy + agg.busy[r];
    rp.cpu_s = x.cpu + agg.busy[r];
    rp.max_in_flight = std::max(1, x.max_in_flight);
    if (in_flight_floor) rp.max_in_flight = std::max(rp.max_in_flight, (*in_flight_floor)[r]);
    if (r < O) {
      rp.role = "owner";
      rp.units_begin = 0;
      rp.units_end = a;
      const int mine = static_cast<int>(x.owners.size());
      rp.owners_served = mine;
      rp.model_bytes = mine * (p.copy_bytes(0, a) + p.copy_bytes(z, S));
      const int64_t image_floats = p.input_bytes / mb;  // bytes of one sample's floats
      const int64_t shard = mine * (s.train_samples / std::max(1, K));
      // Receive buffers: from each replica serving some of its owners.
      int64_t depth = 0;
      for (int h = 0; h < H; ++h) {
        int served = 0;
        for (int k : x.owners) served += s.replica_of(k) == h ? 1 : 0;
        if (served > 0) depth += comm::receive_depth(served, window);
      }
      // With one stage it sends both the activations and the gradients, so each buffer is as
      // large as the larger (multihop.cpp OwnerRuntime).
      const int64_t owner_receive = N == 1 ? 2 * depth * std::max(p.cut_bytes(z), p.cut_bytes(a))
                                           : depth * (p.cut_bytes(z) + p.cut_bytes(a));
      rp.receive_bytes = owner_receive;
      // The send pool grows to the sends in transfer at once. A large send completes only once
      // the first stage has matched it to a posted receive and copied it, so every forward in
      // flight can still hold its buffer, up to the receives posted for this rank (measured:
      // 60-100% of that bound), at least two.
      rp.send_buffers =
          static_cast<int>(std::max<int64_t>(2, std::min<int64_t>(rp.max_in_flight, depth)));
      const int64_t owner_sends = rp.send_buffers * std::max(p.cut_bytes(a), p.cut_bytes(z));
      rp.peak_bytes =
          p.base_rss_bytes + kMpiRssBytes + rp.model_bytes + p.work_bytes({{0, a}, {z, S}}) -
          untouched_gradient_scratch_bytes(p, 0, a) - untouched_gradient_scratch_bytes(p, z, S) +
          rp.max_in_flight * part_activation_bytes(p, 0, a) + part_activation_bytes(p, z, S) +
          mine * (p.batch * (image_floats + 4)) + s.train_samples * (s.image_bytes + 1) +
          2 * 8 * shard + owner_receive + owner_sends +
          // FedAvg's sums of parts 1 and P in double, kept from round to round.
          2 * ((p.param_bytes(0, a) + p.param_bytes(z, S)) * (s.average_momentum ? 2 : 1) +
               p.buffer_bytes(0, a) + p.buffer_bytes(z, S));
      if (r == 0 && s.test_samples > 0) {
        // Rank 0 evaluates: the test set, an evaluation batch of images, the activations of
        // the batches in flight and the one it receives (multihop.cpp evaluate), and the
        // inference programs' activations. (The scratchpad also grows with the evaluation
        // batch, but not in proportion to it: not counted.)
        const double scale = static_cast<double>(s.eval_batch) / static_cast<double>(mb);
        rp.peak_bytes +=
            s.test_samples * (s.image_bytes + 1) +
            static_cast<int64_t>(scale * (part_activation_bytes(p, 0, a) +
                                          part_activation_bytes(p, z, S) + p.input_bytes +
                                          comm::kEvalInFlight * p.cut_bytes(a) + p.cut_bytes(z)));
      }
    } else {
      const int i = x.stage;
      rp.role = "stage";
      rp.stage = i + 1;
      rp.replica = x.replica;
      rp.units_begin = s.split[i];
      rp.units_end = s.split[i + 1];
      // A copy per owner of its replica.
      const int served = s.owners_of_replica(x.replica);
      rp.owners_served = served;
      rp.model_bytes = served * p.copy_bytes(s.split[i], s.split[i + 1]);
      rp.send_buffers = kStageSendBuffers;
      if (s.stage_in_flight_limit > 0) rp.max_in_flight = s.stage_in_flight_limit;  // reserved
      rp.peak_bytes = stage_memory_bytes(p, s.split[i], s.split[i + 1], served, rp.max_in_flight, O,
                                         i, N, window, s.average_momentum, s.replicas > 1);
      rp.receive_bytes = stage_receive_bytes(p.cut_bytes(s.split[i]), p.cut_bytes(s.split[i + 1]),
                                             served, O, i, N, window);
      if (s.test_samples > 0 && x.replica == 0) {  // replica 0 evaluates
        // The received activation of an evaluation batch, the outputs in flight and the
        // inference program's activations.
        const double scale = static_cast<double>(s.eval_batch) / static_cast<double>(mb);
        const int b = s.split[i], e = s.split[i + 1];
        rp.peak_bytes +=
            static_cast<int64_t>(scale * (part_activation_bytes(p, b, e) + p.cut_bytes(b) +
                                          comm::kEvalInFlight * p.cut_bytes(e)));
      }
    }
    out.ranks.push_back(rp);
  }
  return out;
}
}  // namespace

Prediction simulate(const Scenario& s) {
  check_scenario(s);
  // How many micro-batches a stage holds at its peak depends on which stage is the slowest,
  // and near a tie that flips with a few percent of speed: the same part timed alone on this
  // machine ranges over 13% within minutes, profiles taken 25 minutes apart differ by 12%.
  // So memory counts, per rank, the most in flight over the simulation and 2N more in which
  // one stage runs kInFlightSpeedMargin slower or faster. Round and busy times are the
  // simulation's own.
  std::vector<int> most;
  {
    const Prediction nominal = simulate_once(s, nullptr);
    for (const auto& r : nominal.ranks) most.push_back(r.max_in_flight);
  }
  const int N = s.stages();
  for (int i = 0; i < N; ++i)
    for (const double f : {1 + kInFlightSpeedMargin, 1 - kInFlightSpeedMargin}) {
      Scenario t = s;
      t.stage_devices.clear();
      for (int k = 0; k < N; ++k) t.stage_devices.push_back(s.stage_device(k));
      t.stage_devices[i].slowdown *= f;
      const Prediction q = simulate_once(t, nullptr);
      for (size_t r = 0; r < most.size(); ++r)
        most[r] = std::max(most[r], q.ranks.at(r).max_in_flight);
    }
  {
    const Prediction q = simulate_once(s, nullptr, Sharing::kStagesFirst);
    for (size_t r = 0; r < most.size(); ++r)
      most[r] = std::max(most[r], q.ranks.at(r).max_in_flight);
  }
  return simulate_once(s, &most);
}

std::vector<SimulatedSpan> simulate_spans(const Scenario& s) {
  check_scenario(s);
  std::vector<SimulatedSpan> spans;
  simulate_once(s, nullptr, Sharing::kEven, &spans);
  std::stable_sort(spans.begin(), spans.end(), [](const SimulatedSpan& a, const SimulatedSpan& b) {
    return a.rank != b.rank ? a.rank < b.rank : a.start_s < b.start_s;
  });
  return spans;
}

double simulate_round_s(const Scenario& s) {
  check_scenario(s);
  return simulate_once(s, nullptr).round_s;
}

int64_t Prediction::max_stage_bytes() const {
  int64_t m = 0;
  for (const auto& r : ranks)
    if (r.role == "stage") m = std::max(m, r.peak_bytes);
  return m;
}

}  // namespace mpsl::plan
