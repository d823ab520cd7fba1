// Leveled logging to stderr, and a one-line progress display.
//
// Lines are written whole (one write per line) so ranks sharing a terminal do not interleave
// within a line. When the job has more than one rank, each line starts with "[rank r] ".
#pragma once

#include <chrono>
#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace mpsl::obs {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

// "error" | "warn" | "info" | "debug"; anything else is an InputError naming --log-level.
LogLevel parse_log_level(std::string_view text);

// Process-wide settings. --quiet caps the level at kWarn.
void set_log_level(LogLevel level);
void set_quiet(bool quiet);
LogLevel log_level();
// The rank prefix is printed when size > 1.
void set_log_rank(int rank, int size);

bool log_enabled(LogLevel level);
void log_message(LogLevel level, std::string_view message);

inline void log_error(std::string_view m) {
  log_message(LogLevel::kError, m);
}
inline void log_warn(std::string_view m) {
  log_message(LogLevel::kWarn, m);
}
inline void log_info(std::string_view m) {
  log_message(LogLevel::kInfo, m);
}
inline void log_debug(std::string_view m) {
  log_message(LogLevel::kDebug, m);
}

// "1,4,8": integers as printed options and messages show them (a split, the owners of a rank).
std::string join_ints(const std::vector<int>& values);

// Redraws one status line ("\r...") while stderr is a terminal (or MPSL_PROGRESS=1: under
// mpirun a rank's stderr is a pipe); elsewhere (files, pipes, CI logs) it prints nothing but
// the summary lines it is given. Rate-limited to 10 redraws/s.
// A disabled Progress (e.g. on ranks other than 0, or with --quiet) prints nothing at all.
class Progress {
 public:
  explicit Progress(std::string label, int64_t total = 0, bool enabled = true);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Shows "label done/total extra" (the redraw is skipped when the last one is too recent,
  // unless done == total).
  void update(int64_t done, std::string_view extra = {});
  // Ends the status line and logs `line` at info level (shown on terminals and in files alike).
  void summary(std::string_view line);
  // Clears the status line.
  void finish();

  static bool stderr_is_tty();

 private:
  std::string label_;
  int64_t total_;
  bool enabled_;
  bool live_;  // redraws happen (enabled and stderr is a TTY)
  std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace mpsl::obs

// Stream-style logging that builds the message only when the level is enabled:
//   MPSL_LOG(Info, "loaded " << n << " images");
#define MPSL_LOG(level, stream_expr)                                                 \
  do {                                                                               \
    if (::mpsl::obs::log_enabled(::mpsl::obs::LogLevel::k##level)) {                 \
      std::ostringstream mpsl_log_os_;                                               \
      mpsl_log_os_ << stream_expr;                                                   \
      ::mpsl::obs::log_message(::mpsl::obs::LogLevel::k##level, mpsl_log_os_.str()); \
    }                                                                                \
  } while (0)
