// Up-front checks of output paths given on the command line, so a run that could not write its
// result fails before it starts (exit code 2), not after hours of training.
#pragma once

#include <string>

namespace mpsl::io {

// Creates the parent folders of `path` if needed and checks that `path` can be written as a
// file: not an existing folder, parent a writable folder. InputError naming `option` otherwise.
void prepare_output_file(const std::string& path, const std::string& option);

}  // namespace mpsl::io
