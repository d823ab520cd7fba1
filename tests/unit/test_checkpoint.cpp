// Unit tests of checkpoints (io/checkpoint.hpp) without MPI: rank files round trip bitwise
// (weights, momentum, BatchNorm statistics, steps, owner cursors), every kind of damage is an
// InputError naming the file and the problem, manifests round trip, publishing is atomic and
// `latest` resolves, and a single-process training run continued from a checkpoint matches one
// that never stopped. Also the --checkpoint-every forms and the owners' cursor arithmetic.
#include <gtest/gtest.h>

#include <unistd.h>
#include "temp_dir_test.hpp"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mpsl/cli/parse.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/core/rng.hpp"
#include "mpsl/data/dataset.hpp"
#include "mpsl/io/checkpoint.hpp"
#include "mpsl/nn/zoo.hpp"
#include "mpsl/train/federation.hpp"
#include "mpsl/train/local.hpp"

namespace fs = std::filesystem;
using mpsl::InputError;
namespace io = mpsl::io;
namespace nn = mpsl::nn;

namespace {

class CheckpointTest : public mpsl::testing::TempDirTest {};

template <class Fn>
void expect_input_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an InputError";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << msg << "\nlacks: " << p;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// A part copy with every array (params, momentum, buffers) filled with distinct values.
nn::PartState random_part(const nn::Model& m, int begin, int end, uint64_t seed) {
  nn::PartState s(m, begin, end);
  mpsl::Rng rng(seed, 7);
  for (int64_t i = 0; i < s.params.size(); ++i) s.params[i] = rng.normal();
  for (int64_t i = 0; i < s.momentum.size(); ++i) s.momentum[i] = rng.normal();
  for (int64_t i = 0; i < s.buffers.size(); ++i) s.buffers[i] = rng.uniform(0.5f, 2.f);
  s.steps = 17 + seed;
  return s;
}

void expect_same(const mpsl::nn::FloatBuffer& a, const mpsl::nn::FloatBuffer& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what;
}

io::RankHeader header(const std::string& model, const std::string& role = "owner") {
  io::RankHeader h;
  h.model = model;
  h.checkpoint = "ckpt-r0002-s000003";
  h.rank = 1;
  h.world_size = 4;
  h.role = role;
  h.round = 2;
  h.step_in_round = 3;
  h.seed = 5;
  return h;
}

// Writes a rank file of resnet18's units [0, 4) (a conv, BatchNorm, pooling, a residual block)
// for owners 1 and 5; returns its summary.
struct Written {
  std::unique_ptr<nn::Model> model = nn::make_model("resnet18");
  std::vector<nn::PartState> parts;
  std::vector<io::OwnerRecord> owners;
  io::FileSummary summary;
};

Written write_example(const std::string& file) {
  Written w;
  for (int k : {1, 5}) {
    w.parts.push_back(random_part(*w.model, 0, 4, k));
    io::OwnerRecord r;
    r.owner = k;
    r.samples = 100 + k;
    r.shard_crc32 = 0xabcdef00u + k;
    r.steps_in_round = 3;
    r.epoch = 1;
    r.global_epoch = 3;
    r.step_in_epoch = 1;
    r.loss_sum = 12.5 + k;
    r.correct = 7;
    r.images = 96;
    w.owners.push_back(r);
  }
  std::vector<io::PartRecord> recs = {{"owners/1/first", 1, &w.parts[0]},
                                      {"owners/5/first", 5, &w.parts[1]}};
  w.summary = io::write_rank_file(file, *w.model, header("resnet18"), w.owners, recs);
  return w;
}

void read_example(const std::string& file, const Written& w, const io::FileSummary& expected,
                  std::vector<nn::PartState>& parts, std::vector<io::OwnerRecord>& owners) {
  parts.clear();
  for (int i = 0; i < 2; ++i) parts.emplace_back(*w.model, 0, 4);
  owners.assign(2, io::OwnerRecord{});
  owners[0].owner = 1;
  owners[1].owner = 5;
  std::vector<io::PartRecord> recs = {{"owners/1/first", 1, &parts[0]},
                                      {"owners/5/first", 5, &parts[1]}};
  io::read_rank_file(file, *w.model, header("resnet18"), expected, owners, recs);
}

// The file offset of a dataset's data (contiguous layout).
haddr_t data_offset(const std::string& file, const std::string& dataset) {
  io::File f = io::File::open(file);
  io::Dataset d = f.open_dataset(dataset);
  return H5Dget_offset(d.id());
}

void flip_byte(const std::string& file, haddr_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x40);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

}  // namespace

TEST(CheckpointCrc, MatchesZlibReferenceValue) {
  const std::string s = "123456789";
  EXPECT_EQ(io::crc32_bytes(s.data(), s.size()), 0xCBF43926u);  // the CRC-32 check value
  EXPECT_EQ(io::crc32_bytes(s.data() + 4, 5, io::crc32_bytes(s.data(), 4)), 0xCBF43926u);
}

TEST_F(CheckpointTest, RankFileRoundTripsBitwiseWithBatchNormAndMomentum) {
  const std::string file = path("rank-1.h5");
  const Written w = write_example(file);
  EXPECT_EQ(w.summary.bytes, static_cast<int64_t>(fs::file_size(file)));
  std::vector<nn::PartState> parts;
  std::vector<io::OwnerRecord> owners;
  read_example(file, w, w.summary, parts, owners);
  for (int i = 0; i < 2; ++i) {
    expect_same(w.parts[i].params, parts[i].params, "params");
    expect_same(w.parts[i].momentum, parts[i].momentum, "momentum");
    expect_same(w.parts[i].buffers, parts[i].buffers, "BatchNorm running statistics");
    EXPECT_GT(parts[i].buffers.size(), 0);
    EXPECT_EQ(parts[i].steps, w.parts[i].steps);
    EXPECT_EQ(owners[i].samples, w.owners[i].samples);
    EXPECT_EQ(owners[i].shard_crc32, w.owners[i].shard_crc32);
    EXPECT_EQ(owners[i].steps_in_round, 3);
    EXPECT_EQ(owners[i].epoch, 1);
    EXPECT_EQ(owners[i].global_epoch, 3);
    EXPECT_EQ(owners[i].step_in_epoch, 1);
    EXPECT_EQ(owners[i].loss_sum, w.owners[i].loss_sum);
    EXPECT_EQ(owners[i].images, 96);
  }
}

TEST_F(CheckpointTest, RankFileKeepsModelFileLayoutsAndSaysHowRandomnessResumes) {
  const std::string file = path("rank-1.h5");
  const Written w = write_example(file);
  io::File f = io::File::open(file);
  EXPECT_EQ(f.read_string_attribute("format"), "mpsl-checkpoint");
  EXPECT_EQ(f.read_int_attribute("format_version"), io::kCheckpointFormatVersion);
  EXPECT_EQ(f.read_int_attribute("seed"), 5);
  EXPECT_NE(f.read_string_attribute("randomness").find("counter-based"), std::string::npos);
  // Plain layouts as in model files: conv [O, I, KH, KW], BatchNorm statistics [C].
  EXPECT_EQ(f.open_dataset("owners/1/first/units/000/weight").shape(), (io::Shape{64, 3, 7, 7}));
  EXPECT_EQ(f.open_dataset("owners/1/first/units/001/running_var").shape(), (io::Shape{64}));
  EXPECT_TRUE(f.exists("owners/1/first/momentum/units/000/weight"));
  EXPECT_FALSE(f.exists("owners/1/first/momentum/units/001/running_var"));  // not trained
  const auto w0 = f.read_dataset<float>("owners/5/first/units/000/weight");
  EXPECT_EQ(std::memcmp(w0.data(), w.parts[1].params.data(), w0.size() * sizeof(float)), 0);
  EXPECT_EQ(f.open_dataset("owners/5/first/units/000/weight").read_int_attribute("crc32"),
            io::crc32_bytes(w0.data(), w0.size() * sizeof(float)));
}

TEST_F(CheckpointTest, DamagedTensorIsNamed) {
  const std::string file = path("rank-1.h5");
  const Written w = write_example(file);
  const std::string tensor = "owners/5/first/units/003/main.0.weight";
  flip_byte(file, data_offset(file, tensor) + 100);
  std::vector<nn::PartState> parts;
  std::vector<io::OwnerRecord> owners;
  io::FileSummary expected = w.summary;
  expect_input_error([&] { read_example(file, w, expected, parts, owners); },
                     {file, "/" + tensor, "checksum mismatch"});
}

TEST_F(CheckpointTest, TruncatedFileIsRefused) {
  const std::string file = path("rank-1.h5");
  const Written w = write_example(file);
  fs::resize_file(file, w.summary.bytes / 2);
  std::vector<nn::PartState> parts;
  std::vector<io::OwnerRecord> owners;
  expect_input_error([&] { read_example(file, w, w.summary, parts, owners); }, {file, "truncated"});
}

TEST_F(CheckpointTest, DamageOutsideTensorsFailsTheFileChecksum) {
  const std::string file = path("rank-1.h5");
  const Written w = write_example(file);
  io::FileSummary wrong = w.summary;
  wrong.crc32 ^= 1;  // as if a byte no tensor covers had changed
  std::vector<nn::PartState> parts;
  std::vector<io::OwnerRecord> owners;
  expect_input_error([&] { read_example(file, w, wrong, parts, owners); },
                     {file, "file checksum mismatch"});
}

TEST_F(CheckpointTest, WrongVersionModelRankAndPositionAreRefused) {
  const std::string file = path("rank-1.h5");
  Written w = write_example(file);
  auto reread = [&] {
    const io::FileSummary now{static_cast<int64_t>(fs::file_size(file)), 0};
    std::vector<nn::PartState> parts;
    std::vector<io::OwnerRecord> owners;
    read_example(file, w, now, parts, owners);
  };
  {
    io::File f = io::File::open_read_write(file);
    f.write_attribute("format_version", 9);
  }
  expect_input_error(reread, {file, "format version 9", "reads version 1"});
  {
    io::File f = io::File::open_read_write(file);
    f.write_attribute("format_version", io::kCheckpointFormatVersion);
    f.write_attribute("model", "vgg11");
  }
  expect_input_error(reread, {file, "holds model 'vgg11'", "resnet18"});
  {
    io::File f = io::File::open_read_write(file);
    f.write_attribute("model", "resnet18");
    f.write_attribute("rank", 3);
  }
  expect_input_error(reread, {file, "rank 3", "expected rank 1"});
  {
    io::File f = io::File::open_read_write(file);
    f.write_attribute("rank", 1);
    f.write_attribute("step_in_round", 4);
  }
  expect_input_error(reread, {file, "round 2 step 4"});
}

TEST_F(CheckpointTest, ManifestRoundTripsAndChecksItsVersion) {
  io::Manifest m;
  m.mpsl_version = "0.1.0";
  m.name = "ckpt-r0003-s000010";
  m.model = "fmnist-cnn";
  m.round = 3;
  m.step_in_round = 10;
  m.total_steps = 70;
  m.seed = 42;
  m.topology = {{"world_size", 4}};
  m.config = {{"lr", 0.01}};
  m.data = {{"train_images", 10}};
  for (int r = 0; r < 2; ++r) {
    io::ManifestRank e;
    e.rank = r;
    e.role = r ? "stage" : "owner";
    e.file = "rank-" + std::to_string(r) + ".h5";
    e.summary = {1000 + r, 0xfffffff0u + r};
    e.owners = {0, 1};
    e.stage = r;
    m.ranks.push_back(e);
  }
  const io::Manifest back = io::Manifest::from_json(m.to_json(), "x");
  EXPECT_EQ(back.name, m.name);
  EXPECT_EQ(back.round, 3);
  EXPECT_EQ(back.step_in_round, 10);
  EXPECT_FALSE(back.round_complete);
  EXPECT_EQ(back.seed, 42u);
  EXPECT_EQ(back.ranks[1].summary.crc32, 0xfffffff1u);
  EXPECT_EQ(back.ranks[1].role, "stage");
  EXPECT_EQ(back.config, m.config);
  nlohmann::json j = m.to_json();
  j["format_version"] = 2;
  expect_input_error([&] { io::Manifest::from_json(j, "M.json"); }, {"M.json", "format version 2"});
  j = m.to_json();
  j.erase("position");
  expect_input_error([&] { io::Manifest::from_json(j, "M.json"); }, {"M.json", "malformed"});
}

TEST_F(CheckpointTest, PublishIsAtomicAndLatestResolves) {
  const std::string dir = path("ck");
  auto publish = [&](const std::string& name) {
    io::prepare_checkpoint_folder(dir, name, false);
    std::ofstream(io::temp_folder(dir, name) + "/rank-0.h5") << "x";
    io::Manifest m;
    m.name = name;
    m.mpsl_version = "t";
    m.model = "fmnist-cnn";
    m.ranks.push_back({0, "single", "rank-0.h5", {1, 0}, 0, {}, 0});
    io::publish_checkpoint(dir, m);
  };
  expect_input_error([&] { io::resolve_checkpoint("latest", ""); }, {"--checkpoint-dir"});
  EXPECT_EQ(io::resolve_checkpoint("latest", dir + "-none"), "");  // nothing yet: fresh start
  publish(io::checkpoint_name(1, 6));
  publish(io::checkpoint_name(2, 3));
  EXPECT_EQ(io::checkpoint_name(2, 3), "ckpt-r0002-s000003");
  EXPECT_EQ(io::resolve_checkpoint("latest", dir), dir + "/ckpt-r0002-s000003");
  EXPECT_EQ(io::resolve_checkpoint(dir, ""), dir + "/ckpt-r0002-s000003");
  EXPECT_EQ(io::resolve_checkpoint(dir + "/ckpt-r0001-s000006", ""), dir + "/ckpt-r0001-s000006");
  EXPECT_EQ(io::read_manifest(dir + "/ckpt-r0002-s000003").name, "ckpt-r0002-s000003");
  // A write that never finished: invisible to `latest`, refused by name, cleaned up later.
  io::prepare_checkpoint_folder(dir, io::checkpoint_name(3, 1), false);
  EXPECT_EQ(io::resolve_checkpoint("latest", dir), dir + "/ckpt-r0002-s000003");
  expect_input_error([&] { io::resolve_checkpoint(dir + "/ckpt-r0003-s000001.tmp", ""); },
                     {"unfinished"});
  EXPECT_EQ(io::list_checkpoints(dir),
            (std::vector<std::string>{"ckpt-r0001-s000006", "ckpt-r0002-s000003"}));
  publish(io::checkpoint_name(2, 3));  // the same name again: replaced whole
  EXPECT_EQ(io::resolve_checkpoint("latest", dir), dir + "/ckpt-r0002-s000003");
  io::prepare_checkpoint_folder(dir, io::checkpoint_name(4, 0), true);
  EXPECT_FALSE(fs::exists(dir + "/ckpt-r0003-s000001.tmp"));
  publish(io::checkpoint_name(4, 0));
  io::prune_checkpoints(dir, 2);
  EXPECT_EQ(io::list_checkpoints(dir),
            (std::vector<std::string>{"ckpt-r0002-s000003", "ckpt-r0004-s000000"}));
  std::ofstream(dir + "/latest") << "ckpt-r0009-s000000\n";
  expect_input_error([&] { io::resolve_checkpoint("latest", dir); },
                     {"latest", "ckpt-r0009-s000000", "does not exist"});
}

// The single-process round trip: K = 2 owners train 3 steps each, checkpoint, train 2 more;
// the same from the checkpoint read back into fresh copies gives bitwise the same state.
TEST_F(CheckpointTest, SingleProcessTrainingContinuesBitwiseFromACheckpoint) {
  auto model = nn::make_model("fmnist-cnn");
  const int64_t batch = 8;
  const mpsl::optim::SgdConfig sgd{0.05f, 0.9f, 1e-4f};
  mpsl::train::LocalTrainer trainer(*model, batch, 1, sgd, 3);
  const mpsl::data::Dataset ds = mpsl::data::make_synthetic(64, 1, 28, 28, 10, 3);
  mpsl::train::BatchBuffers buf(batch, ds.image_size());
  std::vector<int64_t> idx(batch);
  auto step = [&](nn::PartState& s, int k, int i) {
    for (int64_t j = 0; j < batch; ++j) idx[j] = (i * batch + j + 7 * k) % ds.count;
    mpsl::data::assemble_batch(ds, idx.data(), batch, buf.images.data(), buf.labels.data());
    trainer.step(s, buf.images.data(), buf.labels.data(), k);
  };
  std::vector<nn::PartState> straight = {trainer.make_state(), trainer.make_state()};
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < 3; ++i) step(straight[k], k, i);
  const std::string file = path("rank-0.h5");
  std::vector<io::PartRecord> recs = {{"owners/0/model", 0, &straight[0]},
                                      {"owners/1/model", 1, &straight[1]}};
  io::RankHeader h = header("fmnist-cnn", "single");
  const io::FileSummary sum = io::write_rank_file(file, *model, h, {}, recs);
  for (int k = 0; k < 2; ++k)
    for (int i = 3; i < 5; ++i) step(straight[k], k, i);

  std::vector<nn::PartState> resumed = {trainer.make_state(), trainer.make_state()};
  std::vector<io::OwnerRecord> none;
  recs = {{"owners/0/model", 0, &resumed[0]}, {"owners/1/model", 1, &resumed[1]}};
  io::read_rank_file(file, *model, h, sum, none, recs);
  EXPECT_EQ(resumed[1].steps, 3u);
  for (int k = 0; k < 2; ++k)
    for (int i = 3; i < 5; ++i) step(resumed[k], k, i);
  for (int k = 0; k < 2; ++k) {
    expect_same(straight[k].params, resumed[k].params, "params after the resume");
    expect_same(straight[k].momentum, resumed[k].momentum, "momentum after the resume");
    EXPECT_EQ(straight[k].steps, resumed[k].steps);
  }
}

TEST(CheckpointCursor, OwnersCursorIsNormalisedOverLocalEpochs) {
  mpsl::train::FederationPlan p;
  p.owners = 2;
  p.local_epochs = 2;
  p.steps_per_epoch = {3, 5};
  p.samples = {30, 50};
  EXPECT_EQ(p.round_length(1), 10);
  EXPECT_EQ(p.cursor(0, 1, 0), (std::pair<int, int64_t>{0, 0}));
  EXPECT_EQ(p.cursor(0, 1, 2), (std::pair<int, int64_t>{0, 2}));
  EXPECT_EQ(p.cursor(0, 1, 3), (std::pair<int, int64_t>{1, 0}));  // epoch 0 done: next one
  EXPECT_EQ(p.cursor(0, 1, 6), (std::pair<int, int64_t>{1, 3}));  // the round's end
  EXPECT_EQ(p.cursor(0, 1, 9), (std::pair<int, int64_t>{1, 3}));  // capped at its steps
  EXPECT_EQ(p.cursor(1, 1, 7), (std::pair<int, int64_t>{1, 2}));
}

TEST(CheckpointOptions, CheckpointEveryTakesRoundsStepsOrWallClock) {
  using mpsl::cli::parse_args;
  const std::vector<std::string> base = {"train",       "--model",          "m",
                                         "--synthetic", "--checkpoint-dir", "ck"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return parse_args(a).train;
  };
  EXPECT_EQ(with({}).checkpoint_every, 1);  // default with a folder: every round
  EXPECT_EQ(with({"--checkpoint-every", "3"}).checkpoint_every, 3);
  EXPECT_EQ(with({"--checkpoint-every", "2rounds"}).checkpoint_every, 2);
  EXPECT_EQ(with({"--checkpoint-every", "0"}).checkpoint_every, 0);
  const auto steps = with({"--checkpoint-every", "50steps"});
  EXPECT_EQ(steps.checkpoint_every_steps, 50);
  EXPECT_EQ(steps.checkpoint_every, 0);
  EXPECT_EQ(with({"--checkpoint-every", "600s"}).checkpoint_every_seconds, 600);
  EXPECT_EQ(with({"--checkpoint-every", "10m"}).checkpoint_every_seconds, 600);
  EXPECT_EQ(with({"--checkpoint-every", "1.5h"}).checkpoint_every_seconds, 5400);
  expect_input_error([&] { with({"--checkpoint-every", "5x"}); }, {"--checkpoint-every", "5x"});
  expect_input_error([&] { with({"--checkpoint-every", "steps"}); }, {"--checkpoint-every"});
  expect_input_error([&] { with({"--checkpoint-every", "0steps"}); }, {"--checkpoint-every"});
  expect_input_error(
      [&] {
        parse_args({"train", "--model", "m", "--synthetic", "--checkpoint-keep", "2"});
      },
      {"--checkpoint-keep", "--checkpoint-dir"});
}
