// The HDF5 dataset file mpsl trains from:
//   /images  uint8 [N,C,H,W] (chunked, deflate level 1)
//   /labels  uint8 [N]
//   root attributes: format_version (int), content = "mpsl-dataset", class_names (strings),
//                    mean, std (float per channel, of pixel/255), source (string)
#include <cmath>
#include <limits>

#include "mpsl/core/error.hpp"
#include "mpsl/data/dataset.hpp"
#include "mpsl/io/hdf5.hpp"

namespace mpsl::data {

namespace {
constexpr int kDeflateLevel = 1;  // light: most of the gain, little of the cost
}

void write_dataset_h5(const std::string& path, const Dataset& ds) {
  check_consistent(ds, path);
  std::vector<float> mean = ds.mean, std = ds.std;
  if (mean.empty() || std.empty()) channel_statistics(ds, mean, std);

  io::atomic_write_h5(path, [&](io::File& file) {
    io::DatasetOptions compressed;
    compressed.deflate = kDeflateLevel;
    file.write_dataset<uint8_t>("images", {ds.count, ds.channels, ds.height, ds.width}, ds.images,
                                compressed);
    file.write_dataset<uint8_t>("labels", {ds.count}, ds.labels, compressed);
    file.write_attribute("format_version", int64_t{kDatasetFormatVersion});
    file.write_attribute("content", "mpsl-dataset");
    file.write_attribute("class_names", ds.class_names);
    file.write_attribute("mean", mean);
    file.write_attribute("std", std);
    file.write_attribute("source", ds.source);
  });
}

Dataset read_dataset_h5(const std::string& path) {
  auto bad = [&](const std::string& msg) -> InputError {
    return InputError("dataset file '" + path + "': " + msg);
  };
  io::File file = io::File::open(path);  // InputError if missing or not HDF5

  if (!file.has_attribute("format_version"))
    throw bad("no format_version attribute; is it a dataset written by 'mpsl convert'?");
  const int64_t version = file.read_int_attribute("format_version");
  if (version != kDatasetFormatVersion)
    throw bad("format_version " + std::to_string(version) +
              (version > kDatasetFormatVersion ? " is newer than" : " is not") +
              " the version this mpsl reads (" + std::to_string(kDatasetFormatVersion) + ")");
  for (const char* name : {"images", "labels"})
    if (!file.exists(name)) throw bad(std::string("missing dataset /") + name);

  Dataset ds;
  io::Dataset images = file.open_dataset("images");
  const std::string itype = images.type().describe();
  if (itype != "uint8") throw bad("/images holds " + itype + ", expected uint8");
  const io::Shape shape = images.shape();
  if (shape.size() != 4)
    throw bad("/images has shape " + io::shape_string(shape) + ", expected [N,C,H,W]");
  for (int64_t d : shape)
    if (d <= 0) throw bad("/images has shape " + io::shape_string(shape) + " with an empty extent");
  // Guard the allocation against nonsense extents (64 GiB is far beyond any dataset we train on).
  const double bytes = static_cast<double>(shape[0]) * shape[1] * shape[2] * shape[3];
  if (bytes > double(int64_t{1} << 36))
    throw bad("/images of shape " + io::shape_string(shape) + " is too large to load");
  ds.count = shape[0];
  ds.channels = shape[1];
  ds.height = shape[2];
  ds.width = shape[3];

  io::Dataset labels = file.open_dataset("labels");
  if (labels.type().type_class() != H5T_INTEGER)
    throw bad("/labels holds " + labels.type().describe() + ", expected integers");
  const io::Shape lshape = labels.shape();
  if (lshape.size() != 1)
    throw bad("/labels has shape " + io::shape_string(lshape) + ", expected [N]");
  if (lshape[0] != ds.count)
    throw bad("/labels holds " + std::to_string(lshape[0]) + " labels but /images holds " +
              std::to_string(ds.count) + " images");

  if (!file.has_attribute("class_names")) throw bad("no class_names attribute");
  ds.class_names = file.read_strings_attribute("class_names");
  if (ds.class_names.empty() || ds.class_names.size() > 256)
    throw bad("class_names has " + std::to_string(ds.class_names.size()) +
              " entries, expected 1..256");
  const int classes = ds.num_classes();

  // Labels may be stored as any integer type (h5py users): read wide, check, narrow.
  const std::vector<int64_t> wide = labels.read<int64_t>();
  ds.labels.resize(wide.size());
  for (size_t i = 0; i < wide.size(); ++i) {
    if (wide[i] < 0 || wide[i] >= classes)
      throw bad("label " + std::to_string(wide[i]) + " of image " + std::to_string(i) +
                " is outside 0.." + std::to_string(classes - 1) + " (" + std::to_string(classes) +
                " class names)");
    ds.labels[i] = static_cast<uint8_t>(wide[i]);
  }
  ds.images.resize(static_cast<size_t>(ds.count * ds.image_size()));
  images.read(ds.images.data());

  const bool has_mean = file.has_attribute("mean"), has_std = file.has_attribute("std");
  if (has_mean && has_std) {
    ds.mean = file.read_floats_attribute("mean");
    ds.std = file.read_floats_attribute("std");
    for (const auto* v : {&ds.mean, &ds.std})
      if (static_cast<int64_t>(v->size()) != ds.channels)
        throw bad("mean/std have " + std::to_string(v->size()) +
                  " values, expected one per channel (" + std::to_string(ds.channels) + ")");
    for (int64_t c = 0; c < ds.channels; ++c)
      if (!std::isfinite(ds.mean[c]) || !std::isfinite(ds.std[c]) || ds.std[c] <= 0)
        throw bad("channel " + std::to_string(c) + " has mean " + std::to_string(ds.mean[c]) +
                  " and std " + std::to_string(ds.std[c]) + "; std must be finite and positive");
  } else {
    compute_normalisation(ds);  // older or hand-made files: derive them
  }
  ds.source = file.has_attribute("source") ? file.read_string_attribute("source") : path;
  return ds;
}

}  // namespace mpsl::data
