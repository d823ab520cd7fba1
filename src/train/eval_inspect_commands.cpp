// `mpsl eval` and `mpsl inspect`.
#include <cstdio>

#include "mpsl/cli/commands.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/io/model_file.hpp"
#include "mpsl/nn/zoo.hpp"
#include "mpsl/obs/memory.hpp"
#include "mpsl/obs/metrics.hpp"
#include "mpsl/train/local.hpp"

namespace mpsl::cli {

int run_eval(const CommonOptions& common, const EvalOptions& o) {
  MPSL_INPUT_CHECK(!o.model_file.empty() || !o.checkpoint.empty(),
                   "eval needs --model-file FILE.h5 or --checkpoint DIR");
  MPSL_INPUT_CHECK(o.checkpoint.empty(),
                   "--checkpoint: checkpoints are not available in this build");
  MPSL_INPUT_CHECK(!o.test_data.empty(), "eval needs --test-data TEST.h5");
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
    for (auto d : e.dims) dims += (dims.empty() ? "" : "x") + std::to_string(d);
    std::printf("  units/%03d/%-28s %s\n", e.unit, e.name.substr(e.name.find('.') + 1).c_str(),
                dims.c_str());
  }
  return 0;
}

}  // namespace

int run_inspect(const CommonOptions&, const InspectOptions& o) {
  MPSL_INPUT_CHECK(!o.model.empty() || !o.path.empty(),
                   "inspect needs a PATH (model file) or --model NAME");
  if (!o.model.empty()) return inspect_model(o.model, o.batch);
  if (io::is_hdf5_file(o.path)) return inspect_model_file(o.path);
  throw InputError(o.path + ": not a file mpsl can inspect (expected an mpsl model file)");
}

}  // namespace mpsl::cli
