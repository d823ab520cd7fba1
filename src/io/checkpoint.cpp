#include "mpsl/io/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "mpsl/core/error.hpp"
#include "mpsl/obs/log.hpp"

#ifndef MPSL_VERSION
#define MPSL_VERSION "unknown"
#endif

namespace mpsl::io {

namespace fs = std::filesystem;

namespace {

// A file descriptor closed on scope exit (a failed close is only logged: a destructor).
class Fd {
 public:
  Fd(const std::string& path, int flags) : fd_(::open(path.c_str(), flags)), path_(path) {}
  ~Fd() {
    if (fd_ >= 0 && ::close(fd_) != 0)
      obs::log_warn("closing '" + path_ + "' failed: " + std::strerror(errno));
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }

 private:
  int fd_;
  std::string path_;
};

void fsync_folder(const std::string& path) {
  Fd fd(path, O_RDONLY | O_DIRECTORY);
  if (!fd.ok())
    throw RuntimeFailure("cannot open folder '" + path + "' to sync it: " + std::strerror(errno));
  // Some file systems refuse fsync on folders (EINVAL); the entries were written anyway.
  if (::fsync(fd.get()) != 0 && errno != EINVAL && errno != EBADF)
    throw RuntimeFailure("fsync of folder '" + path + "' failed: " + std::strerror(errno));
}

// Reads a whole file computing its CRC-32 (and size); with `sync`, fsyncs it too.
FileSummary summarise_file(const std::string& path, bool sync, ErrorKind kind) {
  Fd fd(path, O_RDONLY);
  auto fail = [&](const std::string& what) {
    const std::string msg = path + ": " + what + ": " + std::strerror(errno);
    if (kind == ErrorKind::Input) throw InputError(msg);
    throw RuntimeFailure(msg);
  };
  if (!fd.ok()) fail("cannot open");
  if (sync && ::fsync(fd.get()) != 0) fail("fsync failed");
  FileSummary s;
  std::vector<unsigned char> buf(4 << 20);
  while (true) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("read failed");
    }
    if (n == 0) break;
    s.crc32 = crc32_bytes(buf.data(), static_cast<size_t>(n), s.crc32);
    s.bytes += n;
  }
  return s;
}

std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

std::string unit_group(int unit) {
  char b[32];
  std::snprintf(b, sizeof b, "units/%03d", unit);
  return b;
}

// "3.main.0.weight" -> "main.0.weight" (the model files' names).
std::string tensor_name(const nn::PartLayout::Entry& e) {
  return e.name.substr(e.name.find('.') + 1);
}

int64_t test_delay_ms() {
  const char* v = std::getenv("MPSL_TEST_CHECKPOINT_DELAY_MS");
  return v && *v ? std::atoll(v) : 0;
}

void write_tensor(Location& where, const std::string& path, const std::vector<int64_t>& dims,
                  const float* src) {
  const Shape shape(dims.begin(), dims.end());
  const int64_t n = element_count(shape);
  Dataset d = where.write_dataset<float>(path, shape, std::span<const float>(src, n));
  d.write_attribute("crc32", static_cast<int64_t>(crc32_bytes(src, n * sizeof(float))));
}

void write_part(Location& file, const std::string& group, const nn::Model& model,
                const PartRecord& rec) {
  const nn::PartState& st = *rec.state;
  Group g = file.require_group(group);
  g.write_attribute("owner", rec.owner);
  g.write_attribute("units_begin", st.layout.begin);
  g.write_attribute("units_end", st.layout.end);
  g.write_attribute("steps", static_cast<int64_t>(st.steps));
  g.write_attribute("param_count", st.layout.param_count);
  g.write_attribute("buffer_count", st.layout.buffer_count);
  for (int u = st.layout.begin; u < st.layout.end; ++u) {
    bool any = false, trained = false;
    for (const auto& e : st.layout.tensors)
      if (e.unit == u) any = true, trained |= !e.buffer;
    if (!any) continue;
    for (const char* prefix : {"", "momentum/"}) {
      if (*prefix && !trained) continue;
      Group ug = g.require_group(std::string(prefix) + unit_group(u));
      ug.write_attribute("type", model.unit(u).type());
      ug.write_attribute("description", model.unit(u).describe());
    }
  }
  for (const auto& e : st.layout.tensors) {
    const std::string path = unit_group(e.unit) + "/" + tensor_name(e);
    // Weights may be stored in oneDNN's layouts (PartState::formats): files hold plain ones.
    if (e.buffer) {
      write_tensor(g, path, e.dims, st.buffers.data() + e.offset);
    } else {
      write_tensor(g, path, e.dims, st.plain_values(e, st.params).data());
      write_tensor(g, "momentum/" + path, e.dims, st.plain_values(e, st.momentum).data());
    }
  }
}

[[noreturn]] void bad(const std::string& file, const std::string& problem) {
  throw InputError(file + ": " + problem);
}

void read_tensor(const Location& g, const std::string& path, const std::vector<int64_t>& dims,
                 float* dst, const std::string& model_name) {
  const std::string full = g.object_path() + "/" + path;
  if (!g.exists(path))
    bad(g.file_path(), "tensor " + full + " of model '" + model_name + "' is missing");
  Dataset d = g.open_dataset(path);
  const Shape want(dims.begin(), dims.end());
  const Shape shape = d.shape();
  if (shape != want)
    bad(g.file_path(), "tensor " + full + " has shape " + shape_string(shape) + ", model '" +
                           model_name + "' needs " + shape_string(want));
  if (!d.has_attribute("crc32")) bad(g.file_path(), "tensor " + full + " has no crc32 attribute");
  const int64_t n = element_count(shape);
  d.read(dst);
  const uint32_t stored = static_cast<uint32_t>(d.read_int_attribute("crc32"));
  const uint32_t computed = crc32_bytes(dst, n * sizeof(float));
  if (stored != computed)
    bad(g.file_path(), "tensor " + full + ": checksum mismatch (stored crc32 " + hex32(stored) +
                           ", data gives " + hex32(computed) + "): the file is damaged");
}

// Verifies the checksum of every tensor under `group` (throws naming the first damaged one).
void check_all_tensors(const Location& file, const std::string& group) {
  Group g = file.open_group(group);
  for (const std::string& name : g.children()) {
    const std::string path = group == "/" ? name : group + "/" + name;
    H5O_info_t info;
    check(H5Oget_info_by_name(g.id(), name.c_str(), &info, H5P_DEFAULT), "H5Oget_info_by_name",
          file.file_path() + ":/" + path, ErrorKind::Input);
    if (info.type == H5O_TYPE_GROUP) {
      check_all_tensors(file, path);
    } else if (info.type == H5O_TYPE_DATASET) {
      Dataset d = g.open_dataset(name);
      if (!d.has_attribute("crc32")) continue;
      const Shape shape = d.shape();
      std::vector<float> v(static_cast<size_t>(d.element_count()));
      read_tensor(g, name, std::vector<int64_t>(shape.begin(), shape.end()), v.data(), "?");
    }
  }
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

bool is_checkpoint_name(const std::string& n) {
  return n.rfind("ckpt-r", 0) == 0 && n.find('.') == std::string::npos;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError(path + ": cannot read: " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string trim(std::string s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

}  // namespace

uint32_t crc32_bytes(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  while (n > 0) {
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    c = ::crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(c);
}

// ---- rank files ------------------------------------------------------------------------------

FileSummary write_rank_file(const std::string& path, const nn::Model& model, const RankHeader& h,
                            const std::vector<OwnerRecord>& owners,
                            const std::vector<PartRecord>& parts) {
  {
    File f = File::create(path);
    f.write_attribute("format", kCheckpointFormat);
    f.write_attribute("format_version", kCheckpointFormatVersion);
    f.write_attribute("mpsl_version", MPSL_VERSION);
    f.write_attribute("model", h.model);
    f.write_attribute("checkpoint", h.checkpoint);
    f.write_attribute("rank", h.rank);
    f.write_attribute("world_size", h.world_size);
    f.write_attribute("role", h.role);
    f.write_attribute("round", h.round);
    f.write_attribute("step_in_round", h.step_in_round);
    f.write_attribute("round_complete", static_cast<int64_t>(h.round_complete ? 1 : 0));
    f.write_attribute("seed", static_cast<int64_t>(h.seed));
    f.write_attribute("randomness", kRandomnessNote);
    if (!h.config.empty()) f.write_attribute("config", h.config);
    if (!h.topology.empty()) f.write_attribute("topology", h.topology);
    f.write_attribute("checksums",
                      "every tensor has attribute crc32 = zlib crc32 of its float32 bytes "
                      "(little-endian, C order); the manifest has each file's crc32");
    for (const OwnerRecord& o : owners) {
      Group g = f.require_group("owners/" + std::to_string(o.owner));
      g.write_attribute("owner", o.owner);
      g.write_attribute("samples", o.samples);
      g.write_attribute("shard_crc32", static_cast<int64_t>(o.shard_crc32));
      g.write_attribute("steps_in_round", o.steps_in_round);
      g.write_attribute("epoch", o.epoch);
      g.write_attribute("global_epoch", o.global_epoch);
      g.write_attribute("step_in_epoch", o.step_in_epoch);
      g.write_attribute("round_loss_sum", o.loss_sum);
      g.write_attribute("round_correct", o.correct);
      g.write_attribute("round_images", o.images);
    }
    const int64_t delay = test_delay_ms();
    for (size_t i = 0; i < parts.size(); ++i) {
      if (delay > 0 && i == parts.size() / 2) {
        f.flush();
        std::this_thread::sleep_for(std::chrono::milliseconds(delay));
      }
      write_part(f, parts[i].path, model, parts[i]);
    }
    f.flush();
    f.close();
  }
  return summarise_file(path, true, ErrorKind::Runtime);
}

void read_part(const Location& file, const std::string& group, const nn::Model& model,
               nn::PartState& st) {
  if (!file.exists(group)) bad(file.file_path(), "has no part /" + group);
  Group g = file.open_group(group);
  const int64_t b = g.read_int_attribute("units_begin"), e = g.read_int_attribute("units_end");
  if (b != st.layout.begin || e != st.layout.end)
    bad(file.file_path(), "part /" + group + " holds units [" + std::to_string(b) + ", " +
                              std::to_string(e) + "), this run needs [" +
                              std::to_string(st.layout.begin) + ", " +
                              std::to_string(st.layout.end) + ")");
  for (const auto& t : st.layout.tensors) {
    const std::string path = unit_group(t.unit) + "/" + tensor_name(t);
    if (t.buffer) {
      read_tensor(g, path, t.dims, st.buffers.data() + t.offset, model.name());
    } else {
      std::vector<float> v(static_cast<size_t>(nn::TensorSpec{t.name, t.dims}.elements()));
      read_tensor(g, path, t.dims, v.data(), model.name());
      st.set_plain_values(t, v.data(), st.params);
      read_tensor(g, "momentum/" + path, t.dims, v.data(), model.name());
      st.set_plain_values(t, v.data(), st.momentum);
    }
  }
  st.steps = static_cast<uint64_t>(g.read_int_attribute("steps"));
  ++st.version;
}

void read_rank_file(const std::string& path, const nn::Model& model, const RankHeader& want,
                    const FileSummary& expected, std::vector<OwnerRecord>& owners,
                    const std::vector<PartRecord>& parts) {
  std::error_code ec;
  if (!fs::exists(path, ec)) bad(path, "missing");
  const int64_t size = static_cast<int64_t>(fs::file_size(path, ec));
  if (size != expected.bytes)
    bad(path, std::to_string(size) + " bytes, the manifest records " +
                  std::to_string(expected.bytes) +
                  (size < expected.bytes ? ": the file is truncated" : ": the file was modified"));
  const FileSummary actual = summarise_file(path, false, ErrorKind::Input);
  File f = File::open(path);
  auto str_attr = [&](const char* name) {
    if (!f.has_attribute(name)) bad(path, std::string("no '") + name + "' attribute");
    return f.read_string_attribute(name);
  };
  auto int_attr = [&](const char* name) {
    if (!f.has_attribute(name)) bad(path, std::string("no '") + name + "' attribute");
    return f.read_int_attribute(name);
  };
  if (str_attr("format") != kCheckpointFormat)
    bad(path, "not an mpsl checkpoint rank file (format is not \"mpsl-checkpoint\")");
  const int64_t version = int_attr("format_version");
  if (version != kCheckpointFormatVersion)
    bad(path, "checkpoint format version " + std::to_string(version) +
                  ", this mpsl reads version " + std::to_string(kCheckpointFormatVersion));
  const std::string m = str_attr("model");
  if (m != want.model) bad(path, "holds model '" + m + "', expected '" + want.model + "'");
  const int64_t rank = int_attr("rank"), world = int_attr("world_size");
  if (rank != want.rank || world != want.world_size)
    bad(path, "holds rank " + std::to_string(rank) + " of " + std::to_string(world) +
                  ", expected rank " + std::to_string(want.rank) + " of " +
                  std::to_string(want.world_size));
  const std::string role = str_attr("role");
  if (role != want.role) bad(path, "holds the state of a " + role + " rank, expected " + want.role);
  const int64_t round = int_attr("round"), step = int_attr("step_in_round");
  const bool complete = int_attr("round_complete") != 0;
  if (round != want.round || step != want.step_in_round || complete != want.round_complete)
    bad(path, "written at round " + std::to_string(round) + " step " + std::to_string(step) +
                  ", the manifest says round " + std::to_string(want.round) + " step " +
                  std::to_string(want.step_in_round));
  for (OwnerRecord& o : owners) {
    const std::string gp = "owners/" + std::to_string(o.owner);
    if (!f.exists(gp)) bad(path, "holds no record of owner " + std::to_string(o.owner));
    Group g = f.open_group(gp);
    o.samples = g.read_int_attribute("samples");
    o.shard_crc32 = static_cast<uint32_t>(g.read_int_attribute("shard_crc32"));
    o.steps_in_round = g.read_int_attribute("steps_in_round");
    o.epoch = static_cast<int>(g.read_int_attribute("epoch"));
    o.global_epoch = g.read_int_attribute("global_epoch");
    o.step_in_epoch = g.read_int_attribute("step_in_epoch");
    o.loss_sum = g.read_double_attribute("round_loss_sum");
    o.correct = g.read_int_attribute("round_correct");
    o.images = g.read_int_attribute("round_images");
  }
  for (const PartRecord& p : parts) read_part(f, p.path, model, *p.state);
  if (actual.crc32 != expected.crc32)
    bad(path, "file checksum mismatch (the manifest records crc32 " + hex32(expected.crc32) +
                  ", the file gives " + hex32(actual.crc32) +
                  "): the file was modified or damaged");
}

File open_rank_file(const std::string& folder, const Manifest& m, int rank) {
  const ManifestRank& entry = m.ranks.at(rank);
  const std::string path = (fs::path(folder) / entry.file).string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    bad(path, "missing (the manifest lists " + std::to_string(m.ranks.size()) + " rank files)");
  const FileSummary actual = summarise_file(path, false, ErrorKind::Input);
  if (actual.bytes != entry.summary.bytes)
    bad(path, std::to_string(actual.bytes) + " bytes, the manifest records " +
                  std::to_string(entry.summary.bytes) +
                  (actual.bytes < entry.summary.bytes ? ": the file is truncated"
                                                      : ": the file was modified"));
  File f = File::open(path);
  if (!f.has_attribute("format") || f.read_string_attribute("format") != kCheckpointFormat)
    bad(path, "not an mpsl checkpoint rank file (format is not \"mpsl-checkpoint\")");
  const int64_t version = f.read_int_attribute("format_version");
  if (version != kCheckpointFormatVersion)
    bad(path, "checkpoint format version " + std::to_string(version) +
                  ", this mpsl reads version " + std::to_string(kCheckpointFormatVersion));
  if (f.read_string_attribute("model") != m.model)
    bad(path, "holds model '" + f.read_string_attribute("model") + "', the manifest says '" +
                  m.model + "'");
  if (f.read_int_attribute("rank") != rank)
    bad(path, "holds rank " + std::to_string(f.read_int_attribute("rank")) + "'s state");
  if (actual.crc32 != entry.summary.crc32) {
    check_all_tensors(f, "/");  // names the damaged tensor when the damage is in one
    bad(path, "file checksum mismatch (the manifest records crc32 " + hex32(entry.summary.crc32) +
                  ", the file gives " + hex32(actual.crc32) +
                  "): the file was modified or damaged");
  }
  return f;
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string n = entry.path().filename().string();
    if (entry.is_directory() && is_checkpoint_name(n) && fs::exists(entry.path() / kManifestFile))
      names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// ---- manifest --------------------------------------------------------------------------------

nlohmann::json Manifest::to_json() const {
  nlohmann::json ranks_json = nlohmann::json::array();
  for (const ManifestRank& r : ranks)
    ranks_json.push_back({{"rank", r.rank},
                          {"role", r.role},
                          {"file", r.file},
                          {"bytes", r.summary.bytes},
                          {"crc32", r.summary.crc32},
                          {"write_seconds", r.write_seconds},
                          {"owners", r.owners},
                          {"stage", r.stage}});
  return {{"format", "mpsl-checkpoint-manifest"},
          {"format_version", format_version},
          {"mpsl_version", mpsl_version},
          {"name", name},
          {"created_utc", created_utc},
          {"model", model},
          {"position",
           {{"round", round},
            {"step_in_round", step_in_round},
            {"round_complete", round_complete},
            {"total_steps", total_steps}}},
          {"randomness", {{"seed", seed}, {"note", kRandomnessNote}}},
          {"topology", topology},
          {"config", config},
          {"data", data},
          {"ranks", ranks_json}};
}

Manifest Manifest::from_json(const nlohmann::json& j, const std::string& where) {
  Manifest m;
  try {
    if (!j.is_object() || j.value("format", std::string()) != "mpsl-checkpoint-manifest")
      throw InputError(where +
                       ": not an mpsl checkpoint manifest (no format "
                       "\"mpsl-checkpoint-manifest\")");
    m.format_version = j.at("format_version").get<int>();
    if (m.format_version != kCheckpointFormatVersion)
      throw InputError(where + ": checkpoint format version " + std::to_string(m.format_version) +
                       ", this mpsl reads version " + std::to_string(kCheckpointFormatVersion));
    m.mpsl_version = j.at("mpsl_version").get<std::string>();
    m.name = j.at("name").get<std::string>();
    m.created_utc = j.value("created_utc", std::string());
    m.model = j.at("model").get<std::string>();
    const auto& p = j.at("position");
    m.round = p.at("round").get<int>();
    m.step_in_round = p.at("step_in_round").get<int64_t>();
    m.round_complete = p.at("round_complete").get<bool>();
    m.total_steps = p.at("total_steps").get<int64_t>();
    m.seed = j.at("randomness").at("seed").get<uint64_t>();
    m.topology = j.at("topology");
    m.config = j.at("config");
    m.data = j.at("data");
    for (const auto& r : j.at("ranks")) {
      ManifestRank mr;
      mr.rank = r.at("rank").get<int>();
      mr.role = r.at("role").get<std::string>();
      mr.file = r.at("file").get<std::string>();
      mr.summary.bytes = r.at("bytes").get<int64_t>();
      mr.summary.crc32 = r.at("crc32").get<uint32_t>();
      mr.write_seconds = r.value("write_seconds", 0.0);
      mr.owners = r.at("owners").get<std::vector<int>>();
      mr.stage = r.value("stage", 0);
      m.ranks.push_back(std::move(mr));
    }
  } catch (const nlohmann::json::exception& e) {
    throw InputError(where + ": malformed manifest: " + e.what());
  }
  for (size_t i = 0; i < m.ranks.size(); ++i)
    if (m.ranks[i].rank != static_cast<int>(i))
      throw InputError(where + ": malformed manifest: rank entries are not 0.." +
                       std::to_string(m.ranks.size() - 1) + " in order");
  if (m.ranks.empty()) throw InputError(where + ": malformed manifest: no ranks");
  return m;
}

std::string manifest_path(const std::string& folder) {
  return (fs::path(folder) / kManifestFile).string();
}

Manifest read_manifest(const std::string& folder) {
  const std::string path = manifest_path(folder);
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw InputError(folder + ": not a complete checkpoint (no " + std::string(kManifestFile) +
                     ")");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path + ": not valid JSON (" + e.what() + ")");
  }
  return Manifest::from_json(j, path);
}

void check_rank_files(const std::string& folder, const Manifest& m) {
  for (const ManifestRank& r : m.ranks) {
    const std::string path = (fs::path(folder) / r.file).string();
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
      throw InputError(path + ": missing (the manifest lists " + std::to_string(m.ranks.size()) +
                       " rank files, one per rank)");
    const int64_t size = static_cast<int64_t>(fs::file_size(path, ec));
    if (size != r.summary.bytes)
      throw InputError(
          path + ": " + std::to_string(size) + " bytes, the manifest records " +
          std::to_string(r.summary.bytes) +
          (size < r.summary.bytes ? ": the file is truncated" : ": the file was modified"));
  }
}

// ---- folders ---------------------------------------------------------------------------------

std::string checkpoint_name(int round, int64_t step_in_round) {
  char b[64];
  std::snprintf(b, sizeof b, "ckpt-r%04d-s%06lld", round, static_cast<long long>(step_in_round));
  return b;
}

std::string temp_folder(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / (name + ".tmp")).string();
}

void prepare_checkpoint_folder(const std::string& dir, const std::string& name, bool clean_stale) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw RuntimeFailure("cannot create checkpoint directory '" + dir + "': " + ec.message());
  if (clean_stale)
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      const std::string n = entry.path().filename().string();
      if (n.rfind("ckpt-r", 0) == 0 && n.size() > 4 && n.ends_with(".tmp")) {
        MPSL_LOG(Info, "removing " << entry.path().string()
                                   << " (an unfinished checkpoint of an earlier run)");
        fs::remove_all(entry.path(), ec);
      }
    }
  const std::string tmp = temp_folder(dir, name);
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw RuntimeFailure("cannot create checkpoint folder '" + tmp + "': " + ec.message());
}

void publish_checkpoint(const std::string& dir, const Manifest& given) {
  Manifest manifest = given;
  if (manifest.created_utc.empty()) manifest.created_utc = utc_now();
  const std::string tmp = temp_folder(dir, manifest.name);
  const std::string final_path = (fs::path(dir) / manifest.name).string();
  atomic_write(manifest_path(tmp), [&](const std::string& p) {
    std::ofstream out(p);
    out << manifest.to_json().dump(2) << "\n";
    out.close();
    if (!out) throw RuntimeFailure("cannot write '" + p + "': " + std::strerror(errno));
  });
  fsync_folder(tmp);
  std::error_code ec;
  if (fs::exists(final_path, ec)) {
    // A checkpoint of the same name exists (a rerun from an older one): swap atomically, so the
    // name always refers to a complete checkpoint, then drop the old one.
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_path.c_str(), RENAME_EXCHANGE) != 0) {
      const std::string old = final_path + ".old";
      fs::remove_all(old, ec);
      if (std::rename(final_path.c_str(), old.c_str()) != 0 ||
          std::rename(tmp.c_str(), final_path.c_str()) != 0)
        throw RuntimeFailure("cannot replace '" + final_path + "': " + std::strerror(errno));
      fs::remove_all(old, ec);
    } else {
      fs::remove_all(tmp, ec);
    }
  } else if (std::rename(tmp.c_str(), final_path.c_str()) != 0) {
    throw RuntimeFailure("cannot rename '" + tmp + "' to '" + final_path +
                         "': " + std::strerror(errno));
  }
  fsync_folder(dir);
  atomic_write((fs::path(dir) / kLatestFile).string(), [&](const std::string& p) {
    std::ofstream out(p);
    out << manifest.name << "\n";
    out.close();
    if (!out) throw RuntimeFailure("cannot write '" + p + "': " + std::strerror(errno));
  });
}

void prune_checkpoints(const std::string& dir, int keep) {
  if (keep <= 0) return;
  std::error_code ec;
  std::string latest;
  try {
    latest = trim(read_text_file((fs::path(dir) / kLatestFile).string()));
  } catch (const InputError&) {
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string n = entry.path().filename().string();
    if (entry.is_directory() && is_checkpoint_name(n)) names.push_back(n);
  }
  std::sort(names.begin(), names.end());  // zero-padded: name order is training order
  const int excess = static_cast<int>(names.size()) - keep;
  for (int i = 0; i < excess; ++i) {
    if (names[i] == latest) continue;
    fs::remove_all(fs::path(dir) / names[i], ec);
    if (ec) obs::log_warn("cannot remove old checkpoint " + names[i] + ": " + ec.message());
  }
}

std::string resolve_checkpoint(const std::string& spec, const std::string& dir) {
  std::error_code ec;
  auto follow_latest = [&](const std::string& d, const std::string& what) -> std::string {
    const std::string marker = (fs::path(d) / kLatestFile).string();
    if (!fs::exists(marker, ec)) {
      bool any = false;
      if (fs::is_directory(d, ec))
        for (const auto& entry : fs::directory_iterator(d, ec))
          any |= entry.is_directory() && is_checkpoint_name(entry.path().filename().string());
      if (any)
        throw InputError(what + ": " + d +
                         " holds checkpoint folders but no 'latest' marker; give one folder "
                         "explicitly (--resume " +
                         d + "/ckpt-...)");
      return "";
    }
    const std::string name = trim(read_text_file(marker));
    if (name.empty() || name.find('/') != std::string::npos)
      throw InputError(marker + ": expected the name of a checkpoint folder, got '" + name + "'");
    const std::string folder = (fs::path(d) / name).string();
    if (!fs::is_directory(folder, ec))
      throw InputError(marker + " names '" + name + "', which does not exist in " + d);
    return folder;
  };
  if (spec == "latest") {
    if (dir.empty()) throw InputError("--resume latest needs --checkpoint-dir DIR");
    return follow_latest(dir, "--resume latest");
  }
  if (!fs::exists(spec, ec)) throw InputError(spec + ": no such checkpoint folder");
  if (!fs::is_directory(spec, ec))
    throw InputError(spec + ": not a checkpoint folder (expected a folder holding " +
                     std::string(kManifestFile) + " and rank-<r>.h5 files)");
  if (fs::exists(manifest_path(spec), ec)) return spec;
  if (fs::exists(fs::path(spec) / kLatestFile, ec)) return follow_latest(spec, spec);
  if (spec.ends_with(".tmp") || spec.ends_with(".tmp/"))
    throw InputError(spec +
                     ": an unfinished checkpoint (its write never completed); use the "
                     "one 'latest' names");
  throw InputError(spec + ": not a checkpoint (no " + std::string(kManifestFile) +
                   ", no 'latest' marker)");
}

}  // namespace mpsl::io
