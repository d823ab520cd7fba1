// Readers for the source formats: gzip/plain files, IDX (Fashion-MNIST, MNIST), CIFAR-10 binary.
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "mpsl/core/error.hpp"
#include "mpsl/data/dataset.hpp"

namespace mpsl::data {

namespace fs = std::filesystem;

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                                 "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                                 "Bag",         "Ankle boot"};
  return names;
}

const std::vector<std::string>& cifar10_class_names() {
  static const std::vector<std::string> names = {
      "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  return names;
}

namespace {

// Throws InputError unless `path` is an existing regular file (`what` describes it).
void require_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw InputError(what + " '" + path + "' does not exist");
  if (fs::is_directory(st)) throw InputError(what + " '" + path + "' is a folder, expected a file");
}

struct GzCloser {
  void operator()(gzFile f) const {
    if (f != nullptr) gzclose(f);
  }
};
using GzHandle = std::unique_ptr<gzFile_s, GzCloser>;

std::string gz_error_text(gzFile f) {
  int errnum = Z_OK;
  const char* msg = gzerror(f, &errnum);
  if (errnum == Z_ERRNO) return std::strerror(errno);
  if (errnum == Z_BUF_ERROR) return "the gzip stream is truncated";
  return msg != nullptr && msg[0] != '\0' ? msg : "unknown zlib error";
}

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// An IDX file's dimensions and the offset of its data.
struct IdxView {
  std::vector<int64_t> dims;
  size_t data_offset = 0;
  int64_t count() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
};

// Parses the header of an unsigned-byte IDX file with `ndims` dimensions (magic 0x000008nn) and
// checks that the file holds exactly the bytes the header describes.
IdxView parse_idx(const std::vector<uint8_t>& bytes, const std::string& path, int ndims,
                  const char* kind) {
  const uint32_t want_magic = 0x00000800u | static_cast<uint32_t>(ndims);
  char want[16];
  std::snprintf(want, sizeof want, "0x%08x", want_magic);
  if (bytes.size() < 4)
    throw InputError("IDX file '" + path + "' is too short (" + std::to_string(bytes.size()) +
                     " bytes) to hold the magic number " + want);
  const uint32_t magic = read_be32(bytes.data());
  if (magic != want_magic) {
    char got[16];
    std::snprintf(got, sizeof got, "0x%08x", magic);
    throw InputError("IDX file '" + path + "' has bad magic number " + got + ", expected " + want +
                     " (" + kind + ")");
  }
  IdxView v;
  v.data_offset = 4 + 4 * static_cast<size_t>(ndims);
  if (bytes.size() < v.data_offset)
    throw InputError("IDX file '" + path + "' is truncated: its header needs " +
                     std::to_string(v.data_offset) + " bytes, the file has " +
                     std::to_string(bytes.size()));
  for (int i = 0; i < ndims; ++i) v.dims.push_back(read_be32(bytes.data() + 4 + 4 * i));
  const auto have = static_cast<int64_t>(bytes.size() - v.data_offset);
  std::string dims;
  for (size_t i = 0; i < v.dims.size(); ++i) {
    if (i > 0) dims += 'x';
    dims += std::to_string(v.dims[i]);
  }
  if (have < v.count())
    throw InputError("IDX file '" + path + "' is truncated: its header says " + dims + " (" +
                     std::to_string(v.count()) + " bytes of data) but it holds " +
                     std::to_string(have));
  if (have > v.count())
    throw InputError("IDX file '" + path + "' has " + std::to_string(have - v.count()) +
                     " bytes after the " + dims + " values its header describes");
  if (v.dims[0] == 0) throw InputError("IDX file '" + path + "' holds no " + kind);
  return v;
}

void require_split(const std::string& split) {
  if (split != "train" && split != "test")
    throw InputError("--split must be 'train' or 'test', got '" + split + "'");
}

void check_labels(const Dataset& ds, const std::string& path) {
  const int classes = ds.num_classes();
  for (int64_t i = 0; i < ds.count; ++i) {
    if (ds.labels[i] >= classes)
      throw InputError("label file '" + path + "': label " + std::to_string(ds.labels[i]) +
                       " of record " + std::to_string(i) + " is outside 0.." +
                       std::to_string(classes - 1) + " (" + std::to_string(classes) + " classes)");
  }
}

}  // namespace

std::vector<uint8_t> read_file_maybe_gzipped(const std::string& path) {
  require_file(path, "input file");
  GzHandle f(gzopen(path.c_str(), "rb"));
  if (!f) throw InputError("cannot open '" + path + "': " + std::strerror(errno));
  gzbuffer(f.get(), 1 << 18);

  std::vector<uint8_t> out;
  std::error_code ec;
  const auto on_disk = fs::file_size(path, ec);
  if (!ec) out.reserve(static_cast<size_t>(on_disk));
  constexpr size_t kStep = size_t{1} << 22;
  size_t size = 0;
  for (;;) {
    out.resize(size + kStep);
    const int n = gzread(f.get(), out.data() + size, static_cast<unsigned>(kStep));
    if (n < 0) throw InputError("cannot read '" + path + "': " + gz_error_text(f.get()));
    size += static_cast<size_t>(n);
    if (n == 0) break;
  }
  out.resize(size);
  // A gzip stream cut short is reported at the end (Z_BUF_ERROR), not as a failed read.
  int errnum = Z_OK;
  gzerror(f.get(), &errnum);
  if (errnum != Z_OK) throw InputError("cannot read '" + path + "': " + gz_error_text(f.get()));
  const int rc = gzclose_r(f.release());
  if (rc == Z_BUF_ERROR)
    throw InputError("cannot read '" + path + "': the gzip stream is truncated");
  if (rc != Z_OK)
    throw InputError("cannot read '" + path + "': closing it failed (zlib error " +
                     std::to_string(rc) + ")");
  return out;
}

Dataset read_idx_pair(const std::string& images_path, const std::string& labels_path) {
  const std::vector<uint8_t> img = read_file_maybe_gzipped(images_path);
  const IdxView iv = parse_idx(img, images_path, 3, "images");
  const std::vector<uint8_t> lab = read_file_maybe_gzipped(labels_path);
  const IdxView lv = parse_idx(lab, labels_path, 1, "labels");
  if (iv.dims[1] == 0 || iv.dims[2] == 0)
    throw InputError("IDX file '" + images_path + "' has empty images (" +
                     std::to_string(iv.dims[1]) + "x" + std::to_string(iv.dims[2]) + ")");
  if (lv.dims[0] != iv.dims[0])
    throw InputError("IDX files disagree: '" + images_path + "' holds " +
                     std::to_string(iv.dims[0]) + " images but '" + labels_path + "' holds " +
                     std::to_string(lv.dims[0]) + " labels");

  Dataset ds;
  ds.count = iv.dims[0];
  ds.channels = 1;
  ds.height = iv.dims[1];
  ds.width = iv.dims[2];
  ds.images.assign(img.begin() + static_cast<std::ptrdiff_t>(iv.data_offset), img.end());
  ds.labels.assign(lab.begin() + static_cast<std::ptrdiff_t>(lv.data_offset), lab.end());
  // IDX carries no class names: call the classes 0..max label (MNIST digits).
  const int max_label = *std::max_element(ds.labels.begin(), ds.labels.end());
  for (int c = 0; c <= max_label; ++c) ds.class_names.push_back(std::to_string(c));
  ds.source = "idx " + fs::path(images_path).filename().string();
  return ds;
}

Dataset read_fashion_mnist(const std::string& folder, const std::string& split) {
  require_split(split);
  std::error_code ec;
  const fs::file_status st = fs::status(folder, ec);
  if (!fs::exists(st)) throw InputError("Fashion-MNIST folder '" + folder + "' does not exist");
  if (!fs::is_directory(st))
    throw InputError("Fashion-MNIST input '" + folder +
                     "' is not a folder; expected the folder holding "
                     "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]");
  const std::string prefix = split == "train" ? "train" : "t10k";
  auto locate = [&](const std::string& stem) {
    const fs::path gz = fs::path(folder) / (stem + ".gz");
    const fs::path plain = fs::path(folder) / stem;
    if (fs::exists(gz, ec)) return gz.string();
    if (fs::exists(plain, ec)) return plain.string();
    throw InputError("Fashion-MNIST folder '" + folder + "' has no " + stem + ".gz (nor " + stem +
                     ") for split '" + split + "'");
  };
  const std::string images_path = locate(prefix + "-images-idx3-ubyte");
  const std::string labels_path = locate(prefix + "-labels-idx1-ubyte");
  Dataset ds = read_idx_pair(images_path, labels_path);
  ds.class_names = fashion_mnist_class_names();
  check_labels(ds, labels_path);
  ds.source = "fashion-mnist " + split;
  return ds;
}

Dataset read_cifar10(const std::string& input, const std::string& split) {
  require_split(split);
  constexpr int64_t kC = 3, kH = 32, kW = 32, kImage = kC * kH * kW, kRecord = kImage + 1;
  std::error_code ec;
  const fs::file_status st = fs::status(input, ec);
  if (!fs::exists(st)) throw InputError("CIFAR-10 input '" + input + "' does not exist");

  std::vector<std::string> files;
  Dataset ds;
  if (fs::is_directory(st)) {
    fs::path dir = input;
    // Accept the folder the archive unpacks into, or the folder that holds it.
    if (!fs::exists(dir / "data_batch_1.bin", ec) && !fs::exists(dir / "test_batch.bin", ec) &&
        fs::is_directory(dir / "cifar-10-batches-bin", ec))
      dir /= "cifar-10-batches-bin";
    if (split == "train") {
      for (int i = 1; i <= 5; ++i)
        files.push_back((dir / ("data_batch_" + std::to_string(i) + ".bin")).string());
    } else {
      files.push_back((dir / "test_batch.bin").string());
    }
    for (const auto& f : files)
      if (!fs::exists(f, ec))
        throw InputError("CIFAR-10 folder '" + input + "' has no " +
                         fs::path(f).filename().string() + " (split '" + split +
                         "' needs data_batch_1..5.bin for train, test_batch.bin for test)");
    ds.source = "cifar10 " + split;
  } else {
    files.push_back(input);
    ds.source = "cifar10 " + fs::path(input).filename().string();
  }

  ds.channels = kC;
  ds.height = kH;
  ds.width = kW;
  ds.class_names = cifar10_class_names();
  for (const auto& path : files) {
    const std::vector<uint8_t> bytes = read_file_maybe_gzipped(path);
    const auto size = static_cast<int64_t>(bytes.size());
    if (size == 0) throw InputError("CIFAR-10 file '" + path + "' is empty");
    if (size % kRecord != 0)
      throw InputError("CIFAR-10 file '" + path + "' has " + std::to_string(size) +
                       " bytes, not a multiple of 3073 (1 label byte + 3072 pixel bytes per "
                       "record); is it the binary version of CIFAR-10?");
    const int64_t n = size / kRecord;
    const int64_t base = ds.count;
    ds.images.resize(static_cast<size_t>((base + n) * kImage));
    ds.labels.resize(static_cast<size_t>(base + n));
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* rec = bytes.data() + i * kRecord;
      if (rec[0] >= 10)
        throw InputError("CIFAR-10 file '" + path + "': record " + std::to_string(i) +
                         " has label " + std::to_string(rec[0]) + ", expected 0..9");
      ds.labels[static_cast<size_t>(base + i)] = rec[0];
      std::memcpy(ds.images.data() + (base + i) * kImage, rec + 1, kImage);  // already CHW
    }
    ds.count = base + n;
  }
  return ds;
}

}  // namespace mpsl::data
