// Training and evaluation of a whole model in one process: the reference path every multihop
// run must match, and the building blocks (data order, batches, evaluation) the others share.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mpsl/data/dataset.hpp"
#include "mpsl/nn/loss.hpp"
#include "mpsl/nn/model.hpp"
#include "mpsl/optim/sgd.hpp"

namespace mpsl::train {

// The order in which an owner visits its shard in one epoch: a Fisher-Yates shuffle from a
// stream that depends only on (seed, owner, epoch), so any process layout reproduces it.
std::vector<int64_t> epoch_order(const std::vector<int64_t>& shard, uint64_t seed, uint64_t owner,
                                 uint64_t epoch);

// Reusable host buffers for one batch: normalised images and int32 labels.
struct BatchBuffers {
  std::vector<float> images;
  std::vector<int32_t> labels;
  BatchBuffers(int64_t batch, int64_t image_size) : images(batch * image_size), labels(batch) {}
};

// Trains whole-model copies: forward, loss, backward, SGD. One program (primitives built once)
// serves every copy. With micro_batches M > 1 a batch runs as M micro-batches whose gradients
// accumulate before the one optimiser step, which equals the whole-batch update.
class LocalTrainer {
 public:
  // init_model: a model file to start from (--init-model), or empty for the seeded weights.
  LocalTrainer(const nn::Model& model, int64_t batch, int micro_batches,
               const optim::SgdConfig& sgd, uint64_t seed, std::string init_model = "");
  // One optimiser step of `state` (owner `owner`) on a batch of exactly batch() samples.
  nn::LossResult step(nn::PartState& state, const float* images, const int32_t* labels,
                      int owner = 0);
  // step() in two halves: forward, loss and backward (gradients in state.grads), then the
  // optimiser update, so the caller can look at the loss and gradients in between.
  nn::LossResult compute(nn::PartState& state, const float* images, const int32_t* labels,
                         int owner = 0);
  void apply(nn::PartState& state);
  int64_t batch() const { return batch_; }
  nn::PartState make_state() const;  // a whole-model copy with the starting weights

 private:
  const nn::Model& model_;
  int64_t batch_;
  int micro_;
  optim::SgdConfig sgd_;
  uint64_t seed_;
  std::string init_model_;
  nn::PartProgram program_;
  std::unique_ptr<nn::PartSlot> slot_;
  std::vector<float> logits_, dlogits_;
};

struct EvalResult {
  double loss = 0;      // mean cross-entropy
  double accuracy = 0;  // fraction correct
  int64_t count = 0;
};

// Evaluates a whole-model state on a dataset in batches of eval_batch (inference semantics:
// BN running statistics, no dropout). Primitives are built once per batch size and kept.
class Evaluator {
 public:
  Evaluator(const nn::Model& model, int64_t eval_batch);
  EvalResult run(nn::PartState& state, const data::Dataset& ds);

 private:
  nn::PartProgram& program(int64_t batch);
  const nn::Model& model_;
  int64_t eval_batch_;
  std::map<int64_t, std::unique_ptr<nn::PartProgram>> programs_;
  std::map<int64_t, std::unique_ptr<nn::PartSlot>> slots_;
  BatchBuffers buffers_{0, 0};
  std::vector<float> logits_;
  std::vector<int64_t> idx_;
};

// Checks that a dataset fits a model's input (channels, height, width) and classes; throws an
// InputError naming `what` (e.g. the file) otherwise.
void check_dataset_fits(const data::Dataset& ds, const nn::Model& model, const std::string& what);

}  // namespace mpsl::train
