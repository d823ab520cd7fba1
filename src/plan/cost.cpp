#include "mpsl/plan/cost.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <queue>

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
  return std::max<int64_t>(s, 0);
}

// Receive buffers a rank posts for a peer (multihop.cpp: depth min(owners * window, 16) + 1).
int64_t mailbox_depth(int owners_behind, int window) {
  return std::min(owners_behind * window, 16) + 1;
}

}  // namespace

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

int64_t stage_memory_bytes(const Profile& p, int b, int e, int owners, int in_flight, int peers) {
  const int64_t in_b = p.cut_bytes(b), out_b = p.cut_bytes(e);
  const int64_t depth = mailbox_depth(owners, 1);
  // FedAvg sums the copies in double (optim/fedavg.hpp): twice a copy's parameters and buffers
  // for a moment at every round's end.
  const int64_t sums = owners > 1 ? 2 * (p.param_bytes(b, e) + p.buffer_bytes(b, e)) : 0;
  return p.base_rss_bytes + kMpiRssBytes + owners * p.copy_bytes(b, e) + p.work_bytes(b, e) + sums +
         in_flight * part_activation_bytes(p, b, e) + depth * (in_b + out_b) +
         2 * std::max(in_b, out_b);
}

namespace {

// The speed of each of `busy` ranks computing at once: the profile's measured slowdown on its
// host (when the ranks share that many cores), else an even share of the cores.
double share_rate(const Scenario& s, int busy) {
  if (s.cores <= 0 || busy <= 1) return 1.0;
  const auto& c = s.profile->concurrency;
  if (!c.empty() && s.threads == 1) {
    const size_t n = static_cast<size_t>(busy);
    if (n <= c.size()) return 1.0 / c[n - 1];
    return 1.0 / (c.back() * static_cast<double>(n) / static_cast<double>(c.size()));
  }
  return std::min(1.0, static_cast<double>(s.cores) / (busy * std::max(1, s.threads)));
}

double aggregate_seconds(const Scenario& s, std::vector<double>* per_rank) {
  const Profile& p = *s.profile;
  const int S = p.num_units(), N = s.stages(), O = s.owner_ranks;
  const int a = s.split.front(), z = s.split.back();
  std::vector<double> w(O + N, 0.0);
  for (int r = 0; r < O; ++r) {
    const int mine = (s.owners - r + O - 1) / O;
    const double bytes = static_cast<double>(p.param_bytes(0, a) + p.param_bytes(z, S));
    w[r] =
        s.owner_device.slowdown * p.average_s_per_byte * bytes * mine +
        (O > 1 ? transfer_s(s.owner_device, s.owner_device, static_cast<int64_t>(2 * bytes)) : 0);
  }
  for (int i = 0; i < N; ++i)
    w[O + i] = s.stage_device(i).slowdown * p.average_s_per_byte *
               static_cast<double>(p.param_bytes(s.split[i], s.split[i + 1])) * s.owners;
  if (per_rank) *per_rank = w;
  double longest = *std::max_element(w.begin(), w.end());
  if (s.cores > 0) {
    int busy = 0;
    for (double x : w) busy += x > 0;
    longest /= share_rate(s, busy);
  }
  return longest;
}

double evaluate_seconds(const Scenario& s) {
  if (s.test_samples <= 0) return 0;
  const Profile& p = *s.profile;
  const int S = p.num_units(), N = s.stages();
  const double whole = p.forward(0, S);
  auto share = [&](int b, int e) { return whole > 0 ? p.forward(b, e) / whole : 0.0; };
  const double per_sample = p.evaluate_s_per_sample;
  const int64_t batches = (s.test_samples + s.eval_batch - 1) / s.eval_batch;
  const double scale = static_cast<double>(s.eval_batch) / static_cast<double>(p.micro_batch());
  double t = s.owner_device.slowdown * per_sample * s.test_samples *
             (share(0, s.split.front()) + share(s.split.back(), S));
  for (int i = 0; i < N; ++i)
    t += s.stage_device(i).slowdown * per_sample * s.test_samples *
         share(s.split[i], s.split[i + 1]);
  // One message per hop and batch.
  for (int i = 0; i <= N; ++i) {
    const Device& from = i == 0 ? s.owner_device : s.stage_device(i - 1);
    const Device& to = i == N ? s.owner_device : s.stage_device(i);
    t += batches * transfer_s(from, to, static_cast<int64_t>(p.cut_bytes(s.split[i]) * scale));
  }
  return t;
}

// ---- the event simulation -------------------------------------------------------------------

enum class Kind { kActivation, kGrad };

struct Msg {
  double t = 0;  // arrival
  uint64_t seq = 0;
  int src = 0, dest = 0, owner = 0, micro = 0;
  Kind kind = Kind::kActivation;
};
struct Later {
  bool operator()(const Msg& a, const Msg& b) const {
    return a.t != b.t ? a.t > b.t : a.seq > b.seq;
  }
};

enum class Task { kNone, kFirstForward, kLast, kFirstBackward, kStageForward, kStageBackward };

struct OwnerState {
  int id = 0;
  int64_t left = 0;  // steps left in the round
  int in_flight = 0, next_micro = 0, grads_done = 0;
  bool active = false;
};

struct RankSim {
  bool owner = false;
  int stage = -1;
  std::vector<int> owners;  // owner ranks: the owners it holds
  std::vector<Msg> inbox;   // arrived, in arrival order
  Task task = Task::kNone;
  Msg current;           // the message the task serves (or owner/micro for forwards)
  double remaining = 0;  // seconds of work at full speed
  double busy = 0;
  int next = 0;  // round-robin position (owner ranks)
  int in_flight = 0, max_in_flight = 0;
  std::vector<int> preferred;
};

}  // namespace

double paper_round_seconds(const Scenario& s) {
  check_scenario(s);
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
  return train + aggregate_seconds(s, nullptr) + evaluate_seconds(s);
}

Prediction simulate(const Scenario& s) {
  check_scenario(s);
  const Profile& p = *s.profile;
  const int S = p.num_units(), N = s.stages(), O = s.owner_ranks, K = s.owners;
  const int M = s.micro_batches;
  const int a = s.split.front(), z = s.split.back();
  const int window = s.one_f_one_b ? std::min(M, N + 2) : 1;
  const Device& od = s.owner_device;

  // Task lengths at full speed. Crossing a cut costs copies on both sides: the sender
  // reorders its output to plain, the receiver copies it out of MPI and into the part's input.
  const double cp = p.copy_s_per_byte;
  const double t_first_fwd = od.slowdown * (p.forward(0, a) + p.cut_bytes(a) * cp +
                                            p.micro_batch() * p.assemble_s_per_sample);
  const double t_last =
      od.slowdown * (p.forward(z, S) + p.loss_s + p.backward(z, S) + 3 * p.cut_bytes(z) * cp);
  const double t_first_bwd = od.slowdown * (p.backward(0, a) + 2 * p.cut_bytes(a) * cp);
  const double t_owner_step = od.slowdown * (p.step(0, a) + p.step(z, S));
  std::vector<double> t_fwd(N), t_bwd(N), t_step(N);
  for (int i = 0; i < N; ++i) {
    const double f = s.stage_device(i).slowdown;
    const int64_t in = p.cut_bytes(s.split[i]), out = p.cut_bytes(s.split[i + 1]);
    t_fwd[i] = f * (p.forward(s.split[i], s.split[i + 1]) + (2 * in + out) * cp);
    t_bwd[i] = f * (p.backward(s.split[i], s.split[i + 1]) + (2 * out + in) * cp);
    t_step[i] = f * p.step(s.split[i], s.split[i + 1]);
  }
  auto device_of = [&](int rank) -> const Device& {
    return rank < O ? od : s.stage_device(rank - O);
  };

  std::vector<RankSim> ranks(O + N);
  std::vector<OwnerState> owners(K);
  for (int k = 0; k < K; ++k) {
    owners[k].id = k;
    owners[k].left = s.steps[k];
    ranks[k % O].owners.push_back(k);
  }
  for (int r = 0; r < O; ++r) {
    ranks[r].owner = true;
    ranks[r].preferred = {O + N - 1, O};
  }
  for (int i = 0; i < N; ++i) {
    RankSim& r = ranks[O + i];
    r.stage = i;
    if (i > 0) r.preferred.push_back(O + i - 1);
    if (i < N - 1) r.preferred.push_back(O + i + 1);
  }
  std::vector<std::vector<int>> grads_done(N, std::vector<int>(K, 0));

  std::priority_queue<Msg, std::vector<Msg>, Later> transit;
  uint64_t seq = 0;
  double now = 0;
  auto send = [&](int src, int dest, Kind kind, int owner, int micro, int64_t bytes) {
    Msg m;
    m.t = now + transfer_s(device_of(src), device_of(dest), bytes);
    m.seq = seq++;
    m.src = src;
    m.dest = dest;
    m.owner = owner;
    m.micro = micro;
    m.kind = kind;
    transit.push(m);
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

  auto start_task = [&](int rank) {
    RankSim& r = ranks[rank];
    if (r.task != Task::kNone) return;
    if (r.owner) {
      if (!r.inbox.empty()) {
        Msg m = take(r);
        r.current = m;
        if (m.kind == Kind::kActivation) {
          r.task = Task::kLast;
          r.remaining = t_last;
        } else {
          OwnerState& o = owners[m.owner];
          r.task = Task::kFirstBackward;
          r.remaining = t_first_bwd + (o.grads_done + 1 == M ? t_owner_step : 0.0);
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
        r.remaining = t_first_fwd;
        r.next = (r.next + i + 1) % n;
        ++r.in_flight;
        r.max_in_flight = std::max(r.max_in_flight, r.in_flight);
        return;
      }
      return;
    }
    if (r.inbox.empty()) return;
    Msg m = take(r);
    r.current = m;
    const int i = r.stage;
    if (m.kind == Kind::kActivation) {
      r.task = Task::kStageForward;
      r.remaining = t_fwd[i];
      ++r.in_flight;
      r.max_in_flight = std::max(r.max_in_flight, r.in_flight);
    } else {
      r.task = Task::kStageBackward;
      r.remaining = t_bwd[i] + (grads_done[i][m.owner] + 1 == M ? t_step[i] : 0.0);
    }
  };

  auto finish_task = [&](int rank) {
    RankSim& r = ranks[rank];
    const Msg m = r.current;
    switch (r.task) {
      case Task::kFirstForward:
        send(rank, O, Kind::kActivation, m.owner, m.micro, p.cut_bytes(a));
        break;
      case Task::kLast:
        send(rank, O + N - 1, Kind::kGrad, m.owner, m.micro, p.cut_bytes(z));
        break;
      case Task::kFirstBackward: {
        OwnerState& o = owners[m.owner];
        --r.in_flight;
        --o.in_flight;
        if (++o.grads_done == M) {
          o.active = false;
          --o.left;
        }
        break;
      }
      case Task::kStageForward: {
        const int i = r.stage;
        const int dest = i == N - 1 ? m.owner % O : O + i + 1;
        send(rank, dest, Kind::kActivation, m.owner, m.micro, p.cut_bytes(s.split[i + 1]));
        break;
      }
      case Task::kStageBackward: {
        const int i = r.stage;
        --r.in_flight;
        if (++grads_done[i][m.owner] == M) grads_done[i][m.owner] = 0;
        const int dest = i == 0 ? m.owner % O : O + i - 1;
        send(rank, dest, Kind::kGrad, m.owner, m.micro, p.cut_bytes(s.split[i]));
        break;
      }
      case Task::kNone:
        break;
    }
    r.task = Task::kNone;
  };

  auto all_done = [&]() {
    for (const auto& o : owners)
      if (o.left > 0 || o.in_flight > 0) return false;
    return true;
  };

  const double eps = 1e-12;
  int64_t guard = 0;
  while (!all_done()) {
    MPSL_CHECK(++guard < 100000000, "cost simulation does not end");
    for (int r = 0; r < O + N; ++r) start_task(r);
    int busy = 0;
    for (const auto& r : ranks) busy += r.task != Task::kNone;
    const double rate = share_rate(s, busy);
    double dt = std::numeric_limits<double>::infinity();
    for (const auto& r : ranks)
      if (r.task != Task::kNone) dt = std::min(dt, r.remaining / rate);
    if (!transit.empty()) dt = std::min(dt, transit.top().t - now);
    MPSL_CHECK(std::isfinite(dt), "cost simulation stalled (nothing runs, nothing in transit)");
    dt = std::max(dt, 0.0);
    now += dt;
    for (int r = 0; r < O + N; ++r) {
      RankSim& x = ranks[r];
      if (x.task == Task::kNone) continue;
      x.remaining -= dt * rate;
      x.busy += dt;
      if (x.remaining <= eps) finish_task(r);
    }
    while (!transit.empty() && transit.top().t <= now + eps) {
      ranks[transit.top().dest].inbox.push_back(transit.top());
      transit.pop();
    }
  }

  Prediction out;
  out.train_s = now;
  std::vector<double> agg;
  out.aggregate_s = aggregate_seconds(s, &agg);
  out.evaluate_s = evaluate_seconds(s);
  // What rank 0 measures as a round: its own training and FedAvg; the stages average their
  // copies meanwhile and it waits for them only when it evaluates (through them).
  double owner_agg = 0;
  for (int r = 0; r < O; ++r) owner_agg = std::max(owner_agg, agg[r]);
  out.round_s = out.train_s + (s.test_samples > 0 ? out.aggregate_s : owner_agg) + out.evaluate_s;
  out.paper_round_s = paper_round_seconds(s);

  // Memory per rank.
  const int64_t mb = p.micro_batch();
  for (int r = 0; r < O + N; ++r) {
    RankPrediction rp;
    const RankSim& x = ranks[r];
    rp.busy_s = x.busy + agg[r];
    rp.max_in_flight = std::max(1, x.max_in_flight);
    if (r < O) {
      rp.role = "owner";
      rp.units_begin = 0;
      rp.units_end = a;
      const int mine = static_cast<int>(x.owners.size());
      rp.owners_served = mine;
      rp.model_bytes = mine * (p.copy_bytes(0, a) + p.copy_bytes(z, S));
      const int64_t image_floats = p.input_bytes / mb;  // bytes of one sample's floats
      const int64_t shard = mine * (s.train_samples / std::max(1, K));
      rp.peak_bytes = p.base_rss_bytes + kMpiRssBytes + rp.model_bytes + p.work_bytes(0, a) +
                      p.work_bytes(z, S) + rp.max_in_flight * part_activation_bytes(p, 0, a) +
                      part_activation_bytes(p, z, S) + mine * (p.batch * (image_floats + 4)) +
                      s.train_samples * (s.image_bytes + 1) + 2 * 8 * shard +
                      mailbox_depth(mine, window) * (p.cut_bytes(z) + p.cut_bytes(a)) +
                      2 * std::max(p.cut_bytes(a), p.cut_bytes(z));
      if (r == 0 && s.test_samples > 0) {
        const double scale = static_cast<double>(s.eval_batch) / static_cast<double>(mb);
        rp.peak_bytes += s.test_samples * (s.image_bytes + 1) +
                         static_cast<int64_t>(scale * (part_activation_bytes(p, 0, a) +
                                                       part_activation_bytes(p, z, S)));
      }
    } else {
      const int i = r - O;
      rp.role = "stage";
      rp.stage = i + 1;
      rp.units_begin = s.split[i];
      rp.units_end = s.split[i + 1];
      rp.owners_served = K;
      rp.model_bytes = K * p.copy_bytes(s.split[i], s.split[i + 1]);
      rp.peak_bytes = stage_memory_bytes(p, s.split[i], s.split[i + 1], K, rp.max_in_flight, O);
      if (s.test_samples > 0) {
        const double scale = static_cast<double>(s.eval_batch) / static_cast<double>(mb);
        rp.peak_bytes +=
            static_cast<int64_t>(scale * part_activation_bytes(p, s.split[i], s.split[i + 1]));
      }
    }
    out.ranks.push_back(rp);
  }
  return out;
}

int64_t Prediction::max_stage_bytes() const {
  int64_t m = 0;
  for (const auto& r : ranks)
    if (r.role == "stage") m = std::max(m, r.peak_bytes);
  return m;
}

}  // namespace mpsl::plan
