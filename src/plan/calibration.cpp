#include "mpsl/plan/calibration.hpp"

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpsl/comm/spawn.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/obs/log.hpp"

namespace mpsl::plan {
namespace {

namespace fs = std::filesystem;

// A folder of its own under the temporary directory, removed with everything in it.
class TemporaryFolder {
 public:
  TemporaryFolder() {
    std::string pattern = (fs::temp_directory_path() / "mpsl-calibration-XXXXXX").string();
    MPSL_CHECK(::mkdtemp(pattern.data()) != nullptr,
               "mkdtemp(" + pattern + ") failed for the pipeline calibration");
    path_ = pattern;
  }
  ~TemporaryFolder() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TemporaryFolder(const TemporaryFolder&) = delete;
  TemporaryFolder& operator=(const TemporaryFolder&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// How long a calibration run may take: startup and its rounds ten times slower than the profile
// says (`expected_s`), or MPSL_CALIBRATION_DEADLINE_S.
double calibration_deadline_s(double expected_s) {
  return comm::deadline_seconds("MPSL_CALIBRATION_DEADLINE_S", 60.0 + 10.0 * expected_s);
}

// Round times (round_end "seconds") and the last predicted round time of a metrics file.
bool read_rounds(const fs::path& metrics, std::vector<double>& seconds, double& predicted) {
  std::ifstream in(metrics);
  std::string line;
  predicted = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || j.value("event", "") != "round_end") continue;
    seconds.push_back(j.value("seconds", 0.0));
    if (j.contains("predicted_round_seconds") && j["predicted_round_seconds"].is_number())
      predicted = j["predicted_round_seconds"].get<double>();
  }
  return !seconds.empty() && predicted > 0;
}

}  // namespace

int max_calibration_ranks(int units) {
  return std::max(0, units - 1);
}

namespace {
// The median round after the first (which builds every primitive), or the only one.
double later_rounds_median(const std::vector<double>& round_s) {
  return median(std::vector<double>(round_s.begin() + (round_s.size() > 1 ? 1 : 0), round_s.end()));
}
}  // namespace

double calibration_factor(const std::vector<double>& measured_round_s, double predicted_round_s,
                          double speed) {
  MPSL_CHECK(!measured_round_s.empty() && predicted_round_s > 0 && speed > 0,
             "calibration_factor: nothing measured or predicted");
  return later_rounds_median(measured_round_s) / (predicted_round_s * speed);
}

void calibrate_pipeline(const nn::Model& model, Profile& p, const CalibrationSettings& s) {
  MPSL_CHECK(p.repeats > 0 && p.threads == 1,
             "calibrate_pipeline: needs a timed profile with one thread");
  p.pipeline_calibration.clear();
  const int max_ranks = std::min(s.max_ranks, max_calibration_ranks(p.num_units()));
  if (max_ranks < 2) return;
  const TemporaryFolder dir;
  const fs::path profile_path = dir.path() / "profile.json";
  p.write(profile_path.string());
  const double step_s = model_step_s(p);
  // Rounds of about half a second (at least one batch per owner), and rounds 2.. of 2.5 s at
  // least: medians over several rounds, as the grid measures its runs.
  const int batches = std::max(1, static_cast<int>(std::lround(0.15 / step_s)));
  const double round_s = s.owners * batches * step_s;
  const int rounds = 1 + std::max(3, static_cast<int>(std::ceil(2.5 / round_s)));
  const bool one_f_one_b = p.micro_batches > 1;
  for (int ranks = 2; ranks <= max_ranks; ++ranks) {
    // The host's speed now: the whole model's steps for a second before the run and after it.
    auto speed_now = [&] {
      return model_step_s(retime_profile(model, p, 3, 1.0, s.seed, true)) / step_s;
    };
    const double speed_before = speed_now();
    const fs::path metrics = dir.path() / ("ranks-" + std::to_string(ranks) + ".jsonl");
    std::vector<std::string> args = {"train",
                                     "--model",
                                     p.model,
                                     "--synthetic",
                                     "--synthetic-count",
                                     std::to_string(int64_t{s.owners} * batches * p.batch),
                                     "--batch",
                                     std::to_string(p.batch),
                                     "--batches-per-epoch",
                                     std::to_string(batches),
                                     "--rounds",
                                     std::to_string(rounds),
                                     "--owners",
                                     std::to_string(s.owners),
                                     "--stages",
                                     std::to_string(ranks - 1),
                                     "--schedule",
                                     one_f_one_b ? "1f1b" : "mpsl",
                                     "--micro-batches",
                                     std::to_string(p.micro_batches),
                                     "--threads",
                                     "1",
                                     "--seed",
                                     std::to_string(s.seed),
                                     "--quiet",
                                     "--profile",
                                     profile_path.string(),
                                     "--metrics",
                                     metrics.string()};
    // Test hook: a run that fails (tests/integration/plan_profile.sh): its profile is missing.
    if (const char* v = std::getenv("MPSL_TEST_CALIBRATION_FAIL_AT"); v && std::atoi(v) == ranks)
      args[args.size() - 3] = (dir.path() / "missing.json").string();
    MPSL_LOG(Info, "profile: pipeline calibration with " << ranks << " ranks (" << ranks - 1
                                                         << " stage(s), " << s.owners << " owners, "
                                                         << rounds << " rounds)");
    const double deadline_s = calibration_deadline_s(rounds * round_s * ranks);
    char message[512];
    std::snprintf(message, sizeof message,
                  "mpsl: error: profile: the pipeline calibration run with %d ranks (started with "
                  "MPI_Comm_spawn) has not finished after %.0f s; no profile was written. Rerun "
                  "with --pipeline-ranks 0 to profile without it, or set "
                  "MPSL_CALIBRATION_DEADLINE_S to wait longer",
                  ranks, deadline_s);
    std::string problem;
    int code = -1;
    {
      // At the deadline the process ends with _Exit: no destructor removes the folder then.
      const comm::Deadline deadline(deadline_s, message, [&dir] {
        std::error_code ec;
        fs::remove_all(dir.path(), ec);
      });
      code = comm::run_spawned_command(s.executable, args, ranks, problem);
    }
    const double speed_after = code == 0 ? speed_now() : speed_before;
    const double speed = 0.5 * (speed_before + speed_after);
    std::vector<double> seconds;
    double predicted = 0;
    if (code != 0 || !read_rounds(metrics, seconds, predicted)) {
      obs::log_warn("profile: pipeline calibration stopped at " + std::to_string(ranks) +
                    " ranks (" +
                    (code < 0    ? problem
                     : code != 0 ? "the run ended with exit code " + std::to_string(code)
                                 : "its metrics have no round times or predictions") +
                    "); the cost model uses what was measured before it");
      return;
    }
    PipelineCalibration c;
    c.ranks = ranks;
    c.speed = speed;
    c.predicted_s = predicted;
    c.measured_s = later_rounds_median(seconds);
    c.factor = calibration_factor(seconds, predicted, speed);
    MPSL_LOG(Info, "profile: " << ranks << " ranks: round " << c.measured_s << " s, predicted "
                               << predicted << " s; the host's speed x" << speed_before
                               << " before, x" << speed_after << " after: factor " << c.factor);
    p.pipeline_calibration.push_back(c);
  }
}

}  // namespace mpsl::plan
