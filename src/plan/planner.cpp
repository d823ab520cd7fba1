#include "mpsl/plan/planner.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "mpsl/core/error.hpp"
#include "mpsl/obs/memory.hpp"

namespace mpsl::plan {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

bool fits(const PartCosts& c, int i, int b, int e) {
  return c.limit.empty() || c.limit[i] <= 0 || c.memory(i, b, e) <= c.limit[i];
}

Split evaluate(const PartCosts& c, const std::vector<int>& cuts) {
  Split s;
  s.cuts = cuts;
  s.feasible = true;
  for (int i = 0; i < c.nodes; ++i) {
    const int b = cuts[i], e = cuts[i + 1];
    if (e <= b || !fits(c, i, b, e)) s.feasible = false;
    s.max_forward = std::max(s.max_forward, c.forward(i, b, e));
    s.max_backward = std::max(s.max_backward, c.backward(i, b, e));
  }
  return s;
}

}  // namespace

Split solve_split(const PartCosts& c) {
  const int N = c.nodes, lo = c.begin, hi = c.end, L = hi - lo;
  Split none;
  if (N < 1 || L < N) return none;
  // Costs of every admissible part (node i, units [b, e)); node i starts at or after lo + i and
  // leaves one unit for each later node.
  auto idx = [&](int i, int b, int e) {
    return (static_cast<size_t>(i) * (L + 1) + (b - lo)) * (L + 1) + (e - lo);
  };
  const size_t cells = static_cast<size_t>(N) * (L + 1) * (L + 1);
  std::vector<double> F(cells, kInf), B(cells, kInf);
  std::vector<double> candidates;
  for (int i = 0; i < N; ++i)
    for (int b = lo + i; b <= hi - (N - i); ++b)
      for (int e = b + 1; e <= hi - (N - 1 - i); ++e) {
        if (!fits(c, i, b, e)) continue;
        F[idx(i, b, e)] = c.forward(i, b, e);
        B[idx(i, b, e)] = c.backward(i, b, e);
        candidates.push_back(F[idx(i, b, e)]);
      }
  std::sort(candidates.begin(), candidates.end());
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());

  Split best;
  double best_value = kInf;
  // g[i][e]: the smallest largest backward time of nodes 0..i-1 covering [lo, e).
  std::vector<double> g((N + 1) * (L + 1));
  std::vector<int> from((N + 1) * (L + 1));
  for (double T : candidates) {
    if (T >= best_value) break;  // the objective is at least T from here on
    std::fill(g.begin(), g.end(), kInf);
    g[0] = 0;
    for (int i = 0; i < N; ++i)
      for (int e = lo + i + 1; e <= hi - (N - 1 - i); ++e) {
        double bestv = kInf;
        int arg = -1;
        for (int b = lo + i; b < e; ++b) {
          const double prev = g[i * (L + 1) + (b - lo)];
          if (prev == kInf) continue;
          const size_t k = idx(i, b, e);
          if (F[k] > T || B[k] == kInf) continue;
          const double v = std::max(prev, B[k]);
          if (v < bestv) bestv = v, arg = b;
        }
        g[(i + 1) * (L + 1) + (e - lo)] = bestv;
        from[(i + 1) * (L + 1) + (e - lo)] = arg;
      }
    if (g[N * (L + 1) + L] == kInf) continue;
    std::vector<int> cuts(N + 1);
    cuts[N] = hi;
    for (int i = N; i > 0; --i) cuts[i - 1] = from[i * (L + 1) + (cuts[i] - lo)];
    Split s = evaluate(c, cuts);
    if (s.feasible && s.objective() < best_value) {
      best_value = s.objective();
      best = s;
    }
  }
  return best;
}

Split brute_force_split(const PartCosts& c) {
  const int N = c.nodes, lo = c.begin, hi = c.end;
  Split best;
  std::vector<int> cuts(N + 1);
  cuts[0] = lo;
  cuts[N] = hi;
  std::function<void(int)> rec = [&](int i) {
    if (i == N) {
      const Split s = evaluate(c, cuts);
      if (s.feasible && (!best.feasible || s.objective() < best.objective())) best = s;
      return;
    }
    for (int b = cuts[i - 1] + 1; b <= hi - (N - i); ++b) {
      cuts[i] = b;
      rec(i + 1);
    }
  };
  if (N >= 1 && hi - lo >= N) {
    if (N == 1) {
      const Split s = evaluate(c, cuts);
      if (s.feasible) best = s;
    } else {
      rec(1);
    }
  }
  return best;
}

int64_t min_max_memory(const PartCosts& c, std::vector<int>* cuts) {
  const int N = c.nodes, lo = c.begin, hi = c.end, L = hi - lo;
  if (N < 1 || L < N) return -1;
  const int64_t big = std::numeric_limits<int64_t>::max();
  std::vector<int64_t> g((N + 1) * (L + 1), big);
  std::vector<int> from((N + 1) * (L + 1), -1);
  g[0] = 0;
  for (int i = 0; i < N; ++i)
    for (int e = lo + i + 1; e <= hi - (N - 1 - i); ++e) {
      int64_t v = big;
      int arg = -1;
      for (int b = lo + i; b < e; ++b) {
        const int64_t prev = g[i * (L + 1) + (b - lo)];
        if (prev == big) continue;
        const int64_t x = std::max(prev, c.memory(i, b, e));
        if (x < v) v = x, arg = b;
      }
      g[(i + 1) * (L + 1) + (e - lo)] = v;
      from[(i + 1) * (L + 1) + (e - lo)] = arg;
    }
  if (cuts) {
    cuts->assign(N + 1, hi);
    for (int i = N; i > 0; --i) (*cuts)[i - 1] = from[i * (L + 1) + ((*cuts)[i] - lo)];
  }
  return g[N * (L + 1) + L];
}

int planned_in_flight(int owners, int stages, int window) {
  // A stage keeps a batch's activations from its forward to its backward. Behind a slower
  // stage every owner's batch can be waiting at once (the simulation shows it), so a node must
  // hold K copies of its part and K sets of their activations, as in the paper.
  return std::max(1, owners * window);
}

namespace {

const Device& node_of(const PlanRequest& r, int i) {
  if (r.nodes.empty()) {
    static const Device local;
    return local;
  }
  return r.nodes.size() == 1 ? r.nodes.front() : r.nodes.at(i);
}

double transfer(const Device& a, const Device& b, int64_t bytes) {
  const double bw = std::min(a.bandwidth > 0 ? a.bandwidth : kLocalBandwidth,
                             b.bandwidth > 0 ? b.bandwidth : kLocalBandwidth);
  const double lat = std::max(a.latency >= 0 ? a.latency : kLocalLatency,
                              b.latency >= 0 ? b.latency : kLocalLatency);
  return lat + static_cast<double>(bytes) / bw;
}

int window_of(const PlanRequest& r, int stages) {
  return r.one_f_one_b ? std::min(r.micro_batches, stages + 2) : 1;
}

// Splits of `units` contiguous units into `parts` non-empty parts: C(units - 1, parts - 1),
// capped (only compared with kExhaustiveSplits).
constexpr int64_t kExhaustiveSplits = 500;
int64_t split_count(int units, int parts) {
  int64_t c = 1;
  for (int k = 1; k < parts; ++k) {
    c = c * (units - k) / k;
    if (c > 1000000) return c;
  }
  return c;
}

std::vector<int> even_cuts(int a, int z, int n) {
  std::vector<int> cuts;
  for (int i = 0; i <= n; ++i)
    cuts.push_back(a + static_cast<int>((static_cast<int64_t>(z - a) * i) / n));
  return cuts;
}

// A rough owner-side bound: each owner's batches run one after another through the whole
// pipeline (mpsl schedule), so a round lasts at least its batches times one round trip.
double owner_bound(const Scenario& s) {
  const Profile& p = *s.profile;
  const int S = p.num_units(), a = s.split.front(), z = s.split.back();
  const double f = s.owner_device.slowdown;
  double trip =
      s.micro_batches * f *
          (p.forward(0, a) + p.forward(z, S) + p.loss_s + p.backward(z, S) + p.backward(0, a)) +
      f * (p.step(0, a) + p.step(z, S));
  for (int i = 0; i < s.stages(); ++i) trip += stage_forward_s(s, i) + stage_backward_s(s, i);
  int64_t most = 0, total = 0;
  for (auto st : s.steps) most = std::max(most, st), total += st;
  // An owner rank also does the owner work of all its owners, one after another.
  const double owner_work =
      s.micro_batches * f *
          (p.forward(0, a) + p.forward(z, S) + p.loss_s + p.backward(z, S) + p.backward(0, a)) +
      f * (p.step(0, a) + p.step(z, S));
  const double rank_load = owner_work * static_cast<double>(total) / s.owner_ranks;
  return std::max(most * trip, rank_load);
}

}  // namespace

PartCosts part_costs(const PlanRequest& r, int N, int a, int z) {
  const Profile& p = *r.profile;
  PartCosts c;
  c.nodes = N;
  c.begin = a;
  c.end = z;
  const int M = r.micro_batches;
  const int inflight_window = window_of(r, N);
  // As stage_forward_s / stage_backward_s (cost.cpp): a link between stages bounds the rate of
  // the stage that sends over it; owner links are per owner and not a shared bottleneck.
  c.forward = [&r, &p, N, M](int i, int b, int e) {
    const Device& d = node_of(r, i);
    const double link = i + 1 < N ? transfer(d, node_of(r, i + 1), p.cut_bytes(e)) : 0.0;
    return M * std::max(d.slowdown * p.forward(b, e), link);
  };
  c.backward = [&r, &p, M](int i, int b, int e) {
    const Device& d = node_of(r, i);
    const double link = i > 0 ? transfer(d, node_of(r, i - 1), p.cut_bytes(b)) : 0.0;
    return M * std::max(d.slowdown * p.backward(b, e), link) + d.slowdown * p.step(b, e);
  };
  const int K = r.owners, O = r.owner_ranks;
  const int inflight = planned_in_flight(K, N, inflight_window);
  c.memory = [&p, K, O, N, inflight, inflight_window](int i, int b, int e) {
    return stage_memory_bytes(p, b, e, K, inflight, O, i, N, inflight_window);
  };
  for (int i = 0; i < N; ++i) c.limit.push_back(node_of(r, i).memory);
  return c;
}

Scenario scenario_for(const PlanRequest& r, const std::vector<int>& split) {
  Scenario s;
  s.profile = r.profile;
  s.split = split;
  s.owners = r.owners;
  s.owner_ranks = r.owner_ranks;
  s.one_f_one_b = r.one_f_one_b;
  s.micro_batches = r.micro_batches;
  s.steps.assign(r.owners, r.steps_per_owner);
  s.owner_device = r.owner_device;
  const int N = static_cast<int>(split.size()) - 1;
  for (int i = 0; i < N; ++i) s.stage_devices.push_back(node_of(r, i));
  s.cores = r.cores;
  s.threads = r.threads;
  return s;
}

PlanResult make_plan(const PlanRequest& r) {
  MPSL_CHECK(r.profile != nullptr, "plan without a profile");
  const Profile& p = *r.profile;
  const int S = p.num_units();
  MPSL_INPUT_CHECK(r.micro_batches == p.micro_batches,
                   "--micro-batches " + std::to_string(r.micro_batches) +
                       " differs from the profile's " + std::to_string(p.micro_batches) +
                       " (profile again with the same --batch and --micro-batches)");
  const int z0 = r.last_begin < 0 ? S - 1 : r.last_begin;
  const int a0 = r.first_end;
  MPSL_INPUT_CHECK(a0 >= 1 && z0 <= S - 1 && a0 < z0,
                   "owner cut points " + std::to_string(a0) + "," + std::to_string(z0) +
                       " do not fit a model of " + std::to_string(S) + " units");
  MPSL_INPUT_CHECK(
      r.nodes.size() <= 1 || r.stages == 0 || static_cast<int>(r.nodes.size()) == r.stages,
      "--node-memory/--node-speed list " + std::to_string(r.nodes.size()) + " nodes for --stages " +
          std::to_string(r.stages) + " (give one value for all, or one per stage)");
  const int max_stages = z0 - a0;
  if (r.stages > max_stages)
    throw InputError("--stages " + std::to_string(r.stages) + ": model '" + p.model + "' has " +
                     std::to_string(max_stages) + " units between the owners' parts (units " +
                     std::to_string(a0) + ".." + std::to_string(z0 - 1) + "), so at most " +
                     std::to_string(max_stages) + " compute stages fit");

  PlanResult out;
  auto finish = [&](int N, int a, int z, const Split& sp) {
    const PartCosts c = part_costs(r, N, a, z);
    out.objective_split = sp;
    out.objective_prediction = simulate(scenario_for(r, sp.cuts));
    out.even = even_cuts(a, z, N);
    const Split ev = evaluate(c, out.even);
    out.even_feasible = ev.feasible;
    out.even_objective = ev.objective();
    out.even_prediction = simulate(scenario_for(r, out.even));
    out.memory_split_bytes = min_max_memory(c, &out.memory_split);
    // The paper's objective ignores what the simulation sees (pipeline fill, owners' turns,
    // ranks sharing cores), so its optimum can predict a slower round than another split, the
    // even one included. Choose by the simulated round time instead: among every split when
    // there are few (exact), else from the better of the two by moving one cut by one unit
    // while the predicted round time drops by more than 0.1% (within memory, parts non-empty).
    Split best = sp;
    double best_t = out.objective_prediction.round_s;
    if (ev.feasible && out.even_prediction.round_s < best_t)
      best = ev, best_t = out.even_prediction.round_s;
    const bool exhaustive = split_count(z - a, N) <= kExhaustiveSplits;
    if (exhaustive) {
      std::vector<int> cuts(N + 1);
      cuts.front() = a;
      cuts.back() = z;
      // Every increasing choice of the N - 1 inner cuts.
      std::function<void(int, int)> choose = [&](int i, int from) {
        if (i == N) {
          const Split cand = evaluate(c, cuts);
          if (!cand.feasible) return;
          const double t = simulate_round_s(scenario_for(r, cuts));
          if (t < best_t) best = cand, best_t = t;
          return;
        }
        for (int u = from; u <= z - (N - i); ++u) {
          cuts[i] = u;
          choose(i + 1, u + 1);
        }
      };
      choose(1, a + 1);
    }
    constexpr int kMaxMoves = 64;
    for (int move = 0; !exhaustive && move < kMaxMoves; ++move) {
      Split step = best;
      double step_t = best_t;
      for (int i = 1; i < N; ++i)
        for (int d : {-1, 1}) {
          std::vector<int> cuts = best.cuts;
          cuts[i] += d;
          const Split cand = evaluate(c, cuts);
          if (!cand.feasible) continue;
          const double t = simulate_round_s(scenario_for(r, cuts));
          if (t < step_t) step = cand, step_t = t;
        }
      if (step_t >= best_t * (1 - 1e-3)) break;
      best = step, best_t = step_t;
    }
    out.split = best;
    out.scenario = scenario_for(r, best.cuts);
    out.prediction = simulate(out.scenario);
    return out;
  };

  if (r.stages == 0) {
    // The smallest N whose best split fits (and meets the round-time target, if given).
    std::string why;
    for (int N = 1; N <= max_stages; ++N) {
      if (r.nodes.size() > 1 && static_cast<int>(r.nodes.size()) < N) break;
      const PartCosts c = part_costs(r, N, a0, z0);
      const Split sp = solve_split(c);
      if (!sp.feasible) continue;
      if (r.target_round_s > 0) {
        const Prediction pr = simulate(scenario_for(r, sp.cuts));
        if (pr.round_s > r.target_round_s) {
          why = "the best found predicts " + std::to_string(pr.round_s) + " s per round with " +
                std::to_string(N) + " stage(s)";
          continue;
        }
      }
      return finish(N, a0, z0, sp);
    }
    const PartCosts c = part_costs(r, max_stages, a0, z0);
    throw InputError(
        "no stage count up to " + std::to_string(max_stages) + " fits" +
        (r.target_round_s > 0
             ? " the round-time target of " + std::to_string(r.target_round_s) + " s (" + why + ")"
             : std::string(" the node memory")) +
        "; with " + std::to_string(max_stages) + " stages each node needs at least " +
        obs::format_bytes(min_max_memory(c)) + " (" + std::to_string(min_max_memory(c)) +
        " bytes)");
  }

  const int N = r.stages;
  if (!r.optimise_owner_cuts) {
    const PartCosts c = part_costs(r, N, a0, z0);
    const Split sp = solve_split(c);
    if (!sp.feasible) {
      const int64_t need = min_max_memory(c);
      std::string more;
      for (int n = N + 1; n <= max_stages; ++n) {
        if (r.nodes.size() > 1) break;  // per-node lists are for the given count
        if (solve_split(part_costs(r, n, a0, z0)).feasible) {
          more = "; or " + std::to_string(n) + " stages of the given memory";
          break;
        }
      }
      if (more.empty() && r.nodes.size() <= 1)
        more = "; no stage count up to " + std::to_string(max_stages) + " fits the given memory";
      throw InputError("no split of '" + p.model + "' over " + std::to_string(N) +
                       " stage(s) fits the node memory for " + std::to_string(r.owners) +
                       " owners: the smallest memory that fits is " + obs::format_bytes(need) +
                       " (" + std::to_string(need) + " bytes) per node" + more);
    }
    return finish(N, a0, z0, sp);
  }

  // Owner cut points too: every (end of part 1, start of part P) the owners' memory allows,
  // each with its exact stage split, chosen by the predicted round time.
  double best_t = kInf;
  Split best;
  int best_a = -1, best_z = -1;
  const int64_t owner_mem = r.owner_device.memory;
  const int per_rank = (r.owners + r.owner_ranks - 1) / r.owner_ranks;
  for (int a = 1; a <= S - 1 - N; ++a)
    for (int z = a + N; z <= S - 1; ++z) {
      if (owner_mem > 0) {
        const int64_t need =
            p.base_rss_bytes + per_rank * (p.copy_bytes(0, a) + p.copy_bytes(z, S)) +
            p.work_bytes({{0, a}, {z, S}}) + p.activation_bytes(0, a) + p.activation_bytes(z, S);
        if (need > owner_mem) continue;
      }
      const Split sp = solve_split(part_costs(r, N, a, z));
      if (!sp.feasible) continue;
      const Scenario sc = scenario_for(r, sp.cuts);
      const double t = std::max(paper_round_seconds(sc), owner_bound(sc));
      if (t < best_t) best_t = t, best = sp, best_a = a, best_z = z;
    }
  if (!best.feasible)
    throw InputError("no owner cut points and split over " + std::to_string(N) +
                     " stage(s) fit the owner and node memory; give more memory or stages");
  return finish(N, best_a, best_z, best);
}

}  // namespace mpsl::plan
