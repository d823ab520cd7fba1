// Weights stored in oneDNN's layouts (PartState::adopt_formats) must be invisible to everything
// but speed: the same values, the same training, plain files.
#include <gtest/gtest.h>

#include <cstring>

#include "mpsl/nn/zoo.hpp"
#include "mpsl/train/local.hpp"

namespace {

using namespace mpsl;

std::vector<float> plain_params(const nn::PartState& s) {
  nn::FloatBuffer b = s.plain_array(s.params);
  return std::vector<float>(b.data(), b.data() + b.size());
}

TEST(PartFormats, AdoptKeepsValuesAndChangesStorage) {
  auto model = nn::make_model("fmnist-cnn");
  nn::PartProgram program(*model, 0, model->num_units(), 16, false, true);
  nn::PartState s(*model, 0, model->num_units());
  s.initialise(*model, 7);
  const std::vector<float> before(s.params.data(), s.params.data() + s.params.size());
  s.adopt_formats(program);
  EXPECT_FALSE(s.plain()) << "no tensor took a oneDNN layout";
  // The raw storage changed (blocked layouts), the plain view did not.
  EXPECT_NE(0, std::memcmp(before.data(), s.params.data(), before.size() * sizeof(float)));
  EXPECT_EQ(before, plain_params(s));
  // set_plain_values inverts plain_values.
  const auto& e = s.layout.tensors.front();
  std::vector<float> v = s.plain_values(e, s.params);
  for (auto& x : v) x += 1.f;
  s.set_plain_values(e, v.data(), s.params);
  EXPECT_EQ(v, s.plain_values(e, s.params));
}

TEST(PartFormats, TrainingIsBitwiseTheSameAsWithPlainStorage) {
  auto model = nn::make_model("fmnist-cnn");
  const int64_t batch = 16;
  train::LocalTrainer trainer(*model, batch, 1, optim::SgdConfig{0.05f, 0.9f, 1e-4f}, 3);
  nn::PartState native = trainer.make_state();  // adopts the program's formats
  nn::PartState plain(*model, 0, model->num_units());
  plain.initialise(*model, 3);
  ASSERT_FALSE(native.plain());
  ASSERT_TRUE(plain.plain());
  data::Dataset ds = data::make_synthetic(batch * 3, 1, 28, 28, 10, 5);
  train::BatchBuffers buf(batch, ds.image_size());
  for (int step = 0; step < 3; ++step) {
    std::vector<int64_t> idx(batch);
    for (int64_t i = 0; i < batch; ++i) idx[i] = step * batch + i;
    data::assemble_batch(ds, idx.data(), batch, buf.images.data(), buf.labels.data());
    const auto a = trainer.step(native, buf.images.data(), buf.labels.data());
    const auto b = trainer.step(plain, buf.images.data(), buf.labels.data());
    EXPECT_EQ(a.loss_sum, b.loss_sum) << "step " << step;
  }
  EXPECT_EQ(plain_params(plain), plain_params(native));
  nn::FloatBuffer ma = native.plain_array(native.momentum), mb = plain.plain_array(plain.momentum);
  EXPECT_EQ(0, std::memcmp(ma.data(), mb.data(), ma.size() * sizeof(float)));
}

}  // namespace
