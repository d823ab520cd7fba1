// Error types and checked-call helpers shared by every module.
#pragma once

#include <stdexcept>
#include <string>

namespace mpsl {

// Something the user controls is wrong (options, dataset, model file, checkpoint, plan,
// topology). The process exits with code 2 and prints what() once.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failure of the program or of the system underneath (exit code 1).
class RuntimeFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Builds "file:line: message" for internal invariants.
[[noreturn]] void throw_internal(const char* file, int line, const std::string& message);

}  // namespace mpsl

#define MPSL_CHECK(cond, msg)                                                                   \
  do {                                                                                          \
    if (!(cond)) ::mpsl::throw_internal(__FILE__, __LINE__, std::string(msg) + " (" #cond ")"); \
  } while (0)

#define MPSL_INPUT_CHECK(cond, msg)             \
  do {                                          \
    if (!(cond)) throw ::mpsl::InputError(msg); \
  } while (0)
