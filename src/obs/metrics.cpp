#include "mpsl/obs/metrics.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "mpsl/core/error.hpp"

namespace mpsl::obs {

MetricsWriter::MetricsWriter(std::string path, bool append) : path_(std::move(path)) {
  if (path_.empty()) return;
  std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec)
      throw InputError("--metrics: cannot create the directory '" + parent.string() +
                       "': " + ec.message());
  }
  file_ = std::fopen(path_.c_str(), append ? "a" : "w");
  if (!file_)
    throw InputError("--metrics: cannot open '" + path_ + "' for writing: " + std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  close();
}

MetricsWriter::MetricsWriter(MetricsWriter&& other) noexcept
    : path_(std::move(other.path_)), file_(other.file_) {
  other.file_ = nullptr;
}

MetricsWriter& MetricsWriter::operator=(MetricsWriter&& other) noexcept {
  if (this != &other) {
    close();
    path_ = std::move(other.path_);
    file_ = other.file_;
    other.file_ = nullptr;
  }
  return *this;
}

void MetricsWriter::close() noexcept {
  if (file_) {
    std::fclose(file_);  // a destructor never throws; a failed close loses nothing already flushed
    file_ = nullptr;
  }
}

void MetricsWriter::write(const nlohmann::json& event) {
  if (!file_) return;
  MPSL_CHECK(event.is_object() && event.contains("event") && event["event"].is_string(),
             "a metrics event must be a JSON object with an \"event\" string: " +
                 event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  std::string line = event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line += '\n';
  std::lock_guard<std::mutex> lock(mutex_);
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    throw RuntimeFailure("cannot write metrics to '" + path_ + "': " + std::strerror(errno));
}

}  // namespace mpsl::obs
