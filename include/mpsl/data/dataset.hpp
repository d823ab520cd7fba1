// Image-classification datasets: readers for the source formats, the HDF5 file mpsl trains
// from, and batch assembly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpsl::data {

// A whole dataset in memory: uint8 images in NCHW order and one uint8 label per image.
struct Dataset {
  int64_t count = 0, channels = 0, height = 0, width = 0;
  std::vector<uint8_t> images;           // count * channels * height * width
  std::vector<uint8_t> labels;           // count
  std::vector<std::string> class_names;  // one per class
  std::vector<float> mean, std;          // per channel, of pixel / 255 (for normalisation)
  std::string source;                    // e.g. "fashion-mnist train"

  int64_t image_size() const { return channels * height * width; }
  int num_classes() const { return static_cast<int>(class_names.size()); }
};

// Reads Fashion-MNIST (or MNIST) IDX files, gzipped or plain: images file + labels file.
// Throws InputError naming the file on a missing file, bad magic, or inconsistent sizes.
Dataset read_idx_pair(const std::string& images_path, const std::string& labels_path);

// Reads the Fashion-MNIST split ("train" or "test") from a folder holding the four
// {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] files.
Dataset read_fashion_mnist(const std::string& folder, const std::string& split);

// Reads CIFAR-10 binary batches (1 label byte + 3072 pixel bytes per record). `input` is either
// a file or a folder; for a folder the split picks data_batch_1..5.bin (train) or test_batch.bin.
Dataset read_cifar10(const std::string& input, const std::string& split);

// Computes per-channel mean and std of pixel/255 over the whole dataset (fills ds.mean/ds.std).
void compute_normalisation(Dataset& ds);

// Writes the dataset as one HDF5 file: /images uint8 [N,C,H,W], /labels uint8 [N], and
// attributes class_names, mean, std, source, format_version. Written under a temporary name
// and renamed, so a failure never leaves a partial file at `path`.
void write_dataset_h5(const std::string& path, const Dataset& ds);

// Reads a file written by write_dataset_h5. Throws InputError naming the file and what is wrong
// (missing, not HDF5, missing dataset, bad shape, label out of range).
Dataset read_dataset_h5(const std::string& path);

// A synthetic dataset of random images and labels (for benchmarks), deterministic in seed.
Dataset make_synthetic(int64_t count, int64_t channels, int64_t height, int64_t width, int classes,
                       uint64_t seed);

// Converts images [first index list] into a normalised float batch, NCHW:
// out[i] = (pixel/255 - mean[c]) / std[c]. labels_out receives int32 labels.
void assemble_batch(const Dataset& ds, const int64_t* indices, int64_t n, float* images_out,
                    int32_t* labels_out);

// ---- additions -------------------------------------------------------------------------------

// The version write_dataset_h5 writes (attribute format_version) and read_dataset_h5 accepts.
inline constexpr int kDatasetFormatVersion = 1;

// Where the dataset-fashion-mnist package puts the IDX files (the convert command's default).
inline constexpr const char* kFashionMnistDefaultFolder = "/usr/share/datasets/fashion-mnist";

const std::vector<std::string>& fashion_mnist_class_names();
const std::vector<std::string>& cifar10_class_names();

// Reads a whole file, gunzipping it if it is gzip-compressed (plain files are read as they are).
// Throws InputError naming the file if it is missing, unreadable or a truncated/corrupt gzip.
std::vector<uint8_t> read_file_maybe_gzipped(const std::string& path);

// Per-channel mean and std of pixel/255 (population std, exact integer sums), without
// changing the dataset.
void channel_statistics(const Dataset& ds, std::vector<float>& mean, std::vector<float>& std);

// Checks the invariants of a Dataset (sizes agree, labels below num_classes, mean/std sized
// per channel or empty); throws RuntimeFailure naming `what` if one fails.
void check_consistent(const Dataset& ds, const std::string& what);

// One line: "10000 images 1x28x28, 10 classes, mean 0.2860 std 0.3530".
std::string summary(const Dataset& ds);

}  // namespace mpsl::data
