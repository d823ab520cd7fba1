#include "mpsl/train/checkpointing.hpp"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "mpsl/comm/audit.hpp"
#include "mpsl/comm/mailbox.hpp"
#include "mpsl/comm/mpi_environment.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/obs/log.hpp"

#ifndef MPSL_VERSION
#define MPSL_VERSION "unknown"
#endif

namespace mpsl::train {

namespace fs = std::filesystem;

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string split_text(const nlohmann::json& split) {
  std::string s;
  for (const auto& v : split) {
    if (!s.empty()) s += ',';
    s += std::to_string(v.get<int>());
  }
  return s.empty() ? "-" : s;
}

std::string describe_topology(const nlohmann::json& t) {
  const int world = t.at("world_size").get<int>();
  const int stages = t.at("stages").get<int>();
  if (stages == 0)
    return "1 rank (single process, --owners " + std::to_string(t.at("owners").get<int>()) + ")";
  return std::to_string(world) + " ranks (" + std::to_string(t.at("owner_ranks").get<int>()) +
         " owner ranks, --stages " + std::to_string(stages) + ", --split " +
         split_text(t.at("split")) + ")";
}

// The options whose values shape the training trajectory: a resume must keep them.
const std::vector<std::pair<const char*, const char*>>& trajectory_options() {
  static const std::vector<std::pair<const char*, const char*>> keys = {
      {"model", "--model"},
      {"synthetic", "--synthetic"},
      {"synthetic_count", "--synthetic-count"},
      {"batch", "--batch"},
      {"lr", "--lr"},
      {"momentum", "--momentum"},
      {"weight_decay", "--weight-decay"},
      {"local_epochs", "--local-epochs"},
      {"batches_per_epoch", "--batches-per-epoch"},
      {"max_steps", "--max-steps"},
      {"owners", "--owners"},
      {"partition", "--partition"},
      {"alpha", "--alpha"},
      {"schedule", "--schedule"},
      {"micro_batches", "--micro-batches"},
      {"optimizer_state", "--optimizer-state"},
      {"seed", "--seed"},
  };
  return keys;
}

std::string show(const nlohmann::json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump();
}

// Rank 0: everything a manifest must agree with before any rank loads its file.
void check_manifest(const io::Manifest& m, const std::string& folder, const nlohmann::json& config,
                    const nlohmann::json& topology, const nlohmann::json& data) {
  const std::string where = "checkpoint " + folder;
  if (m.mpsl_version != MPSL_VERSION)
    obs::log_warn(where + " was written by mpsl " + m.mpsl_version + ", this is mpsl " +
                  MPSL_VERSION + ": results may differ from an uninterrupted run in the last bits");
  const std::string run_model = config.at("model").get<std::string>();
  if (m.model != run_model)
    throw InputError(where + " holds model '" + m.model + "', this run trains '" + run_model + "'");
  // Topology: refused rather than re-sliced.
  bool topo_differs = false;
  for (const char* k : {"world_size", "owner_ranks", "stages", "owners", "split"})
    topo_differs |= !m.topology.contains(k) || m.topology.at(k) != topology.at(k);
  if (topo_differs)
    throw InputError(where + " was written by " + describe_topology(m.topology) + " for " +
                     show(m.topology.value("owners", nlohmann::json(0))) +
                     " owners; this run has " + describe_topology(topology) + " for " +
                     show(topology.at("owners")) +
                     " owners. Resuming on another topology is not supported (parts are not "
                     "re-sliced): run with the checkpoint's rank count, --stages, --split and "
                     "--owners");
  std::string was, now;
  const bool synthetic = config.value("synthetic", false);
  const bool dirichlet = config.value("partition", std::string()) == "dirichlet";
  for (const auto& [key, option] : trajectory_options()) {
    if (std::string(key) == "synthetic_count" && !synthetic) continue;
    if (std::string(key) == "alpha" && !dirichlet) continue;
    const nlohmann::json mine = config.at(key);
    const nlohmann::json theirs = m.config.contains(key) ? m.config.at(key) : nlohmann::json();
    if (mine == theirs) continue;
    // Float options compare as the floats training uses.
    if (mine.is_number_float() && theirs.is_number() &&
        static_cast<float>(mine.get<double>()) == static_cast<float>(theirs.get<double>()))
      continue;
    was += std::string(was.empty() ? "" : ", ") + option + " " + show(theirs);
    now += std::string(now.empty() ? "" : ", ") + option + " " + show(mine);
  }
  if (!was.empty())
    throw InputError(where + " was written with " + was + "; this run has " + now +
                     ". Resume with the same settings (--rounds, --test-data, --eval-batch, "
                     "--threads, --metrics, --save-model and the checkpoint options may change)");
  if (!data.is_null()) {
    const auto count = m.data.value("train_images", int64_t{-1});
    const auto crc = m.data.value("labels_crc32", uint32_t{0});
    if (count != data.at("train_images").get<int64_t>() ||
        crc != data.at("labels_crc32").get<uint32_t>())
      throw InputError(
          where + " was trained on " + std::to_string(count) + " images (labels crc32 " +
          std::to_string(crc) + ", " + show(m.data.value("source", nlohmann::json("?"))) +
          "); this run's " + show(data.at("source")) + " has " +
          std::to_string(data.at("train_images").get<int64_t>()) + " images (labels crc32 " +
          std::to_string(data.at("labels_crc32").get<uint32_t>()) +
          "): resume on the same training set");
    if (m.data.value("source", nlohmann::json()) != data.at("source"))
      MPSL_LOG(Info, where << ": the training set is now read from " << show(data.at("source"))
                           << " (same images and labels as "
                           << show(m.data.value("source", nlohmann::json("?"))) << ")");
  }
  if (m.seed != config.at("seed").get<uint64_t>())
    throw InputError(where + " was written with --seed " + std::to_string(m.seed) +
                     "; this run has --seed " + show(config.at("seed")));
}

void broadcast_string(std::string& s, int root, int rank) {
  int64_t n = static_cast<int64_t>(s.size());
  MPSL_MPI_CHECK(MPI_Bcast(&n, 1, MPI_INT64_T, root, MPI_COMM_WORLD));
  if (rank != root) s.resize(n);
  if (n > 0)
    MPSL_MPI_CHECK(MPI_Bcast(s.data(), static_cast<int>(n), MPI_CHAR, root, MPI_COMM_WORLD));
}

// A float option as the double its shortest decimal text stands for (0.01, not 0.0099999998).
double decimal(float v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.9g", v);
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(b, sizeof b, "%.*g", digits, v);
    if (std::strtof(b, nullptr) == v) break;
  }
  return std::strtod(b, nullptr);
}

}  // namespace

nlohmann::json config_json(const cli::CommonOptions& c, const cli::TrainOptions& o) {
  return {{"model", o.model},
          {"data", o.data},
          {"test_data", o.test_data},
          {"synthetic", o.synthetic},
          {"synthetic_count", o.synthetic_count},
          {"eval_batch", o.eval_batch},
          {"batch", o.batch},
          {"lr", decimal(o.lr)},
          {"momentum", decimal(o.momentum)},
          {"weight_decay", decimal(o.weight_decay)},
          {"rounds", o.rounds},
          {"local_epochs", o.local_epochs},
          {"batches_per_epoch", o.batches_per_epoch},
          {"max_steps", o.max_steps},
          {"owners", o.owners},
          {"partition", o.partition},
          {"alpha", decimal(o.alpha)},
          {"stages", o.stages},
          {"split", o.split},
          {"schedule", o.schedule},
          {"micro_batches", o.micro_batches},
          {"optimizer_state", o.optimizer_state},
          {"checkpoint_dir", o.checkpoint_dir},
          {"checkpoint_every", o.checkpoint_every_text.empty() ? std::to_string(o.checkpoint_every)
                                                               : o.checkpoint_every_text},
          {"checkpoint_keep", o.checkpoint_keep},
          {"seed", c.seed},
          {"threads", c.threads}};
}

nlohmann::json topology_json(const pipeline::Topology& t, const cli::TrainOptions& o) {
  nlohmann::json owners_of_rank = nlohmann::json::array();
  for (int r = 0; r < (t.multihop() ? t.owner_ranks : 1); ++r)
    owners_of_rank.push_back(t.multihop() ? t.owners_of_rank(r) : std::vector<int>{});
  return {{"world_size", t.world_size},
          {"owner_ranks", t.multihop() ? t.owner_ranks : 1},
          {"stages", t.stages},
          {"replicas", t.replicas},
          {"owner_replica", t.owner_replica},
          {"owners", o.owners},
          {"split", t.split},
          {"num_units", t.num_units},
          {"schedule", o.schedule},
          {"micro_batches", o.micro_batches},
          {"owner_rule", "logical owner k lives on owner rank k mod owner_ranks"}};
}

nlohmann::json data_json(const data::Dataset& train, const cli::TrainOptions& o) {
  return {{"train_images", train.count},
          {"labels_crc32", io::crc32_bytes(train.labels.data(), train.labels.size())},
          {"mean", train.mean},
          {"std", train.std},
          {"source", o.synthetic
                         ? "synthetic (--synthetic-count " + std::to_string(o.synthetic_count) + ")"
                         : o.data}};
}

std::string rank_role(const pipeline::Topology& t, int rank) {
  if (!t.multihop()) return "single";
  return t.is_owner_rank(rank) ? "owner" : "stage";
}

// ---- resume ----------------------------------------------------------------------------------

ResumePoint find_resume_point(const cli::CommonOptions& common, const cli::TrainOptions& o,
                              const pipeline::Topology& t, const nlohmann::json& data, int rank) {
  ResumePoint rp;
  if (o.resume.empty()) return rp;
  std::string text;  // the manifest as rank 0 validated it ("" = start fresh)
  std::string folder;
  if (rank == 0) {
    folder = io::resolve_checkpoint(o.resume, o.checkpoint_dir);
    if (folder.empty()) {
      obs::log_warn("--resume latest: " + o.checkpoint_dir +
                    " holds no checkpoint yet; training starts from the beginning");
    } else {
      const io::Manifest m = io::read_manifest(folder);
      check_manifest(m, folder, config_json(common, o), topology_json(t, o), data);
      io::check_rank_files(folder, m);
      if ((m.round_complete ? m.round + 1 : m.round) > o.rounds)
        obs::log_warn(folder + " is at the end of round " + std::to_string(m.round) +
                      " of the --rounds " + std::to_string(o.rounds) +
                      " asked for: nothing is left to train (give a larger --rounds to go on)");
      text = m.to_json().dump();
    }
  }
  broadcast_string(folder, 0, rank);
  broadcast_string(text, 0, rank);
  comm::audit_message("checkpoint-manifest", 0, static_cast<int64_t>(folder.size() + text.size()),
                      rank == 0);
  if (folder.empty()) return rp;
  rp.folder = folder;
  rp.manifest = io::Manifest::from_json(nlohmann::json::parse(text), io::manifest_path(folder));
  return rp;
}

void load_rank_state(const ResumePoint& rp, const nn::Model& model, const pipeline::Topology& t,
                     const FederationPlan& plan, int rank, pipeline::RankState& state) {
  const io::Manifest& m = rp.manifest;
  std::string problem;
  try {
    const io::ManifestRank& entry = m.ranks.at(rank);
    const std::string path = (fs::path(rp.folder) / entry.file).string();
    io::RankHeader want;
    want.model = model.name();
    want.checkpoint = m.name;
    want.rank = rank;
    want.world_size = t.world_size;
    want.role = rank_role(t, rank);
    want.round = m.round;
    want.step_in_round = m.step_in_round;
    want.round_complete = m.round_complete;
    std::vector<io::OwnerRecord> records = state.owners;
    io::read_rank_file(path, model, want, entry.summary, records, state.parts);
    for (size_t i = 0; i < records.size(); ++i) {
      const io::OwnerRecord& got = records[i];
      const io::OwnerRecord& mine = state.owners[i];
      const int k = got.owner;
      if (got.samples != mine.samples || got.shard_crc32 != mine.shard_crc32)
        throw InputError(
            path + ": owner " + std::to_string(k) + " had a shard of " +
            std::to_string(got.samples) + " samples (crc32 " + std::to_string(got.shard_crc32) +
            "), this run gives it " + std::to_string(mine.samples) + " (crc32 " +
            std::to_string(mine.shard_crc32) + "): the training set or its partition differs");
      const int64_t want_steps = std::min(m.step_in_round, plan.round_steps(k, m.round));
      if (got.steps_in_round != want_steps)
        throw InputError(path + ": owner " + std::to_string(k) + " took " +
                         std::to_string(got.steps_in_round) + " steps of round " +
                         std::to_string(m.round) + ", this run's plan puts it at " +
                         std::to_string(want_steps));
    }
    state.owners = records;
  } catch (const InputError& e) {
    problem = e.what();
  }
  // One message, from rank 0: the lowest failing rank's.
  int failing = problem.empty() ? t.world_size : rank;
  MPSL_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &failing, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (failing == t.world_size) return;
  // Everyone learns the failing rank's message (a broadcast, not a point-to-point message: the
  // runtimes' mailboxes have receives posted on MPI_COMM_WORLD that could match one), so the
  // message rank 0 reports is the one that names the file and the problem.
  broadcast_string(problem, failing, rank);
  throw InputError(problem);
}

// ---- writing ---------------------------------------------------------------------------------

Checkpointer::Checkpointer(const cli::CommonOptions& common, const cli::TrainOptions& o,
                           const nn::Model& model, const pipeline::Topology& t,
                           const FederationPlan& plan, nlohmann::json data, int rank)
    : common_(common),
      o_(o),
      model_(model),
      t_(t),
      plan_(plan),
      data_(std::move(data)),
      rank_(rank),
      dir_(o.checkpoint_dir),
      every_rounds_(o.checkpoint_every),
      every_steps_(o.checkpoint_every_steps),
      every_seconds_(o.checkpoint_every_seconds) {
  last_time_ = probe_time_ = now_seconds();
  if (const char* v = std::getenv("MPSL_TEST_EXIT_AFTER_CHECKPOINTS"); v && *v)
    stop_after_ = std::atoi(v);
}

int64_t Checkpointer::steps_before(int round) const {
  if (prefix_.empty()) prefix_.push_back(0);
  while (static_cast<int>(prefix_.size()) < round)
    prefix_.push_back(prefix_.back() + plan_.round_length(static_cast<int>(prefix_.size())));
  return prefix_[round - 1];
}

int64_t Checkpointer::next_stop(int round, int64_t step) const {
  const int64_t length = plan_.round_length(round);
  if (!enabled()) return length;
  if (every_steps_ > 0) {
    const int64_t g = steps_before(round) + step;
    const int64_t next = (g / every_steps_ + 1) * every_steps_;
    return std::min(next - steps_before(round), length);
  }
  if (every_seconds_ > 0) return std::min(step + probe_steps_, length);
  return length;
}

bool Checkpointer::rank0_decides(bool mine) {
  int64_t v[2] = {mine ? 1 : 0, probe_steps_};
  if (rank_ == 0) v[1] = probe_steps_;
  comm::broadcast_watched(v, 2, MPI_INT64_T, 0, MPI_COMM_WORLD,
                          [] { return std::string("rank 0's checkpoint decision"); });
  probe_steps_ = v[1];
  return v[0] != 0;
}

bool Checkpointer::due_mid_round(int round, int64_t step) {
  if (!enabled()) return false;
  if (every_steps_ > 0) return (steps_before(round) + step) % every_steps_ == 0;
  if (every_seconds_ <= 0) return false;
  bool due = false;
  if (rank_ == 0) {
    const double now = now_seconds();
    due = now - last_time_ >= every_seconds_;
    // Look at the clock about ten times per interval (at most once a minute), so a checkpoint
    // comes at most a tenth of the interval late.
    const int64_t g = steps_before(round) + step;
    const double per_step = (now - probe_time_) / std::max<int64_t>(1, g - probe_from_);
    const double target = std::min(every_seconds_ / 10, 60.0);
    // Steps of owners whose round is over cost nothing, so the rate is noisy: the look-ahead
    // at most doubles from one look to the next.
    probe_steps_ = std::clamp<int64_t>(static_cast<int64_t>(target / std::max(per_step, 1e-6)), 1,
                                       2 * probe_steps_);
    probe_time_ = now;
    probe_from_ = g;
    MPSL_LOG(Debug, "checkpoint clock at round " << round << " step " << step << ": "
                                                 << now - last_time_ << " s since the last, "
                                                 << per_step << " s per step, next look in "
                                                 << probe_steps_ << " steps");
  }
  return rank0_decides(due);
}

bool Checkpointer::due_round_end(int round) {
  if (!enabled()) return false;
  if (every_rounds_ > 0) return round % every_rounds_ == 0;
  if (every_steps_ > 0)
    return (steps_before(round) + plan_.round_length(round)) % every_steps_ == 0;
  if (every_seconds_ <= 0) return false;
  bool due = false;
  if (rank_ == 0) {
    due = now_seconds() - last_time_ >= every_seconds_;
    probe_time_ = now_seconds();
    probe_from_ = steps_before(round + 1);
  }
  return rank0_decides(due);
}

void Checkpointer::write(int round, int64_t step, bool round_complete, pipeline::RankState& state,
                         obs::MetricsWriter& metrics) {
  const double t0 = now_seconds();
  const std::string name = io::checkpoint_name(round, step);
  if (rank_ == 0) io::prepare_checkpoint_folder(dir_, name, written_ == 0);
  MPSL_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));

  io::RankHeader h;
  h.model = model_.name();
  h.checkpoint = name;
  h.rank = rank_;
  h.world_size = t_.world_size;
  h.role = rank_role(t_, rank_);
  h.round = round;
  h.step_in_round = step;
  h.round_complete = round_complete;
  h.seed = common_.seed;
  h.config = config_json(common_, o_).dump();
  h.topology = topology_json(t_, o_).dump();
  const std::string file = "rank-" + std::to_string(rank_) + ".h5";
  const double tw = now_seconds();
  const io::FileSummary fsum =
      io::write_rank_file((fs::path(io::temp_folder(dir_, name)) / file).string(), model_, h,
                          state.owners, state.parts);
  const double write_seconds = now_seconds() - tw;

  double mine[3] = {static_cast<double>(fsum.bytes), static_cast<double>(fsum.crc32),
                    write_seconds};
  std::vector<double> all(3 * t_.world_size);
  MPSL_MPI_CHECK(MPI_Gather(mine, 3, MPI_DOUBLE, all.data(), 3, MPI_DOUBLE, 0, MPI_COMM_WORLD));
  // Only each file's size, CRC and write time cross the wire; the files stay where written.
  if (rank_ != 0)
    comm::audit_message("checkpoint-file-summary", 0, sizeof mine, true);
  else
    for (int r = 1; r < t_.world_size; ++r)
      comm::audit_message("checkpoint-file-summary", r, sizeof mine, false);
  ++written_;
  last_name_ = name;
  last_time_ = now_seconds();
  if (rank_ != 0) return;

  io::Manifest m;
  m.mpsl_version = MPSL_VERSION;
  m.name = name;
  m.model = model_.name();
  m.round = round;
  m.step_in_round = step;
  m.round_complete = round_complete;
  int64_t total = 0;
  for (int r = 1; r < round; ++r)
    for (int k = 0; k < plan_.owners; ++k) total += plan_.round_steps(k, r);
  for (int k = 0; k < plan_.owners; ++k) total += std::min(step, plan_.round_steps(k, round));
  m.total_steps = total;
  m.seed = common_.seed;
  m.topology = topology_json(t_, o_);
  m.config = config_json(common_, o_);
  m.data = data_;
  int64_t bytes = 0;
  double slowest = 0;
  nlohmann::json per_rank = nlohmann::json::array();
  for (int r = 0; r < t_.world_size; ++r) {
    io::ManifestRank e;
    e.rank = r;
    e.role = rank_role(t_, r);
    e.file = "rank-" + std::to_string(r) + ".h5";
    e.summary.bytes = static_cast<int64_t>(all[3 * r]);
    e.summary.crc32 = static_cast<uint32_t>(all[3 * r + 1]);
    e.write_seconds = all[3 * r + 2];
    if (e.role == "owner") {
      e.owners = t_.owners_of_rank(r);
    } else if (e.role == "stage") {
      e.owners = t_.owners_of_replica(t_.replica_of_rank(r));  // its replica's owners
      e.stage = t_.stage_of_rank(r) + 1;
    } else {
      for (int k = 0; k < plan_.owners; ++k) e.owners.push_back(k);
    }
    bytes += e.summary.bytes;
    slowest = std::max(slowest, e.write_seconds);
    per_rank.push_back({{"rank", r},
                        {"role", e.role},
                        {"bytes", e.summary.bytes},
                        {"write_seconds", e.write_seconds}});
    m.ranks.push_back(std::move(e));
  }
  io::publish_checkpoint(dir_, m);
  io::prune_checkpoints(dir_, o_.checkpoint_keep);
  const double seconds = now_seconds() - t0;
  MPSL_LOG(Info, "checkpoint " << (fs::path(dir_) / name).string() << " written: " << t_.world_size
                               << " file(s), " << bytes << " bytes, " << seconds
                               << " s (slowest rank file " << slowest << " s)");
  metrics.write({{"event", "checkpoint"},
                 {"name", name},
                 {"round", round},
                 {"step", step},
                 {"round_complete", round_complete},
                 {"seconds", seconds},
                 {"bytes", bytes},
                 {"ranks", per_rank}});
}

}  // namespace mpsl::train
