// Softmax cross-entropy, computed by the data owner (the only holder of labels).
#pragma once

#include <cstdint>

namespace mpsl::nn {

struct LossResult {
  double loss_sum = 0;  // sum over the samples of -log softmax(logits)[label]
  int64_t correct = 0;  // samples whose arg-max equals the label
};

// logits [n, classes] plain. When diff is not null it receives
// (softmax - onehot(label)) * grad_scale; grad_scale = 1/B for the mean over a batch of B
// (also when this call sees only a micro-batch of it).
LossResult softmax_cross_entropy(const float* logits, const int32_t* labels, int64_t n, int classes,
                                 float* diff, float grad_scale);

// Counts correct arg-max predictions.
int64_t count_correct(const float* logits, const int32_t* labels, int64_t n, int classes);

}  // namespace mpsl::nn
