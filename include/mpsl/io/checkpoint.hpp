// Checkpoints (--checkpoint-dir DIR): one folder per checkpoint, one HDF5 file per rank plus a
// manifest written by rank 0, and a `latest` marker naming the newest complete checkpoint.
//
//   DIR/latest                         text: the folder name of the newest complete checkpoint
//   DIR/ckpt-r<RRRR>-s<SSSSSS>/        round RRRR, SSSSSS steps into it (every owner k has
//       manifest.json                  taken min(SSSSSS, its steps in the round) steps)
//       rank-<r>.h5                    what rank r needs to continue
//
// A rank file holds, for every part copy the rank keeps, its weights and BatchNorm statistics
// in the plain layouts of model files (units/NNN/<tensor>), its momentum (momentum/units/NNN/
// <tensor>) and its optimiser step count; for every data owner on the rank its cursor (round,
// epoch, step) and the loss tallies of the round in progress. Every tensor carries a CRC-32
// attribute (zlib's crc32 of its little-endian float32 bytes). mpsl has no sequential random
// streams: the data order is a function of (seed, owner, epoch) and dropout of (seed, unit, owner,
// step), so the seed and these counters restore every stream; the files say so.
//
// Writing is atomic: every rank writes into DIR/<name>.tmp, fsyncs, and rank 0 (after a
// barrier) writes the manifest with each file's size and CRC-32, renames the folder to its name
// and then replaces `latest` (write, fsync, rename). A crash at any point leaves the previous
// checkpoint intact and named by `latest`. Reading checks everything and throws InputError
// naming the file and the problem.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mpsl/io/hdf5.hpp"
#include "mpsl/nn/model.hpp"

namespace mpsl::io {

constexpr int kCheckpointFormatVersion = 1;
constexpr const char* kCheckpointFormat = "mpsl-checkpoint";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kLatestFile = "latest";
// What the files say about random streams.
constexpr const char* kRandomnessNote =
    "all randomness is counter-based: data order = f(seed, owner, global epoch), dropout = "
    "f(seed, unit, owner, optimiser step); the seed and the counters in this file restore every "
    "stream";

// zlib's CRC-32 of `n` bytes, continuing from `crc` (0 to start).
uint32_t crc32_bytes(const void* data, size_t n, uint32_t crc = 0);

// Where an owner stands in the round in progress and what it has accumulated in it.
struct OwnerRecord {
  int owner = 0;
  int64_t samples = 0;         // shard size (its FedAvg weight)
  uint32_t shard_crc32 = 0;    // of the shard's sample indices (int64): the partition
  int64_t steps_in_round = 0;  // optimiser steps taken in the round
  int epoch = 0;               // local epoch within the round (normalised: see cursor())
  int64_t global_epoch = 0;    // (round - 1) * local_epochs + epoch: the shuffle's counter
  int64_t step_in_epoch = 0;   // batches of that epoch already trained
  double loss_sum = 0;         // training loss summed over the round's samples so far
  int64_t correct = 0, images = 0;
};

// One part copy a rank holds: its group in the file and its state.
struct PartRecord {
  std::string path;  // "owners/3/first", "owners/3/last", "owners/0/model", "copies/2"
  int owner = 0;
  nn::PartState* state = nullptr;
};

// The root attributes of a rank file.
struct RankHeader {
  std::string model;
  std::string checkpoint;  // folder name
  int rank = 0, world_size = 1;
  std::string role;  // owner | stage | single
  int round = 0;
  int64_t step_in_round = 0;
  bool round_complete = false;  // written after the round's FedAvg
  uint64_t seed = 0;
  std::string config, topology;  // JSON text (as in the manifest), so each file describes itself
};

struct FileSummary {
  int64_t bytes = 0;
  uint32_t crc32 = 0;
};

// Writes a rank file at `path` (inside the checkpoint's temporary folder) and fsyncs it. Returns
// its size and CRC-32. MPSL_TEST_CHECKPOINT_DELAY_MS (tests only) sleeps half way through.
FileSummary write_rank_file(const std::string& path, const nn::Model& model,
                            const RankHeader& header, const std::vector<OwnerRecord>& owners,
                            const std::vector<PartRecord>& parts);

// Reads a rank file into `parts` (params, momentum, buffers, steps; grads are not state between
// steps) and fills the records of `owners` (their `owner` fields name which). Checks, in order:
// size against `expected`, HDF5 readability, format, format version, model, rank, role and
// position against `want`, every tensor's shape and CRC-32, and the whole-file CRC-32.
// InputError "<path>: <problem>" for anything wrong.
void read_rank_file(const std::string& path, const nn::Model& model, const RankHeader& want,
                    const FileSummary& expected, std::vector<OwnerRecord>& owners,
                    const std::vector<PartRecord>& parts);

// Reads one part (e.g. "copies/0") of an opened rank file, verifying every tensor's CRC-32.
void read_part(const Location& file, const std::string& group, const nn::Model& model,
               nn::PartState& state);

struct Manifest;

// Opens rank `rank`'s file of a checkpoint read-only after checking it against the manifest (size,
// whole-file CRC-32) and its root attributes (format, version, model, rank). InputError naming
// the file and the problem.
File open_rank_file(const std::string& folder, const Manifest& m, int rank);

// The checkpoint folders of a checkpoint directory, oldest first (complete ones only).
std::vector<std::string> list_checkpoints(const std::string& dir);

// One rank's entry in the manifest.
struct ManifestRank {
  int rank = 0;
  std::string role;
  std::string file;  // "rank-<r>.h5"
  FileSummary summary;
  double write_seconds = 0;
  std::vector<int> owners;  // logical owners on an owner rank (all K on a stage: its copies)
  int stage = 0;            // 1-based on a stage rank, 0 elsewhere
};

struct Manifest {
  int format_version = kCheckpointFormatVersion;
  std::string mpsl_version;
  std::string name;  // folder name
  std::string created_utc;
  std::string model;
  int round = 0;
  int64_t step_in_round = 0;
  bool round_complete = false;
  int64_t total_steps = 0;  // optimiser steps of all owners so far (the run's counter)
  uint64_t seed = 0;
  nlohmann::json topology;  // world_size, owner_ranks, stages, owners, split, num_units, ...
  nlohmann::json config;    // the resolved training options
  nlohmann::json data;      // train_images, labels_crc32, mean, std, source
  std::vector<ManifestRank> ranks;

  nlohmann::json to_json() const;
  // InputError naming `where` for a missing or mistyped field.
  static Manifest from_json(const nlohmann::json& j, const std::string& where);
};

std::string manifest_path(const std::string& folder);
// Reads and parses FOLDER/manifest.json; InputError naming the file for any problem, including a
// format version this build does not read.
Manifest read_manifest(const std::string& folder);
// Checks that every rank file the manifest lists exists with its recorded size (InputError
// naming the file: missing, truncated or grown).
void check_rank_files(const std::string& folder, const Manifest& m);

// "ckpt-r0002-s000050".
std::string checkpoint_name(int round, int64_t step_in_round);
std::string temp_folder(const std::string& dir, const std::string& name);

// Rank 0, before the ranks write: creates DIR and DIR/<name>.tmp (removing a stale one left by a
// killed run, and, when `clean_stale`, every other ckpt-*.tmp folder).
void prepare_checkpoint_folder(const std::string& dir, const std::string& name, bool clean_stale);
// Rank 0, after every rank file is synced: writes the manifest into the temporary folder,
// renames the folder to DIR/<name> (atomically replacing an older checkpoint of that name),
// then points DIR/latest at it. Each step is fsynced before the next.
void publish_checkpoint(const std::string& dir, const Manifest& manifest);
// Removes the oldest checkpoints of DIR beyond the newest `keep` (never the one `latest` names).
void prune_checkpoints(const std::string& dir, int keep);

// The folder `spec` stands for: "latest" (needs `dir`) -> DIR/<contents of DIR/latest>; a
// checkpoint folder (holds manifest.json) -> itself; a checkpoint directory (holds `latest`) ->
// the checkpoint it names. InputError saying what is missing otherwise.
std::string resolve_checkpoint(const std::string& spec, const std::string& dir);

}  // namespace mpsl::io
