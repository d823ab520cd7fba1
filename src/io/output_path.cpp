#include "mpsl/io/output_path.hpp"

#include <unistd.h>

#include <filesystem>

#include "mpsl/core/error.hpp"

namespace mpsl::io {

void prepare_output_file(const std::string& path, const std::string& option) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw InputError(option + " '" + path + "' is a folder; give a file name");
  const fs::path parent =
      fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path();
  if (!fs::exists(parent, ec)) fs::create_directories(parent, ec);
  if (!fs::is_directory(parent, ec))
    throw InputError(option + " '" + path + "': '" + parent.string() +
                     "' is not a folder and cannot be created" +
                     (ec ? " (" + ec.message() + ")" : std::string()));
  if (::access(parent.c_str(), W_OK) != 0)
    throw InputError(option + " '" + path + "': folder '" + parent.string() + "' is not writable");
}

}  // namespace mpsl::io
