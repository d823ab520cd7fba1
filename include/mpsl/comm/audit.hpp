// A process-wide record of every point-to-point message this rank sends or receives: its kind,
// peer and size. --audit-dir writes it out (one JSON-lines file per rank), so a privacy audit
// (and the test suite) can check that owner ranks send nothing but activations and gradients
// with respect to activations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpsl::comm {

struct AuditRecord {
  std::string kind;  // activation, activation-gradient, eval-activation, stage-part, ...
  int peer;
  int64_t bytes;
  bool outgoing;
};

void audit_message(const char* kind, int peer, int64_t bytes, bool outgoing);
const std::vector<AuditRecord>& audit_records();
// Writes DIR/audit-rank<R>.jsonl (creating DIR).
void write_audit(const std::string& dir, int rank, const std::string& role);

}  // namespace mpsl::comm
