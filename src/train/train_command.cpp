// `mpsl train`: for now the single-process reference path (one rank, no stages).
#include <chrono>
#include <cmath>
#include <numeric>

#include <mpi.h>

#include "mpsl/cli/commands.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/io/model_file.hpp"
#include "mpsl/nn/zoo.hpp"
#include "mpsl/obs/log.hpp"
#include "mpsl/obs/memory.hpp"
#include "mpsl/obs/metrics.hpp"
#include "mpsl/train/local.hpp"

namespace mpsl::cli {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct TrainData {
  data::Dataset train, test;
  bool has_test = false;
};

TrainData load_data(const TrainOptions& o, const nn::Model& model, uint64_t seed) {
  TrainData d;
  if (o.synthetic) {
    const nn::Shape in = model.input_shape(1);
    d.train = data::make_synthetic(o.synthetic_count, in.c, in.h, in.w, model.classes(), seed);
  } else {
    d.train = data::read_dataset_h5(o.data);
    train::check_dataset_fits(d.train, model, o.data);
  }
  if (!o.test_data.empty()) {
    d.test = data::read_dataset_h5(o.test_data);
    train::check_dataset_fits(d.test, model, o.test_data);
    // Test images are normalised with the training set's statistics, as the model saw them.
    d.test.mean = d.train.mean;
    d.test.std = d.train.std;
    d.has_test = true;
  }
  return d;
}

}  // namespace

int run_train(const CommonOptions& common, const TrainOptions& o) {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world > 1 || o.stages > 0 || o.owners > 1) {
    throw InputError(
        "this build trains in one process only (1 rank, no --stages, --owners 1); multihop "
        "training over MPI is not available yet");
  }
  const auto t_start = Clock::now();
  auto model = nn::make_model(o.model);
  TrainData data = load_data(o, *model, common.seed);
  MPSL_INPUT_CHECK(data.train.count >= o.batch, "--batch " + std::to_string(o.batch) +
                                                    " is larger than the training set (" +
                                                    std::to_string(data.train.count) + " images)");

  obs::MetricsWriter metrics(common.metrics);
  metrics.write({{"event", "run_start"},
                 {"command", "train"},
                 {"model", o.model},
                 {"ranks", world},
                 {"owners", o.owners},
                 {"stages", o.stages},
                 {"schedule", o.schedule},
                 {"micro_batches", o.micro_batches},
                 {"batch", o.batch},
                 {"lr", o.lr},
                 {"momentum", o.momentum},
                 {"weight_decay", o.weight_decay},
                 {"rounds", o.rounds},
                 {"local_epochs", o.local_epochs},
                 {"seed", common.seed},
                 {"threads", common.threads},
                 {"train_images", data.train.count},
                 {"synthetic", o.synthetic}});

  const optim::SgdConfig sgd{o.lr, o.momentum, o.weight_decay};
  train::LocalTrainer trainer(*model, o.batch, sgd, common.seed);
  train::Evaluator evaluator(*model, o.eval_batch);
  train::BatchBuffers buf(o.batch, data.train.image_size());

  std::vector<int64_t> shard(data.train.count);
  std::iota(shard.begin(), shard.end(), 0);
  int64_t steps_per_epoch = data.train.count / o.batch;
  if (o.batches_per_epoch > 0)
    steps_per_epoch = std::min<int64_t>(steps_per_epoch, o.batches_per_epoch);
  MPSL_LOG(Info, "training " << o.model << " on " << (o.synthetic ? "synthetic data" : o.data)
                             << " (" << data.train.count << " images), batch " << o.batch << ", "
                             << steps_per_epoch << " steps per epoch, " << o.rounds
                             << " round(s) of " << o.local_epochs << " local epoch(s)");

  int64_t total_steps = 0, timed_images = 0;
  double timed_seconds = 0, last_accuracy = std::nan("");
  bool stop = false;
  for (int round = 1; round <= o.rounds && !stop; ++round) {
    const auto t_round = Clock::now();
    double loss_sum = 0;
    int64_t round_images = 0, round_correct = 0;
    obs::Progress progress("round " + std::to_string(round), steps_per_epoch * o.local_epochs,
                           !common.quiet);
    for (int epoch = 0; epoch < o.local_epochs && !stop; ++epoch) {
      const uint64_t global_epoch = static_cast<uint64_t>(round - 1) * o.local_epochs + epoch;
      const auto order = train::epoch_order(shard, common.seed, 0, global_epoch);
      for (int64_t s = 0; s < steps_per_epoch; ++s) {
        if (o.max_steps > 0 && total_steps >= o.max_steps) {
          stop = true;
          break;
        }
        data::assemble_batch(data.train, order.data() + s * o.batch, o.batch, buf.images.data(),
                             buf.labels.data());
        const auto t0 = Clock::now();
        const nn::LossResult r = trainer.step(buf.images.data(), buf.labels.data());
        const double dt = seconds_since(t0);
        if (total_steps >= o.warmup_steps) {
          timed_seconds += dt;
          timed_images += o.batch;
        }
        if (!std::isfinite(r.loss_sum))
          throw RuntimeFailure("non-finite loss at round " + std::to_string(round) + ", step " +
                               std::to_string(total_steps));
        loss_sum += r.loss_sum;
        round_correct += r.correct;
        round_images += o.batch;
        ++total_steps;
        const int64_t done = epoch * steps_per_epoch + s + 1;
        if (done % 10 == 0 || done == steps_per_epoch * o.local_epochs) {
          char extra[128];
          std::snprintf(extra, sizeof extra, "loss %.4f  %.0f img/s", loss_sum / round_images,
                        timed_seconds > 0 ? timed_images / timed_seconds : 0.0);
          progress.update(done, extra);
        }
      }
    }
    const double train_seconds = seconds_since(t_round);
    train::EvalResult ev;
    if (data.has_test) {
      ev = evaluator.run(trainer.state(), data.test);
      last_accuracy = ev.accuracy;
    }
    const double train_loss = round_images ? loss_sum / round_images : 0;
    const double ips = timed_seconds > 0 ? timed_images / timed_seconds : 0;
    char line[256];
    if (data.has_test)
      std::snprintf(line, sizeof line,
                    "round %d/%d: train loss %.4f, train accuracy %.2f%%, test accuracy %.2f%%, "
                    "%lld images in %.1f s (%.0f img/s)",
                    round, o.rounds, train_loss,
                    100.0 * round_correct / std::max<int64_t>(round_images, 1), 100.0 * ev.accuracy,
                    static_cast<long long>(round_images), train_seconds, ips);
    else
      std::snprintf(line, sizeof line,
                    "round %d/%d: train loss %.4f, %lld images in %.1f s (%.0f img/s)", round,
                    o.rounds, train_loss, static_cast<long long>(round_images), train_seconds, ips);
    progress.summary(line);
    nlohmann::json ev_json = {{"event", "round_end"},        {"round", round},
                              {"train_loss", train_loss},    {"images", round_images},
                              {"seconds", train_seconds},    {"images_per_s", ips},
                              {"predicted_seconds", nullptr}};
    ev_json["test_accuracy"] =
        data.has_test ? nlohmann::json(ev.accuracy) : nlohmann::json(nullptr);
    if (data.has_test) ev_json["test_loss"] = ev.loss;
    metrics.write(ev_json);
  }

  if (!o.save_model.empty()) {
    io::save_model(o.save_model, *model, trainer.state(), {data.train.mean, data.train.std});
    MPSL_LOG(Info, "model written to " << o.save_model);
  }
  const double ips = timed_seconds > 0 ? timed_images / timed_seconds : 0;
  metrics.write({{"event", "rank_summary"},
                 {"rank", 0},
                 {"role", "single"},
                 {"peak_rss_bytes", obs::peak_rss_bytes()},
                 {"busy_s", timed_seconds},
                 {"wait_s", 0.0},
                 {"comm_s", 0.0},
                 {"predicted_peak_bytes", nullptr}});
  nlohmann::json end = {{"event", "run_end"},
                        {"seconds", seconds_since(t_start)},
                        {"steps", total_steps},
                        {"images_per_s", ips},
                        {"exit", "ok"}};
  end["test_accuracy"] =
      std::isnan(last_accuracy) ? nlohmann::json(nullptr) : nlohmann::json(last_accuracy);
  metrics.write(end);
  {  // the machine-readable result line goes to stdout even with --quiet
    char line[256];
    std::snprintf(line, sizeof line, "RESULT model=%s steps=%lld train_img_per_s=%.1f test_acc=%s",
                  o.model.c_str(), static_cast<long long>(total_steps), ips,
                  std::isnan(last_accuracy) ? "n/a" : std::to_string(last_accuracy).c_str());
    std::printf("%s\n", line);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace mpsl::cli
