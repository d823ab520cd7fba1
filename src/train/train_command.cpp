// `mpsl train`: single-process training (one rank, the reference path, also simulating K
// owners with FedAvg) and multihop parallel split learning over MPI (--stages N).
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <optional>
#include <tuple>

#include <mpi.h>

#include "mpsl/cli/commands.hpp"
#include "mpsl/comm/audit.hpp"
#include "mpsl/comm/mailbox.hpp"
#include "mpsl/comm/watchdog.hpp"
#include "mpsl/core/cpus.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/core/finite.hpp"
#include "mpsl/emulate/emulate.hpp"
#include "mpsl/io/model_file.hpp"
#include "mpsl/io/output_path.hpp"
#include "mpsl/nn/zoo.hpp"
#include "mpsl/obs/log.hpp"
#include "mpsl/obs/memory.hpp"
#include "mpsl/obs/metrics.hpp"
#include "mpsl/obs/trace.hpp"
#include "mpsl/optim/fedavg.hpp"
#include "mpsl/pipeline/multihop.hpp"
#include "mpsl/pipeline/topology.hpp"
#include "mpsl/plan/cost.hpp"
#include "mpsl/plan/planner.hpp"
#include "mpsl/train/checkpointing.hpp"
#include "mpsl/train/federation.hpp"
#include "mpsl/train/local.hpp"

namespace mpsl::cli {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

data::Dataset load_train(const TrainOptions& o, const nn::Model& model, uint64_t seed) {
  if (o.synthetic) {
    const nn::Shape in = model.input_shape(1);
    return data::make_synthetic(o.synthetic_count, in.c, in.h, in.w, model.classes(), seed);
  }
  data::Dataset d = data::read_dataset_h5(o.data);
  train::check_dataset_fits(d, model, o.data);
  return d;
}

data::Dataset load_test(const TrainOptions& o, const nn::Model& model, const data::Dataset& train) {
  data::Dataset d = data::read_dataset_h5(o.test_data);
  train::check_dataset_fits(d, model, o.test_data);
  // Test images are normalised with the training set's statistics, as the model saw them.
  d.mean = train.mean;
  d.std = train.std;
  return d;
}

struct RoundReport {
  int round;
  double train_loss, train_accuracy;
  int64_t images;
  double seconds, images_per_s;
  bool has_test;
  double test_loss, test_accuracy;
  double eta_s = -1;                        // the rest of the run, estimated (negative: not shown)
  double train_seconds = std::nan("");      // the round's training alone (measured)
  double predicted_seconds = std::nan("");  // the cost model's round time
  double predicted_train_seconds = std::nan("");  // ... of which training
  int64_t skipped = 0;  // batches skipped for non-finite values (--nan-policy skip)
};

std::string format_duration(double seconds) {
  char buf[48];
  const long s = std::lround(std::max(0.0, seconds));
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

// A barrier of all ranks, waited for under the stall watchdog (`what` names it) and traced as a
// wait.
void barrier_watched(const std::string& what) {
  obs::Span wait(obs::Activity::kWait);
  MPI_Request barrier;
  MPSL_MPI_CHECK(MPI_Ibarrier(MPI_COMM_WORLD, &barrier));
  comm::wait_watched(barrier, [&what] { return what + " (a barrier)"; });
}

// What rank 0 prints and writes at the end of a round.
void report_round(const RoundReport& r, int rounds, obs::Progress& progress,
                  obs::MetricsWriter& metrics) {
  char line[320];
  if (r.has_test)
    std::snprintf(line, sizeof line,
                  "round %d/%d: train loss %.4f, train accuracy %.2f%%, test accuracy %.2f%%, "
                  "%lld images in %.1f s (%.0f img/s)",
                  r.round, rounds, r.train_loss, 100.0 * r.train_accuracy, 100.0 * r.test_accuracy,
                  static_cast<long long>(r.images), r.seconds, r.images_per_s);
  else
    std::snprintf(line, sizeof line,
                  "round %d/%d: train loss %.4f, train accuracy %.2f%%, %lld images in %.1f s "
                  "(%.0f img/s)",
                  r.round, rounds, r.train_loss, 100.0 * r.train_accuracy,
                  static_cast<long long>(r.images), r.seconds, r.images_per_s);
  std::string text = line;
  if (r.eta_s >= 0 && r.round < rounds) text += ", about " + format_duration(r.eta_s) + " left";
  if (r.skipped > 0)
    text += ", " + std::to_string(r.skipped) + " batch(es) skipped (non-finite values)";
  progress.summary(text);
  nlohmann::json ev = {{"event", "round_end"},
                       {"round", r.round},
                       {"train_loss", r.train_loss},
                       {"train_accuracy", r.train_accuracy},
                       {"images", r.images},
                       {"seconds", r.seconds},
                       {"images_per_s", r.images_per_s},
                       {"skipped_batches", r.skipped}};
  auto number_or_null = [](double v) {
    return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v);
  };
  ev["train_seconds"] = number_or_null(r.train_seconds);
  ev["predicted_round_seconds"] = number_or_null(r.predicted_seconds);
  ev["predicted_seconds"] = number_or_null(r.predicted_seconds);  // CLI.md's name
  ev["predicted_train_seconds"] = number_or_null(r.predicted_train_seconds);
  ev["test_accuracy"] = r.has_test ? nlohmann::json(r.test_accuracy) : nlohmann::json(nullptr);
  if (r.has_test) ev["test_loss"] = r.test_loss;
  metrics.write(ev);
}

void write_run_start(obs::MetricsWriter& metrics, const CommonOptions& common,
                     const TrainOptions& o, const pipeline::Topology& t, int64_t train_images) {
  nlohmann::json split = nlohmann::json::array();
  for (int s : t.split) split.push_back(s);
  metrics.write(
      {{"event", "run_start"},
       {"command", "train"},
       {"model", o.model},
       {"ranks", t.world_size},
       {"owner_ranks", t.owner_ranks},
       {"owners", o.owners},
       {"stages", o.stages},
       {"split", split},
       {"schedule", o.schedule},
       {"micro_batches", o.micro_batches},
       {"batch", o.batch},
       {"lr", o.lr},
       {"momentum", o.momentum},
       {"weight_decay", o.weight_decay},
       {"rounds", o.rounds},
       {"local_epochs", o.local_epochs},
       {"partition", o.partition},
       {"optimizer_state", o.optimizer_state},
       {"seed", common.seed},
       {"init_model", o.init_model.empty() ? nlohmann::json() : nlohmann::json(o.init_model)},
       {"threads", common.threads},
       {"train_images", train_images},
       {"synthetic", o.synthetic}});
}

void write_run_end(obs::MetricsWriter& metrics, double seconds, int64_t steps, double ips,
                   double accuracy, const TrainOptions& o) {
  nlohmann::json end = {{"event", "run_end"},
                        {"seconds", seconds},
                        {"steps", steps},
                        {"images_per_s", ips},
                        {"exit", "ok"}};
  end["test_accuracy"] = std::isnan(accuracy) ? nlohmann::json(nullptr) : nlohmann::json(accuracy);
  metrics.write(end);
  // The machine-readable result line goes to stdout even with --quiet.
  std::printf("RESULT model=%s steps=%lld train_img_per_s=%.1f test_acc=%s\n", o.model.c_str(),
              static_cast<long long>(steps), ips,
              std::isnan(accuracy) ? "n/a" : std::to_string(accuracy).c_str());
  std::fflush(stdout);
}

void log_plan(const train::FederationPlan& plan, const TrainOptions& o, const std::string& what) {
  MPSL_LOG(Info, "training " << o.model << " on " << what << ", " << plan.owners << " owner(s) ("
                             << o.partition << "), batch " << o.batch << ", " << o.rounds
                             << " round(s) of " << o.local_epochs << " local epoch(s)");
  if (plan.owners > 1) {
    std::string counts;
    for (int k = 0; k < plan.owners && k < 16; ++k)
      counts += (k ? " " : "") + std::to_string(plan.samples[k]);
    if (plan.owners > 16) counts += " ...";
    MPSL_LOG(Info, "samples per owner: " << counts);
  }
}

// Optimiser steps of all owners in rounds 1..rounds (the run's step counter, whatever was
// resumed).
int64_t plan_steps_until(const train::FederationPlan& plan, int rounds) {
  int64_t total = 0;
  for (int r = 1; r <= rounds; ++r)
    for (int k = 0; k < plan.owners; ++k) total += plan.round_steps(k, r);
  return total;
}

// --checkpoint-dir must be a folder we can write (created if missing), checked before training.
void check_checkpoint_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    throw InputError("--checkpoint-dir '" + dir + "' is a file; give a folder");
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir, ec))
    throw InputError("--checkpoint-dir '" + dir + "' cannot be created" +
                     (ec ? " (" + ec.message() + ")" : std::string()));
  if (::access(dir.c_str(), W_OK) != 0)
    throw InputError("--checkpoint-dir '" + dir + "' is not writable");
}

// {"event":"emulation"}: what --emulate added on one rank (see emulate/emulate.hpp).
void write_emulation(obs::MetricsWriter& metrics, int rank, const char* role,
                     const emulate::EmulationStats& e) {
  metrics.write({{"event", "emulation"},
                 {"rank", rank},
                 {"role", role},
                 {"compute_delay_s", e.compute_delay_s},
                 {"transfer_s", e.transfer_s},
                 {"link_queue_s", e.link_queue_s},
                 {"aggregation_s", e.aggregation_s},
                 {"messages", e.messages},
                 {"bytes", e.bytes}});
}

// {"event":"round_owners"}: which owners the round's FedAvg used, and each owner's time.
void write_round_owners(obs::MetricsWriter& metrics, int round, double round_seconds,
                        const std::vector<pipeline::OwnerRound>& owners, bool carry) {
  nlohmann::json list = nlohmann::json::array(), aggregated = nlohmann::json::array(),
                 late = nlohmann::json::array();
  for (const auto& o : owners) {
    (o.late ? late : aggregated).push_back(o.owner);
    nlohmann::json e = {
        {"owner", o.owner}, {"steps", o.steps}, {"late", o.late}, {"busy_s", o.busy_s}};
    if (o.finished_s >= 0) {
      e["finished_s"] = o.finished_s;
      e["wait_s"] = std::max(0.0, o.finished_s - o.busy_s);       // waiting for the pipeline
      e["idle_s"] = std::max(0.0, round_seconds - o.finished_s);  // waiting for the others
    } else {
      e["finished_s"] = nullptr;
      e["wait_s"] = std::max(0.0, round_seconds - o.busy_s);
      e["idle_s"] = 0.0;
    }
    list.push_back(e);
  }
  metrics.write({{"event", "round_owners"},
                 {"round", round},
                 {"late_policy", carry ? "carry" : "drop"},
                 {"aggregated", aggregated},
                 {"late", late},
                 {"owners", list}});
}

// ---- predictions (cost model) ----------------------------------------------------------------

// What the cost model predicts for this run: per round, and per rank. Empty without a profile.
struct Predictions {
  bool available = false;
  std::string note;             // why not, when not
  std::vector<double> round_s;  // per round (index round - 1)
  std::vector<double> train_s;  // the training part of each round (no aggregation, evaluation)
  std::vector<plan::RankPrediction> ranks;
  std::vector<plan::SimulatedSpan> spans;  // round 1 (predict(..., with_spans = true))
};

// Cores the ranks share: all ranks on one host share the CPUs they may run on (the union of
// their affinity masks: a Slurm job's cgroup, mpirun's binding); ranks on different hosts are
// taken to have a node each (0).
int shared_cores(int world) {
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPSL_MPI_CHECK(MPI_Get_processor_name(name, &len));
  std::vector<char> all(static_cast<size_t>(world) * MPI_MAX_PROCESSOR_NAME);
  MPSL_MPI_CHECK(MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(),
                               MPI_MAX_PROCESSOR_NAME, MPI_CHAR, MPI_COMM_WORLD));
  for (int r = 1; r < world; ++r)
    if (std::strncmp(all.data(), all.data() + r * MPI_MAX_PROCESSOR_NAME, MPI_MAX_PROCESSOR_NAME) !=
        0)
      return 0;
  const std::vector<unsigned char> mine = affinity_mask_bytes();
  std::vector<unsigned char> masks(static_cast<size_t>(world) * kCpuMaskBytes);
  MPSL_MPI_CHECK(MPI_Allgather(mine.data(), kCpuMaskBytes, MPI_UNSIGNED_CHAR, masks.data(),
                               kCpuMaskBytes, MPI_UNSIGNED_CHAR, MPI_COMM_WORLD));
  return std::max(1, union_cpu_count(masks));
}

// The cost model's view of an emulated device (emulate/emulate.hpp).
plan::EmulatedDevice emulated_device(const emulate::Device& d) {
  plan::EmulatedDevice x;
  x.factor = d.compute_factor;
  x.up = {d.up.bps, d.up.latency_s};
  x.down = {d.down.bps, d.down.latency_s};
  return x;
}

// Why `profile` cannot predict this run ("" when it can).
std::string prediction_problem(const plan::Profile& profile, const TrainOptions& o,
                               const nn::Model& model) {
  if (profile.model != o.model)
    return "the profile is of model '" + profile.model + "', not '" + o.model + "'";
  if (profile.batch != o.batch || profile.micro_batches != o.micro_batches)
    return "the profile was taken at batch " + std::to_string(profile.batch) + " with " +
           std::to_string(profile.micro_batches) + " micro-batch(es); this run uses batch " +
           std::to_string(o.batch) + " with " + std::to_string(o.micro_batches);
  if (profile.num_units() != model.num_units())
    return "the profile has " + std::to_string(profile.num_units()) + " units, the model " +
           std::to_string(model.num_units());
  return "";
}

Predictions predict(const plan::Profile* profile, const TrainOptions& o, const nn::Model& model,
                    const pipeline::Topology& t, const train::FederationPlan& fp,
                    int64_t train_images, int64_t image_bytes, int64_t test_images, int cores,
                    int threads, bool with_spans = false) {
  Predictions out;
  if (!profile) {
    out.note = "no --profile or --plan: no predictions";
    return out;
  }
  out.note = prediction_problem(*profile, o, model);
  if (!out.note.empty()) return out;
  const plan::Profile& p = *profile;
  const int S = p.num_units();
  // --emulate: every owner's and every stage's device; the ranks themselves run on this host.
  std::optional<emulate::Emulation> em;
  if (!o.emulate.empty()) em = emulate::load_emulation(o.emulate, o.owners, t.stages);
  for (int round = 1; round <= o.rounds; ++round) {
    std::vector<int64_t> steps(fp.owners);
    for (int k = 0; k < fp.owners; ++k) steps[k] = fp.round_steps(k, round);
    if (!t.multihop()) {
      // One process: every owner's steps one after another (emulated: each step sleeps until
      // its owner's device would have finished it), then FedAvg, then evaluation.
      double total = 0;
      for (int k = 0; k < fp.owners; ++k)
        total += static_cast<double>(steps[k]) * (em ? em->owners.at(k).compute_factor : 1.0);
      const double step_s =
          p.micro_batches * (p.forward(0, S) + p.loss_s + p.backward(0, S)) + p.step(0, S);
      double r = total * step_s;
      if (fp.owners > 1)
        r += p.in_place_average_s(static_cast<double>(p.param_bytes(0, S)), fp.owners);
      r += p.evaluate_s_per_sample * test_images;
      out.round_s.push_back(r);
      out.train_s.push_back(total * step_s);
      if (round == 1) {
        plan::RankPrediction rp;
        rp.role = "single";
        rp.units_begin = 0;
        rp.units_end = S;
        rp.owners_served = fp.owners;
        rp.busy_s = r;
        rp.max_in_flight = 1;
        rp.model_bytes = fp.owners * p.copy_bytes(0, S);
        rp.peak_bytes = p.base_rss_bytes + rp.model_bytes + p.work_bytes(0, S) +
                        p.activation_bytes(0, S) + train_images * (image_bytes + 1) +
                        test_images * (image_bytes + 1) +
                        p.batch * (p.input_bytes / p.micro_batch() + 4);
        out.ranks.push_back(rp);
      }
      continue;
    }
    plan::Scenario sc;
    if (em) {
      sc.emulated = true;
      for (const auto& d : em->owners) sc.emulated_owners.push_back(emulated_device(d));
      for (const auto& d : em->stages) sc.emulated_stages.push_back(emulated_device(d));
    }
    sc.replicas = t.replicas;
    for (int k = 0; k < t.owners; ++k) sc.owner_replica.push_back(t.replica_of_owner(k));
    sc.profile = &p;
    sc.split = t.split;
    sc.owners = t.owners;
    sc.owner_ranks = t.owner_ranks;
    sc.one_f_one_b = o.schedule == "1f1b";
    sc.micro_batches = o.micro_batches;
    sc.stage_in_flight_limit = std::max(0, o.max_in_flight);
    sc.steps = steps;
    sc.cores = cores;
    sc.threads = threads;
    sc.test_samples = test_images;
    sc.train_samples = train_images;
    sc.image_bytes = image_bytes;
    sc.eval_batch = o.eval_batch;
    sc.average_momentum = o.optimizer_state == "average";
    const plan::Prediction pr = plan::simulate(sc);
    out.round_s.push_back(pr.round_s);
    out.train_s.push_back(pr.train_s);
    if (round == 1) out.ranks = pr.ranks;
    if (round == 1 && with_spans) out.spans = plan::simulate_spans(sc);
  }
  out.available = true;
  return out;
}

// --profile, or the profile a --plan carries.
std::optional<plan::Profile> load_profile(const TrainOptions& o) {
  if (!o.profile.empty()) return plan::Profile::read(o.profile);
  if (!o.plan.empty()) {
    plan::PlanFile f = plan::read_plan(o.plan);
    if (!f.profile.units.empty()) return f.profile;
  }
  return std::nullopt;
}

// ---- single process -------------------------------------------------------------------------

// Where each simulated owner stands in the round, and what it has accumulated in it.
struct OwnerProgress {
  double loss_sum = 0;
  int64_t correct = 0, images = 0;
  int64_t skipped = 0;                  // batches skipped for non-finite values in the round
  uint64_t order_epoch = ~uint64_t{0};  // the global epoch `order` belongs to
  std::vector<int64_t> order;
};

int train_single(const CommonOptions& common, const TrainOptions& o, const nn::Model& model,
                 const pipeline::Topology& topo, const plan::Profile* profile, int cores) {
  const auto t_start = Clock::now();
  data::Dataset train = load_train(o, model, common.seed);
  data::Dataset test;
  const bool has_test = !o.test_data.empty();
  if (has_test) test = load_test(o, model, train);
  const train::FederationPlan plan = train::make_federation_plan(train, o, common.seed);
  const auto policy = optim::parse_optimizer_state_policy(o.optimizer_state);
  const nlohmann::json data_id = train::data_json(train, o);
  const train::ResumePoint resume = train::find_resume_point(common, o, topo, data_id, 0);

  obs::MetricsWriter metrics(common.metrics, resume.resumed());
  write_run_start(metrics, common, o, topo, train.count);  // every start; a "resume" follows
  log_plan(plan, o, o.synthetic ? "synthetic data" : o.data);
  const Predictions pred = predict(profile, o, model, topo, plan, train.count, train.image_size(),
                                   has_test ? test.count : 0, cores, omp_get_max_threads());
  if (!pred.available && profile) MPSL_LOG(Warn, "no predictions: " << pred.note);

  const optim::SgdConfig sgd{o.lr, o.momentum, o.weight_decay};
  // Hand back what reading the data freed first, so that the program's buffers land on fresh
  // pages: the memory model counts a gradient scratch that one micro-batch never touches as
  // not resident, which holds only if it was not resident before.
  obs::release_free_heap();
  train::LocalTrainer trainer(model, o.batch, o.micro_batches, sgd, common.seed, o.init_model);
  std::vector<nn::PartState> states;
  for (int k = 0; k < plan.owners; ++k) states.push_back(trainer.make_state());
  train::Evaluator evaluator(model, o.eval_batch);
  train::BatchBuffers buf(o.batch, train.image_size());
  std::vector<OwnerProgress> progress_of(plan.owners);
  const train::StragglerPolicy stragglers = train::make_straggler_policy(o, false);
  std::optional<nn::PartState> global;  // the aggregate, when late owners carry their copies
  // --emulate: each simulated owner's steps take its device's compute factor times longer
  // (links play no part in one process).
  const emulate::Emulation emulation =
      o.emulate.empty() ? emulate::Emulation{} : emulate::load_emulation(o.emulate, o.owners, 0);
  emulate::RankEmulator emulator(&emulation);

  // What a checkpoint holds: every owner's whole-model copy and its place in the round.
  int round_now = 1;
  int64_t step_now = 0;
  auto rank_state = [&]() {
    pipeline::RankState st;
    for (int k = 0; k < plan.owners; ++k) {
      io::OwnerRecord r;
      r.owner = k;
      r.samples = plan.samples[k];
      r.shard_crc32 =
          io::crc32_bytes(plan.shards[k].data(), plan.shards[k].size() * sizeof(int64_t));
      r.steps_in_round = std::min(step_now, plan.round_steps(k, round_now));
      std::tie(r.epoch, r.step_in_epoch) = plan.cursor(k, round_now, r.steps_in_round);
      r.global_epoch = static_cast<int64_t>(round_now - 1) * o.local_epochs + r.epoch;
      r.loss_sum = progress_of[k].loss_sum;
      r.correct = progress_of[k].correct;
      r.images = progress_of[k].images;
      st.owners.push_back(r);
      st.parts.push_back({"owners/" + std::to_string(k) + "/model", k, &states[k]});
    }
    return st;
  };

  train::Checkpointer checkpoints(common, o, model, topo, plan, data_id, 0);
  if (!o.trace.empty()) {
    obs::Tracer::instance().set_process_name("rank 0: single process (" +
                                             std::to_string(plan.owners) + " owner(s))");
    obs::Tracer::instance().start(MPI_COMM_WORLD);
  }
  int start_round = 1;
  int64_t start_step = 0;
  if (resume.resumed()) {
    round_now = resume.manifest.round;
    step_now = resume.manifest.step_in_round;
    pipeline::RankState st = rank_state();
    train::load_rank_state(resume, model, topo, plan, 0, st);
    start_round = resume.start_round();
    start_step = resume.start_step();
    if (!resume.manifest.round_complete)
      for (const auto& r : st.owners) {
        progress_of[r.owner].loss_sum = r.loss_sum;
        progress_of[r.owner].correct = r.correct;
        progress_of[r.owner].images = r.images;
      }
    checkpoints.set_last_name(resume.manifest.name);
    MPSL_LOG(Info, "resumed from " << resume.folder << ": round " << start_round << ", step "
                                   << start_step);
    metrics.write({{"event", "resume"},
                   {"checkpoint", resume.folder},
                   {"round", start_round},
                   {"step", start_step}});
  }

  int64_t process_steps = 0, timed_images = 0;
  double timed_seconds = 0, last_accuracy = std::nan("");
  const bool nan_skip = o.nan_policy == "skip";
  std::vector<float> saved_buffers;  // BatchNorm statistics before a batch (skip policy)
  // Runs too short for the warm-up are timed from their first step.
  const int64_t planned =
      plan_steps_until(plan, o.rounds) - (resume.resumed() ? resume.manifest.total_steps : 0);
  const int64_t warmup = planned > o.warmup_steps ? o.warmup_steps : 0;
  obs::release_free_heap();  // what building the program and restoring left behind
  const double cpu_at_start = obs::process_cpu_seconds();  // rank_summary's cpu_s
  for (int round = start_round; round <= o.rounds; ++round) {
    const auto t_round = Clock::now();
    const int64_t length = plan.round_length(round);
    int64_t step = round == start_round ? start_step : 0;
    if (step == 0) progress_of.assign(plan.owners, OwnerProgress{});
    int64_t done = 0, round_total = 0;
    for (int k = 0; k < plan.owners; ++k) round_total += plan.round_steps(k, round);
    for (int k = 0; k < plan.owners; ++k) done += std::min(step, plan.round_steps(k, round));
    obs::Progress progress("round " + std::to_string(round), round_total, !common.quiet);
    obs::Tracer::instance().set_round(round);
    round_now = round;
    while (step < length) {
      const int64_t stop = checkpoints.next_stop(round, step);
      // Steps [step, stop) of every owner in turn (each owner's copy is its own, so the
      // window does not change any owner's sequence of updates).
      for (int k = 0; k < plan.owners; ++k) {
        OwnerProgress& op = progress_of[k];
        const int64_t last = std::min(stop, plan.round_steps(k, round));
        for (int64_t s = std::min(step, plan.round_steps(k, round)); s < last; ++s) {
          const auto [epoch, in_epoch] = plan.cursor(k, round, s);
          const uint64_t global_epoch = static_cast<uint64_t>(round - 1) * o.local_epochs + epoch;
          if (op.order_epoch != global_epoch) {
            op.order = train::epoch_order(plan.shards[k], common.seed, k, global_epoch);
            op.order_epoch = global_epoch;
          }
          data::assemble_batch(train, op.order.data() + in_epoch * o.batch, o.batch,
                               buf.images.data(), buf.labels.data());
          if (test_nan_due(0, k, round, s + 1))
            buf.images[0] = std::numeric_limits<float>::quiet_NaN();
          if (nan_skip)
            saved_buffers.assign(states[k].buffers.data(),
                                 states[k].buffers.data() + states[k].buffers.size());
          const emulate::SpanStart t0 = emulate::span_start();
          obs::Span span(obs::Activity::kStep, k);
          const nn::LossResult r =
              trainer.compute(states[k], buf.images.data(), buf.labels.data(), k);
          // A non-finite loss or gradient: end the run, or skip the batch (no update).
          std::string fault;
          if (const int64_t i =
                  first_non_finite(buf.images.data(), static_cast<int64_t>(buf.images.size()));
              i >= 0)
            fault = "input images (after normalisation; element " + std::to_string(i) + ")";
          else if (!std::isfinite(r.loss_sum))
            fault = "loss";
          else if (const int64_t i =
                       first_non_finite(states[k].grads.data(), states[k].grads.size());
                   i >= 0)
            fault = "parameter gradient (element " + std::to_string(i) + ")";
          if (fault.empty()) trainer.apply(states[k]);
          span.end();
          const double dt = seconds_since(t0.wall);
          obs::note_heap();
          if (emulator.active())
            emulate::RankEmulator::sleep_until(emulator.compute(emulate::owner_entity(k), t0));
          if (process_steps >= warmup) {
            timed_seconds += dt;
            timed_images += o.batch;
          }
          if (!fault.empty()) {
            const std::string text = "non-finite " + fault + " on rank 0 (single process): owner " +
                                     std::to_string(k) + ", round " + std::to_string(round) +
                                     ", step " + std::to_string(s + 1);
            if (!nan_skip) throw RuntimeFailure(text + " (--nan-policy abort)");
            obs::log_warn(text + "; --nan-policy skip: this batch of the owner is skipped");
            std::copy(saved_buffers.begin(), saved_buffers.end(), states[k].buffers.data());
            ++op.skipped;
          } else {
            op.loss_sum += r.loss_sum;
            op.correct += r.correct;
            op.images += o.batch;
          }
          ++process_steps;
          if (++done % 10 == 0 || done == round_total) {
            double loss = 0;
            int64_t images = 0;
            for (const auto& p : progress_of) loss += p.loss_sum, images += p.images;
            char extra[96];
            std::snprintf(extra, sizeof extra, "loss %.4f  %.0f img/s", loss / images,
                          timed_seconds > 0 ? timed_images / timed_seconds : 0.0);
            progress.update(done, extra);
          }
        }
      }
      step = stop;
      step_now = step;
      if (step < length && checkpoints.due_mid_round(round, step)) {
        obs::Span span(obs::Activity::kCheckpoint);
        pipeline::RankState st = rank_state();
        checkpoints.write(round, step, false, st, metrics);
        if (checkpoints.stop_requested()) return 0;
      }
    }
    for (int k = 0; k < plan.owners; ++k)
      if (!all_finite(states[k].params.data(), states[k].params.size()))
        throw RuntimeFailure("non-finite parameters of owner " + std::to_string(k) +
                             " at the end of round " + std::to_string(round));
    const double round_train_seconds = seconds_since(t_round);
    std::vector<pipeline::OwnerRound> owner_rounds;
    if (plan.owners == 1 && !stragglers.active()) {
      // One owner: the average of one copy is that copy (bitwise: x * n / n in double, as the
      // multihop ranks compute it), so only the policy acts on its momentum. Without the sums:
      // a whole vgg19 in doubles is 1.1 GB.
      obs::Span span(obs::Activity::kAggregation);
      if (policy == optim::OptimizerStatePolicy::kReset) states[0].momentum.fill(0.f);
      ++states[0].version;
      global.reset();
    } else {
      obs::Span span(obs::Activity::kAggregation);
      // --late-owners: their copies join FedAvg with weight 0, and (drop) receive the average
      // or (carry) keep their own; the aggregate is then kept aside.
      std::vector<const nn::PartState*> all;
      std::vector<nn::PartState*> targets;
      std::vector<double> weights;
      double total = 0;
      bool any_late = false;
      for (int k = 0; k < plan.owners; ++k) {
        const bool late = stragglers.forced_late(k);
        all.push_back(&states[k]);
        if (!late || !stragglers.carry) targets.push_back(&states[k]);
        weights.push_back(late ? 0.0 : static_cast<double>(plan.samples[k]));
        total += weights.back();
        any_late |= late;
        owner_rounds.push_back({k, plan.round_steps(k, round), late, -1.0, 0.0});
      }
      if (stragglers.carry && any_late) {
        if (!global) global.emplace(states[0]);
        targets.push_back(&*global);
      } else {
        global.reset();
      }
      optim::average_in_place(all, weights, total, targets, policy);
    }
    nn::PartState& model_now = global ? *global : states[0];
    train::EvalResult ev;
    if (has_test) {
      obs::Span span(obs::Activity::kEval);
      ev = evaluator.run(model_now, test);
      last_accuracy = ev.accuracy;
    }
    const double seconds = seconds_since(t_round);
    double loss_sum = 0;
    int64_t images = 0, correct = 0, skipped = 0;
    for (const auto& p : progress_of) {
      loss_sum += p.loss_sum;
      images += p.images;
      correct += p.correct;
      skipped += p.skipped;
    }
    report_round(
        {round, images ? loss_sum / images : 0.0,
         images ? static_cast<double>(correct) / images : 0.0, images, seconds,
         timed_seconds > 0 ? timed_images / timed_seconds : 0.0, has_test, ev.loss, ev.accuracy, -1,
         round_train_seconds, pred.available ? pred.round_s[round - 1] : std::nan(""),
         pred.available ? pred.train_s[round - 1] : std::nan(""), skipped},
        o.rounds, progress, metrics);
    if (stragglers.active())
      write_round_owners(metrics, round, seconds, owner_rounds, stragglers.carry);
    step_now = length;
    if (checkpoints.due_round_end(round) || (round == o.rounds && checkpoints.enabled())) {
      obs::Span span(obs::Activity::kCheckpoint);
      pipeline::RankState st = rank_state();
      checkpoints.write(round, length, true, st, metrics);
      if (checkpoints.stop_requested()) return 0;
    }
  }
  if (!o.save_model.empty()) {
    io::save_model(o.save_model, model, global ? *global : states[0], {train.mean, train.std});
    MPSL_LOG(Info, "model written to " << o.save_model);
  }
  if (!o.trace.empty()) {
    obs::Tracer::instance().write(MPI_COMM_WORLD, o.trace);
    MPSL_LOG(Info, "trace written to " << o.trace);
  }
  metrics.write({{"event", "rank_summary"},
                 {"rank", 0},
                 {"role", "single"},
                 {"peak_rss_bytes", obs::peak_rss_bytes()},
                 {"tracked_peak_bytes", obs::tracked_peak_bytes()},
                 {"busy_s", timed_seconds},
                 {"wait_s", 0.0},
                 {"comm_s", 0.0},
                 {"cpu_s", obs::process_cpu_seconds() - cpu_at_start},
                 {"predicted_peak_bytes", pred.available ? nlohmann::json(pred.ranks[0].peak_bytes)
                                                         : nlohmann::json(nullptr)},
                 {"predicted_busy_s",
                  pred.available ? nlohmann::json(pred.ranks[0].busy_s) : nlohmann::json(nullptr)},
                 {"predicted_cpu_s",
                  pred.available ? nlohmann::json(pred.ranks[0].cpu_s) : nlohmann::json(nullptr)}});
  if (emulator.active()) write_emulation(metrics, 0, "single", emulator.stats());
  write_run_end(metrics, seconds_since(t_start),
                std::max(plan_steps_until(plan, o.rounds), resume.manifest.total_steps),
                timed_seconds > 0 ? timed_images / timed_seconds : 0.0, last_accuracy, o);
  return 0;
}

// ---- multihop -------------------------------------------------------------------------------

// Rank 0 computes the plan from the data; every rank receives the per-owner sample and step
// counts (stages need no data at all).
train::FederationPlan share_plan(train::FederationPlan plan, int rank) {
  int owners = plan.owners;
  std::vector<int64_t> v(2 * owners);
  if (rank == 0)
    for (int k = 0; k < owners; ++k)
      v[k] = plan.samples[k], v[owners + k] = plan.steps_per_epoch[k];
  MPI_Request req;
  MPSL_MPI_CHECK(MPI_Ibcast(v.data(), 2 * owners, MPI_INT64_T, 0, MPI_COMM_WORLD, &req));
  comm::wait_watched(req, [] {
    return "the sample counts from " + comm::describe_rank(0) + " (it reads the training set)";
  });
  comm::audit_message("plan-counts", 0, static_cast<int64_t>(v.size() * sizeof(int64_t)),
                      rank == 0);
  plan.samples.assign(v.begin(), v.begin() + owners);
  plan.steps_per_epoch.assign(v.begin() + owners, v.end());
  return plan;
}

// The ranks of this host are about to grow to their predicted peaks (and, reserving, will
// within the first round): a warning from the host's first rank when that is more than the
// host has available, rather than a kill for memory without a word. Collective over the world.
void warn_if_node_memory_short(int64_t predicted_peak) {
  const comm::Communicator node = comm::Communicator::world().split_by_host();
  // What this rank still has to grow by: its RSS now is already out of MemAvailable.
  const int64_t growth = std::max<int64_t>(0, predicted_peak - obs::current_rss_bytes());
  int64_t mine[2] = {growth, predicted_peak}, sum[2] = {0, 0};
  MPSL_MPI_CHECK(MPI_Reduce(mine, sum, 2, MPI_INT64_T, MPI_SUM, 0, node.get()));
  if (node.rank() != 0) return;
  const int64_t available = obs::available_memory_bytes();
  if (available < 0 || sum[0] <= available) return;
  char host[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPSL_MPI_CHECK(MPI_Get_processor_name(host, &len));
  obs::log_warn("the " + std::to_string(node.size()) + " rank(s) on host " + host +
                " are predicted to peak at " + obs::format_bytes(sum[1]) + " together, " +
                obs::format_bytes(sum[0]) + " more than they hold now, and the host has " +
                obs::format_bytes(available) +
                " available: the run may be killed for memory in its first round (fewer owners "
                "or more stages per node lower the peak; mpsl plan --node-memory finds a split)");
}

// --max-in-flight: what each rank reserves. auto: rank 0's prediction for every rank (nothing
// without one); N: every stage holds at most N micro-batches.
pipeline::Settings::Reservation share_reservation(const Predictions& pred, const TrainOptions& o,
                                                  const pipeline::Topology& t, int rank) {
  pipeline::Settings::Reservation r;
  if (o.max_in_flight == 0) return r;
  if (o.max_in_flight > 0) {
    if (!t.is_owner_rank(rank)) r.in_flight = o.max_in_flight;
    return r;
  }
  std::vector<int64_t> v(3 * static_cast<size_t>(t.world_size), 0);
  if (rank == 0 && pred.available && pred.ranks.size() == static_cast<size_t>(t.world_size))
    for (int q = 0; q < t.world_size; ++q) {
      v[3 * q] = pred.ranks[q].max_in_flight;
      v[3 * q + 1] = pred.ranks[q].send_buffers;
      v[3 * q + 2] = pred.ranks[q].peak_bytes;
    }
  MPI_Request req;
  MPSL_MPI_CHECK(
      MPI_Ibcast(v.data(), static_cast<int>(v.size()), MPI_INT64_T, 0, MPI_COMM_WORLD, &req));
  comm::wait_watched(req, [] {
    return "the predicted memory per rank from " + comm::describe_rank(0) +
           " (--max-in-flight auto)";
  });
  comm::audit_message("reservation", 0, static_cast<int64_t>(v.size() * sizeof(int64_t)),
                      rank == 0);
  r.in_flight = static_cast<int>(v[3 * rank]);
  r.send_buffers = static_cast<int>(v[3 * rank + 1]);
  if (v[3 * rank + 2] > 0) warn_if_node_memory_short(v[3 * rank + 2]);
  return r;
}

// The name of rank `rank`'s row group in the trace.
std::string trace_process_name(const pipeline::Topology& topo, int rank) {
  std::string name = "rank " + std::to_string(rank) + ": ";
  if (topo.is_owner_rank(rank)) {
    const std::vector<int> owners = topo.owners_of_rank(rank);
    name += "owner rank (owner" + std::string(owners.size() > 1 ? "s " : " ");
    for (size_t i = 0; i < owners.size() && i < 8; ++i) {
      if (i) name += ',';
      name += std::to_string(owners[i]);
    }
    if (owners.size() > 8) name += ",...";
    name += ")";
  } else {
    const int st = topo.stage_of_rank(rank);
    const auto [b, e] = topo.stage_part(st);
    name += "stage " + std::to_string(st + 1) + " (units " + std::to_string(b) + "-" +
            std::to_string(e - 1) + ")";
  }
  return name;
}

// Rank 0's live progress line of a multihop run (only while stderr is a terminal): round,
// batches done, images/s and the time left. Rank 0 sees its own owners' finished batches; they
// stand for the whole round's progress (the pipeline serves every owner in turn), scaled to all
// owners' batches. Rates and the estimate cover everything since the first round began
// (aggregation and evaluation included).
class LiveProgress {
 public:
  LiveProgress(const train::FederationPlan& plan, const pipeline::Topology& topo,
               const TrainOptions& o, int rank, bool enabled)
      : plan_(plan), o_(o), enabled_(enabled) {
    if (topo.is_owner_rank(rank)) mine_ = topo.owners_of_rank(rank);
    run_total_ = plan_steps_until(plan, o.rounds);
  }
  bool enabled() const { return enabled_; }

  void begin_round(int round, int64_t start_step, obs::Progress* progress) {
    round_ = round;
    progress_ = progress;
    mine_total_ = mine_done_ = all_total_ = 0;
    for (int k = 0; k < plan_.owners; ++k) all_total_ += plan_.round_steps(k, round);
    for (int k : mine_) {
      mine_total_ += plan_.round_steps(k, round);
      mine_done_ += std::min(start_step, plan_.round_steps(k, round));
    }
    before_round_ = plan_steps_until(plan_, round - 1);
    if (!started_) {
      started_ = true;
      t0_ = Clock::now();
      steps_at_t0_ = before_round_ + estimate_done();
    }
  }

  void step() {
    ++mine_done_;
    if (!progress_) return;
    const int64_t done = estimate_done();
    const double elapsed = seconds_since(t0_);
    const double rate = elapsed > 0 ? (before_round_ + done - steps_at_t0_) / elapsed : 0;
    char extra[128];
    if (rate > 0)
      std::snprintf(extra, sizeof extra, "%.0f img/s, %s left", rate * o_.batch,
                    format_duration((run_total_ - before_round_ - done) / rate).c_str());
    else
      std::snprintf(extra, sizeof extra, "starting");
    progress_->update(done, extra);
  }

  // Seconds the rest of the run should take, from the rate so far; negative when unknown.
  double eta_after_round(int round) const {
    if (!started_) return -1;
    const double elapsed = seconds_since(t0_);
    const int64_t done = plan_steps_until(plan_, round) - steps_at_t0_;
    if (done <= 0 || elapsed <= 0) return -1;
    return (run_total_ - plan_steps_until(plan_, round)) * elapsed / done;
  }

  // Starts the clock of eta_after_round() for runs without a live line.
  void start_clock(int round, int64_t start_step) {
    if (started_) return;
    started_ = true;
    t0_ = Clock::now();
    before_round_ = plan_steps_until(plan_, round - 1);
    int64_t done = 0;
    for (int k = 0; k < plan_.owners; ++k)
      done += std::min(start_step, plan_.round_steps(k, round));
    steps_at_t0_ = before_round_ + done;
  }

 private:
  int64_t estimate_done() const {
    if (mine_total_ <= 0) return 0;
    return std::min(all_total_, mine_done_ * all_total_ / mine_total_);
  }

  const train::FederationPlan& plan_;
  const TrainOptions& o_;
  bool enabled_;
  std::vector<int> mine_;
  int64_t run_total_ = 0, before_round_ = 0, steps_at_t0_ = 0;
  int64_t mine_total_ = 0, mine_done_ = 0, all_total_ = 0;
  int round_ = 0;
  bool started_ = false;
  Clock::time_point t0_{};
  obs::Progress* progress_ = nullptr;
};

int train_multihop(const CommonOptions& common, const TrainOptions& o, const nn::Model& model,
                   const pipeline::Topology& topo, int rank, const plan::Profile* profile,
                   int cores) {
  const auto t_start = Clock::now();
  const bool owner_rank = topo.is_owner_rank(rank);
  obs::set_log_rank(rank, topo.world_size);
  comm::set_role_map(pipeline::short_roles(topo), rank);
  const bool reporter = rank == 0;

  // Owner ranks hold the training data (each uses only its owners' shards); rank 0 also holds
  // the test set. Compute stages never see samples or labels.
  data::Dataset train, test;
  train::FederationPlan plan;
  plan.owners = o.owners;
  plan.batch = o.batch;
  plan.rounds = o.rounds;
  plan.local_epochs = o.local_epochs;
  plan.max_steps = o.max_steps;
  if (owner_rank) {
    train = load_train(o, model, common.seed);
    plan = train::make_federation_plan(train, o, common.seed);
  }
  const bool has_test = !o.test_data.empty();
  if (reporter && has_test) test = load_test(o, model, train);
  // Every rank waits here for rank 0's check of the inputs; a bad input ends the job there.
  plan = share_plan(std::move(plan), rank);
  const nlohmann::json data_id = reporter ? train::data_json(train, o) : nlohmann::json();
  const train::ResumePoint resume = train::find_resume_point(common, o, topo, data_id, rank);

  obs::MetricsWriter metrics(reporter ? common.metrics : std::string(), resume.resumed());
  Predictions pred;
  if (reporter) {
    write_run_start(metrics, common, o, topo, train.count);  // every start; a "resume" follows
    log_plan(plan, o, o.synthetic ? "synthetic data" : o.data);
    for (const auto& line : pipeline::describe_roles(topo, model)) MPSL_LOG(Info, line);
    pred = predict(profile, o, model, topo, plan, train.count, train.image_size(),
                   has_test ? test.count : 0, cores, omp_get_max_threads());
    if (!pred.available && profile) MPSL_LOG(Warn, "no predictions: " << pred.note);
  }

  pipeline::Settings settings;
  settings.model = &model;
  settings.topology = topo;
  settings.plan = plan;
  settings.micro_batches = o.micro_batches;
  settings.one_f_one_b = o.schedule == "1f1b";
  settings.sgd = optim::SgdConfig{o.lr, o.momentum, o.weight_decay};
  settings.policy = optim::parse_optimizer_state_policy(o.optimizer_state);
  settings.seed = common.seed;
  settings.init_model = o.init_model;
  settings.eval_batch = o.eval_batch;
  if (!o.emulate.empty())
    settings.emulation = emulate::load_emulation(o.emulate, o.owners, o.stages);
  settings.stragglers = train::make_straggler_policy(o, true);
  if (!o.trace.empty()) {
    obs::Tracer& tracer = obs::Tracer::instance();
    tracer.set_process_name(trace_process_name(topo, rank));
    tracer.start(MPI_COMM_WORLD);
  }
  // Rank 0's live progress line: batches of its own owners stand for the round's progress
  // (the pipeline serves all owners in turn).
  LiveProgress live(plan, topo, o, rank,
                    reporter && !common.quiet && obs::Progress::stderr_is_tty());
  if (live.enabled()) settings.on_step = [&live] { live.step(); };
  settings.nan_skip = o.nan_policy == "skip";
  settings.reservation = share_reservation(pred, o, topo, rank);
  obs::release_free_heap();  // as in the single process: the runtime's buffers on fresh pages
  auto runtime = pipeline::make_runtime(settings, owner_rank ? &train : nullptr, rank);
  // From here on, a rank ended by the launcher (another rank died) says who it is and what it
  // was waiting for.
  comm::arm_termination_report();
  // Reports a rank of this node whose process is gone (stopped before the run's end).
  std::optional<comm::PeerWatch> peer_watch;
  peer_watch.emplace();

  train::Checkpointer checkpoints(common, o, model, topo, plan, data_id, rank);
  int start_round = 1;
  int64_t start_step = 0;
  std::vector<io::OwnerRecord> resumed_owners;
  if (resume.resumed()) {
    // The runtime's owners stand where the checkpoint was taken before their state is read.
    runtime->begin_round(resume.manifest.round, resume.manifest.step_in_round);
    pipeline::RankState st = runtime->checkpoint_state();
    train::load_rank_state(resume, model, topo, plan, rank, st);
    resumed_owners = st.owners;
    start_round = resume.start_round();
    start_step = resume.start_step();
    checkpoints.set_last_name(resume.manifest.name);
    if (reporter) {
      MPSL_LOG(Info, "resumed from " << resume.folder << ": round " << start_round << ", step "
                                     << start_step);
      metrics.write({{"event", "resume"},
                     {"checkpoint", resume.folder},
                     {"round", start_round},
                     {"step", start_step}});
    }
  }
  auto checkpoint = [&](int round, int64_t step, bool complete) {
    obs::Span span(obs::Activity::kCheckpoint);
    pipeline::RankState st = runtime->checkpoint_state();
    checkpoints.write(round, step, complete, st, metrics);
    return checkpoints.stop_requested();
  };

  int64_t total_images = 0;
  double train_seconds = 0, last_accuracy = std::nan("");
  obs::release_free_heap();  // what building the runtime and restoring left behind
  const double cpu_at_start = obs::process_cpu_seconds();  // rank_summary's cpu_s
  for (int round = start_round; round <= o.rounds; ++round) {
    int64_t round_batches = 0;
    for (int k = 0; k < plan.owners; ++k) round_batches += plan.round_steps(k, round);
    obs::Progress progress(
        "round " + std::to_string(round) + "/" + std::to_string(o.rounds) + ", batches",
        round_batches, reporter && !common.quiet);
    obs::Tracer::instance().set_round(round);
    barrier_watched("every rank to start round " + std::to_string(round));
    const auto t_round = Clock::now();
    const int64_t length = plan.round_length(round);
    int64_t step = round == start_round ? start_step : 0;
    if (live.enabled())
      live.begin_round(round, step, &progress);
    else
      live.start_clock(round, step);
    runtime->begin_round(round, step);
    if (step > 0) runtime->restore_tallies(resumed_owners);
    while (step < length) {
      const int64_t stop = checkpoints.next_stop(round, step);
      runtime->run_steps(step, stop);
      step = stop;
      if (step < length && checkpoints.due_mid_round(round, step) && checkpoint(round, step, false))
        return 0;
    }
    const pipeline::RoundResult r = runtime->finish_round();
    const double round_train_seconds = seconds_since(t_round);
    runtime->aggregate();
    const auto [test_loss, test_accuracy] =
        runtime->evaluate(reporter && has_test ? &test : nullptr);
    // The round ends when every rank has averaged its copies: without a test set the stages
    // are still averaging when rank 0 is done, and the round's seconds would leave that out
    // (the next round's barrier would wait for it instead).
    barrier_watched("every rank to end round " + std::to_string(round));
    const double seconds = seconds_since(t_round);
    if (reporter) {
      total_images += r.images;
      train_seconds += round_train_seconds;
      if (has_test) last_accuracy = test_accuracy;
      report_round({round, r.images ? r.loss_sum / r.images : 0.0,
                    r.images ? static_cast<double>(r.correct) / r.images : 0.0, r.images, seconds,
                    round_train_seconds > 0 ? r.images / round_train_seconds : 0.0, has_test,
                    test_loss, test_accuracy, live.eta_after_round(round), round_train_seconds,
                    pred.available ? pred.round_s[round - 1] : std::nan(""),
                    pred.available ? pred.train_s[round - 1] : std::nan(""), r.skipped},
                   o.rounds, progress, metrics);
      write_round_owners(metrics, round, round_train_seconds, r.owners, o.late_policy == "carry");
    }
    if ((checkpoints.due_round_end(round) || (round == o.rounds && checkpoints.enabled())) &&
        checkpoint(round, length, true))
      return 0;
  }

  if (!o.save_model.empty()) {
    std::optional<nn::PartState> whole = runtime->gather_model();
    if (whole) {
      io::save_model(o.save_model, model, *whole, {train.mean, train.std});
      MPSL_LOG(Info, "model written to " << o.save_model);
    }
  }

  // From here ranks may end (normally) at different times.
  peer_watch.reset();
  if (!o.trace.empty()) {
    obs::Tracer::instance().write(MPI_COMM_WORLD, o.trace);
    if (reporter) MPSL_LOG(Info, "trace written to " << o.trace);
  }

  // One rank_summary per rank (memory and times), gathered on rank 0.
  const pipeline::RankTimes times = runtime->times();
  constexpr int kFields = 11;
  double mine[kFields] = {static_cast<double>(obs::peak_rss_bytes()),
                          times.busy_s,
                          times.wait_s,
                          times.comm_s,
                          owner_rank ? 0.0 : 1.0,
                          static_cast<double>(obs::tracked_peak_bytes()),
                          static_cast<double>(runtime->mailbox().receive_buffer_bytes()),
                          static_cast<double>(runtime->mailbox().send_pool_bytes()),
                          static_cast<double>(runtime->max_in_flight()),
                          obs::process_cpu_seconds() - cpu_at_start,
                          static_cast<double>(runtime->reserved_in_flight())};
  if (rank != 0) comm::audit_message("rank-summary", 0, sizeof mine, true);
  if (!o.audit_dir.empty()) comm::write_audit(o.audit_dir, rank, runtime->role());
  std::vector<double> all(kFields * topo.world_size);
  MPSL_MPI_CHECK(
      MPI_Gather(mine, kFields, MPI_DOUBLE, all.data(), kFields, MPI_DOUBLE, 0, MPI_COMM_WORLD));
  if (reporter) {
    for (int r = 0; r < topo.world_size; ++r) {
      const double* v = &all[kFields * r];
      const bool has = pred.available && r < static_cast<int>(pred.ranks.size());
      metrics.write(
          {{"event", "rank_summary"},
           {"rank", r},
           {"role", v[4] > 0.5 ? "stage" : "owner"},
           {"stage", v[4] > 0.5 ? topo.stage_of_rank(r) + 1 : 0},
           {"peak_rss_bytes", static_cast<int64_t>(v[0])},
           {"tracked_peak_bytes", static_cast<int64_t>(v[5])},
           {"receive_buffer_bytes", static_cast<int64_t>(v[6])},
           {"send_pool_bytes", static_cast<int64_t>(v[7])},
           {"max_in_flight", static_cast<int>(v[8])},
           {"in_flight_slots", static_cast<int>(v[10])},
           {"busy_s", v[1]},
           {"wait_s", v[2]},
           {"comm_s", v[3]},
           {"cpu_s", v[9]},
           {"predicted_peak_bytes",
            has ? nlohmann::json(pred.ranks[r].peak_bytes) : nlohmann::json(nullptr)},
           {"predicted_busy_s",
            has ? nlohmann::json(pred.ranks[r].busy_s) : nlohmann::json(nullptr)},
           {"predicted_cpu_s", has ? nlohmann::json(pred.ranks[r].cpu_s) : nlohmann::json(nullptr)},
           {"predicted_receive_buffer_bytes",
            has ? nlohmann::json(pred.ranks[r].receive_bytes) : nlohmann::json(nullptr)},
           {"predicted_max_in_flight",
            has ? nlohmann::json(pred.ranks[r].max_in_flight) : nlohmann::json(nullptr)}});
      MPSL_LOG(Debug, "rank " << r << (v[4] > 0.5 ? " stage" : " owner") << ": busy " << v[1]
                              << " s, waiting " << v[2] << " s, communicating " << v[3] << " s");
    }
  }
  if (settings.emulation.enabled) {
    const emulate::EmulationStats e = runtime->emulation_stats();
    double v[6] = {e.compute_delay_s,
                   e.transfer_s,
                   e.link_queue_s,
                   e.aggregation_s,
                   static_cast<double>(e.messages),
                   static_cast<double>(e.bytes)};
    std::vector<double> ev(6 * topo.world_size);
    MPSL_MPI_CHECK(MPI_Gather(v, 6, MPI_DOUBLE, ev.data(), 6, MPI_DOUBLE, 0, MPI_COMM_WORLD));
    if (reporter)
      for (int r = 0; r < topo.world_size; ++r) {
        const double* x = &ev[6 * r];
        write_emulation(
            metrics, r, topo.is_owner_rank(r) ? "owner" : "stage",
            {x[0], x[1], x[2], x[3], static_cast<int64_t>(x[4]), static_cast<int64_t>(x[5])});
      }
  }
  if (reporter) {
    write_run_end(metrics, seconds_since(t_start),
                  std::max(plan_steps_until(plan, o.rounds), resume.manifest.total_steps),
                  train_seconds > 0 ? total_images / train_seconds : 0.0, last_accuracy, o);
  }
  comm::disarm_termination_report();
  return 0;
}

// --dry-run --trace FILE: the cost model's round 1 as a Chrome trace, in the runtime's layout
// (a process per rank, a row per activity), to open beside a real run's trace.
void write_predicted_trace(const std::string& path, const pipeline::Topology& topo,
                           const std::vector<plan::SimulatedSpan>& spans) {
  // The trace row of each plan::SimulatedSpan::Kind, in its order.
  constexpr obs::Activity kActivityOf[] = {obs::Activity::kForward,     obs::Activity::kBackward,
                                           obs::Activity::kOptimizer,   obs::Activity::kCopyIn,
                                           obs::Activity::kAggregation, obs::Activity::kEval};
  static_assert(std::size(kActivityOf) ==
                static_cast<size_t>(plan::SimulatedSpan::Kind::kEval) + 1);
  std::vector<std::string> names;
  for (int r = 0; r < topo.world_size; ++r) names.push_back(trace_process_name(topo, r));
  std::vector<obs::TraceEvent> events;
  std::vector<int64_t> counts(names.size(), 0);
  for (const plan::SimulatedSpan& x : spans) {  // sorted by rank
    events.push_back(
        obs::TraceEvent{x.start_s * 1e6, (x.end_s - x.start_s) * 1e6, 1, x.owner, x.micro, x.peer,
                        x.bytes, static_cast<float>(x.cpu_s >= 0 ? x.cpu_s * 1e6 : -1.0),
                        static_cast<uint8_t>(kActivityOf[static_cast<size_t>(x.kind)])});
    ++counts.at(static_cast<size_t>(x.rank));
  }
  obs::write_chrome_trace(path, names, events, counts,
                          ",\"clock\":\"the cost model's simulated round 1\",\"predicted\":true");
}

// --dry-run: the role map with, per rank, the predicted peak memory and busy time per round.
void dry_run(const CommonOptions& common, const TrainOptions& o, const nn::Model& model,
             const pipeline::Topology& topo, const plan::Profile* profile, int cores) {
  const std::vector<std::string> roles = pipeline::describe_roles(topo, model);
  Predictions pred;
  if (profile) {
    data::Dataset train = load_train(o, model, common.seed);
    const train::FederationPlan fp = train::make_federation_plan(train, o, common.seed);
    int64_t test_images = 0;
    if (!o.test_data.empty()) test_images = data::read_dataset_h5(o.test_data).count;
    pred = predict(profile, o, model, topo, fp, train.count, train.image_size(), test_images, cores,
                   omp_get_max_threads(), !o.trace.empty());
  }
  for (size_t r = 0; r < roles.size(); ++r) {
    std::string line = roles[r];
    if (pred.available && r < pred.ranks.size()) {
      const auto& x = pred.ranks[r];
      char extra[200];
      std::snprintf(extra, sizeof extra,
                    "; predicted peak %s (part copies %s), busy %.3f s per round, %d in flight",
                    obs::format_bytes(x.peak_bytes).c_str(),
                    obs::format_bytes(x.model_bytes).c_str(), x.busy_s, x.max_in_flight);
      line += extra;
    }
    std::printf("%s\n", line.c_str());
  }
  if (pred.available) {
    std::printf("predicted round time: %.3f s (round 1)%s\n", pred.round_s.front(),
                cores > 0 ? (" with the ranks sharing " + std::to_string(cores) +
                             (cores == 1 ? " core" : " cores"))
                                .c_str()
                          : "");
  } else {
    std::printf("(%s)\n",
                profile ? pred.note.c_str() : "no predictions: give --profile FILE or --plan FILE");
  }
  if (pred.available && !o.trace.empty()) {
    write_predicted_trace(o.trace, topo, pred.spans);
    std::printf("predicted trace of round 1: %s\n", o.trace.c_str());
  }
  std::fflush(stdout);
}

}  // namespace

int run_train(const CommonOptions& common, const TrainOptions& o) {
  int world = 1, rank = 0;
  MPSL_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  MPSL_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  comm::set_stall_settings({o.stall_warn_seconds, o.stall_abort_seconds});
  auto model = nn::make_model(o.model);
  // --plan: its split (and stage count) and the profile it carries.
  std::string split_text = o.split;
  int stages = o.stages;
  if (!o.plan.empty()) {
    const plan::PlanFile pf = plan::read_plan(o.plan);
    MPSL_INPUT_CHECK(pf.model == o.model, "--plan '" + o.plan + "' is a plan for model '" +
                                              pf.model + "', not '" + o.model + "'");
    MPSL_INPUT_CHECK(stages == 0 || stages == pf.stages,
                     "--plan '" + o.plan + "' has " + std::to_string(pf.stages) +
                         " stage(s) but --stages is " + std::to_string(stages));
    stages = pf.stages;
    for (size_t i = 0; i < pf.split.size(); ++i)
      split_text += (i ? "," : "") + std::to_string(pf.split[i]);
    if (pf.owners != o.owners || pf.batch != o.batch)
      MPSL_LOG(Warn, "--plan '" << o.plan << "' was made for " << pf.owners << " owner(s) at batch "
                                << pf.batch << "; this run has " << o.owners << " at batch "
                                << o.batch << " (the split is used as it is)");
  }
  const pipeline::Topology topo = [&] {
    pipeline::Topology t =
        pipeline::make_topology(*model, world, stages, o.owners, split_text, o.replicas);
    MPSL_INPUT_CHECK(o.replica_speed.empty() || t.replicas > 1,
                     "--replica-speed needs --replicas H > 1");
    pipeline::spread_owners(t, o.replica_speed);
    return t;
  }();
  const std::optional<plan::Profile> profile = load_profile(o);
  const plan::Profile* profile_ptr = profile ? &*profile : nullptr;
  const int cores = shared_cores(world);
  MPSL_INPUT_CHECK(o.schedule == "1f1b" || o.micro_batches == 1,
                   "--micro-batches " + std::to_string(o.micro_batches) +
                       " needs --schedule 1f1b (the mpsl schedule sends whole batches)");
  optim::parse_optimizer_state_policy(o.optimizer_state);  // validates
  // Outputs are checked before any training: a run must not fail at its very end.
  if (!o.save_model.empty() && rank == 0) io::prepare_output_file(o.save_model, "--save-model");
  if (!o.trace.empty() && rank == 0) io::prepare_output_file(o.trace, "--trace");
  if (!o.checkpoint_dir.empty() && rank == 0) check_checkpoint_dir(o.checkpoint_dir);
  if (!o.init_model.empty()) io::check_initial_model(o.init_model, *model);
  if (!o.emulate.empty()) emulate::load_emulation(o.emulate, o.owners, topo.stages);  // validates
  train::make_straggler_policy(o, topo.multihop());                                   // validates
  if (o.dry_run && !o.trace.empty()) {
    MPSL_INPUT_CHECK(topo.multihop(),
                     "--dry-run --trace writes the cost model's simulated "
                     "pipeline; a single-process run has none");
    MPSL_INPUT_CHECK(profile_ptr,
                     "--dry-run --trace needs the cost model: give --profile FILE "
                     "or --plan FILE");
    const std::string problem = prediction_problem(*profile_ptr, o, *model);
    MPSL_INPUT_CHECK(problem.empty(), "--dry-run --trace: no predictions: " + problem);
  }
  if (o.dry_run) {
    if (rank == 0) dry_run(common, o, *model, topo, profile_ptr, cores);
    return 0;
  }
  if (!topo.multihop()) return train_single(common, o, *model, topo, profile_ptr, cores);
  return train_multihop(common, o, *model, topo, rank, profile_ptr, cores);
}

}  // namespace mpsl::cli
