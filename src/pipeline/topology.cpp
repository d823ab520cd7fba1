#include "mpsl/pipeline/topology.hpp"

#include <sstream>

#include "mpsl/core/error.hpp"

namespace mpsl::pipeline {

std::vector<int> Topology::owners_of_rank(int rank) const {
  std::vector<int> v;
  if (!is_owner_rank(rank)) return v;
  for (int k = rank; k < owners; k += owner_ranks) v.push_back(k);
  return v;
}

std::vector<int> Topology::owners_of_replica(int replica) const {
  std::vector<int> v;
  for (int k = 0; k < owners; ++k)
    if (replica_of_owner(k) == replica) v.push_back(k);
  return v;
}

void spread_owners(Topology& t, const std::string& text) {
  if (text.empty()) return;
  const std::string what = "--replica-speed '" + text + "'";
  std::vector<double> speed;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || !(v > 0))
      throw InputError(what + ": '" + item + "' is not a speed > 0");
    speed.push_back(v);
  }
  const int H = t.replicas, K = t.owners;
  if (static_cast<int>(speed.size()) != H)
    throw InputError(what + " gives " + std::to_string(speed.size()) + " speeds for --replicas " +
                     std::to_string(H));
  double total = 0;
  for (double v : speed) total += v;
  // Shares: at least one owner each, the rest by largest remainder.
  std::vector<int> share(H, 1);
  std::vector<double> exact(H);
  int left = K - H;
  for (int h = 0; h < H; ++h) {
    exact[h] = std::max(0.0, K * speed[h] / total - 1.0);
    share[h] += static_cast<int>(exact[h]);
    left -= static_cast<int>(exact[h]);
  }
  while (left > 0) {
    int best = 0;
    for (int h = 1; h < H; ++h)
      if (exact[h] - static_cast<int>(exact[h]) > exact[best] - static_cast<int>(exact[best]))
        best = h;
    ++share[best];
    exact[best] = static_cast<int>(exact[best]);  // used up
    --left;
  }
  // Deal owners in order to the replica furthest below its share (ties: lowest index).
  t.owner_replica.assign(K, 0);
  std::vector<int> got(H, 0);
  for (int k = 0; k < K; ++k) {
    int best = -1;
    double gap = 0;
    for (int h = 0; h < H; ++h) {
      if (got[h] >= share[h]) continue;
      const double g = static_cast<double>(share[h] - got[h]) / share[h];
      if (best < 0 || g > gap) best = h, gap = g;
    }
    t.owner_replica[k] = best;
    ++got[best];
  }
}

std::vector<int> resolve_split(const std::string& text, const nn::Model& model, int stages) {
  const int units = model.num_units();
  if (units < stages + 2)
    throw InputError("--stages " + std::to_string(stages) + ": model '" + model.name() + "' has " +
                     std::to_string(units) + " units, so at most " +
                     std::to_string(std::max(units - 2, 0)) +
                     " compute stages fit (part 1 and part P need one unit each)");
  std::vector<int> split;
  if (!text.empty()) {
    std::stringstream in(text);
    std::string item;
    while (std::getline(in, item, ',')) {
      try {
        size_t used = 0;
        const int v = std::stoi(item, &used);
        if (used != item.size()) throw std::invalid_argument(item);
        split.push_back(v);
      } catch (const std::exception&) {
        throw InputError("--split '" + text + "': '" + item + "' is not a unit index");
      }
    }
    if (static_cast<int>(split.size()) != stages + 1)
      throw InputError("--split '" + text + "' has " + std::to_string(split.size()) +
                       " cut points; " + std::to_string(stages) + " stage(s) need " +
                       std::to_string(stages + 1) +
                       " (end of part 1, each stage boundary, start of part P)");
    for (size_t i = 0; i < split.size(); ++i) {
      if (split[i] < 1 || split[i] > units - 1)
        throw InputError("--split '" + text + "': cut point " + std::to_string(split[i]) +
                         " is out of range; model '" + model.name() + "' has units 0.." +
                         std::to_string(units - 1) + ", so cut points must lie in 1.." +
                         std::to_string(units - 1));
      if (i > 0 && split[i] <= split[i - 1])
        throw InputError("--split '" + text + "': cut points must be strictly increasing");
    }
    return split;
  }
  // Default: part 1 = unit 0, part P = the last unit, the middle cut by forward FLOPs.
  std::vector<double> flops(units);
  nn::Shape s = model.input_shape(1);
  for (int u = 0; u < units; ++u) {
    flops[u] = model.unit(u).forward_flops(s);
    s = model.unit(u).output_shape(s);
  }
  const int lo = 1, hi = units - 1;  // middle units [lo, hi)
  double total = 0;
  for (int u = lo; u < hi; ++u) total += flops[u];
  split.push_back(lo);
  double acc = 0;
  int u = lo;
  for (int st = 1; st < stages; ++st) {
    const double target = total * st / stages;
    const int min_u = split.back() + 1;    // at least one unit in this stage
    const int max_u = hi - (stages - st);  // and one for each stage after it
    while (u < max_u && (u < min_u || acc + flops[u] <= target)) {
      acc += flops[u];
      ++u;
    }
    split.push_back(u);
  }
  split.push_back(hi);
  return split;
}

Topology make_topology(const nn::Model& model, int world_size, int stages, int owners,
                       const std::string& split_text, int replicas) {
  Topology t;
  MPSL_INPUT_CHECK(replicas >= 1, "--replicas must be at least 1");
  MPSL_INPUT_CHECK(replicas == 1 || stages > 0, "--replicas needs --stages");
  t.replicas = replicas;
  t.world_size = world_size;
  t.stages = stages;
  t.owners = owners;
  t.num_units = model.num_units();
  MPSL_INPUT_CHECK(stages >= 0, "--stages must be 0 or more");
  MPSL_INPUT_CHECK(owners >= 1, "--owners must be at least 1");
  if (stages == 0) {
    if (world_size != 1)
      throw InputError("mpirun started " + std::to_string(world_size) +
                       " ranks but no --stages was given: single-process training runs on 1 "
                       "rank; for multihop training give --stages N and N + (owner ranks) ranks");
    MPSL_INPUT_CHECK(split_text.empty(), "--split needs --stages");
    t.owner_ranks = 1;
    return t;
  }
  const int compute = stages * replicas;
  if (world_size < compute + 1)
    throw InputError("--stages " + std::to_string(stages) +
                     (replicas > 1 ? " x --replicas " + std::to_string(replicas) : std::string()) +
                     " needs at least " + std::to_string(compute + 1) + " ranks (one per stage" +
                     (replicas > 1 ? " and replica" : "") +
                     " plus at least one owner rank), but the job has " +
                     std::to_string(world_size));
  t.owner_ranks = world_size - compute;
  if (owners < replicas)
    throw InputError("--owners " + std::to_string(owners) + " is fewer than --replicas " +
                     std::to_string(replicas) + ": every replica needs at least one data owner");
  if (owners < t.owner_ranks)
    throw InputError("--owners " + std::to_string(owners) + " is fewer than the " +
                     std::to_string(t.owner_ranks) + " owner ranks (" + std::to_string(world_size) +
                     " ranks - " + std::to_string(compute) +
                     " compute ranks); every owner rank needs at least one data owner");
  t.split = resolve_split(split_text, model, stages);
  return t;
}

std::vector<std::string> describe_roles(const Topology& t, const nn::Model& model) {
  std::vector<std::string> lines;
  auto units = [](std::pair<int, int> r) {
    return r.second - r.first == 1
               ? "unit " + std::to_string(r.first)
               : "units " + std::to_string(r.first) + "-" + std::to_string(r.second - 1);
  };
  for (int r = 0; r < t.world_size; ++r) {
    std::ostringstream o;
    o << "rank " << r << ": ";
    if (!t.multihop()) {
      o << "single process, whole model (" << model.num_units() << " units), owners 0-"
        << t.owners - 1;
    } else if (t.is_owner_rank(r)) {
      const auto ks = t.owners_of_rank(r);
      o << "data owner rank, " << ks.size() << " owner(s) {";
      for (size_t i = 0; i < ks.size() && i < 8; ++i) o << (i ? "," : "") << ks[i];
      if (ks.size() > 8) o << ",...";
      o << "}, part 1 = " << units(t.first_part()) << ", part P = " << units(t.last_part());
    } else {
      const int s = t.stage_of_rank(r);
      o << "compute stage " << s + 1 << "/" << t.stages;
      if (t.replicas > 1) o << " replica " << t.replica_of_rank(r) + 1 << "/" << t.replicas;
      o << ", " << units(t.stage_part(s)) << ", "
        << t.owners_of_replica(t.replica_of_rank(r)).size() << " per-owner copies";
    }
    lines.push_back(o.str());
  }
  return lines;
}

std::vector<std::string> short_roles(const Topology& t) {
  std::vector<std::string> out;
  for (int r = 0; r < t.world_size; ++r) {
    std::ostringstream o;
    if (!t.multihop()) {
      o << "single process";
    } else if (t.is_owner_rank(r)) {
      const auto ks = t.owners_of_rank(r);
      o << "owner rank, owners {";
      for (size_t i = 0; i < ks.size() && i < 8; ++i) o << (i ? "," : "") << ks[i];
      if (ks.size() > 8) o << ",...";
      o << "}";
    } else {
      const int s = t.stage_of_rank(r);
      const auto [b, e] = t.stage_part(s);
      o << "stage " << s + 1 << "/" << t.stages << ", units " << b << "-" << e - 1;
    }
    out.push_back(o.str());
  }
  return out;
}

}  // namespace mpsl::pipeline
