// Who does what: which ranks are data-owner ranks and which are compute stages, which logical
// owners each owner rank holds, and where the model is cut.
//
// Ranks 0 .. O-1 are owner ranks (rank 0 among them: it reports), ranks O .. O+N-1 are compute
// stages 1..N. Logical owner k lives on owner rank k mod O. The model's units are cut at
// split[0] < split[1] < ... < split[N]: part 1 = [0, split[0]) and part P = [split[N], S) stay
// on the owners; stage i holds [split[i-1], split[i]).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "mpsl/nn/model.hpp"

namespace mpsl::pipeline {

struct Topology {
  int world_size = 1;
  int owner_ranks = 1;  // O
  int stages = 0;       // N
  int owners = 1;       // K logical owners
  int num_units = 0;
  std::vector<int> split;  // N + 1 cut points (empty when stages == 0)
  // H copies of the stage pipeline (--replicas): compute ranks O + h N .. O + h N + N - 1 are
  // replica h's stages 1..N; logical owner k is served by replica k mod H. H > 1 with N = 1
  // is horizontally scaled one-hop split learning.
  int replicas = 1;
  std::vector<int> owner_replica;  // per owner (--replica-speed); empty = k mod H

  bool multihop() const { return stages > 0; }
  bool is_owner_rank(int rank) const { return rank < owner_ranks; }
  int stage_of_rank(int rank) const {  // 0-based
    return stages > 0 ? (rank - owner_ranks) % stages : rank - owner_ranks;
  }
  int replica_of_rank(int rank) const { return stages > 0 ? (rank - owner_ranks) / stages : 0; }
  int rank_of_stage(int stage, int replica = 0) const {
    return owner_ranks + replica * stages + stage;
  }
  int rank_of_owner(int owner) const { return owner % owner_ranks; }
  int replica_of_owner(int owner) const {
    return owner_replica.empty() ? owner % replicas : owner_replica[owner];
  }
  std::vector<int> owners_of_rank(int rank) const;
  std::vector<int> owners_of_replica(int replica) const;

  std::pair<int, int> first_part() const { return {0, split.front()}; }
  std::pair<int, int> last_part() const { return {split.back(), num_units}; }
  std::pair<int, int> stage_part(int stage) const { return {split[stage], split[stage + 1]}; }
};

// Parses "--split i,j,..." (N + 1 increasing unit indices). Empty text: a default split that
// keeps the first and last unit on the owners and cuts the middle into N parts of about equal
// forward FLOPs. InputError (naming the option) for anything that does not fit the model.
std::vector<int> resolve_split(const std::string& text, const nn::Model& model, int stages);

// Builds and validates the topology: rank count vs stages, owners vs owner ranks.
Topology make_topology(const nn::Model& model, int world_size, int stages, int owners,
                       const std::string& split_text, int replicas = 1);

// --replica-speed s_1,...,s_H: replica h serves about K s_h / sum(s) owners (largest
// remainders, at least one each), dealt in owner order to the replica furthest below its share.
// InputError naming the option for a wrong count or a speed <= 0.
void spread_owners(Topology& t, const std::string& speeds_text);

// The role map printed by --dry-run and at start-up: one line per rank.
std::vector<std::string> describe_roles(const Topology& t, const nn::Model& model);
// The same, short, for failure and stall messages: "owner rank, owners {0,2}",
// "stage 1/2, units 1-2".
std::vector<std::string> short_roles(const Topology& t);

}  // namespace mpsl::pipeline
