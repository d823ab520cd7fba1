#include "mpsl/train/local.hpp"

#include <numeric>
#include <utility>

#include "mpsl/core/error.hpp"
#include "mpsl/core/rng.hpp"
#include "mpsl/io/model_file.hpp"

namespace mpsl::train {

std::vector<int64_t> epoch_order(const std::vector<int64_t>& shard, uint64_t seed, uint64_t owner,
                                 uint64_t epoch) {
  std::vector<int64_t> order = shard;
  Rng rng(seed, 0xda7a000000ULL ^ (owner << 20) ^ epoch);
  for (int64_t i = static_cast<int64_t>(order.size()) - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)));
    std::swap(order[i], order[j]);
  }
  return order;
}

LocalTrainer::LocalTrainer(const nn::Model& model, int64_t batch, int micro_batches,
                           const optim::SgdConfig& sgd, uint64_t seed, std::string init_model)
    : model_(model),
      batch_(batch),
      micro_(micro_batches),
      sgd_(sgd),
      seed_(seed),
      init_model_(std::move(init_model)),
      program_(model, 0, model.num_units(), batch / micro_batches, false, true),
      slot_(program_.make_slot()),
      logits_(batch * model.classes()),
      dlogits_(batch * model.classes()) {
  MPSL_CHECK(micro_batches >= 1 && batch % micro_batches == 0, "micro-batches must divide batch");
}

nn::PartState LocalTrainer::make_state() const {
  nn::PartState s(model_, 0, model_.num_units());
  io::initialise_part(model_, s, seed_, init_model_);
  s.adopt_formats(program_);  // weights in the layouts the primitives want
  return s;
}

nn::LossResult LocalTrainer::step(nn::PartState& state, const float* images, const int32_t* labels,
                                  int owner) {
  const nn::LossResult r = compute(state, images, labels, owner);
  apply(state);
  return r;
}

void LocalTrainer::apply(nn::PartState& state) {
  optim::sgd_step(state, sgd_);
}

nn::LossResult LocalTrainer::compute(nn::PartState& state, const float* images,
                                     const int32_t* labels, int owner) {
  const int64_t mb = batch_ / micro_;
  const int64_t image_size = model_.input_shape(1).per_sample();
  const int classes = model_.classes();
  nn::LossResult total;
  for (int m = 0; m < micro_; ++m) {
    const nn::StepInfo info{seed_, state.steps, m * mb, true, static_cast<uint64_t>(owner)};
    program_.forward(*slot_, state, images + m * mb * image_size, logits_.data(), info);
    const nn::LossResult r =
        nn::softmax_cross_entropy(logits_.data(), labels + m * mb, mb, classes, dlogits_.data(),
                                  1.f / static_cast<float>(batch_));
    program_.backward(*slot_, state, dlogits_.data(), nullptr, info, m > 0);
    total.loss_sum += r.loss_sum;
    total.correct += r.correct;
  }
  return total;
}

Evaluator::Evaluator(const nn::Model& model, int64_t eval_batch)
    : model_(model), eval_batch_(eval_batch) {}

nn::PartProgram& Evaluator::program(int64_t batch) {
  auto it = programs_.find(batch);
  if (it == programs_.end()) {
    it = programs_
             .emplace(batch, std::make_unique<nn::PartProgram>(model_, 0, model_.num_units(), batch,
                                                               false, false))
             .first;
    slots_[batch] = it->second->make_slot();
  }
  return *it->second;
}

EvalResult Evaluator::run(nn::PartState& state, const data::Dataset& ds) {
  EvalResult r;
  const int64_t n = ds.count;
  const int classes = model_.classes();
  // Kept from call to call: an evaluation every round would otherwise fault fresh pages in.
  const int64_t most = std::min<int64_t>(eval_batch_, n);
  BatchBuffers& buf = buffers_;
  buf.images.resize(most * ds.image_size());
  buf.labels.resize(most);
  logits_.resize(most * classes);
  idx_.resize(most);
  auto& logits = logits_;
  auto& idx = idx_;
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += eval_batch_) {
    const int64_t b = std::min(eval_batch_, n - start);
    std::iota(idx.begin(), idx.begin() + b, start);
    data::assemble_batch(ds, idx.data(), b, buf.images.data(), buf.labels.data());
    nn::PartProgram& prog = program(b);
    prog.forward(*slots_[b], state, buf.images.data(), logits.data(), nn::StepInfo{0, 0, 0, false});
    const nn::LossResult lr =
        nn::softmax_cross_entropy(logits.data(), buf.labels.data(), b, classes, nullptr, 1.f);
    loss_sum += lr.loss_sum;
    correct += lr.correct;
  }
  r.count = n;
  r.loss = n ? loss_sum / n : 0;
  r.accuracy = n ? static_cast<double>(correct) / n : 0;
  return r;
}

void check_dataset_fits(const data::Dataset& ds, const nn::Model& model, const std::string& what) {
  const nn::Shape in = model.input_shape(1);
  if (ds.channels != in.c || ds.height != in.h || ds.width != in.w) {
    throw InputError(what + ": images are " + std::to_string(ds.channels) + "x" +
                     std::to_string(ds.height) + "x" + std::to_string(ds.width) + " but model '" +
                     model.name() + "' takes " + std::to_string(in.c) + "x" + std::to_string(in.h) +
                     "x" + std::to_string(in.w));
  }
  if (ds.num_classes() > model.classes()) {
    throw InputError(what + ": " + std::to_string(ds.num_classes()) + " classes but model '" +
                     model.name() + "' predicts " + std::to_string(model.classes()));
  }
  if (ds.count == 0) throw InputError(what + ": the dataset holds no images");
}

}  // namespace mpsl::train
