// `mpsl profile` and `mpsl plan`, and the plan file.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "mpsl/cli/commands.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/io/hdf5.hpp"
#include "mpsl/io/output_path.hpp"
#include "mpsl/nn/zoo.hpp"
#include "mpsl/obs/log.hpp"
#include "mpsl/obs/memory.hpp"
#include "mpsl/plan/calibration.hpp"
#include "mpsl/plan/planner.hpp"

namespace mpsl::plan {

namespace {

nlohmann::json split_json(const std::vector<int>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (int x : v) a.push_back(x);
  return a;
}

nlohmann::json prediction_json(const Prediction& p) {
  nlohmann::json ranks = nlohmann::json::array();
  for (size_t r = 0; r < p.ranks.size(); ++r) {
    const auto& x = p.ranks[r];
    ranks.push_back({{"rank", r},
                     {"role", x.role},
                     {"stage", x.stage},
                     {"units", {x.units_begin, x.units_end}},
                     {"owners_served", x.owners_served},
                     {"busy_s", x.busy_s},
                     {"max_in_flight", x.max_in_flight},
                     {"model_bytes", x.model_bytes},
                     {"peak_bytes", x.peak_bytes}});
  }
  return {{"round_s", p.round_s},
          {"train_s", p.train_s},
          {"aggregate_s", p.aggregate_s},
          {"evaluate_s", p.evaluate_s},
          {"paper_round_s", p.paper_round_s},
          {"max_stage_bytes", p.max_stage_bytes()},
          {"ranks", ranks}};
}

}  // namespace

nlohmann::json plan_json(const PlanRequest& r, const PlanResult& res) {
  const int N = res.scenario.stages();
  nlohmann::json nodes = nlohmann::json::array();
  for (int i = 0; i < N; ++i) nodes.push_back(res.scenario.stage_device(i).to_json());
  return {{"format", "mpsl-plan"},
          {"format_version", 1},
          {"mpsl_version", MPSL_VERSION},
          {"model", r.profile->model},
          {"batch", r.profile->batch},
          {"micro_batches", r.micro_batches},
          {"owners", r.owners},
          {"owner_ranks", r.owner_ranks},
          {"stages", N},
          {"split", split_json(res.split.cuts)},
          {"schedule", r.one_f_one_b ? "1f1b" : "mpsl"},
          {"batches_per_round", r.steps_per_owner},
          {"objective",
           {{"forward_bottleneck_s", res.split.max_forward},
            {"backward_bottleneck_s", res.split.max_backward},
            {"sum_s", res.split.objective()}}},
          {"predicted", prediction_json(res.prediction)},
          {"objective_optimal",
           {{"split", split_json(res.objective_split.cuts)},
            {"objective_s", res.objective_split.objective()},
            {"predicted_round_s", res.objective_prediction.round_s},
            {"note",
             "the split minimising the paper's objective exactly; the plan's split has the "
             "least simulated round time (every split when at most 500, else refined from this "
             "or the even split)"}}},
          {"even_split",
           {{"split", split_json(res.even)},
            {"feasible", res.even_feasible},
            {"objective_s", res.even_objective},
            {"predicted_round_s", res.even_prediction.round_s},
            {"max_stage_bytes", res.even_prediction.max_stage_bytes()}}},
          {"memory_optimal",
           {{"split", split_json(res.memory_split)},
            {"max_stage_bytes", res.memory_split_bytes},
            {"note",
             "the split with the smallest largest stage memory (planned in-flight "
             "activations)"}}},
          {"owner_device", r.owner_device.to_json()},
          {"nodes", nodes},
          {"cores", r.cores},
          {"profile", r.profile->to_json()}};
}

namespace {
std::string secs(double s) {
  char b[32];
  if (s >= 1)
    std::snprintf(b, sizeof b, "%.3f s", s);
  else
    std::snprintf(b, sizeof b, "%.2f ms", s * 1e3);
  return b;
}
}  // namespace

void print_profile(const Profile& p) {
  std::printf("%-4s %-34s %12s %12s %12s %11s %11s %11s\n", "unit", "layer", "fwd", "bwd", "step",
              "out", "params", "act");
  for (const auto& u : p.units)
    std::printf("%-4d %-34.34s %12s %12s %12s %11s %11s %11s\n", u.index, u.description.c_str(),
                secs(u.forward_s).c_str(), secs(u.backward_s).c_str(), secs(u.step_s).c_str(),
                obs::format_bytes(u.output_bytes).c_str(), obs::format_bytes(u.param_bytes).c_str(),
                obs::format_bytes(u.activation_bytes).c_str());
  const int S = p.num_units();
  std::printf("total: forward %s, backward %s, step %s per %s; one copy %s\n",
              secs(p.forward(0, S) * p.micro_batches).c_str(),
              secs(p.backward(0, S) * p.micro_batches).c_str(), secs(p.step(0, S)).c_str(),
              ("batch of " + std::to_string(p.batch)).c_str(),
              obs::format_bytes(p.copy_bytes(0, S)).c_str());
  if (p.timing_drift > 0)
    std::printf(
        "%d steps timed; the host's speed moved by %.0f%% between their halves%s%s\n", p.repeats,
        100 * p.timing_drift,
        p.timing_windows > 1
            ? (" (the steadiest of " + std::to_string(p.timing_windows) + " windows)").c_str()
            : "",
        p.timing_drift > kTimingDriftWarning ? " (unsteady: profile again)" : "");
  if (!p.concurrency.empty()) {
    std::printf("a step takes");
    for (size_t n = 1; n < p.concurrency.size(); ++n)
      std::printf("%s %.2fx as long with %zu processes training", n > 1 ? "," : "",
                  p.concurrency[n], n + 1);
    if (p.placement_cpus > 0)
      std::printf(" on this host's %d CPU(s)\n", p.placement_cpus);
    else
      std::printf(" on this host\n");
  }
  if (p.hop_s.size() >= 2) {
    std::printf("a hop (%s) takes", obs::format_bytes(kHopProbeBytes).c_str());
    for (size_t n = 1; n < p.hop_s.size(); ++n)
      std::printf("%s %.2f ms with %zu processes", n > 1 ? "," : "", p.hop_s[n] * 1e3, n + 1);
    std::printf(" on this host (the receiver waiting, the others computing)\n");
  }
  if (!p.pipeline_calibration.empty()) {
    std::printf("real pipelines took");
    for (size_t i = 0; i < p.pipeline_calibration.size(); ++i) {
      const auto& c = p.pipeline_calibration[i];
      std::printf("%s %.2fx the predicted round with %d ranks", i > 0 ? "," : "", c.factor,
                  c.ranks);
    }
    std::printf(" (the cost model's calibration)\n");
  }
}

bool is_plan_or_profile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return false;
  try {
    nlohmann::json j;
    in >> j;
    const std::string f = j.is_object() ? j.value("format", "") : "";
    return f == "mpsl-plan" || f == "mpsl-profile";
  } catch (const std::exception&) {
    return false;
  }
}

int inspect_json(const std::string& path) {
  std::ifstream in(path);
  nlohmann::json j;
  in >> j;
  if (j.value("format", "") == "mpsl-profile") {
    const Profile p = Profile::from_json(j, "profile '" + path + "'");
    std::printf(
        "profile of %s: batch %d (%d micro-batch(es)), %d thread(s), %d repeats, device %s\n",
        p.model.c_str(), p.batch, p.micro_batches, p.threads, p.repeats, p.device.str().c_str());
    print_profile(p);
    return 0;
  }
  const PlanFile f = read_plan(path);
  const std::string cuts = obs::join_ints(f.split);
  std::printf("plan for %s: %d owners, %d stage(s), batch %d, schedule %s: --split %s\n",
              f.model.c_str(), f.owners, f.stages, f.batch, f.schedule.c_str(), cuts.c_str());
  if (j.contains("objective"))
    std::printf("  slowest forward stage %s + slowest backward stage %s per batch\n",
                secs(j["objective"].value("forward_bottleneck_s", 0.0)).c_str(),
                secs(j["objective"].value("backward_bottleneck_s", 0.0)).c_str());
  if (j.contains("predicted")) {
    const auto& pr = j["predicted"];
    std::printf("  predicted round %s (paper's formula %s)\n",
                secs(pr.value("round_s", 0.0)).c_str(),
                secs(pr.value("paper_round_s", 0.0)).c_str());
    for (const auto& r : pr["ranks"])
      std::printf("  rank %d %-5s units %d-%d: peak %s\n", r.value("rank", 0),
                  r.value("role", "").c_str(), r["units"][0].get<int>(),
                  r["units"][1].get<int>() - 1,
                  obs::format_bytes(r.value("peak_bytes", int64_t{0})).c_str());
  }
  return 0;
}

PlanFile read_plan(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError("--plan '" + path + "' cannot be read (missing or unreadable)");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    throw InputError("--plan '" + path + "' is not JSON (" + e.what() + ")");
  }
  const std::string what = "--plan '" + path + "'";
  if (!j.is_object() || j.value("format", "") != "mpsl-plan")
    throw InputError(what + ": not an mpsl plan (format is not \"mpsl-plan\")");
  if (j.value("format_version", 0) != 1)
    throw InputError(what + ": plan format_version " +
                     std::to_string(j.value("format_version", 0)) +
                     " is not supported (this mpsl reads version 1)");
  try {
    PlanFile f;
    f.model = j.at("model").get<std::string>();
    f.batch = j.at("batch").get<int>();
    f.micro_batches = j.value("micro_batches", 1);
    f.owners = j.value("owners", 1);
    f.stages = j.at("stages").get<int>();
    f.split = j.at("split").get<std::vector<int>>();
    f.schedule = j.value("schedule", "mpsl");
    if (static_cast<int>(f.split.size()) != f.stages + 1)
      throw InputError(what + ": " + std::to_string(f.split.size()) + " cut points for " +
                       std::to_string(f.stages) + " stages (expected stages + 1)");
    if (j.contains("profile")) f.profile = Profile::from_json(j["profile"], what + " (profile)");
    return f;
  } catch (const nlohmann::json::exception& e) {
    throw InputError(what + ": malformed plan (" + e.what() + ")");
  }
}

}  // namespace mpsl::plan

namespace mpsl::cli {

namespace {

std::vector<plan::Device> node_devices(const PlanOptions& o) {
  plan::Device base;
  if (!o.node_device.empty()) base = plan::Device::parse(o.node_device, "--node-device");
  std::vector<std::string> mem, speed;
  auto list = [](const std::string& t) {
    std::vector<std::string> v;
    std::stringstream in(t);
    std::string item;
    while (std::getline(in, item, ',')) v.push_back(item);
    return v;
  };
  if (!o.node_memory.empty()) mem = list(o.node_memory);
  if (!o.node_speed.empty()) speed = list(o.node_speed);
  const size_t n = std::max<size_t>({1, mem.size(), speed.size()});
  if (mem.size() > 1 && speed.size() > 1 && mem.size() != speed.size())
    throw InputError("--node-memory lists " + std::to_string(mem.size()) +
                     " nodes but --node-speed " + std::to_string(speed.size()));
  std::vector<plan::Device> out(n, base);
  for (size_t i = 0; i < n; ++i) {
    if (!mem.empty()) {
      const std::string& t = mem.size() == 1 ? mem[0] : mem[i];
      const int64_t b = obs::parse_bytes(t);
      if (b <= 0) throw InputError("--node-memory: '" + t + "' is not a size such as 4G");
      out[i].memory = b;
    }
    if (!speed.empty()) {
      const std::string& t = speed.size() == 1 ? speed[0] : speed[i];
      char* end = nullptr;
      const double v = std::strtod(t.c_str(), &end);
      if (*end || !(v > 0)) throw InputError("--node-speed: '" + t + "' is not a positive factor");
      out[i].slowdown = base.slowdown / v;
    }
  }
  return out;
}

}  // namespace

int run_profile(const CommonOptions& common, const ProfileOptions& o) {
  io::prepare_output_file(o.output, "--output");
  plan::Profile p;
  if (!o.from.empty()) {
    MPSL_INPUT_CHECK(!o.device.empty() || o.retime,
                     "--from PROFILE needs --device SPEC (what to rescale to) or --retime");
    p = plan::Profile::read(o.from);
    if (o.retime) {
      // Times measured here describe this host: a profile scaled to another device is retimed
      // from the one it was scaled from.
      MPSL_INPUT_CHECK(p.device.str() == plan::Device{}.str(),
                       "--retime: '" + o.from + "' describes another device (" + p.device.str() +
                           "); retime the profile it was scaled from");
      MPSL_INPUT_CHECK(!p.units.empty() && p.repeats > 0,
                       "--retime: '" + o.from +
                           "' has no times (a bytes-only profile); measure one with --repeats");
      auto model = nn::make_model(p.model);
      MPSL_INPUT_CHECK(model->num_units() == p.num_units(),
                       "--retime: '" + o.from + "' has " + std::to_string(p.num_units()) +
                           " units but " + p.model + " has " + std::to_string(model->num_units()));
      MPSL_LOG(Info, "retiming " << o.from << " (" << p.model << ", batch " << p.batch << ", "
                                 << p.micro_batches << " micro-batch(es)): " << o.repeats
                                 << " timed step(s)");
      const int threads_before = p.threads;
      p = plan::retime_profile(*model, p, o.repeats, o.min_time, common.seed);
      // Its placement slowdowns and hops were measured with its thread count.
      if (p.threads != threads_before)
        obs::log_warn("--retime: '" + o.from + "' was measured with " +
                      std::to_string(threads_before) + " thread(s), the retime ran with " +
                      std::to_string(p.threads) + " (give --threads " +
                      std::to_string(threads_before) + " to compare like with like)");
    }
  } else {
    auto model = nn::make_model(o.model);
    plan::ProfileSettings s;
    s.batch = o.batch;
    s.micro_batches = o.micro_batches;
    s.repeats = o.repeats;
    s.min_time_s = o.min_time;
    s.seed = common.seed;
    // How ranks sharing this host's cores slow each other: up to cores + 2 processes.
    s.concurrency = o.repeats <= 0 ? 0
                    : o.concurrency >= 0
                        ? o.concurrency
                        : static_cast<int>(std::thread::hardware_concurrency()) + 2;
    // And what a hop waits with as many processes (ranks) on the host.
    s.hop_processes = s.concurrency;
    MPSL_LOG(Info, "profiling " << o.model << ": batch " << o.batch << " (" << o.micro_batches
                                << " micro-batch(es)), " << o.repeats << " timed step(s)");
    p = plan::measure_profile(*model, s);
    // What a real pipeline loses beyond placement and hops (plan/calibration.hpp).
    const int ranks = o.pipeline_ranks >= 0
                          ? o.pipeline_ranks
                          : std::min(plan::kDefaultCalibrationRanks, s.concurrency);
    if (ranks >= 2 && s.concurrency >= 2 && p.threads == 1) {
      plan::CalibrationSettings c;
      c.max_ranks = ranks;
      c.seed = common.seed;
      plan::calibrate_pipeline(*model, p, c);
    } else if (o.pipeline_ranks >= 2) {
      obs::log_warn(
          "profile: --pipeline-ranks needs placement (--concurrency >= 2) and one "
          "thread (--threads 1); the pipeline is not calibrated");
    }
  }
  if (!o.device.empty()) p = p.scaled(plan::Device::parse(o.device, "--device"));
  p.write(o.output);
  if (!common.quiet) plan::print_profile(p);
  MPSL_LOG(Info, "profile written to " << o.output);
  return 0;
}

int run_plan(const CommonOptions& common, const PlanOptions& o) {
  io::prepare_output_file(o.output, "--output");
  const plan::Profile profile = plan::Profile::read(o.profile);
  plan::PlanRequest r;
  r.profile = &profile;
  r.owners = o.owners;
  r.owner_ranks = std::min(o.owner_ranks, o.owners);
  r.stages = o.stages;
  r.one_f_one_b = o.schedule == "1f1b";
  r.micro_batches = profile.micro_batches;
  r.steps_per_owner = o.batches;
  if (!o.owner_device.empty())
    r.owner_device = plan::Device::parse(o.owner_device, "--owner-device");
  r.nodes = node_devices(o);
  r.cores = o.cores;
  r.threads = o.threads;
  r.target_round_s = o.target_round;
  MPSL_INPUT_CHECK(o.target_round == 0 || o.stages == 0,
                   "--target-round chooses the stage count: give it with --stages 0");
  const int S = profile.num_units();
  if (o.owner_cuts == "auto") {
    r.optimise_owner_cuts = true;
  } else if (!o.owner_cuts.empty()) {
    std::vector<std::string> v;
    std::stringstream in(o.owner_cuts);
    std::string item;
    while (std::getline(in, item, ',')) v.push_back(item);
    try {
      MPSL_INPUT_CHECK(v.size() == 2, "");
      r.first_end = std::stoi(v[0]);
      r.last_begin = std::stoi(v[1]);
    } catch (const std::exception&) {
      throw InputError("--owner-cuts '" + o.owner_cuts +
                       "': expected 'auto' or two unit indices i,j (end of part 1, start of part "
                       "P), e.g. 1," +
                       std::to_string(S - 1));
    }
  }
  const plan::PlanResult res = plan::make_plan(r);
  const nlohmann::json j = plan::plan_json(r, res);
  const std::string text = j.dump(1) + "\n";
  io::atomic_write(o.output, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    out.flush();
    if (!out) throw RuntimeFailure("cannot write '" + tmp + "'");
  });
  if (!common.quiet) {
    const std::string cuts = obs::join_ints(res.split.cuts);
    const std::string even = obs::join_ints(res.even);
    std::printf("plan: %s, %d owners, %d stage(s): --split %s\n", profile.model.c_str(), r.owners,
                res.scenario.stages(), cuts.c_str());
    std::printf("  slowest forward stage %s + slowest backward stage %s = %s per batch\n",
                plan::secs(res.split.max_forward).c_str(),
                plan::secs(res.split.max_backward).c_str(),
                plan::secs(res.split.objective()).c_str());
    std::printf("  predicted round: %s (simulated), %s (paper's formula)\n",
                plan::secs(res.prediction.round_s).c_str(),
                plan::secs(res.prediction.paper_round_s).c_str());
    for (size_t k = 0; k < res.prediction.ranks.size(); ++k) {
      const auto& x = res.prediction.ranks[k];
      std::printf("  rank %zu %-5s units %d-%d: peak %s (copies %s), busy %s per round\n", k,
                  x.role.c_str(), x.units_begin, x.units_end - 1,
                  obs::format_bytes(x.peak_bytes).c_str(), obs::format_bytes(x.model_bytes).c_str(),
                  plan::secs(x.busy_s).c_str());
    }
    if (res.objective_split.cuts != res.split.cuts) {
      const std::string opt = obs::join_ints(res.objective_split.cuts);
      std::printf("  the paper objective's optimum (--split %s): objective %s, round %s\n",
                  opt.c_str(), plan::secs(res.objective_split.objective()).c_str(),
                  plan::secs(res.objective_prediction.round_s).c_str());
    }
    std::printf("  even split by unit count (--split %s): objective %s, round %s%s\n", even.c_str(),
                plan::secs(res.even_objective).c_str(),
                plan::secs(res.even_prediction.round_s).c_str(),
                res.even_feasible ? "" : " (does not fit the memory)");
  }
  MPSL_LOG(Info, "plan written to " << o.output);
  return 0;
}

}  // namespace mpsl::cli
