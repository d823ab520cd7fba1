// `mpsl eval` and `mpsl inspect`.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "mpsl/cli/commands.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/io/checkpoint.hpp"
#include "mpsl/io/model_file.hpp"
#include "mpsl/nn/zoo.hpp"
#include "mpsl/obs/log.hpp"
#include "mpsl/obs/memory.hpp"
#include "mpsl/obs/metrics.hpp"
#include "mpsl/plan/planner.hpp"
#include "mpsl/train/local.hpp"

namespace mpsl::cli {

namespace {

// The aggregated model a round-end checkpoint holds, as one whole-model state: owner 0's parts 1
// and P (owner 0 lives on rank 0) and every stage's copy 0 (after FedAvg all copies are equal).
nn::PartState assemble_checkpoint_model(const std::string& folder, const io::Manifest& m,
                                        const nn::Model& model) {
  nn::PartState whole(model, 0, model.num_units());
  auto place = [&](const nn::PartState& part) {
    const auto& l = whole.layout;
    const int b = part.layout.begin;
    std::copy(part.params.data(), part.params.data() + part.params.size(),
              whole.params.data() + l.unit_param_offset[b]);
    std::copy(part.buffers.data(), part.buffers.data() + part.buffers.size(),
              whole.buffers.data() + l.unit_buffer_offset[b]);
  };
  if (m.ranks.front().role == "single") {
    io::File f = io::open_rank_file(folder, m, 0);
    io::read_part(f, "owners/0/model", model, whole);
    return whole;
  }
  for (const io::ManifestRank& r : m.ranks) {
    if (r.role == "owner" && r.rank != 0) continue;
    // --replicas: every replica of a stage holds the average; replica 0 (owner 0's) is read.
    if (r.role == "stage" && std::find(r.owners.begin(), r.owners.end(), 0) == r.owners.end())
      continue;
    io::File f = io::open_rank_file(folder, m, r.rank);
    for (const char* which : r.role == "owner" ? std::vector<const char*>{"first", "last"}
                                               : std::vector<const char*>{""}) {
      const std::string group = r.role == "owner" ? std::string("owners/0/") + which : "copies/0";
      io::Group g = f.open_group(group);
      nn::PartState part(model, static_cast<int>(g.read_int_attribute("units_begin")),
                         static_cast<int>(g.read_int_attribute("units_end")));
      io::read_part(f, group, model, part);
      place(part);
      if (r.role == "owner") whole.steps = part.steps;
    }
  }
  ++whole.version;
  return whole;
}

int eval_checkpoint(const CommonOptions& common, const EvalOptions& o) {
  const std::string folder = io::resolve_checkpoint(o.checkpoint, "");
  const io::Manifest m = io::read_manifest(folder);
  io::check_rank_files(folder, m);
  const int owners = m.topology.value("owners", 1);
  if (!m.round_complete && owners > 1) {
    // Suggest the newest round-end checkpoint beside it.
    std::string suggestion;
    const std::string parent = std::filesystem::path(folder).parent_path().string();
    for (const auto& n : io::list_checkpoints(parent.empty() ? "." : parent)) {
      try {
        const io::Manifest other = io::read_manifest((std::filesystem::path(parent) / n).string());
        if (other.round_complete && other.round < m.round) suggestion = n;
      } catch (const InputError&) {
      }
    }
    throw InputError(folder + " was taken in the middle of round " + std::to_string(m.round) +
                     " (step " + std::to_string(m.step_in_round) + "): the " +
                     std::to_string(owners) +
                     " owners' copies are only averaged at the end of a round, so it holds no "
                     "aggregated model. Evaluate a checkpoint taken at the end of a round" +
                     (suggestion.empty() ? std::string() : " (e.g. " + suggestion + ")") +
                     " or resume training from this one");
  }
  std::unique_ptr<nn::Model> model;
  try {
    model = nn::make_model(m.model);
  } catch (const InputError& e) {
    throw InputError(io::manifest_path(folder) + ": " + e.what());
  }
  nn::PartState state = assemble_checkpoint_model(folder, m, *model);
  data::Dataset test = data::read_dataset_h5(o.test_data);
  train::check_dataset_fits(test, *model, o.test_data);
  test.mean = m.data.at("mean").get<std::vector<float>>();  // normalise as in training
  test.std = m.data.at("std").get<std::vector<float>>();
  train::Evaluator ev(*model, o.eval_batch);
  const train::EvalResult r = ev.run(state, test);
  std::printf(
      "checkpoint %s (%s, round %d%s): test accuracy %.2f%% (%lld images), test loss %.4f\n",
      folder.c_str(), model->name().c_str(), m.round,
      m.round_complete ? ", aggregated" : ", mid-round, one owner", 100.0 * r.accuracy,
      static_cast<long long>(r.count), r.loss);
  obs::MetricsWriter metrics(common.metrics);
  metrics.write({{"event", "eval"},
                 {"checkpoint", folder},
                 {"model", model->name()},
                 {"round", m.round},
                 {"test_accuracy", r.accuracy},
                 {"test_loss", r.loss},
                 {"images", r.count}});
  return 0;
}

}  // namespace

int run_eval(const CommonOptions& common, const EvalOptions& o) {
  MPSL_INPUT_CHECK(!o.model_file.empty() || !o.checkpoint.empty(),
                   "eval needs --model-file FILE.h5 or --checkpoint DIR");
  MPSL_INPUT_CHECK(!o.test_data.empty(), "eval needs --test-data TEST.h5");
  if (!o.checkpoint.empty()) return eval_checkpoint(common, o);
  io::LoadedModel m = io::load_model(o.model_file);
  data::Dataset test = data::read_dataset_h5(o.test_data);
  train::check_dataset_fits(test, *m.model, o.test_data);
  test.mean = m.norm.mean;  // normalise as in training
  test.std = m.norm.std;
  train::Evaluator ev(*m.model, o.eval_batch);
  const train::EvalResult r = ev.run(m.state, test);
  std::printf("model %s (%s): test accuracy %.2f%% (%lld images), test loss %.4f\n",
              o.model_file.c_str(), m.model->name().c_str(), 100.0 * r.accuracy,
              static_cast<long long>(r.count), r.loss);
  obs::MetricsWriter metrics(common.metrics);
  metrics.write({{"event", "eval"},
                 {"model_file", o.model_file},
                 {"model", m.model->name()},
                 {"test_accuracy", r.accuracy},
                 {"test_loss", r.loss},
                 {"images", r.count}});
  return 0;
}

namespace {

std::string human(double v, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (v >= 1000 && i < 4) {
    v /= 1000;
    ++i;
  }
  char b[32];
  std::snprintf(b, sizeof b, i ? "%.2f %s%s" : "%.0f %s%s", v, prefixes[i], unit);
  return b;
}

int inspect_model(const std::string& name, int batch) {
  auto model = nn::make_model(name);
  const nn::Shape in = model->input_shape(batch);
  std::printf(
      "model %s: input %s, %d classes, %d units (cut between any two; --split takes unit "
      "indices)\n",
      model->name().c_str(), in.str().c_str(), model->classes(), model->num_units());
  std::printf("%4s  %-58s %-16s %12s %12s %12s\n", "unit", "layer", "output", "params", "fwd FLOPs",
              "act bytes");
  int64_t total_params = 0;
  double total_flops = 0;
  nn::Shape s = in;
  for (int u = 0; u < model->num_units(); ++u) {
    const nn::Layer& l = model->unit(u);
    const int64_t p = nn::total_elements(l.params(s));
    const double f = l.forward_flops(s);
    s = l.output_shape(s);
    std::string d = l.describe();
    if (d.size() > 58) d = d.substr(0, 55) + "...";
    std::printf("%4d  %-58s %-16s %12lld %12s %12s\n", u, d.c_str(), s.str().c_str(),
                static_cast<long long>(p), human(f, "").c_str(),
                obs::format_bytes(s.elements() * 4).c_str());
    total_params += p;
    total_flops += f;
  }
  std::printf(
      "total: %lld parameters (%s), %s forward FLOPs per batch of %d (training about "
      "3x)\n",
      static_cast<long long>(total_params), obs::format_bytes(total_params * 4).c_str(),
      human(total_flops, "").c_str(), batch);
  return 0;
}

int inspect_model_file(const std::string& path) {
  io::LoadedModel m = io::load_model(path);
  std::printf("%s: mpsl model file, model %s, %lld parameters, %lld buffer values, step %llu\n",
              path.c_str(), m.model->name().c_str(),
              static_cast<long long>(m.state.layout.param_count),
              static_cast<long long>(m.state.layout.buffer_count),
              static_cast<unsigned long long>(m.state.steps));
  for (const auto& e : m.state.layout.tensors) {
    std::string dims;
    for (auto d : e.dims) {
      if (!dims.empty()) dims += 'x';  // piecewise: GCC 12 warns falsely about "x" + to_string
      dims += std::to_string(d);
    }
    std::printf("  units/%03d/%-28s %s\n", e.unit, e.name.substr(e.name.find('.') + 1).c_str(),
                dims.c_str());
  }
  return 0;
}

void describe_part(const io::Location& f, const std::string& group) {
  io::Group g = f.open_group(group);
  const int b = static_cast<int>(g.read_int_attribute("units_begin"));
  const int e = static_cast<int>(g.read_int_attribute("units_end"));
  std::printf(
      "      %-18s units [%d, %d), %lld parameters + momentum, %lld buffer values, %lld "
      "optimiser steps\n",
      group.c_str(), b, e, static_cast<long long>(g.read_int_attribute("param_count")),
      static_cast<long long>(g.read_int_attribute("buffer_count")),
      static_cast<long long>(g.read_int_attribute("steps")));
}

// Prints what a checkpoint holds, after checking every file against the manifest and every
// tensor's checksum (InputError naming the file and the problem otherwise).
int inspect_checkpoint(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::path(path) / io::kLatestFile, ec) &&
      !std::filesystem::exists(io::manifest_path(path), ec)) {
    const auto names = io::list_checkpoints(path);
    std::printf("%s: checkpoint directory with %zu checkpoint(s):", path.c_str(), names.size());
    for (const auto& n : names) std::printf(" %s", n.c_str());
    std::printf("\n");
  }
  const std::string folder = io::resolve_checkpoint(path, "");
  const io::Manifest m = io::read_manifest(folder);
  io::check_rank_files(folder, m);
  std::unique_ptr<nn::Model> model;
  try {
    model = nn::make_model(m.model);
  } catch (const InputError& e) {
    throw InputError(io::manifest_path(folder) + ": " + e.what());
  }
  const auto& t = m.topology;
  std::printf("checkpoint %s: format %d, written by mpsl %s at %s\n", folder.c_str(),
              m.format_version, m.mpsl_version.c_str(), m.created_utc.c_str());
  std::printf("  model %s; round %d, %s; %lld optimiser steps of all owners so far\n",
              m.model.c_str(), m.round,
              m.round_complete ? "complete (after FedAvg: holds the aggregated model)"
                               : ("in progress: " + std::to_string(m.step_in_round) +
                                  " steps into it (a consistent cut, nothing in flight)")
                                     .c_str(),
              static_cast<long long>(m.total_steps));
  std::printf(
      "  topology: %d rank(s), %d owner rank(s), %d stage(s), split %s, %d owner(s), "
      "schedule %s, %d micro-batch(es)\n",
      t.value("world_size", 0), t.value("owner_ranks", 0), t.value("stages", 0),
      t.contains("split") && !t.at("split").empty()
          ? obs::join_ints(t.at("split").get<std::vector<int>>()).c_str()
          : "-",
      t.value("owners", 0), t.value("schedule", std::string("?")).c_str(),
      t.value("micro_batches", 1));
  std::printf("  seed %llu (%s)\n", static_cast<unsigned long long>(m.seed), io::kRandomnessNote);
  std::printf("  training set: %s, %lld images\n", m.data.value("source", std::string("?")).c_str(),
              static_cast<long long>(m.data.value("train_images", int64_t{0})));
  std::printf("  config:");
  for (const auto& [k, v] : m.config.items())
    if (!(v.is_string() && v.get<std::string>().empty()))
      std::printf(" %s=%s", k.c_str(),
                  v.is_string() ? v.get<std::string>().c_str() : v.dump().c_str());
  std::printf("\n");
  int64_t total = 0;
  for (const io::ManifestRank& r : m.ranks) {
    io::File f = io::open_rank_file(folder, m, r.rank);
    const std::string role = r.stage ? r.role + ' ' + std::to_string(r.stage) : r.role;
    std::printf("  rank %d (%s): %s, %s, crc32 %08x ok, written in %.3f s\n", r.rank, role.c_str(),
                r.file.c_str(), obs::format_bytes(r.summary.bytes).c_str(), r.summary.crc32,
                r.write_seconds);
    total += r.summary.bytes;
    if (r.role == "stage") {
      std::printf("    per-owner copies of its part: owners %s\n",
                  obs::join_ints(r.owners).c_str());
      for (int k : r.owners) {
        const std::string group = "copies/" + std::to_string(k);
        describe_part(f, group);
        io::Group pg = f.open_group(group);
        nn::PartState st(*model, static_cast<int>(pg.read_int_attribute("units_begin")),
                         static_cast<int>(pg.read_int_attribute("units_end")));
        io::read_part(f, group, *model, st);  // verifies every tensor's checksum
      }
      continue;
    }
    for (int k : r.owners) {
      io::Group g = f.open_group("owners/" + std::to_string(k));
      std::printf(
          "    owner %d: %lld samples (shard crc32 %08llx); %lld steps into round %d "
          "(local epoch %lld, batch %lld of it; shuffle of global epoch %lld); round "
          "loss so far %.4f over %lld images\n",
          k, static_cast<long long>(g.read_int_attribute("samples")),
          static_cast<unsigned long long>(g.read_int_attribute("shard_crc32")),
          static_cast<long long>(g.read_int_attribute("steps_in_round")), m.round,
          static_cast<long long>(g.read_int_attribute("epoch")),
          static_cast<long long>(g.read_int_attribute("step_in_epoch")),
          static_cast<long long>(g.read_int_attribute("global_epoch")),
          g.read_int_attribute("round_images") > 0
              ? g.read_double_attribute("round_loss_sum") /
                    static_cast<double>(g.read_int_attribute("round_images"))
              : 0.0,
          static_cast<long long>(g.read_int_attribute("round_images")));
      for (const char* which : r.role == "single" ? std::vector<const char*>{"model"}
                                                  : std::vector<const char*>{"first", "last"}) {
        const std::string group = "owners/" + std::to_string(k) + "/" + which;
        describe_part(f, group);
        io::Group pg = f.open_group(group);
        nn::PartState st(*model, static_cast<int>(pg.read_int_attribute("units_begin")),
                         static_cast<int>(pg.read_int_attribute("units_end")));
        io::read_part(f, group, *model, st);
      }
    }
  }
  std::printf("  %zu rank file(s), %s in total; every tensor's crc32 checked\n", m.ranks.size(),
              obs::format_bytes(total).c_str());
  return 0;
}

}  // namespace

int run_inspect(const CommonOptions&, const InspectOptions& o) {
  MPSL_INPUT_CHECK(!o.model.empty() || !o.path.empty(),
                   "inspect needs a PATH (model file or checkpoint) or --model NAME");
  if (!o.model.empty()) return inspect_model(o.model, o.batch);
  std::error_code ec;
  if (std::filesystem::is_directory(o.path, ec)) return inspect_checkpoint(o.path);
  if (io::is_hdf5_file(o.path)) return inspect_model_file(o.path);
  if (plan::is_plan_or_profile(o.path)) return plan::inspect_json(o.path);
  throw InputError(o.path +
                   ": not something mpsl can inspect (expected a checkpoint folder or directory, "
                   "an mpsl model file, a plan or a profile)");
}

}  // namespace mpsl::cli
