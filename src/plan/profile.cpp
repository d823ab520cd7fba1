#include "mpsl/plan/profile.hpp"

#include <omp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "mpsl/comm/hop_probe.hpp"
#include "mpsl/core/cpus.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/core/finite.hpp"
#include "mpsl/core/rng.hpp"
#include "mpsl/data/dataset.hpp"
#include "mpsl/io/hdf5.hpp"
#include "mpsl/nn/loss.hpp"
#include "mpsl/obs/log.hpp"
#include "mpsl/obs/memory.hpp"
#include "mpsl/optim/fedavg.hpp"
#include "mpsl/optim/sgd.hpp"

namespace mpsl::plan {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// "8Mbit", "8Mbit/s", "1GB/s", "100MB" -> bytes/s; -1 if not a bandwidth.
double parse_bandwidth(std::string t) {
  t = lower(t);
  if (t.size() > 2 && t.substr(t.size() - 2) == "/s") t.resize(t.size() - 2);
  if (t.size() > 2 && t.substr(t.size() - 2) == "ps") t.resize(t.size() - 2);
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (end == t.c_str() || !(v > 0)) return -1;
  std::string u(end);
  double scale = 1;
  if (!u.empty() && (u[0] == 'k' || u[0] == 'm' || u[0] == 'g' || u[0] == 't')) {
    scale = u[0] == 'k' ? 1e3 : u[0] == 'm' ? 1e6 : u[0] == 'g' ? 1e9 : 1e12;
    u = u.substr(1);
  }
  // "b", "bit" = bits; "B" was lowered to "b" too, so bytes are spelled "byte" or "bytes"... the
  // original case decides: look at the unit as typed.
  if (u.empty() || u == "bit" || u == "bits" || u == "b") return v * scale / 8.0;
  if (u == "byte" || u == "bytes") return v * scale;
  return -1;
}

double parse_seconds(std::string t) {
  t = lower(t);
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (end == t.c_str() || !(v >= 0)) return -1;
  const std::string u(end);
  if (u.empty() || u == "s") return v;
  if (u == "ms") return v * 1e-3;
  if (u == "us") return v * 1e-6;
  return -1;
}

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

double median(std::vector<double> v) {
  return median_of(std::move(v));
}

// ---- Device ---------------------------------------------------------------------------------

Device Device::parse(const std::string& text, const std::string& what) {
  Device d;
  std::stringstream in(text);
  std::string item;
  auto bad = [&](const std::string& why) {
    throw InputError(what + " '" + text + "': " + why +
                     " (expected e.g. slow=20,bw=8Mbit,lat=20ms,mem=4G,cores=2; bw in bit/s, "
                     "or bytes/s as 1GB/s spelled 1Gbyte)");
  };
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos) bad("'" + item + "' is not key=value");
    const std::string key = lower(item.substr(0, eq)), value = item.substr(eq + 1);
    if (key == "slow" || key == "slowdown") {
      char* end = nullptr;
      d.slowdown = std::strtod(value.c_str(), &end);
      if (*end || !(d.slowdown > 0)) bad("slow must be a positive factor");
    } else if (key == "speed") {
      char* end = nullptr;
      const double s = std::strtod(value.c_str(), &end);
      if (*end || !(s > 0)) bad("speed must be a positive factor");
      d.slowdown = 1.0 / s;
    } else if (key == "bw" || key == "bandwidth" || key == "link") {
      // Bytes when the unit says so with a capital B ("1GB/s"), bits otherwise.
      std::string v = value;
      const bool bytes = v.find('B') != std::string::npos;
      if (bytes) {
        const size_t p = v.find('B');
        v = v.substr(0, p) + "byte" + v.substr(p + 1);
      }
      d.bandwidth = parse_bandwidth(v);
      if (d.bandwidth <= 0) bad("bw must be a bandwidth such as 8Mbit, 1Gbit or 1GB/s");
    } else if (key == "lat" || key == "latency") {
      d.latency = parse_seconds(value);
      if (d.latency < 0) bad("lat must be a time such as 20ms");
    } else if (key == "mem" || key == "memory") {
      d.memory = obs::parse_bytes(value);
      if (d.memory <= 0) bad("mem must be a size such as 4G");
    } else if (key == "cores") {
      char* end = nullptr;
      const long c = std::strtol(value.c_str(), &end, 10);
      if (*end || c < 1) bad("cores must be a positive integer");
      d.cores = static_cast<int>(c);
    } else {
      bad("unknown key '" + key + "'");
    }
  }
  return d;
}

std::string Device::str() const {
  std::ostringstream o;
  o << "slow=" << slowdown;
  if (bandwidth > 0) o << ",bw=" << bandwidth * 8 / 1e6 << "Mbit";
  if (latency >= 0) o << ",lat=" << latency * 1e3 << "ms";
  if (memory > 0) o << ",mem=" << obs::format_bytes(memory);
  if (cores > 0) o << ",cores=" << cores;
  return o.str();
}

nlohmann::json Device::to_json() const {
  nlohmann::json j = {{"slowdown", slowdown}};
  j["bandwidth_bytes_per_s"] = bandwidth > 0 ? nlohmann::json(bandwidth) : nlohmann::json(nullptr);
  j["latency_s"] = latency >= 0 ? nlohmann::json(latency) : nlohmann::json(nullptr);
  j["memory_bytes"] = memory > 0 ? nlohmann::json(memory) : nlohmann::json(nullptr);
  j["cores"] = cores;
  return j;
}

Device Device::from_json(const nlohmann::json& j) {
  Device d;
  d.slowdown = j.value("slowdown", 1.0);
  if (j.contains("bandwidth_bytes_per_s") && !j["bandwidth_bytes_per_s"].is_null())
    d.bandwidth = j["bandwidth_bytes_per_s"].get<double>();
  if (j.contains("latency_s") && !j["latency_s"].is_null())
    d.latency = j["latency_s"].get<double>();
  if (j.contains("memory_bytes") && !j["memory_bytes"].is_null())
    d.memory = j["memory_bytes"].get<int64_t>();
  d.cores = j.value("cores", 0);
  return d;
}

// ---- Profile --------------------------------------------------------------------------------

double Profile::forward(int b, int e) const {
  double s = 0;
  for (int u = b; u < e; ++u) s += units[u].forward_s;
  return s;
}
double Profile::backward(int b, int e) const {
  double s = 0;
  for (int u = b; u < e; ++u) s += units[u].backward_s;
  return s;
}
double Profile::step(int b, int e) const {
  double s = 0;
  for (int u = b; u < e; ++u) s += units[u].step_s;
  return s;
}
int64_t Profile::copy_bytes(int b, int e) const {
  int64_t s = 0;
  for (int u = b; u < e; ++u) s += units[u].copy_bytes();
  return s;
}
int64_t Profile::param_bytes(int b, int e) const {
  int64_t s = 0;
  for (int u = b; u < e; ++u) s += units[u].param_bytes;
  return s;
}
int64_t Profile::buffer_bytes(int b, int e) const {
  int64_t s = 0;
  for (int u = b; u < e; ++u) s += units[u].buffer_bytes;
  return s;
}
int64_t Profile::activation_bytes(int b, int e) const {
  int64_t s = 0;
  for (int u = b; u < e; ++u) s += units[u].activation_bytes;
  return s;
}
int64_t Profile::slot_first_use_bytes(int b, int e) const {
  int64_t s = units[b].slot_input_bytes;
  for (int u = b + 1; u < e; ++u) s += units[u].joined_slot_bytes;
  return std::max<int64_t>(s, 0);
}
int64_t Profile::work_bytes(int b, int e) const {
  return work_bytes({{b, e}});
}
int64_t Profile::work_bytes(const std::vector<std::pair<int, int>>& ranges) const {
  int64_t own = 0, shared = 0;
  for (const auto& [b, e] : ranges)
    for (int u = b; u < e; ++u) {
      own += units[u].work_bytes - units[u].shared_work_bytes;
      if (u > b) own -= units[u].joined_work_saving_bytes;
      shared = std::max(shared, units[u].shared_work_bytes);
    }
  return std::max<int64_t>(own, 0) + shared;
}

namespace {
nlohmann::json calibration_json(const std::vector<PipelineCalibration>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& c : v)
    a.push_back({{"ranks", c.ranks},
                 {"factor", c.factor},
                 {"measured_s", c.measured_s},
                 {"predicted_s", c.predicted_s},
                 {"speed", c.speed}});
  return a;
}
}  // namespace

Profile Profile::scaled(const Device& d) const {
  Profile p = *this;
  const double f = d.slowdown;
  for (auto& u : p.units) {
    u.forward_s *= f;
    u.backward_s *= f;
    u.step_s *= f;
  }
  p.loss_s *= f;
  p.average_s_per_byte *= f;
  p.in_place_average_s_per_byte *= f;
  p.in_place_average_s_per_part_byte *= f;
  p.copy_s_per_byte *= f;
  p.check_s_per_byte *= f;
  p.assemble_s_per_sample *= f;
  p.evaluate_s_per_sample *= f;
  p.device = d;
  p.device.slowdown = device.slowdown * f;
  return p;
}

nlohmann::json Profile::to_json() const {
  nlohmann::json us = nlohmann::json::array();
  for (const auto& u : units)
    us.push_back({{"index", u.index},
                  {"type", u.type},
                  {"description", u.description},
                  {"output_shape", u.output_shape},
                  {"flops", u.flops},
                  {"forward_s", u.forward_s},
                  {"backward_s", u.backward_s},
                  {"step_s", u.step_s},
                  {"batch_forward_s", u.forward_s * micro_batches},
                  {"batch_backward_s", u.backward_s * micro_batches + u.step_s},
                  {"output_bytes", u.output_bytes},
                  {"param_bytes", u.param_bytes},
                  {"optimizer_bytes", u.optimizer_bytes},
                  {"buffer_bytes", u.buffer_bytes},
                  {"activation_bytes", u.activation_bytes},
                  {"work_bytes", u.work_bytes},
                  {"shared_work_bytes", u.shared_work_bytes},
                  {"joined_work_saving_bytes", u.joined_work_saving_bytes},
                  {"slot_input_bytes", u.slot_input_bytes},
                  {"joined_slot_bytes", u.joined_slot_bytes}});
  return {{"format", "mpsl-profile"},
          {"format_version", 1},
          {"mpsl_version", MPSL_VERSION},
          {"model", model},
          {"batch", batch},
          {"micro_batches", micro_batches},
          {"threads", threads},
          {"repeats", repeats},
          {"device", device.to_json()},
          {"input_bytes", input_bytes},
          {"base_rss_bytes", base_rss_bytes},
          {"loss_s", loss_s},
          {"average_s_per_byte", average_s_per_byte},
          {"in_place_average_s_per_byte", in_place_average_s_per_byte},
          {"in_place_average_s_per_part_byte", in_place_average_s_per_part_byte},
          {"evaluate_s_per_sample", evaluate_s_per_sample},
          {"concurrency", concurrency},
          {"concurrency_spread", concurrency_spread},
          {"timing_drift", timing_drift},
          {"timing_windows", timing_windows},
          {"placement_cpus", placement_cpus},
          {"hop_s", hop_s},
          {"pipeline_calibration", calibration_json(pipeline_calibration)},
          {"copy_s_per_byte", copy_s_per_byte},
          {"check_s_per_byte", check_s_per_byte},
          {"assemble_s_per_sample", assemble_s_per_sample},
          {"notes",
           "times in seconds of one micro-batch (forward_s, backward_s) or one batch (step_s: the "
           "optimiser step; batch_backward_s = micro_batches * backward_s + step_s), medians over "
           "repeats; bytes: output_bytes one micro-batch at the unit's output, activation_bytes "
           "what one micro-batch in flight holds, optimizer_bytes gradients + momentum"},
          {"units", us}};
}

Profile Profile::from_json(const nlohmann::json& j, const std::string& what) {
  try {
    MPSL_INPUT_CHECK(j.is_object() && j.value("format", "") == "mpsl-profile",
                     what + ": not an mpsl profile (format is not \"mpsl-profile\")");
    MPSL_INPUT_CHECK(j.value("format_version", 0) == 1,
                     what + ": profile format_version " +
                         std::to_string(j.value("format_version", 0)) +
                         " is not supported (this mpsl reads version 1)");
    Profile p;
    p.model = j.at("model").get<std::string>();
    p.batch = j.at("batch").get<int>();
    p.micro_batches = j.at("micro_batches").get<int>();
    p.threads = j.value("threads", 1);
    p.repeats = j.value("repeats", 0);
    p.device = Device::from_json(j.at("device"));
    p.input_bytes = j.at("input_bytes").get<int64_t>();
    p.base_rss_bytes = j.value("base_rss_bytes", int64_t{0});
    p.loss_s = j.value("loss_s", 0.0);
    p.average_s_per_byte = j.value("average_s_per_byte", 0.0);
    p.in_place_average_s_per_byte = j.value("in_place_average_s_per_byte", 0.0);
    p.in_place_average_s_per_part_byte = j.value("in_place_average_s_per_part_byte", 0.0);
    p.evaluate_s_per_sample = j.value("evaluate_s_per_sample", 0.0);
    p.copy_s_per_byte = j.value("copy_s_per_byte", 0.0);
    p.check_s_per_byte = j.value("check_s_per_byte", 0.0);
    p.assemble_s_per_sample = j.value("assemble_s_per_sample", 0.0);
    if (j.contains("concurrency")) p.concurrency = j["concurrency"].get<std::vector<double>>();
    if (j.contains("concurrency_spread"))
      p.concurrency_spread = j["concurrency_spread"].get<std::vector<double>>();
    p.timing_drift = j.value("timing_drift", 0.0);
    p.timing_windows = j.value("timing_windows", 0);
    p.placement_cpus = j.value("placement_cpus", 0);
    if (j.contains("hop_s")) p.hop_s = j["hop_s"].get<std::vector<double>>();
    if (j.contains("pipeline_calibration"))
      for (const auto& c : j["pipeline_calibration"]) {
        PipelineCalibration x;
        x.ranks = c.at("ranks").get<int>();
        x.factor = c.at("factor").get<double>();
        x.measured_s = c.value("measured_s", 0.0);
        x.predicted_s = c.value("predicted_s", 0.0);
        x.speed = c.value("speed", 1.0);
        MPSL_INPUT_CHECK(x.ranks >= 1 && x.factor > 0 && std::isfinite(x.factor),
                         what + ": a pipeline calibration entry has ranks < 1 or a factor <= 0");
        MPSL_INPUT_CHECK(
            p.pipeline_calibration.empty() || x.ranks > p.pipeline_calibration.back().ranks,
            what + ": pipeline calibration entries must have increasing ranks");
        p.pipeline_calibration.push_back(x);
      }
    for (const auto& u : j.at("units")) {
      UnitProfile x;
      x.index = u.at("index").get<int>();
      x.type = u.value("type", "");
      x.description = u.value("description", "");
      x.output_shape = u.value("output_shape", "");
      x.flops = u.value("flops", 0.0);
      x.forward_s = u.at("forward_s").get<double>();
      x.backward_s = u.at("backward_s").get<double>();
      x.step_s = u.value("step_s", 0.0);
      x.output_bytes = u.at("output_bytes").get<int64_t>();
      x.param_bytes = u.at("param_bytes").get<int64_t>();
      x.optimizer_bytes = u.at("optimizer_bytes").get<int64_t>();
      x.buffer_bytes = u.value("buffer_bytes", int64_t{0});
      x.activation_bytes = u.value("activation_bytes", int64_t{0});
      x.work_bytes = u.value("work_bytes", int64_t{0});
      x.shared_work_bytes = u.value("shared_work_bytes", int64_t{0});
      x.joined_work_saving_bytes = u.value("joined_work_saving_bytes", int64_t{0});
      x.slot_input_bytes = u.value("slot_input_bytes", int64_t{0});
      x.joined_slot_bytes = u.value("joined_slot_bytes", int64_t{0});
      MPSL_INPUT_CHECK(x.forward_s >= 0 && x.backward_s >= 0 && x.output_bytes >= 0 &&
                           x.param_bytes >= 0 && x.shared_work_bytes >= 0 &&
                           x.shared_work_bytes <= x.work_bytes,
                       what + ": unit " + std::to_string(x.index) + " has negative figures");
      p.units.push_back(x);
    }
    MPSL_INPUT_CHECK(p.units.size() >= 1, what + ": the profile has no units");
    MPSL_INPUT_CHECK(p.batch >= 1 && p.micro_batches >= 1 && p.batch % p.micro_batches == 0,
                     what + ": batch and micro_batches do not fit");
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw InputError(what + ": malformed profile (" + e.what() + ")");
  }
}

Profile Profile::read(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError("profile '" + path + "' cannot be read (missing or unreadable)");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    throw InputError("profile '" + path + "' is not JSON (" + e.what() + ")");
  }
  return from_json(j, "profile '" + path + "'");
}

void Profile::write(const std::string& path) const {
  const std::string text = to_json().dump(1) + "\n";
  io::atomic_write(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    out.flush();
    if (!out) throw RuntimeFailure("cannot write '" + tmp + "'");
  });
}

namespace {

// One instance of units [b, e) as a part, as a stage would hold it: its program, a slot, and
// one forward and backward. build() returns the heap growth of the program and of the first
// step (work), sets `activation` to what making a slot allocates and `slot_lazy` to what a
// slot allocates on its first step (measured on a second slot, and left out of the work).
struct PartInstance {
  std::optional<nn::PartState> state;
  std::unique_ptr<nn::PartProgram> prog;
  std::unique_ptr<nn::PartSlot> slot;

  int64_t build(const nn::Model& model, int b, int e, int64_t mb, uint64_t seed,
                int64_t& activation, int64_t& slot_lazy) {
    const nn::Shape in = model.shape_before(b, mb), out = model.shape_before(e, mb);
    std::vector<float> input(in.elements()), output(out.elements(), 1e-3f), diff_in(in.elements());
    Rng rng(seed, 77);
    for (auto& v : input) v = rng.uniform() - 0.5f;
    const nn::StepInfo info{seed, 0, 0, true, 0};
    state.emplace(model, b, e);
    state->initialise(model, seed);
    const int64_t h0 = obs::heap_in_use_bytes();
    prog = std::make_unique<nn::PartProgram>(model, b, e, mb, b > 0, true);
    state->adopt_formats(*prog);
    const int64_t h1 = obs::heap_in_use_bytes();
    slot = prog->make_slot();
    const int64_t h2 = obs::heap_in_use_bytes();
    prog->forward(*slot, *state, input.data(), output.data(), info);
    prog->backward(*slot, *state, output.data(), b > 0 ? diff_in.data() : nullptr, info, false);
    const int64_t h3 = obs::heap_in_use_bytes();
    // A slot also allocates on its first use (a layer's copy of its input in the layout it
    // wants): a second slot's first step shows that part, which every slot in flight holds.
    auto second = prog->make_slot();
    const int64_t h4 = obs::heap_in_use_bytes();
    prog->forward(*second, *state, input.data(), output.data(), info);
    prog->backward(*second, *state, output.data(), b > 0 ? diff_in.data() : nullptr, info, false);
    const int64_t h5 = obs::heap_in_use_bytes();
    activation = std::max<int64_t>(0, h2 - h1);
    slot_lazy = std::max<int64_t>(0, h5 - h4);
    return std::max<int64_t>(0, (h1 - h0) + (h3 - h2) - slot_lazy);
  }
};

}  // namespace

// ---- measuring ------------------------------------------------------------------------------

namespace {

// FedAvg in place: its time is a part of once per element (the sum's conversion and division)
// and a part per copy (read, and written back), so it is measured on 2 and on 4 copies of a
// part larger than the caches (32 Mi parameters), after a first call that faults pages in.
void measure_in_place_average(Profile& p) {
  constexpr int64_t kParams = int64_t{32} << 20;
  auto seconds_for = [&](int k) {
    std::vector<nn::PartState> copies(k);
    std::vector<nn::PartState*> targets;
    std::vector<const nn::PartState*> sources;
    for (auto& c : copies) {
      c.layout.param_count = kParams;
      c.params = nn::FloatBuffer(kParams);
      c.params.fill(0.25f);
      c.momentum = nn::FloatBuffer(kParams);
      c.momentum.fill(0.f);
      targets.push_back(&c);
      sources.push_back(&c);
    }
    const std::vector<double> weights(k, 1.0);
    std::vector<double> t;
    for (int it = 0; it < 4; ++it) {
      const auto t0 = Clock::now();
      optim::average_in_place(sources, weights, k, targets, optim::OptimizerStatePolicy::kReset);
      if (it > 0) t.push_back(since(t0));
    }
    return median_of(t);
  };
  const double two = seconds_for(2), four = seconds_for(4), bytes = kParams * 4.0;
  p.in_place_average_s_per_byte = std::max(0.0, (four - two) / 2) / bytes;
  p.in_place_average_s_per_part_byte =
      std::max(0.0, two / bytes - 2 * p.in_place_average_s_per_byte);
}

// Times on this host now: every unit's forward and backward, the loss, the optimiser step,
// FedAvg, evaluation, copies, checks and batch assembly; the slowdown of processes sharing the
// cores (s.concurrency) and hop waits (s.hop_processes) only when asked for.
void measure_times(const nn::Model& model, const ProfileSettings& s, Profile& p) {
  const int64_t mb = s.batch / s.micro_batches;
  const int S = model.num_units();
  // Times: the whole model as one program (no cuts inside), each unit's share timed.
  nn::PartProgram prog(model, 0, S, mb, false, true);
  nn::PartState state(model, 0, S);
  state.initialise(model, s.seed);
  state.adopt_formats(prog);
  auto slot = prog.make_slot();
  const int64_t img = model.input_shape(1).per_sample();
  std::vector<float> images(s.batch * img);
  std::vector<int32_t> labels(s.batch);
  Rng rng(s.seed, 99);
  for (auto& v : images) v = rng.uniform() - 0.5f;
  for (auto& l : labels) l = static_cast<int32_t>(rng.below(model.classes()));
  std::vector<float> logits(mb * model.classes()), dlogits(mb * model.classes());
  const optim::SgdConfig sgd{0.001f, 0.9f, 1e-4f};
  nn::PartProgram::UnitTimes times;
  prog.set_unit_times(&times);
  // At least s.repeats timed steps and s.min_time_s of them: a virtual machine's speed moves by
  // 10-30% over seconds (docs/cost-model-validation), and a profile of fmnist-cnn's 7 steps
  // (0.25 s) caught whichever moment it fell on; medians over a few seconds describe the host.
  // A window whose speed moved by more than kTimingDriftWarning between its halves is timed
  // again, at most kMaxTimingWindows in all, and the steadiest kept (as placement sweeps are).
  struct Window {
    std::vector<std::vector<double>> fwd, bwd;
    std::vector<double> loss_t, step_t;
    double drift = 0;
  };
  Window best;
  int windows = 0;
  // Test hook: MPSL_TEST_PROFILE_DRIFT=F makes the second half of the first window's steps F
  // times as long (a host that slowed down half-way).
  const double test_drift = [] {
    const char* v = std::getenv("MPSL_TEST_PROFILE_DRIFT");
    return v && *v ? std::atof(v) : 0.0;
  }();
  for (; windows < kMaxTimingWindows; ++windows) {
    Window w;
    w.fwd.assign(S, {});
    w.bwd.assign(S, {});
    double timed_s = 0;
    std::vector<double> step_times;  // whole steps, in order: how steady the host was
    const int warmup = windows == 0 ? s.warmup : 0;
    for (int it = 0; it < warmup + s.repeats || timed_s < s.min_time_s; ++it) {
      const auto step_start = Clock::now();
      times.forward.assign(S, 0.0);
      times.backward.assign(S, 0.0);
      double loss_s = 0;
      for (int m = 0; m < s.micro_batches; ++m) {
        const nn::StepInfo info{s.seed, state.steps, m * mb, true, 0};
        prog.forward(*slot, state, images.data() + m * mb * img, logits.data(), info);
        const auto t0 = Clock::now();
        nn::softmax_cross_entropy(logits.data(), labels.data() + m * mb, mb, model.classes(),
                                  dlogits.data(), 1.f / static_cast<float>(s.batch));
        loss_s += since(t0);
        prog.backward(*slot, state, dlogits.data(), nullptr, info, m > 0);
      }
      const auto t1 = Clock::now();
      optim::sgd_step(state, sgd);
      const double st = since(t1);
      if (it < warmup) continue;
      double stretch = 1.0;
      if (test_drift > 0 && windows == 0 && it - warmup >= s.repeats / 2) {
        stretch = test_drift;
        std::this_thread::sleep_for(
            std::chrono::duration<double>((test_drift - 1.0) * since(step_start)));
      }
      const double step_s = since(step_start);
      timed_s += step_s;
      step_times.push_back(step_s);
      for (int u = 0; u < S; ++u) {
        w.fwd[u].push_back(stretch * times.forward[u] / s.micro_batches);
        w.bwd[u].push_back(stretch * times.backward[u] / s.micro_batches);
      }
      w.loss_t.push_back(loss_s / s.micro_batches);
      w.step_t.push_back(st);
    }
    w.drift = timing_drift(step_times);
    if (windows == 0 || w.drift < best.drift) best = std::move(w);
    if (best.drift <= kTimingDriftWarning) {
      ++windows;
      break;
    }
  }
  prog.set_unit_times(nullptr);
  const std::vector<std::vector<double>>& fwd = best.fwd;
  const std::vector<std::vector<double>>& bwd = best.bwd;
  const std::vector<double>& loss_t = best.loss_t;
  const std::vector<double>& step_t = best.step_t;
  p.repeats = static_cast<int>(step_t.size());
  p.timing_drift = best.drift;
  p.timing_windows = windows;
  if (p.timing_drift > kTimingDriftWarning && !s.steps_only) {
    char text[360];
    std::snprintf(text, sizeof text,
                  "profile: this host's speed moved by %.0f%% while the steps were timed (the "
                  "median step of the first half against the second, the steadiest of %d "
                  "windows); the times are medians over both. Profile again, or with a longer "
                  "--min-time, for steadier numbers",
                  100 * p.timing_drift, windows);
    obs::log_warn(text);
  }
  const double step_total = median_of(step_t);
  const double params_total = static_cast<double>(state.layout.param_count);
  for (int u = 0; u < S; ++u) {
    p.units[u].forward_s = median_of(fwd[u]);
    p.units[u].backward_s = median_of(bwd[u]);
    p.units[u].step_s =
        params_total > 0 ? step_total * (p.units[u].param_bytes / 4.0) / params_total : 0.0;
  }
  p.loss_s = median_of(loss_t);
  if (s.steps_only) return;

  // FedAvg: averaging copies is memory-bound; seconds per byte of one copy, with kept sums.
  {
    nn::PartState other = state;
    std::vector<nn::PartState*> copies{&state, &other};
    const std::vector<const nn::PartState*> sources{&state, &other};
    std::vector<double> sums_t;
    optim::PartSums sums;  // as the runtimes keep theirs: the first call faults its pages in
    for (int it = 0; it < 3; ++it) {
      const auto t0 = Clock::now();
      optim::weighted_sums_into(sources, {1.0, 1.0}, false, sums);
      optim::assign_average(sums, 2.0, copies, optim::OptimizerStatePolicy::kReset);
      sums_t.push_back(since(t0));
    }
    const double bytes = 2.0 * (state.params.size() + state.buffers.size()) * 4.0;
    p.average_s_per_byte = bytes > 0 ? median_of(sums_t) / bytes : 0.0;
  }
  measure_in_place_average(p);
  // Evaluation: inference of the whole model, per sample (at the micro-batch size).
  {
    nn::PartProgram inf(model, 0, S, mb, false, false);
    auto islot = inf.make_slot();
    std::vector<double> ev;
    for (int it = 0; it < 3; ++it) {
      const auto t0 = Clock::now();
      inf.forward(*islot, state, images.data(), logits.data(), nn::StepInfo{0, 0, 0, false});
      ev.push_back(since(t0));
    }
    p.evaluate_s_per_sample = median_of(ev) / static_cast<double>(mb);
  }
  // Copies at a cut: a large activation copied once (memory to memory, one thread).
  {
    const int64_t n = std::max<int64_t>(p.input_bytes / 4, int64_t{1} << 22);
    std::vector<float> a(n, 1.f), b(n, 0.f);
    std::vector<double> t;
    for (int it = 0; it < 5; ++it) {
      const auto t0 = Clock::now();
      std::memcpy(b.data(), a.data(), n * sizeof(float));
      t.push_back(since(t0));
      a[it] = b[n - 1 - it];
    }
    p.copy_s_per_byte = median_of(t) / (n * 4.0);
  }
  // The non-finite check (read only), over more than the caches hold: what it mostly scans are
  // parameter gradients, from memory.
  {
    const int64_t n = std::max<int64_t>(p.input_bytes / 4, int64_t{1} << 24);
    std::vector<float> a(n, 1.f);
    std::vector<double> t;
    int64_t found = 0;
    for (int it = 0; it < 5; ++it) {
      const auto t0 = Clock::now();
      found += first_non_finite(a.data(), n);
      t.push_back(since(t0));
    }
    MPSL_CHECK(found == -5, "profile: the check array holds a non-finite value");
    p.check_s_per_byte = median_of(t) / (n * 4.0);
  }
  // Batch assembly on an owner (normalising uint8 images into floats).
  {
    const nn::Shape in1 = model.input_shape(1);
    const data::Dataset ds = data::make_synthetic(s.batch, in1.c, in1.h, in1.w, model.classes(), 1);
    std::vector<int64_t> idx(s.batch);
    for (int i = 0; i < s.batch; ++i) idx[i] = i;
    std::vector<double> t;
    for (int it = 0; it < 5; ++it) {
      const auto t0 = Clock::now();
      data::assemble_batch(ds, idx.data(), s.batch, images.data(), labels.data());
      t.push_back(since(t0));
    }
    p.assemble_s_per_sample = median_of(t) / s.batch;
  }
  // Placement: the same steps while n - 1 other processes train too (forked copies, one
  // thread each; only with one thread, as OpenMP's pool does not survive fork).
  if (s.concurrency >= 2 && omp_get_max_threads() == 1) {
    auto one_step = [&]() {
      for (int m = 0; m < s.micro_batches; ++m) {
        const nn::StepInfo info{s.seed, state.steps, m * mb, true, 0};
        prog.forward(*slot, state, images.data() + m * mb * img, logits.data(), info);
        nn::softmax_cross_entropy(logits.data(), labels.data() + m * mb, mb, model.classes(),
                                  dlogits.data(), 1.f / static_cast<float>(s.batch));
        prog.backward(*slot, state, dlogits.data(), nullptr, info, m > 0);
      }
    };
    // Mean step time over a window of at least half a second (and `repeats` steps).
    auto timed = [&]() {
      one_step();
      int steps = 0;
      const auto start = Clock::now();
      while (steps < std::max(s.repeats, 3) || since(start) < 0.5) {
        one_step();
        ++steps;
      }
      return since(start) / steps;
    };
    // With n processes on fewer cores, each step runs either about alone or is time-sliced, and
    // which process the scheduler favours changes by the second: one process's window is luck.
    // So every process counts its steps and their time in shared memory, and the slowdown is
    // the mean over all n processes of their mean step time in one window, over `alone`.
    struct StepCounter {
      std::atomic<int64_t> steps{0}, nanoseconds{0};
      std::atomic<int> warm{0};  // the process has taken its first step
    };
    const int max_n = s.concurrency;
    // Ranks that share cores are unbound (mpirun binds only when each rank has a core), but
    // this process may be bound (`mpirun -n 1 mpsl profile` binds it to one core): its forked
    // copies would share that core and read twice the slowdown.
    const WidenedAffinity widened;
    p.placement_cpus = widened.cpus();
    if (widened.cpus() > widened.cpus_before())
      MPSL_LOG(Info, "profile: this process was bound to " << widened.cpus_before()
                                                           << " CPU(s); placement runs on all "
                                                           << widened.cpus() << " it may use");
    void* shared = mmap(nullptr, sizeof(StepCounter) * max_n, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    MPSL_CHECK(shared != MAP_FAILED, "profile: mmap of the step counters failed");
    auto* counters = static_cast<StepCounter*>(shared);
    // At least three sweeps, each timing alone first; per n the median of the sweeps (a virtual
    // machine's neighbours come and go).
    std::vector<std::vector<double>> ratios(max_n + 1);
    // Each n's window lies between two windows alone, and its slowdown is against their mean:
    // against one window alone at the sweep's start, a drift of the host's speed during the
    // sweep read as a slowdown (4 processes on 2 cores: 1.80 in one profile, 2.19 in the next).
    // Sweeps that disagree (a neighbour of this virtual machine came or went: 1.00 in one grid's
    // profile and 1.54 in the next for 2 processes on 2 cores) are measured again.
    int sweeps = 0;
    for (; sweeps < kPlacementSweeps ||
           (sweeps < kMaxPlacementSweeps && placement_sweeps_disagree(ratios));
         ++sweeps) {
      double alone_before = timed();
      for (int n = 2; n <= max_n; ++n) {
        for (int c = 0; c < n; ++c) new (&counters[c]) StepCounter();
        std::vector<pid_t> kids;
        for (int c = 1; c < n; ++c) {
          const pid_t pid = fork();
          if (pid == 0) {
            // The first step after fork() copies every page the step writes (copy-on-write:
            // for vgg19 the weights, gradients and momentum, 1.7 GB): it is not a step's time.
            // Counted, it read 3.3 for 2 processes on 2 cores and 5.2 for 4.
            one_step();
            counters[c].warm.store(1);
            while (true) {  // until killed
              const auto t0 = Clock::now();
              one_step();
              const auto ns =
                  std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0);
              counters[c].nanoseconds.fetch_add(ns.count());
              counters[c].steps.fetch_add(1);
            }
          }
          if (pid > 0) kids.push_back(pid);
        }
        double slowdown = 0;
        if (kids.size() + 1 == static_cast<size_t>(n)) {
          auto all_warm = [&]() {
            for (int c = 1; c < n; ++c)
              if (counters[c].warm.load() == 0) return false;
            return true;
          };
          const auto forked = Clock::now();
          while (!all_warm() && since(forked) < 120.0)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          one_step();  // this process's copy-on-write step, also not counted
          std::vector<int64_t> steps0(n), ns0(n);
          for (int c = 1; c < n; ++c) {
            steps0[c] = counters[c].steps.load();
            ns0[c] = counters[c].nanoseconds.load();
          }
          // At least a second, and until every process has finished a step in the window.
          int own_steps = 0;
          double own_s = 0;
          const auto start = Clock::now();
          auto all_stepped = [&]() {
            for (int c = 1; c < n; ++c)
              if (counters[c].steps.load() == steps0[c]) return false;
            return true;
          };
          while (own_steps < 3 || since(start) < 1.0 || (!all_stepped() && since(start) < 30.0)) {
            const auto t0 = Clock::now();
            one_step();
            own_s += since(t0);
            ++own_steps;
          }
          double sum = own_s / own_steps;
          int counted = 1;
          for (int c = 1; c < n; ++c) {
            const int64_t k = counters[c].steps.load() - steps0[c];
            if (k <= 0) continue;
            sum += 1e-9 * static_cast<double>(counters[c].nanoseconds.load() - ns0[c]) / k;
            ++counted;
          }
          slowdown = sum / counted;
        }
        for (pid_t k : kids) kill(k, SIGKILL);
        for (pid_t k : kids) waitpid(k, nullptr, 0);
        if (slowdown <= 0) break;
        const double alone_after = timed();
        slowdown = placement_slowdown(slowdown, alone_before, alone_after, n, widened.cpus());
        alone_before = alone_after;
        ratios[n].push_back(slowdown);
      }
    }
    munmap(shared, sizeof(StepCounter) * max_n);
    p.concurrency = {1.0};
    p.concurrency_spread = {1.0};
    for (int n = 2; n <= max_n && static_cast<int>(ratios[n].size()) == sweeps; ++n) {
      p.concurrency.push_back(median_of(ratios[n]));
      p.concurrency_spread.push_back(spread_of(ratios[n]));
    }
    if (placement_sweeps_disagree(ratios, kPlacementSpreadWarning)) {
      std::string spreads;
      for (size_t n = 1; n < p.concurrency_spread.size(); ++n) {
        char item[48];
        std::snprintf(item, sizeof item, "%s%zu: %.2f", n > 1 ? ", " : "", n + 1,
                      p.concurrency_spread[n]);
        spreads += item;
      }
      obs::log_warn("profile: the placement sweeps still disagree after " + std::to_string(sweeps) +
                    " (largest over smallest slowdown per process count: " + spreads +
                    "); their medians are kept. This host's speed moves: profile again " +
                    "for steadier slowdowns");
    }
  }
  if (s.hop_processes >= 2) {
    // Unbound as the placement processes (above): a singleton's MPI runtime, started here,
    // and the probe processes it spawns inherit this process's mask.
    const WidenedAffinity widened;
    const comm::HopTimes hops =
        comm::measure_hop_times(s.executable, s.hop_processes, kHopProbeBytes, 100);
    if (hops.hop_s.empty())
      obs::log_warn("profile: hops not measured (" + hops.problem +
                    "); the cost model will not add what messages wait on shared cores");
    p.hop_s = hops.hop_s;
  }
}

}  // namespace

Profile measure_profile(const nn::Model& model, const ProfileSettings& s) {
  MPSL_CHECK(s.micro_batches >= 1 && s.batch % s.micro_batches == 0, "bad micro-batches");
  Profile p;
  p.model = model.name();
  p.batch = s.batch;
  p.micro_batches = s.micro_batches;
  p.threads = omp_get_max_threads();
  p.repeats = s.repeats;
  const int64_t mb = s.batch / s.micro_batches;
  const int S = model.num_units();
  p.input_bytes = model.input_shape(mb).elements() * 4;
  {
    // oneDNN's engine and thread pool exist before the baseline is read.
    nn::cpu_runtime();
    p.base_rss_bytes = obs::current_rss_bytes();
  }

  // Bytes, unit by unit: each unit alone as a part (as a stage would hold it), measured as
  // growth of the heap around building its program, a slot, and one forward/backward.
  nn::Shape in = model.input_shape(mb);
  for (int u = 0; u < S; ++u) {
    UnitProfile x;
    const nn::Layer& layer = model.unit(u);
    x.index = u;
    x.type = layer.type();
    x.description = layer.describe();
    const nn::Shape out = layer.output_shape(in);
    x.output_shape = out.str();
    x.flops = layer.forward_flops(in);
    x.output_bytes = out.elements() * 4;
    const nn::PartLayout l = nn::PartLayout::make(model, u, u + 1);
    x.param_bytes = l.param_count * 4;
    x.optimizer_bytes = 2 * l.param_count * 4;
    x.buffer_bytes = l.buffer_count * 4;
    // A second instance built while the first lives grows the heap only by what it does not
    // share with it: the difference is the shared scratchpad (zero where oneDNN gives every
    // primitive its own).
    {
      PartInstance first, second;
      int64_t second_activation = 0, second_lazy = 0;
      const int64_t first_work =
          first.build(model, u, u + 1, mb, s.seed, x.activation_bytes, x.slot_input_bytes);
      const int64_t second_work =
          second.build(model, u, u + 1, mb, s.seed, second_activation, second_lazy);
      x.work_bytes = first_work;
      x.shared_work_bytes = std::clamp<int64_t>(first_work - second_work, 0, first_work);
    }
    if (u > 0) {
      // Units u-1 and u as one part: what joining them saves (conversions at the cut).
      const UnitProfile& prev = p.units.back();
      PartInstance pair;
      int64_t activation = 0, lazy = 0;
      const int64_t pair_work = pair.build(model, u - 1, u + 1, mb, s.seed, activation, lazy);
      x.joined_slot_bytes = lazy - prev.slot_input_bytes;
      const int64_t shared = std::max(prev.shared_work_bytes, x.shared_work_bytes);
      x.joined_work_saving_bytes = (prev.work_bytes - prev.shared_work_bytes) +
                                   (x.work_bytes - x.shared_work_bytes) - (pair_work - shared);
    }
    p.units.push_back(x);
    in = out;
  }

  if (s.repeats > 0) measure_times(model, s, p);
  return p;
}

Profile retime_profile(const nn::Model& model, const Profile& old, int repeats, double min_time_s,
                       uint64_t seed, bool steps_only) {
  MPSL_CHECK(repeats > 0, "retime_profile: no timed steps");
  MPSL_CHECK(old.model == model.name() && old.num_units() == model.num_units(),
             "retime_profile: the profile is not of this model");
  ProfileSettings s;
  s.batch = old.batch;
  s.micro_batches = old.micro_batches;
  s.repeats = repeats;
  s.min_time_s = min_time_s;
  s.seed = seed;
  s.steps_only = steps_only;
  Profile p = old;  // bytes, concurrency and hops stay the profile's (measure_times sets repeats)
  p.threads = omp_get_max_threads();
  measure_times(model, s, p);
  return p;
}

double model_step_s(const Profile& p) {
  const int S = p.num_units();
  return p.micro_batches * (p.forward(0, S) + p.backward(0, S) + p.loss_s) + p.step(0, S);
}

double timing_drift(const std::vector<double>& step_s) {
  if (step_s.size() < 4) return 0.0;
  const auto mid = step_s.begin() + static_cast<std::ptrdiff_t>(step_s.size() / 2);
  const double a = median_of(std::vector<double>(step_s.begin(), mid));
  const double b = median_of(std::vector<double>(mid, step_s.end()));
  if (a <= 0 || b <= 0) return 0.0;
  return std::max(a, b) / std::min(a, b) - 1.0;
}

double spread_of(const std::vector<double>& v) {
  if (v.empty()) return 1.0;
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return *lo > 0 ? *hi / *lo : 1.0;
}

bool placement_sweeps_disagree(const std::vector<std::vector<double>>& ratios, double limit) {
  for (const auto& r : ratios)
    if (r.size() >= 2 && spread_of(r) > limit) return true;
  return false;
}

double placement_slowdown(double shared_step_s, double alone_before_s, double alone_after_s,
                          int processes, int cpus) {
  const double alone = 0.5 * (alone_before_s + alone_after_s);
  // n single-threaded processes that compute all the time cannot each run faster than an even
  // share of the CPUs: a ratio below that is the host's speed moving, not placement.
  const double even_share = std::max(1.0, static_cast<double>(processes) / std::max(1, cpus));
  return std::max(shared_step_s / alone, even_share);
}

double pipeline_factor(const Profile& p, double ranks) {
  const auto& c = p.pipeline_calibration;
  if (c.empty()) return 1.0;
  if (ranks <= c.front().ranks) return c.front().factor;
  if (ranks >= c.back().ranks) return c.back().factor;
  for (size_t i = 1; i < c.size(); ++i)
    if (ranks <= c[i].ranks) {
      const double f = (ranks - c[i - 1].ranks) / (c[i].ranks - c[i - 1].ranks);
      return c[i - 1].factor + f * (c[i].factor - c[i - 1].factor);
    }
  return c.back().factor;
}

double hop_wait_s(const Profile& p, int n) {
  if (p.hop_s.size() < 2 || n <= 2) return 0.0;
  const size_t i = std::min(p.hop_s.size(), static_cast<size_t>(n)) - 1;
  return std::max(0.0, p.hop_s[i] - p.hop_s[1]);
}

}  // namespace mpsl::plan
