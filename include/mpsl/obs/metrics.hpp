// JSON-lines metrics (--metrics FILE): one object per line, each with an "event" key, flushed
// line by line so a crashed or killed run keeps everything written before (../shared/CLI.md).
#pragma once

#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

namespace mpsl::obs {

class MetricsWriter {
 public:
  // An empty path means "off": write() does nothing. Otherwise the file is created (with its
  // parent directories) or truncated, or appended to when `append` (a resumed run keeps its
  // history). A file that cannot be opened is an InputError naming it.
  MetricsWriter() = default;
  explicit MetricsWriter(std::string path, bool append = false);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  MetricsWriter(MetricsWriter&& other) noexcept;
  MetricsWriter& operator=(MetricsWriter&& other) noexcept;

  bool enabled() const { return file_ != nullptr; }
  const std::string& path() const { return path_; }

  // Appends `event` (a JSON object with an "event" string) as one line and flushes.
  // A write failure (disk full, ...) is a RuntimeFailure.
  void write(const nlohmann::json& event);

 private:
  void close() noexcept;

  std::string path_;
  std::FILE* file_ = nullptr;
  std::mutex mutex_;
};

}  // namespace mpsl::obs
