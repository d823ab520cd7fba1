#include "mpsl/nn/loss.hpp"

#include <cmath>

namespace mpsl::nn {

static int argmax(const float* v, int n) {
  int best = 0;
  for (int j = 1; j < n; ++j)
    if (v[j] > v[best]) best = j;
  return best;
}

LossResult softmax_cross_entropy(const float* logits, const int32_t* labels, int64_t n, int classes,
                                 float* diff, float grad_scale) {
  LossResult r;
  for (int64_t i = 0; i < n; ++i) {
    const float* z = logits + i * classes;
    const int best = argmax(z, classes);
    const float zmax = z[best];
    double sum = 0;
    for (int j = 0; j < classes; ++j) sum += std::exp(static_cast<double>(z[j] - zmax));
    const double log_sum = std::log(sum);
    r.loss_sum += log_sum - static_cast<double>(z[labels[i]] - zmax);
    r.correct += best == labels[i];
    if (diff) {
      float* d = diff + i * classes;
      for (int j = 0; j < classes; ++j) {
        const double p = std::exp(static_cast<double>(z[j] - zmax) - log_sum);
        d[j] = static_cast<float>(p - (j == labels[i] ? 1.0 : 0.0)) * grad_scale;
      }
    }
  }
  return r;
}

int64_t count_correct(const float* logits, const int32_t* labels, int64_t n, int classes) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += argmax(logits + i * classes, classes) == labels[i];
  return c;
}

}  // namespace mpsl::nn
