#include "mpsl/obs/trace.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "mpsl/comm/mpi_environment.hpp"
#include "mpsl/core/error.hpp"

namespace mpsl::obs {

namespace {

constexpr size_t kMaxEvents = size_t{2} << 20;  // per rank (about 100 MiB); later ones are counted
constexpr int kTagPing = 11, kTagPong = 12, kExchanges = 8;
constexpr int kNameChars = 128;

double local_us() {
  return std::chrono::duration<double, std::micro>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A communicator of our own for the few messages tracing sends (never matched by the
// pipeline's posted receives).
struct DupComm {
  MPI_Comm comm = MPI_COMM_NULL;
  explicit DupComm(MPI_Comm c) { MPSL_MPI_CHECK(MPI_Comm_dup(c, &comm)); }
  ~DupComm() {
    if (comm != MPI_COMM_NULL && !comm::MpiEnvironment::finalized()) MPI_Comm_free(&comm);
  }
};

const char* category(Activity a) {
  switch (a) {
    case Activity::kForward:
    case Activity::kBackward:
    case Activity::kOptimizer:
    case Activity::kAggregation:
    case Activity::kEval:
    case Activity::kStep:
      return "compute";
    case Activity::kSend:
    case Activity::kReceive:
    case Activity::kCopyIn:
      return "comm";
    case Activity::kWait:
      return "wait";
    case Activity::kCheckpoint:
      return "io";
    default:
      return "other";
  }
}

void write_file_atomically(const std::string& path, const std::string& text) {
  namespace fs = std::filesystem;
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw RuntimeFailure("--trace: cannot create '" + tmp + "': " + std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw RuntimeFailure("--trace: cannot write '" + tmp + "': " + std::strerror(e));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw RuntimeFailure("--trace: cannot flush '" + tmp + "': " + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    throw RuntimeFailure("--trace: cannot rename '" + tmp + "' to '" + path +
                         "': " + std::strerror(errno));
  }
}

void append_event(std::string& out, const TraceEvent& e, int pid) {
  const Activity a = static_cast<Activity>(e.activity);
  char buf[384];
  int n = std::snprintf(buf, sizeof buf,
                        ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,"
                        "\"pid\":%d,\"tid\":%d,\"args\":{\"round\":%d",
                        activity_name(a), category(a), e.start_us, e.dur_us, pid,
                        static_cast<int>(e.activity), e.round);
  out.append(buf, static_cast<size_t>(n));
  if (e.owner >= 0) out += ",\"owner\":" + std::to_string(e.owner);
  if (e.micro >= 0) out += ",\"micro\":" + std::to_string(e.micro);
  if (e.peer >= 0) out += ",\"peer\":" + std::to_string(e.peer);
  if (e.bytes >= 0) out += ",\"bytes\":" + std::to_string(e.bytes);
  if (e.cpu_us >= 0) {
    n = std::snprintf(buf, sizeof buf, ",\"cpu_ms\":%.3f", e.cpu_us * 1e-3);
    out.append(buf, static_cast<size_t>(n));
  }
  out += "}}";
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

}  // namespace

std::atomic<bool> Tracer::enabled_{false};

const char* activity_name(Activity a) {
  switch (a) {
    case Activity::kForward:
      return "forward";
    case Activity::kBackward:
      return "backward";
    case Activity::kOptimizer:
      return "optimizer";
    case Activity::kSend:
      return "send";
    case Activity::kReceive:
      return "receive";
    case Activity::kWait:
      return "wait";
    case Activity::kAggregation:
      return "aggregation";
    case Activity::kCheckpoint:
      return "checkpoint";
    case Activity::kEval:
      return "eval";
    case Activity::kStep:
      return "step";
    case Activity::kCopyIn:
      return "copy in";
    default:
      return "?";
  }
}

Tracer& Tracer::instance() {
  static Tracer t;
  return t;
}

void Tracer::start(MPI_Comm world) {
  DupComm dc(world);
  int rank = 0, size = 1;
  MPSL_MPI_CHECK(MPI_Comm_rank(dc.comm, &rank));
  MPSL_MPI_CHECK(MPI_Comm_size(dc.comm, &size));
  // Offsets: rank 0 answers each rank's pings with its clock; the exchange with the shortest
  // round trip bounds the error by half of it (microseconds within a node).
  offset_us_ = 0;
  double best_rtt = 0;
  for (int r = 1; r < size; ++r) {
    for (int i = 0; i < kExchanges; ++i) {
      if (rank == 0) {
        char ping = 0;
        MPSL_MPI_CHECK(MPI_Recv(&ping, 1, MPI_CHAR, r, kTagPing, dc.comm, MPI_STATUS_IGNORE));
        const double t0 = local_us();
        MPSL_MPI_CHECK(MPI_Send(&t0, 1, MPI_DOUBLE, r, kTagPong, dc.comm));
      } else if (rank == r) {
        const double t1 = local_us();
        char ping = 0;
        MPSL_MPI_CHECK(MPI_Send(&ping, 1, MPI_CHAR, 0, kTagPing, dc.comm));
        double t0 = 0;
        MPSL_MPI_CHECK(MPI_Recv(&t0, 1, MPI_DOUBLE, 0, kTagPong, dc.comm, MPI_STATUS_IGNORE));
        const double t2 = local_us();
        if (i == 0 || t2 - t1 < best_rtt) {
          best_rtt = t2 - t1;
          offset_us_ = t0 - 0.5 * (t1 + t2);
        }
      }
    }
  }
  double origin0 = rank == 0 ? local_us() : 0;
  MPSL_MPI_CHECK(MPI_Bcast(&origin0, 1, MPI_DOUBLE, 0, dc.comm));
  // now_us() = local + offset - origin0
  origin_ = std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::duration<double, std::micro>(origin0 - offset_us_)));
  events_.clear();
  events_.reserve(1 << 14);
  dropped_ = 0;
  enabled_.store(true, std::memory_order_relaxed);
}

double Tracer::now_us() const {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - origin_)
      .count();
}

double Tracer::process_cpu_us() {
  timespec ts{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) * 1e-3;
}

void Tracer::record(Activity a, double start_us, double end_us, int owner, int micro, int peer,
                    int64_t bytes, double cpu_us) {
  if (events_.size() >= kMaxEvents) {
    ++dropped_;
    return;
  }
  events_.push_back(TraceEvent{start_us, end_us - start_us, round_, owner, micro, peer, bytes,
                               static_cast<float>(cpu_us), static_cast<uint8_t>(a)});
}

void Tracer::write(MPI_Comm world, const std::string& path) {
  enabled_.store(false, std::memory_order_relaxed);
  DupComm dc(world);
  int rank = 0, size = 1;
  MPSL_MPI_CHECK(MPI_Comm_rank(dc.comm, &rank));
  MPSL_MPI_CHECK(MPI_Comm_size(dc.comm, &size));
  // Counts, dropped counts and names first, then the spans as raw bytes (same machine type on
  // every rank).
  int64_t mine[2] = {static_cast<int64_t>(events_.size()), dropped_};
  std::vector<int64_t> counts(2 * size);
  MPSL_MPI_CHECK(MPI_Gather(mine, 2, MPI_INT64_T, counts.data(), 2, MPI_INT64_T, 0, dc.comm));
  char name[kNameChars] = {};
  std::strncpy(name, process_name_.c_str(), kNameChars - 1);
  std::vector<char> names(static_cast<size_t>(kNameChars) * size);
  MPSL_MPI_CHECK(
      MPI_Gather(name, kNameChars, MPI_CHAR, names.data(), kNameChars, MPI_CHAR, 0, dc.comm));
  std::vector<TraceEvent> all;
  std::vector<int> bytes(size), displs(size);
  if (rank == 0) {
    int64_t total = 0;
    for (int r = 0; r < size; ++r) {
      const int64_t b = counts[2 * r] * static_cast<int64_t>(sizeof(TraceEvent));
      MPSL_CHECK(total + b < (int64_t{1} << 31), "trace too large to gather");
      bytes[r] = static_cast<int>(b);
      displs[r] = static_cast<int>(total);
      total += b;
    }
    all.resize(static_cast<size_t>(total) / sizeof(TraceEvent));
  }
  MPSL_MPI_CHECK(MPI_Gatherv(events_.data(), static_cast<int>(events_.size() * sizeof(TraceEvent)),
                             MPI_BYTE, all.data(), bytes.data(), displs.data(), MPI_BYTE, 0,
                             dc.comm));
  events_.clear();
  events_.shrink_to_fit();
  if (rank != 0) return;

  std::vector<std::string> process_names(static_cast<size_t>(size));
  std::vector<int64_t> spans(static_cast<size_t>(size));
  int64_t dropped = 0;
  for (int r = 0; r < size; ++r) {
    process_names[r] = std::string(&names[static_cast<size_t>(kNameChars) * r]);
    spans[r] = counts[2 * r];
    dropped += counts[2 * r + 1];
  }
  write_chrome_trace(path, process_names, all, spans,
                     ",\"clock\":\"steady clock, aligned to rank 0\",\"dropped_spans\":" +
                         std::to_string(dropped));
}

void write_chrome_trace(const std::string& path, const std::vector<std::string>& names,
                        const std::vector<TraceEvent>& events, const std::vector<int64_t>& counts,
                        const std::string& other_data) {
  const int size = static_cast<int>(names.size());
  std::string out = "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"producer\":\"mpsl\",\"ranks\":" +
                    std::to_string(size) + other_data + "},\n\"traceEvents\":[";
  bool first = true;
  auto meta = [&](const std::string& what, int pid, int tid, const std::string& args) {
    out += first ? "\n" : ",\n";
    first = false;
    out += "{\"name\":\"" + what + "\",\"ph\":\"M\",\"pid\":" + std::to_string(pid);
    if (tid >= 0) out += ",\"tid\":" + std::to_string(tid);
    out += ",\"args\":{" + args + "}}";
  };
  for (int r = 0; r < size; ++r) {
    const std::string n = names[r].empty() ? "rank " + std::to_string(r) : names[r];
    meta("process_name", r, -1, "\"name\":\"" + json_escape(n) + "\"");
    meta("process_sort_index", r, -1, "\"sort_index\":" + std::to_string(r));
    for (int a = 0; a < static_cast<int>(Activity::kCount); ++a) {
      meta("thread_name", r, a,
           std::string("\"name\":\"") + activity_name(static_cast<Activity>(a)) + "\"");
      meta("thread_sort_index", r, a, "\"sort_index\":" + std::to_string(a));
    }
  }
  size_t at = 0;
  for (int r = 0; r < size; ++r)
    for (int64_t i = 0; i < counts[r]; ++i) append_event(out, events.at(at++), r);
  out += "\n]}\n";
  write_file_atomically(path, out);
}

}  // namespace mpsl::obs
