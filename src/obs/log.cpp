#include "mpsl/obs/log.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "mpsl/core/error.hpp"

namespace mpsl::obs {
namespace {

struct LogState {
  std::mutex mutex;
  std::atomic<int> level{static_cast<int>(LogLevel::kInfo)};
  std::atomic<bool> quiet{false};
  int rank = 0;
  int size = 1;
  bool status_line_shown = false;  // a Progress line is on screen (guarded by mutex)
};

LogState& state() {
  static LogState s;
  return s;
}

const char* level_prefix(LogLevel level) {
  switch (level) {
    case LogLevel::kError:
      return "error: ";
    case LogLevel::kWarn:
      return "warning: ";
    case LogLevel::kInfo:
      return "";
    case LogLevel::kDebug:
      return "debug: ";
  }
  return "";
}

std::string rank_prefix(const LogState& s) {
  return s.size > 1 ? "[rank " + std::to_string(s.rank) + "] " : "";
}

void write_stderr(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

}  // namespace

LogLevel parse_log_level(std::string_view text) {
  if (text == "error") return LogLevel::kError;
  if (text == "warn") return LogLevel::kWarn;
  if (text == "info") return LogLevel::kInfo;
  if (text == "debug") return LogLevel::kDebug;
  throw InputError("--log-level must be one of error|warn|info|debug, got '" + std::string(text) +
                   "'");
}

void set_log_level(LogLevel level) {
  state().level = static_cast<int>(level);
}
void set_quiet(bool quiet) {
  state().quiet = quiet;
}
LogLevel log_level() {
  return static_cast<LogLevel>(state().level.load());
}

void set_log_rank(int rank, int size) {
  std::lock_guard<std::mutex> lock(state().mutex);
  state().rank = rank;
  state().size = size;
}

bool log_enabled(LogLevel level) {
  int max = state().level;
  if (state().quiet && max > static_cast<int>(LogLevel::kWarn))
    max = static_cast<int>(LogLevel::kWarn);
  return static_cast<int>(level) <= max;
}

void log_message(LogLevel level, std::string_view message) {
  if (!log_enabled(level)) return;
  LogState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  std::string line;
  if (s.status_line_shown) {
    line = "\r\033[K";  // clear the progress line; the next update redraws it
    s.status_line_shown = false;
  }
  line += rank_prefix(s);
  line += level_prefix(level);
  line += message;
  line += '\n';
  write_stderr(line);
}

// ---------------------------------------------------------------------------------------------

bool Progress::stderr_is_tty() {
  // mpirun hands its ranks a pipe for stderr even in a terminal: MPSL_PROGRESS=1 asks for the
  // live line anyway (rank 0's output reaches the terminal through mpirun, in order);
  // MPSL_PROGRESS=0 turns it off.
  static const bool tty = [] {
    const char* force = std::getenv("MPSL_PROGRESS");
    if (force && *force) return std::string_view(force) != "0";
    return ::isatty(STDERR_FILENO) == 1;
  }();
  return tty;
}

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled),
      live_(enabled && stderr_is_tty() && log_enabled(LogLevel::kInfo)) {}

Progress::~Progress() {
  finish();
}

void Progress::update(int64_t done, std::string_view extra) {
  if (!live_) return;
  auto now = std::chrono::steady_clock::now();
  bool last = total_ > 0 && done >= total_;
  if (!last && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  std::lock_guard<std::mutex> lock(state().mutex);
  // Appends one piece at a time (GCC 12 warns falsely on chains of operator+ here).
  std::string text = "\r";
  text += rank_prefix(state());
  text += label_;
  text += ' ';
  text += std::to_string(done);
  if (total_ > 0) {
    text += '/';
    text += std::to_string(total_);
  }
  if (!extra.empty()) {
    text += "  ";
    text += extra;
  }
  text += "\033[K";
  state().status_line_shown = true;
  write_stderr(text);
}

void Progress::summary(std::string_view line) {
  if (!enabled_) return;
  finish();
  log_info(line);
}

void Progress::finish() {
  if (!live_) return;
  std::lock_guard<std::mutex> lock(state().mutex);
  if (state().status_line_shown) {
    write_stderr("\r\033[K");
    state().status_line_shown = false;
  }
}

std::string join_ints(const std::vector<int>& values) {
  std::string out;
  for (int v : values) {
    if (!out.empty()) out += ',';
    out += std::to_string(v);
  }
  return out;
}

}  // namespace mpsl::obs
