// Unit tests of the io module: RAII HDF5 handles, typed datasets and attributes, errors, atomic
// writes.
#include <gtest/gtest.h>

#include <unistd.h>
#include "temp_dir_test.hpp"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mpsl/core/error.hpp"
#include "mpsl/io/hdf5.hpp"

namespace fs = std::filesystem;
using mpsl::InputError;
using mpsl::RuntimeFailure;
namespace io = mpsl::io;

namespace {

using mpsl::testing::expect_error;

class IoTest : public mpsl::testing::TempDirTest {};

template <class T>
class IoTypedTest : public IoTest {};
using ElementTypes = ::testing::Types<uint8_t, int32_t, int64_t, float, double>;
TYPED_TEST_SUITE(IoTypedTest, ElementTypes);

TYPED_TEST(IoTypedTest, WholeDatasetRoundTrip) {
  using T = TypeParam;
  const std::string p = this->path("a.h5");
  std::vector<T> data(2 * 3 * 4);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<T>(i * 3 + 1);
  {
    io::File f = io::File::create(p);
    f.write_dataset<T>("x", {2, 3, 4}, data);
    io::DatasetOptions opt;
    opt.deflate = 1;
    f.write_dataset<T>("g/h/compressed", {2, 3, 4}, data, opt);
    f.write_dataset<T>("scalar", {}, std::vector<T>{static_cast<T>(7)});
    f.write_dataset<T>("empty", {0, 5}, std::vector<T>{});
  }
  io::File f = io::File::open(p);
  io::Shape shape;
  EXPECT_EQ(f.read_dataset<T>("x", &shape), data);
  EXPECT_EQ(shape, (io::Shape{2, 3, 4}));
  EXPECT_EQ(f.read_dataset<T>("/g/h/compressed"), data);
  EXPECT_EQ(f.read_dataset<T>("scalar", &shape), std::vector<T>{static_cast<T>(7)});
  EXPECT_TRUE(shape.empty());
  EXPECT_TRUE(f.read_dataset<T>("empty", &shape).empty());
  EXPECT_EQ(shape, (io::Shape{0, 5}));
  EXPECT_EQ(f.open_dataset("x").type().describe(), io::element_name<T>());
}

TYPED_TEST(IoTypedTest, ArrayAttributeRoundTrip) {
  using T = TypeParam;
  const std::string p = this->path("a.h5");
  const std::vector<T> v = {static_cast<T>(1), static_cast<T>(2), static_cast<T>(250)};
  {
    io::File f = io::File::create(p);
    f.write_attribute<T>("v", std::span<const T>(v));
  }
  EXPECT_EQ(io::File::open(p).read_array_attribute<T>("v"), v);
}

TEST_F(IoTest, ChunkedCompressedLayout) {
  const std::string p = path("c.h5");
  std::vector<uint8_t> data(1000 * 64, 3);
  {
    io::File f = io::File::create(p);
    io::DatasetOptions opt;
    opt.deflate = 1;
    f.write_dataset<uint8_t>("d", {1000, 64}, data, opt);
    opt.chunk = {10, 64};
    f.write_dataset<uint8_t>("e", {1000, 64}, data, opt);
  }
  io::File f = io::File::open(p);
  for (const char* name : {"d", "e"}) {
    io::Dataset d = f.open_dataset(name);
    const hid_t dcpl = H5Dget_create_plist(d.id());
    ASSERT_GE(dcpl, 0);
    EXPECT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED);
    EXPECT_EQ(H5Pget_nfilters(dcpl), 1);
    hsize_t chunk[2] = {0, 0};
    EXPECT_EQ(H5Pget_chunk(dcpl, 2, chunk), 2);
    EXPECT_EQ(chunk[1], 64u);
    if (std::string(name) == "e") EXPECT_EQ(chunk[0], 10u);
    H5Pclose(dcpl);
    EXPECT_EQ(d.read<uint8_t>(), data);
  }
  // Constant data compresses far below its 64,000 bytes.
  EXPECT_LT(fs::file_size(p), 30000u);
}

TEST_F(IoTest, RowsHyperslab) {
  const std::string p = path("r.h5");
  {
    io::File f = io::File::create(p);
    io::Dataset d = f.create_dataset<float>("m", {5, 3});
    std::vector<float> rows(15, 0.0f);
    d.write(rows.data());
    const std::vector<float> two = {1, 2, 3, 4, 5, 6};
    d.write_rows(2, 2, two.data());
  }
  io::File f = io::File::open(p);
  io::Dataset d = f.open_dataset("m");
  std::vector<float> out(6);
  d.read_rows(2, 2, out.data());
  EXPECT_EQ(out, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  d.read_rows(0, 1, out.data());
  EXPECT_EQ(out[0], 0.0f);
  expect_error<InputError>([&] { d.read_rows(4, 2, out.data()); }, {"rows [4, 6)", p, "/m"});
}

TEST_F(IoTest, Attributes) {
  const std::string p = path("attr.h5");
  {
    io::File f = io::File::create(p);
    f.write_attribute("s", "hello");
    f.write_attribute("u", std::string("\xc3\xa9t\xc3\xa9"));  // UTF-8
    f.write_attribute("names", std::vector<std::string>{"T-shirt/top", "", "Ankle boot"});
    f.write_attribute("none", std::vector<std::string>{});
    f.write_attribute("i", int64_t{-42});
    f.write_attribute("small", 3);
    f.write_attribute("d", 0.125);
    f.write_attribute("f", std::vector<float>{0.5f, -1.25f});
    f.write_attribute("s", "replaced");  // replaces
    io::Dataset d = f.write_dataset<int32_t>("grp/d", {2}, std::vector<int32_t>{1, 2});
    d.write_attribute("unit", "ms");
    io::Group g = f.open_group("grp");
    g.write_attribute("k", int64_t{5});
  }
  io::File f = io::File::open(p);
  EXPECT_EQ(f.read_string_attribute("s"), "replaced");
  EXPECT_EQ(f.read_string_attribute("u"), "\xc3\xa9t\xc3\xa9");
  EXPECT_EQ(f.read_strings_attribute("names"),
            (std::vector<std::string>{"T-shirt/top", "", "Ankle boot"}));
  EXPECT_TRUE(f.read_strings_attribute("none").empty());
  EXPECT_EQ(f.read_int_attribute("i"), -42);
  EXPECT_EQ(f.read_int_attribute("small"), 3);
  EXPECT_EQ(f.read_double_attribute("d"), 0.125);
  EXPECT_EQ(f.read_double_attribute("i"), -42.0);  // integers read as numbers
  EXPECT_EQ(f.read_floats_attribute("f"), (std::vector<float>{0.5f, -1.25f}));
  EXPECT_EQ(f.open_dataset("grp/d").read_string_attribute("unit"), "ms");
  EXPECT_EQ(f.open_group("grp").read_int_attribute("k"), 5);
  EXPECT_TRUE(f.has_attribute("i"));
  EXPECT_FALSE(f.has_attribute("missing"));

  expect_error<InputError>([&] { f.read_int_attribute("missing"); }, {p, "missing"});
  expect_error<InputError>([&] { f.read_int_attribute("s"); }, {p, "attribute s", "string"});
  expect_error<InputError>([&] { f.read_int_attribute("d"); }, {p, "float64", "integers"});
  expect_error<InputError>([&] { f.read_string_attribute("i"); }, {p, "expected a string"});
  expect_error<InputError>([&] { f.read_string_attribute("names"); }, {"3 strings"});
  expect_error<InputError>([&] { f.read_int_attribute("f"); }, {p, "attribute f"});
}

TEST_F(IoTest, FixedLengthStringAttributes) {
  // Files written elsewhere (h5py with numpy 'S' arrays) hold fixed-length strings.
  const std::string p = path("fixed.h5");
  {
    io::File f = io::File::create(p);
    const hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, 6);
    H5Tset_strpad(t, H5T_STR_NULLPAD);
    const hsize_t n = 2;
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t a = H5Acreate2(f.id(), "fixed", t, space, H5P_DEFAULT, H5P_DEFAULT);
    const char buf[12] = {'c', 'a', 't', 0, 0, 0, 'a', 'n', 'i', 'm', 'a', 'l'};
    ASSERT_GE(H5Awrite(a, t, buf), 0);
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(t);
  }
  EXPECT_EQ(io::File::open(p).read_strings_attribute("fixed"),
            (std::vector<std::string>{"cat", "animal"}));
}

TEST_F(IoTest, GroupsAndExists) {
  const std::string p = path("g.h5");
  io::File f = io::File::create(p);
  io::Group g = f.create_group("a/b/c");  // intermediates too
  EXPECT_EQ(g.object_path(), "/a/b/c");
  EXPECT_EQ(g.where(), p + ":/a/b/c");
  io::Group b = f.open_group("a/b");
  b.write_dataset<double>("x", {1}, std::vector<double>{1.0});
  EXPECT_TRUE(f.exists("a"));
  EXPECT_TRUE(f.exists("a/b/c"));
  EXPECT_TRUE(f.exists("/a/b/x"));
  EXPECT_TRUE(b.exists("x"));
  EXPECT_TRUE(f.exists("/"));
  EXPECT_FALSE(f.exists("a/zz/c"));  // missing intermediate: false, not an error
  EXPECT_FALSE(f.exists("nope"));
  EXPECT_EQ(b.open_dataset("x").where(), p + ":/a/b/x");
  EXPECT_EQ(b.children(), (std::vector<std::string>{"c", "x"}));
  io::Group again = f.require_group("a/b");
  EXPECT_TRUE(again.valid());
  io::Group fresh = f.require_group("new");
  EXPECT_TRUE(f.exists("new"));
}

TEST_F(IoTest, HandlesAreMoveOnly) {
  static_assert(!std::is_copy_constructible_v<io::File>);
  static_assert(!std::is_copy_assignable_v<io::Dataset>);
  static_assert(std::is_nothrow_move_constructible_v<io::Dataset>);
  const std::string p = path("m.h5");
  io::File f = io::File::create(p);
  io::File g = std::move(f);
  EXPECT_FALSE(f.valid());  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_TRUE(g.valid());
  io::Dataspace s = io::Dataspace::simple({3, 4});
  EXPECT_EQ(s.shape(), (io::Shape{3, 4}));
  EXPECT_EQ(s.element_count(), 12);
  EXPECT_TRUE(io::Dataspace::scalar().is_scalar());
  g.close();
  EXPECT_FALSE(g.valid());
  g.close();  // closing twice is harmless
  EXPECT_TRUE(io::is_hdf5_file(p));
}

TEST_F(IoTest, OpenErrorsAreInputErrorsNamingTheFile) {
  const std::string missing = path("missing.h5");
  expect_error<InputError>([&] { io::File::open(missing); }, {missing, "does not exist"});
  const std::string text = path("text.h5");
  std::ofstream(text) << "this is not HDF5\n";
  expect_error<InputError>([&] { io::File::open(text); }, {text, "not an HDF5 file"});
  expect_error<InputError>([&] { io::File::open(dir_.string()); }, {dir_.string(), "folder"});
  EXPECT_FALSE(io::is_hdf5_file(text));
  EXPECT_FALSE(io::is_hdf5_file(missing));

  const std::string p = path("ok.h5");
  io::File::create(p).write_attribute("x", int64_t{1});
  io::File f = io::File::open(p);
  expect_error<InputError>([&] { f.open_dataset("nothing"); }, {p, "/nothing"});
  expect_error<InputError>([&] { f.open_group("g"); }, {p, "/g"});
}

TEST_F(IoTest, FailedCallsNameTheCallAndObject) {
  const std::string p = path("w.h5");
  io::File f = io::File::create(p);
  f.write_dataset<float>("d", {2}, std::vector<float>{1, 2});
  // Our own (writable) file: RuntimeFailure naming the H5 call and the path.
  expect_error<RuntimeFailure>([&] { f.create_dataset<float>("d", {2}); },
                               {"H5Dcreate2", p + ":/d"});
  expect_error<RuntimeFailure>([&] { f.open_dataset("zz"); }, {p, "/zz"});
  // Size mismatch is caught before HDF5 sees it.
  expect_error<RuntimeFailure>([&] { f.write_dataset<float>("e", {3}, std::vector<float>{1}); },
                               {p + ":/e", "needs 3"});
  // Reading floats as integers would silently truncate: refused.
  expect_error<RuntimeFailure>([&] { f.open_dataset("d").read<int32_t>(); }, {"float32"});
  expect_error<RuntimeFailure>([&] { io::File::create(path("no/such/dir/x.h5")); },
                               {"H5Fcreate", path("no/such/dir/x.h5")});
}

TEST_F(IoTest, HdfErrorStackIsNotPrinted) {
  const std::string p = path("quiet.h5");
  io::File f = io::File::create(p);
  ::testing::internal::CaptureStderr();
  EXPECT_THROW(f.create_group("/").write_attribute("x", 1), RuntimeFailure);
  f.create_dataset<float>("d", {1});
  EXPECT_THROW(f.create_dataset<float>("d", {1}), RuntimeFailure);
  EXPECT_THROW(io::File::open(path("missing.h5")), InputError);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "");
}

TEST_F(IoTest, AtomicWriteSucceeds) {
  const std::string p = path("atomic.h5");
  io::atomic_write_h5(p, [](io::File& f) {
    f.write_dataset<int64_t>("x", {3}, std::vector<int64_t>{1, 2, 3});
    f.write_attribute("tag", "v1");
  });
  EXPECT_EQ(files(), std::vector<std::string>{"atomic.h5"});
  EXPECT_EQ(io::File::open(p).read_dataset<int64_t>("x"), (std::vector<int64_t>{1, 2, 3}));

  // Overwrite an existing file the same way.
  io::atomic_write_h5(p, [](io::File& f) { f.write_attribute("tag", "v2"); });
  EXPECT_EQ(io::File::open(p).read_string_attribute("tag"), "v2");
  EXPECT_EQ(files(), std::vector<std::string>{"atomic.h5"});
}

TEST_F(IoTest, AtomicWriteFailureLeavesNothingBehind) {
  const std::string p = path("atomic.h5");
  // A failure on a fresh path: no file at all, no temporary.
  EXPECT_THROW(io::atomic_write_h5(p,
                                   [](io::File& f) {
                                     f.write_attribute("tag", "partial");
                                     throw RuntimeFailure("disk on fire");
                                   }),
               RuntimeFailure);
  EXPECT_TRUE(files().empty());

  // A failure over an existing file: the old file is untouched.
  io::atomic_write_h5(p, [](io::File& f) { f.write_attribute("tag", "good"); });
  EXPECT_THROW(io::atomic_write_h5(p,
                                   [](io::File& f) {
                                     f.write_attribute("tag", "bad");
                                     throw InputError("bad input halfway");
                                   }),
               InputError);
  EXPECT_EQ(io::File::open(p).read_string_attribute("tag"), "good");
  EXPECT_EQ(files(), std::vector<std::string>{"atomic.h5"});

  // A handle left open inside `fill` is a bug: refused, nothing written.
  const std::string q = path("leak.h5");
  io::Dataset leaked;
  expect_error<RuntimeFailure>(
      [&] {
        io::atomic_write_h5(q, [&](io::File& f) {
          leaked = f.write_dataset<float>("x", {1}, std::vector<float>{1});
        });
      },
      {"still open"});
  leaked = io::Dataset();
  EXPECT_EQ(files(), std::vector<std::string>{"atomic.h5"});
}

TEST_F(IoTest, AtomicWriteGenericFile) {
  const std::string p = path("plain.txt");
  io::atomic_write(p, [](const std::string& tmp) {
    EXPECT_NE(tmp.find(".tmp-"), std::string::npos);
    std::ofstream(tmp) << "hello";
  });
  std::ifstream in(p);
  std::string s;
  in >> s;
  EXPECT_EQ(s, "hello");
  // A writer that never creates the file is an error, and nothing appears.
  EXPECT_THROW(io::atomic_write(path("never.txt"), [](const std::string&) {}), RuntimeFailure);
  EXPECT_EQ(files(), std::vector<std::string>{"plain.txt"});
}

}  // namespace
