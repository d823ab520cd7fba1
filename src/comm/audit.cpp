#include "mpsl/comm/audit.hpp"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "mpsl/core/error.hpp"

namespace mpsl::comm {

namespace {
std::vector<AuditRecord>& records() {
  static std::vector<AuditRecord> r;
  return r;
}
}  // namespace

void audit_message(const char* kind, int peer, int64_t bytes, bool outgoing) {
  records().push_back({kind, peer, bytes, outgoing});
}

const std::vector<AuditRecord>& audit_records() {
  return records();
}

void write_audit(const std::string& dir, int rank, const std::string& role) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  const std::string path = dir + "/audit-rank" + std::to_string(rank) + ".jsonl";
  std::ofstream out(path);
  if (!out) throw InputError("--audit-dir: cannot write " + path);
  for (const auto& r : records()) {
    out << nlohmann::json{{"rank", rank},     {"role", role},
                          {"kind", r.kind},   {"peer", r.peer},
                          {"bytes", r.bytes}, {"direction", r.outgoing ? "out" : "in"}}
               .dump()
        << "\n";
  }
  if (!out) throw RuntimeFailure("writing " + path + " failed");
}

}  // namespace mpsl::comm
