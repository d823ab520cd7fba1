#include "mpsl/emulate/emulate.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include <omp.h>
#include <time.h>

#include "mpsl/core/error.hpp"

namespace mpsl::emulate {

namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& path, const std::string& where, const std::string& what) {
  throw InputError("--emulate " + path + ": " + where + ": " + what);
}

double number(const json& v, const std::string& path, const std::string& where,
              const std::string& key) {
  if (!v.is_number()) bad(path, where, "'" + key + "' must be a number");
  const double x = v.get<double>();
  if (!std::isfinite(x)) bad(path, where, "'" + key + "' must be finite");
  return x;
}

// Applies the fields of `spec` (an object, or a string naming a class) onto `d`.
void apply(Device& d, const json& spec, const std::map<std::string, Device>& classes,
           const std::string& path, const std::string& where) {
  if (spec.is_string()) {
    const std::string name = spec.get<std::string>();
    auto it = classes.find(name);
    if (it == classes.end()) bad(path, where, "unknown device class '" + name + "'");
    d = it->second;
    return;
  }
  if (!spec.is_object()) bad(path, where, "must be a class name or an object of device fields");
  if (spec.contains("class")) apply(d, spec.at("class"), classes, path, where);
  for (const auto& [key, v] : spec.items()) {
    if (key == "class" || key == "description") continue;
    auto rate = [&]() {
      const double x = number(v, path, where, key);
      if (!(x > 0)) bad(path, where, "'" + key + "' must be > 0 (bits per second)");
      return x;
    };
    auto seconds = [&]() {
      const double x = number(v, path, where, key);
      if (x < 0) bad(path, where, "'" + key + "' must be >= 0 (seconds)");
      return x;
    };
    if (key == "compute_factor") {
      const double x = number(v, path, where, key);
      if (!(x >= 1))
        bad(path, where,
            "'compute_factor' must be >= 1 (emulation can only slow a device down; give the "
            "fastest class 1)");
      d.compute_factor = x;
    } else if (key == "bandwidth_bps") {
      d.up.bps = d.down.bps = rate();
    } else if (key == "up_bps") {
      d.up.bps = rate();
    } else if (key == "down_bps") {
      d.down.bps = rate();
    } else if (key == "latency_s") {
      d.up.latency_s = d.down.latency_s = seconds();
    } else if (key == "up_latency_s") {
      d.up.latency_s = seconds();
    } else if (key == "down_latency_s") {
      d.down.latency_s = seconds();
    } else {
      bad(path, where,
          "unknown field '" + key +
              "' (known: class, description, compute_factor, bandwidth_bps, up_bps, down_bps, "
              "latency_s, up_latency_s, down_latency_s)");
    }
  }
}

// Parses an index "7" or a range "0-14" of a section with `count` entries.
std::pair<int, int> index_range(const std::string& key, int count, const std::string& path,
                                const std::string& where, const std::string& what) {
  auto to_int = [&](const std::string& s) {
    if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), ::isdigit))
      bad(path, where, "expected \"default\", an index or a range like \"0-9\"");
    return std::stoi(s);
  };
  const auto dash = key.find('-');
  const int a = to_int(key.substr(0, dash));
  const int b = dash == std::string::npos ? a : to_int(key.substr(dash + 1));
  if (b < a) bad(path, where, "empty range");
  if (b >= count)
    bad(path, where,
        "the run has " + std::to_string(count) + " " + what + (count == 1 ? "" : "s") +
            " (indices 0.." + std::to_string(count - 1) + ")");
  return {a, b};
}

std::vector<Device> section(const json& root, const char* name, int count,
                            const std::map<std::string, Device>& classes, const std::string& path,
                            const std::string& what) {
  std::vector<Device> out(static_cast<size_t>(count));
  if (!root.contains(name)) return out;
  const json& s = root.at(name);
  if (!s.is_object()) bad(path, name, "must be an object (\"default\", indices, ranges)");
  if (s.contains("default"))
    for (auto& d : out) apply(d, s.at("default"), classes, path, std::string(name) + ".default");
  // Ranges, then single indices (the more specific entry wins); no two entries of one kind
  // may cover the same index.
  for (const bool ranges : {true, false}) {
    std::set<int> seen;
    for (const auto& [key, v] : s.items()) {
      if (key == "default") continue;
      if ((key.find('-') != std::string::npos) != ranges) continue;
      const std::string where = std::string(name) + "." + key;
      const auto [a, b] = index_range(key, count, path, where, what);
      for (int i = a; i <= b; ++i) {
        if (!seen.insert(i).second)
          bad(path, where, what + " " + std::to_string(i) + " is covered by two entries");
        apply(out[i], v, classes, path, where);
      }
    }
  }
  return out;
}

}  // namespace

Emulation parse_emulation(const std::string& text, const std::string& path, int owners,
                          int stages) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    throw InputError("--emulate " + path + ": not valid JSON: " + e.what());
  }
  if (!root.is_object()) bad(path, "top level", "must be a JSON object");
  for (const auto& [key, v] : root.items())
    if (key != "format" && key != "description" && key != "classes" && key != "owners" &&
        key != "stages")
      bad(path, "top level",
          "unknown key '" + key + "' (known: format, description, classes, owners, stages)");
  if (root.contains("format") && root.at("format") != "mpsl-emulation")
    bad(path, "format", "must be \"mpsl-emulation\"");
  std::map<std::string, Device> classes;
  if (root.contains("classes")) {
    const json& c = root.at("classes");
    if (!c.is_object()) bad(path, "classes", "must be an object of named device classes");
    // A class may build on another ("class": "base"), in any order.
    std::set<std::string> pending;
    for (const auto& [name, spec] : c.items()) {
      if (name.empty()) bad(path, "classes", "a class needs a name");
      if (!spec.is_object()) bad(path, "classes." + name, "must be an object of device fields");
      pending.insert(name);
    }
    while (!pending.empty()) {
      bool progress = false;
      for (auto it = pending.begin(); it != pending.end();) {
        const json& spec = c.at(*it);
        if (spec.contains("class") && spec.at("class").is_string() &&
            pending.count(spec.at("class").get<std::string>())) {
          ++it;
          continue;
        }
        Device d;
        apply(d, spec, classes, path, "classes." + *it);
        d.class_name = *it;
        classes[*it] = d;
        it = pending.erase(it);
        progress = true;
      }
      if (!progress)
        bad(path, "classes." + *pending.begin(), "classes refer to each other in a circle");
    }
  }
  Emulation e;
  e.enabled = true;
  e.file = path;
  e.owners = section(root, "owners", owners, classes, path, "owner");
  e.stages = section(root, "stages", stages, classes, path, "stage");
  return e;
}

Emulation load_emulation(const std::string& path, int owners, int stages) {
  std::ifstream in(path);
  if (!in) throw InputError("--emulate " + path + ": cannot open the file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_emulation(ss.str(), path, owners, stages);
}

const Device& RankEmulator::device(Entity who) const {
  const auto& v = who.stage ? e_->stages : e_->owners;
  MPSL_CHECK(who.index >= 0 && who.index < static_cast<int>(v.size()), "no such device");
  return v[who.index];
}

namespace {
Clock::duration to_duration(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}
}  // namespace

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

SpanStart span_start() {
  return {Clock::now(), thread_cpu_seconds()};
}

double span_seconds(const SpanStart& start) {
  if (omp_get_max_threads() == 1) return thread_cpu_seconds() - start.cpu_s;
  return std::chrono::duration<double>(Clock::now() - start.wall).count();
}

Clock::time_point RankEmulator::compute(Entity who, Clock::time_point start, double measured) {
  if (!e_) return start + to_duration(measured);
  const double f = device(who).compute_factor;
  auto& free = device_free_[who];
  const Clock::time_point begin = std::max(start, free);
  free = begin + to_duration(f * measured);
  stats_.compute_delay_s += (f - 1) * measured;
  return free;
}

Clock::time_point RankEmulator::free_at(Entity who) const {
  const auto it = device_free_.find(who);
  return it == device_free_.end() ? Clock::time_point::min() : it->second;
}

Clock::time_point RankEmulator::transfer(Entity from, Entity to, int64_t bytes,
                                         Clock::time_point ready) {
  if (!e_) return ready;
  const Link& up = device(from).up;
  const Link& down = device(to).down;
  double bps = up.bps > 0 ? up.bps : 0;
  if (down.bps > 0) bps = bps > 0 ? std::min(bps, down.bps) : down.bps;
  const double wire = bps > 0 ? 8.0 * static_cast<double>(bytes) / bps : 0.0;
  const double latency = up.latency_s + down.latency_s;
  auto& free = link_free_[{from, to}];
  const Clock::time_point begin = std::max(ready, free);
  stats_.link_queue_s += std::chrono::duration<double>(begin - ready).count();
  free = begin + to_duration(wire);
  stats_.transfer_s += wire + latency;
  ++stats_.messages;
  stats_.bytes += bytes;
  return free + to_duration(latency);
}

double RankEmulator::aggregation_seconds(int owner, int64_t bytes) const {
  if (!e_) return 0;
  const Device& d = device(owner_entity(owner));
  auto one = [&](const Link& l) {
    return (l.bps > 0 ? 8.0 * static_cast<double>(bytes) / l.bps : 0.0) + l.latency_s;
  };
  return one(d.up) + one(d.down);
}

double RankEmulator::ring_allreduce_seconds(Entity who, int64_t bytes, int ranks) const {
  if (!e_ || ranks <= 1) return 0;
  const Device& d = device(who);
  double bps = d.up.bps > 0 ? d.up.bps : 0;
  if (d.down.bps > 0) bps = bps > 0 ? std::min(bps, d.down.bps) : d.down.bps;
  const double chunk = static_cast<double>(bytes) / ranks;
  const double step = (bps > 0 ? 8.0 * chunk / bps : 0.0) + d.up.latency_s + d.down.latency_s;
  return 2.0 * (ranks - 1) * step;
}

void RankEmulator::sleep_until(Clock::time_point t) {
  if (t > Clock::now()) std::this_thread::sleep_until(t);
}

}  // namespace mpsl::emulate
