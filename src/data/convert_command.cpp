// `mpsl convert`: a source dataset (Fashion-MNIST IDX or CIFAR-10 binary) into mpsl's HDF5 file.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "mpsl/cli/commands.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/data/dataset.hpp"

namespace mpsl::cli {

namespace {

namespace fs = std::filesystem;

void validate(const ConvertOptions& opts) {
  if (opts.format.empty())
    throw InputError("convert: --format is required (fashion-mnist or cifar10)");
  if (opts.format != "fashion-mnist" && opts.format != "cifar10")
    throw InputError("convert: --format must be fashion-mnist or cifar10, got '" + opts.format +
                     "'");
  if (opts.split != "train" && opts.split != "test")
    throw InputError("convert: --split must be train or test, got '" + opts.split + "'");
  if (opts.format == "cifar10" && opts.input.empty())
    throw InputError(
        "convert: --input is required for --format cifar10 (a CIFAR-10 binary batch file, or the "
        "folder holding data_batch_1..5.bin and test_batch.bin)");
  if (opts.output.empty()) throw InputError("convert: --output FILE.h5 is required");

  std::error_code ec;
  if (fs::is_directory(opts.output, ec))
    throw InputError("convert: --output '" + opts.output + "' is a folder, expected a file name");
  const fs::path parent = fs::path(opts.output).parent_path();
  const std::string dir = parent.empty() ? std::string(".") : parent.string();
  if (!fs::is_directory(dir, ec))
    throw InputError("convert: --output '" + opts.output + "': folder '" + dir +
                     "' does not exist");
  if (::access(dir.c_str(), W_OK) != 0)
    throw InputError("convert: --output '" + opts.output + "': cannot write in folder '" + dir +
                     "': " + std::strerror(errno));
}

}  // namespace

int run_convert(const CommonOptions& common, const ConvertOptions& opts) {
  validate(opts);
  data::Dataset ds;
  if (opts.format == "fashion-mnist") {
    const std::string input = opts.input.empty() ? data::kFashionMnistDefaultFolder : opts.input;
    ds = data::read_fashion_mnist(input, opts.split);
  } else {
    ds = data::read_cifar10(opts.input, opts.split);
  }
  data::compute_normalisation(ds);
  data::write_dataset_h5(opts.output, ds);  // atomic: no partial file on failure
  if (!common.quiet) {
    std::printf("convert: %s (%s) -> %s\n", data::summary(ds).c_str(), ds.source.c_str(),
                opts.output.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace mpsl::cli
