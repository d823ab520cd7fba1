// Unit tests of the data module: IDX and CIFAR-10 readers, the HDF5 dataset file, batch assembly,
// normalisation, synthetic data and the convert command. Inputs are tiny files made here.
#include <gtest/gtest.h>

#include <unistd.h>
#include <zlib.h>
#include "temp_dir_test.hpp"

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mpsl/cli/commands.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/data/dataset.hpp"
#include "mpsl/io/hdf5.hpp"

namespace fs = std::filesystem;
using mpsl::InputError;
using mpsl::RuntimeFailure;
namespace data = mpsl::data;
namespace io = mpsl::io;

namespace {

// InputError is what the data module throws for bad files.
template <class E = InputError, class Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  mpsl::testing::expect_error<E>(std::forward<Fn>(fn), parts);
}

class DataTest : public mpsl::testing::TempDirTest {};

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes, bool gz) {
  if (gz) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    if (!bytes.empty())
      ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
                static_cast<int>(bytes.size()));
    ASSERT_EQ(gzclose(f), Z_OK);
  } else {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }
}

// An IDX file: big-endian magic and dimensions, then the data.
std::vector<uint8_t> idx_bytes(uint32_t magic, const std::vector<uint32_t>& dims,
                               const std::vector<uint8_t>& values) {
  std::vector<uint8_t> b;
  auto be32 = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
  };
  be32(magic);
  for (uint32_t d : dims) be32(d);
  b.insert(b.end(), values.begin(), values.end());
  return b;
}

// A tiny image set: n images of h x w with pixel (i, p) = (7 i + 3 p) mod 256, labels i mod 10.
struct Tiny {
  uint32_t n, h, w;
  std::vector<uint8_t> pixels, labels;
  Tiny(uint32_t n_, uint32_t h_, uint32_t w_) : n(n_), h(h_), w(w_) {
    for (uint32_t i = 0; i < n; ++i) {
      for (uint32_t p = 0; p < h * w; ++p)
        pixels.push_back(static_cast<uint8_t>((7 * i + 3 * p) % 256));
      labels.push_back(static_cast<uint8_t>(i % 10));
    }
  }
  void write(const std::string& images_path, const std::string& labels_path, bool gz) const {
    write_bytes(images_path, idx_bytes(0x803, {n, h, w}, pixels), gz);
    write_bytes(labels_path, idx_bytes(0x801, {n}, labels), gz);
  }
};

// CIFAR-10 records: label i % 10 and pixel (i, c, p) = (i + 5 c + p) mod 256, in CHW.
std::vector<uint8_t> cifar_bytes(int n, int first = 0) {
  std::vector<uint8_t> b;
  for (int i = first; i < first + n; ++i) {
    b.push_back(static_cast<uint8_t>(i % 10));
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) b.push_back(static_cast<uint8_t>((i + 5 * c + p) % 256));
  }
  return b;
}

void expect_same(const data::Dataset& a, const data::Dataset& b) {
  EXPECT_EQ(a.count, b.count);
  EXPECT_EQ(a.channels, b.channels);
  EXPECT_EQ(a.height, b.height);
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.images, b.images);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_EQ(a.class_names, b.class_names);
  EXPECT_EQ(a.mean, b.mean);
  EXPECT_EQ(a.std, b.std);
  EXPECT_EQ(a.source, b.source);
}

// ---- IDX / Fashion-MNIST ----------------------------------------------------------------------

TEST_F(DataTest, IdxGzippedAndPlainReadTheSame) {
  Tiny t(5, 3, 4);
  t.write(path("i.gz"), path("l.gz"), true);
  t.write(path("i"), path("l"), false);
  const data::Dataset a = data::read_idx_pair(path("i.gz"), path("l.gz"));
  const data::Dataset b = data::read_idx_pair(path("i"), path("l"));
  EXPECT_EQ(a.count, 5);
  EXPECT_EQ(a.channels, 1);
  EXPECT_EQ(a.height, 3);
  EXPECT_EQ(a.width, 4);
  EXPECT_EQ(a.images, t.pixels);
  EXPECT_EQ(a.labels, t.labels);
  EXPECT_EQ(a.class_names, (std::vector<std::string>{"0", "1", "2", "3", "4"}));
  EXPECT_EQ(a.images, b.images);
  EXPECT_EQ(a.labels, b.labels);
}

TEST_F(DataTest, FashionMnistFolderSplits) {
  Tiny train(12, 28, 28), test(3, 28, 28);
  train.write(path("train-images-idx3-ubyte.gz"), path("train-labels-idx1-ubyte.gz"), true);
  test.write(path("t10k-images-idx3-ubyte"), path("t10k-labels-idx1-ubyte"), false);  // plain
  const data::Dataset tr = data::read_fashion_mnist(dir_.string(), "train");
  EXPECT_EQ(tr.count, 12);
  EXPECT_EQ(tr.images, train.pixels);
  EXPECT_EQ(tr.labels, train.labels);
  ASSERT_EQ(tr.num_classes(), 10);
  EXPECT_EQ(tr.class_names.front(), "T-shirt/top");
  EXPECT_EQ(tr.class_names.back(), "Ankle boot");
  EXPECT_EQ(tr.source, "fashion-mnist train");
  const data::Dataset te = data::read_fashion_mnist(dir_.string(), "test");
  EXPECT_EQ(te.count, 3);
  EXPECT_EQ(te.images, test.pixels);
  EXPECT_EQ(te.source, "fashion-mnist test");
}

TEST_F(DataTest, IdxBadInputsNameTheFile) {
  Tiny t(4, 2, 2);
  t.write(path("i.gz"), path("l.gz"), true);

  expect_error([&] { data::read_idx_pair(path("nope.gz"), path("l.gz")); },
               {path("nope.gz"), "does not exist"});
  // Bad magic: a labels file where images are expected.
  expect_error([&] { data::read_idx_pair(path("l.gz"), path("l.gz")); },
               {path("l.gz"), "bad magic", "0x00000801", "0x00000803"});
  // Truncated plain file.
  std::vector<uint8_t> img = idx_bytes(0x803, {4, 2, 2}, t.pixels);
  write_bytes(path("short"), std::vector<uint8_t>(img.begin(), img.end() - 3), false);
  expect_error([&] { data::read_idx_pair(path("short"), path("l.gz")); },
               {path("short"), "truncated"});
  // Truncated header.
  write_bytes(path("tiny"), {0, 0, 8, 3, 0, 0}, false);
  expect_error([&] { data::read_idx_pair(path("tiny"), path("l.gz")); },
               {path("tiny"), "truncated"});
  // Trailing bytes beyond what the header describes.
  std::vector<uint8_t> longer = img;
  longer.push_back(1);
  write_bytes(path("long"), longer, false);
  expect_error([&] { data::read_idx_pair(path("long"), path("l.gz")); }, {path("long"), "after"});
  // A gzip stream cut short.
  std::vector<uint8_t> big(20000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 7919 % 251);
  write_bytes(path("cut.gz"), idx_bytes(0x803, {20, 25, 40}, big), true);
  fs::resize_file(path("cut.gz"), fs::file_size(path("cut.gz")) / 2);
  expect_error([&] { data::read_idx_pair(path("cut.gz"), path("l.gz")); },
               {path("cut.gz"), "truncated"});
  // Label count differs from image count.
  write_bytes(path("l3.gz"), idx_bytes(0x801, {3}, {0, 1, 2}), true);
  expect_error([&] { data::read_idx_pair(path("i.gz"), path("l3.gz")); },
               {path("i.gz"), path("l3.gz"), "4 images", "3 labels"});
  // Empty file.
  write_bytes(path("empty"), {}, false);
  expect_error([&] { data::read_idx_pair(path("empty"), path("l.gz")); }, {path("empty")});
}

TEST_F(DataTest, FashionMnistBadInputs) {
  expect_error([&] { data::read_fashion_mnist(path("absent"), "train"); },
               {path("absent"), "does not exist"});
  expect_error([&] { data::read_fashion_mnist(dir_.string(), "train"); },
               {dir_.string(), "train-images-idx3-ubyte"});
  expect_error([&] { data::read_fashion_mnist(dir_.string(), "valid"); }, {"split", "valid"});
  Tiny t(3, 2, 2);
  t.labels[2] = 10;  // Fashion-MNIST has classes 0..9
  t.write(path("train-images-idx3-ubyte.gz"), path("train-labels-idx1-ubyte.gz"), true);
  expect_error([&] { data::read_fashion_mnist(dir_.string(), "train"); },
               {path("train-labels-idx1-ubyte.gz"), "label 10", "record 2"});
}

// ---- CIFAR-10 ---------------------------------------------------------------------------------

TEST_F(DataTest, CifarFileAndFolder) {
  write_bytes(path("one.bin"), cifar_bytes(3), false);
  const data::Dataset one = data::read_cifar10(path("one.bin"), "train");
  EXPECT_EQ(one.count, 3);
  EXPECT_EQ(one.channels, 3);
  EXPECT_EQ(one.height, 32);
  EXPECT_EQ(one.width, 32);
  EXPECT_EQ(one.labels, (std::vector<uint8_t>{0, 1, 2}));
  // Pixel (image 2, channel 1, position 7) = (2 + 5 + 7) mod 256, CHW kept as is.
  EXPECT_EQ(one.images[2 * 3072 + 1 * 1024 + 7], 14);
  EXPECT_EQ(one.class_names.size(), 10u);
  EXPECT_EQ(one.class_names[1], "automobile");
  EXPECT_EQ(one.class_names[9], "truck");

  // The folder the archive unpacks into, found from its parent too.
  const fs::path batches = dir_ / "cifar-10-batches-bin";
  fs::create_directories(batches);
  for (int b = 1; b <= 5; ++b)
    write_bytes((batches / ("data_batch_" + std::to_string(b) + ".bin")).string(),
                cifar_bytes(2, 2 * (b - 1)), false);
  write_bytes((batches / "test_batch.bin").string(), cifar_bytes(4, 100), false);
  const data::Dataset train = data::read_cifar10(dir_.string(), "train");
  EXPECT_EQ(train.count, 10);
  // Batches 1..5 in order: records 0..9 with their label bytes dropped.
  std::vector<uint8_t> want;
  const std::vector<uint8_t> all = cifar_bytes(10);
  for (int i = 0; i < 10; ++i)
    want.insert(want.end(), all.begin() + i * 3073 + 1, all.begin() + (i + 1) * 3073);
  EXPECT_EQ(train.images, want);
  EXPECT_EQ(train.labels, (std::vector<uint8_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(train.source, "cifar10 train");
  const data::Dataset test = data::read_cifar10(batches.string(), "test");
  EXPECT_EQ(test.count, 4);
  EXPECT_EQ(test.labels, (std::vector<uint8_t>{0, 1, 2, 3}));
}

TEST_F(DataTest, CifarBadInputsNameTheFile) {
  std::vector<uint8_t> b = cifar_bytes(2);
  b.resize(b.size() + 5);
  write_bytes(path("odd.bin"), b, false);
  expect_error([&] { data::read_cifar10(path("odd.bin"), "train"); },
               {path("odd.bin"), "not a multiple of 3073", "6151"});
  std::vector<uint8_t> bad = cifar_bytes(3);
  bad[3073] = 10;  // label of record 1
  write_bytes(path("label.bin"), bad, false);
  expect_error([&] { data::read_cifar10(path("label.bin"), "train"); },
               {path("label.bin"), "record 1", "label 10"});
  write_bytes(path("empty.bin"), {}, false);
  expect_error([&] { data::read_cifar10(path("empty.bin"), "train"); },
               {path("empty.bin"), "empty"});
  expect_error([&] { data::read_cifar10(path("none.bin"), "train"); },
               {path("none.bin"), "does not exist"});
  write_bytes(path("data_batch_1.bin"), cifar_bytes(1), false);
  expect_error([&] { data::read_cifar10(dir_.string(), "train"); },
               {dir_.string(), "data_batch_2.bin"});
  expect_error([&] { data::read_cifar10(dir_.string(), "test"); },
               {dir_.string(), "test_batch.bin"});
}

// ---- HDF5 dataset file ------------------------------------------------------------------------

TEST_F(DataTest, IdxToH5RoundTripIsIdentical) {
  Tiny t(37, 28, 28);
  t.write(path("train-images-idx3-ubyte.gz"), path("train-labels-idx1-ubyte.gz"), true);
  data::Dataset ds = data::read_fashion_mnist(dir_.string(), "train");
  data::compute_normalisation(ds);
  data::write_dataset_h5(path("out.h5"), ds);
  const data::Dataset back = data::read_dataset_h5(path("out.h5"));
  expect_same(ds, back);

  // The layout promised: uint8 [N,C,H,W] and [N], attributes, chunked.
  io::File f = io::File::open(path("out.h5"));
  EXPECT_EQ(f.open_dataset("images").shape(), (io::Shape{37, 1, 28, 28}));
  EXPECT_EQ(f.open_dataset("images").type().describe(), "uint8");
  EXPECT_EQ(f.open_dataset("labels").shape(), (io::Shape{37}));
  EXPECT_EQ(f.read_int_attribute("format_version"), data::kDatasetFormatVersion);
  EXPECT_EQ(f.read_strings_attribute("class_names"), data::fashion_mnist_class_names());
  EXPECT_EQ(f.read_floats_attribute("mean"), ds.mean);
  EXPECT_EQ(f.read_string_attribute("source"), "fashion-mnist train");

  // CIFAR through the same path.
  write_bytes(path("c.bin"), cifar_bytes(7), false);
  data::Dataset c = data::read_cifar10(path("c.bin"), "test");
  data::compute_normalisation(c);
  data::write_dataset_h5(path("c.h5"), c);
  expect_same(c, data::read_dataset_h5(path("c.h5")));
}

// Writes a valid file, then lets `damage` break it through the raw io API.
template <class Fn>
std::string damaged(const std::string& p, Fn&& damage) {
  data::Dataset ds = data::make_synthetic(6, 1, 3, 3, 4, 9);
  data::write_dataset_h5(p, ds);
  io::File f = io::File::open_read_write(p);
  damage(f);
  return p;
}

TEST_F(DataTest, H5BadInputsNameTheFile) {
  expect_error([&] { data::read_dataset_h5(path("missing.h5")); },
               {path("missing.h5"), "does not exist"});
  write_bytes(path("text.h5"), {'h', 'e', 'l', 'l', 'o'}, false);
  expect_error([&] { data::read_dataset_h5(path("text.h5")); },
               {path("text.h5"), "not an HDF5 file"});

  const std::string no_labels = damaged(path("nolabels.h5"), [](io::File& f) {
    ASSERT_GE(H5Ldelete(f.id(), "labels", H5P_DEFAULT), 0);
  });
  expect_error([&] { data::read_dataset_h5(no_labels); }, {no_labels, "/labels"});

  const std::string out_of_range = damaged(path("range.h5"), [](io::File& f) {
    io::Dataset l = f.open_dataset("labels");
    std::vector<uint8_t> v = l.read<uint8_t>();
    v[4] = 4;  // 4 classes: 0..3
    l.write(v.data());
  });
  expect_error([&] { data::read_dataset_h5(out_of_range); },
               {out_of_range, "label 4 of image 4", "0..3"});

  const std::string version = damaged(
      path("version.h5"), [](io::File& f) { f.write_attribute("format_version", int64_t{99}); });
  expect_error([&] { data::read_dataset_h5(version); }, {version, "format_version 99", "newer"});

  const std::string no_version =
      damaged(path("noversion.h5"), [](io::File& f) { f.delete_attribute("format_version"); });
  expect_error([&] { data::read_dataset_h5(no_version); }, {no_version, "format_version"});

  const std::string float_images = damaged(path("float.h5"), [](io::File& f) {
    ASSERT_GE(H5Ldelete(f.id(), "images", H5P_DEFAULT), 0);
    f.write_dataset<float>("images", {6, 1, 3, 3}, std::vector<float>(54, 0.5f));
  });
  expect_error([&] { data::read_dataset_h5(float_images); },
               {float_images, "/images", "float32", "uint8"});

  const std::string bad_shape = damaged(path("shape.h5"), [](io::File& f) {
    ASSERT_GE(H5Ldelete(f.id(), "images", H5P_DEFAULT), 0);
    f.write_dataset<uint8_t>("images", {6, 9}, std::vector<uint8_t>(54, 1));
  });
  expect_error([&] { data::read_dataset_h5(bad_shape); }, {bad_shape, "[6,9]", "[N,C,H,W]"});

  const std::string count = damaged(path("count.h5"), [](io::File& f) {
    ASSERT_GE(H5Ldelete(f.id(), "labels", H5P_DEFAULT), 0);
    f.write_dataset<uint8_t>("labels", {5}, std::vector<uint8_t>(5, 0));
  });
  expect_error([&] { data::read_dataset_h5(count); }, {count, "5 labels", "6 images"});

  const std::string std0 = damaged(
      path("std.h5"), [](io::File& f) { f.write_attribute("std", std::vector<float>{0.0f}); });
  expect_error([&] { data::read_dataset_h5(std0); }, {std0, "std"});
}

TEST_F(DataTest, H5LabelsOfOtherIntegerTypesAreAccepted) {
  const std::string p = damaged(path("int64.h5"), [](io::File& f) {
    ASSERT_GE(H5Ldelete(f.id(), "labels", H5P_DEFAULT), 0);
    f.write_dataset<int64_t>("labels", {6}, std::vector<int64_t>{3, 2, 1, 0, 1, 2});
  });
  EXPECT_EQ(data::read_dataset_h5(p).labels, (std::vector<uint8_t>{3, 2, 1, 0, 1, 2}));
}

TEST_F(DataTest, WriteFailureLeavesNoFile) {
  data::Dataset ds = data::make_synthetic(4, 1, 2, 2, 3, 1);
  ds.labels.pop_back();  // inconsistent
  EXPECT_THROW(data::write_dataset_h5(path("x.h5"), ds), RuntimeFailure);
  EXPECT_TRUE(files().empty());
}

// ---- normalisation, batches, synthetic --------------------------------------------------------

// 3 images, 2 channels of 1x2 pixels.
data::Dataset small_dataset() {
  data::Dataset ds;
  ds.count = 3;
  ds.channels = 2;
  ds.height = 1;
  ds.width = 2;
  ds.images = {0,   255, 51, 102,  // image 0: c0, c1
               10,  20,  30, 40,   // image 1
               255, 255, 0,  0};   // image 2
  ds.labels = {1, 0, 2};
  ds.class_names = {"a", "b", "c"};
  return ds;
}

TEST(DataNormalisation, GoldenValues) {
  data::Dataset ds = small_dataset();
  data::compute_normalisation(ds);
  // Two-pass reference in double.
  for (int c = 0; c < 2; ++c) {
    std::vector<double> v;
    for (int i = 0; i < 3; ++i)
      for (int p = 0; p < 2; ++p) v.push_back(ds.images[i * 4 + c * 2 + p] / 255.0);
    double m = 0, var = 0;
    for (double x : v) m += x;
    m /= v.size();
    for (double x : v) var += (x - m) * (x - m);
    var /= v.size();
    EXPECT_NEAR(ds.mean[c], m, 1e-7) << "channel " << c;
    EXPECT_NEAR(ds.std[c], std::sqrt(var), 1e-7) << "channel " << c;
  }
  EXPECT_NEAR(ds.mean[0], 795.0 / 6 / 255, 1e-7);

  // A hand case: {0, 255} gives mean 0.5 std 0.5; a constant channel keeps std 1.
  data::Dataset two;
  two.count = 1;
  two.channels = 2;
  two.height = 1;
  two.width = 2;
  two.images = {0, 255, 77, 77};
  two.labels = {0};
  two.class_names = {"x"};
  data::compute_normalisation(two);
  EXPECT_FLOAT_EQ(two.mean[0], 0.5f);
  EXPECT_FLOAT_EQ(two.std[0], 0.5f);
  EXPECT_FLOAT_EQ(two.mean[1], 77.0f / 255.0f);
  EXPECT_FLOAT_EQ(two.std[1], 1.0f);
}

TEST(DataAssembleBatch, GoldenValues) {
  data::Dataset ds = small_dataset();
  ds.mean = {0.5f, 0.2f};
  ds.std = {0.5f, 0.25f};
  const int64_t idx[2] = {2, 0};
  std::vector<float> out(2 * 4, 99.0f);
  int32_t labels[2] = {-1, -1};
  data::assemble_batch(ds, idx, 2, out.data(), labels);
  const std::vector<float> want = {1.0f,  1.0f, -0.8f, -0.8f,  // image 2
                                   -1.0f, 1.0f, 0.0f,  0.8f};  // image 0
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(out[i], want[i], 1e-6) << "i=" << i;
  EXPECT_EQ(labels[0], 2);
  EXPECT_EQ(labels[1], 1);

  // Without mean/std: pixel / 255. Labels may be skipped.
  ds.mean.clear();
  ds.std.clear();
  const int64_t one = 1;
  data::assemble_batch(ds, &one, 1, out.data(), nullptr);
  EXPECT_FLOAT_EQ(out[0], 10.0f / 255.0f);
  EXPECT_FLOAT_EQ(out[3], 40.0f / 255.0f);

  // An index outside the dataset is an internal error, never a silent read.
  const int64_t bad = 3;
  EXPECT_THROW(data::assemble_batch(ds, &bad, 1, out.data(), nullptr), RuntimeFailure);
}

TEST(DataSynthetic, DeterministicInSeed) {
  const data::Dataset a = data::make_synthetic(50, 3, 5, 7, 10, 42);
  const data::Dataset b = data::make_synthetic(50, 3, 5, 7, 10, 42);
  const data::Dataset c = data::make_synthetic(50, 3, 5, 7, 10, 43);
  EXPECT_EQ(a.images, b.images);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_NE(a.images, c.images);
  EXPECT_EQ(a.images.size(), 50u * 3 * 5 * 7);
  EXPECT_EQ(a.num_classes(), 10);
  for (uint8_t l : a.labels) EXPECT_LT(l, 10);
  ASSERT_EQ(a.mean.size(), 3u);
  for (float m : a.mean) EXPECT_NEAR(m, 0.5, 0.05);
  EXPECT_THROW(data::make_synthetic(0, 1, 1, 1, 2, 1), InputError);
  EXPECT_THROW(data::make_synthetic(1, 1, 1, 1, 0, 1), InputError);
}

// ---- convert command --------------------------------------------------------------------------

TEST_F(DataTest, ConvertValidatesOptions) {
  mpsl::cli::CommonOptions common;
  common.quiet = true;
  auto run = [&](std::string format, std::string input, std::string output, std::string split) {
    mpsl::cli::ConvertOptions o;
    o.format = format;
    o.input = input;
    o.output = output;
    o.split = split;
    return mpsl::cli::run_convert(common, o);
  };
  const std::string out = path("o.h5");
  expect_error([&] { run("", "", out, "train"); }, {"--format", "fashion-mnist", "cifar10"});
  expect_error([&] { run("mnist", "", out, "train"); }, {"--format", "'mnist'"});
  expect_error([&] { run("fashion-mnist", dir_.string(), out, "val"); }, {"--split", "'val'"});
  expect_error([&] { run("cifar10", "", out, "train"); }, {"--input", "cifar10"});
  expect_error([&] { run("fashion-mnist", dir_.string(), "", "train"); }, {"--output"});
  expect_error([&] { run("fashion-mnist", dir_.string(), path("no/dir/o.h5"), "train"); },
               {"--output", path("no/dir")});
  expect_error([&] { run("fashion-mnist", dir_.string(), dir_.string(), "train"); },
               {"--output", "folder"});
  expect_error([&] { run("fashion-mnist", path("nowhere"), out, "train"); }, {path("nowhere")});
  EXPECT_TRUE(files().empty());
}

TEST_F(DataTest, ConvertCifarAndFailureLeavesNoOutput) {
  write_bytes(path("b.bin"), cifar_bytes(5), false);
  mpsl::cli::CommonOptions common;
  mpsl::cli::ConvertOptions o;
  o.format = "cifar10";
  o.input = path("b.bin");
  o.output = path("cifar.h5");
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(mpsl::cli::run_convert(common, o), 0);
  const std::string printed = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(printed.find("5 images 3x32x32, 10 classes"), std::string::npos) << printed;
  EXPECT_NE(printed.find(path("cifar.h5")), std::string::npos) << printed;
  EXPECT_EQ(std::count(printed.begin(), printed.end(), '\n'), 1);
  const data::Dataset back = data::read_dataset_h5(path("cifar.h5"));
  EXPECT_EQ(back.count, 5);
  EXPECT_EQ(back.mean.size(), 3u);

  // A bad input: InputError, and neither an output file nor a temporary appears.
  std::vector<uint8_t> bad = cifar_bytes(2);
  bad.pop_back();
  write_bytes(path("bad.bin"), bad, false);
  o.input = path("bad.bin");
  o.output = path("bad.h5");
  common.quiet = true;
  ::testing::internal::CaptureStdout();
  expect_error([&] { mpsl::cli::run_convert(common, o); }, {path("bad.bin"), "3073"});
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "");
  EXPECT_EQ(files(), (std::vector<std::string>{"b.bin", "bad.bin", "cifar.h5"}));
}

TEST_F(DataTest, ConvertRealFashionMnistTestSplit) {
  if (!fs::exists(fs::path(data::kFashionMnistDefaultFolder) / "t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  mpsl::cli::CommonOptions common;
  common.quiet = true;
  mpsl::cli::ConvertOptions o;
  o.format = "fashion-mnist";
  o.split = "test";
  o.output = path("fmnist-test.h5");
  ASSERT_EQ(mpsl::cli::run_convert(common, o), 0);
  const data::Dataset ds = data::read_dataset_h5(o.output);
  EXPECT_EQ(ds.count, 10000);
  EXPECT_EQ(ds.channels, 1);
  EXPECT_EQ(ds.height, 28);
  EXPECT_EQ(ds.width, 28);
  EXPECT_EQ(ds.class_names, data::fashion_mnist_class_names());
  ASSERT_EQ(ds.mean.size(), 1u);
  EXPECT_NEAR(ds.mean[0], 0.286, 0.002);
  EXPECT_NEAR(ds.std[0], 0.353, 0.002);
  std::vector<int> per_class(10, 0);
  for (uint8_t l : ds.labels) per_class[l]++;
  for (int c = 0; c < 10; ++c) EXPECT_EQ(per_class[c], 1000) << "class " << c;
  EXPECT_EQ(ds.source, "fashion-mnist test");
}

}  // namespace
