#include "mpsl/core/error.hpp"

namespace mpsl {

void throw_internal(const char* file, int line, const std::string& message) {
  throw RuntimeFailure(std::string(file) + ":" + std::to_string(line) + ": " + message);
}

}  // namespace mpsl
