// The split planner: where to cut the middle of the model over N compute nodes so that the
// paper's objective, slowest forward stage + slowest backward stage (cost.hpp: stage times
// include what a stage sends), is smallest while every node holds K copies of its part, the
// activations in flight and its working memory. Exact: contiguous parts make the search space
// small enough for a dynamic programme (no solver). Nodes may differ in speed, link and memory.
// make_plan then chooses by the cost simulation's round time: over every split when there are
// at most 500 (exact), else from the better of that optimum and the even split, one cut moved
// by one unit at a time; a plan is never predicted slower than the paper's optimum or the even
// split.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mpsl/plan/cost.hpp"

namespace mpsl::plan {

// The cost of one contiguous part [b, e) on node i; what the exact solver minimises over.
struct PartCosts {
  int nodes = 0;
  int begin = 0, end = 0;  // the units to split: [begin, end)
  // forward(i, b, e), backward(i, b, e), memory(i, b, e), limit(i) (0 = unlimited)
  std::function<double(int, int, int)> forward, backward;
  std::function<int64_t(int, int, int)> memory;
  std::vector<int64_t> limit;
};

struct Split {
  bool feasible = false;
  std::vector<int> cuts;  // nodes + 1 points: begin, ..., end
  double max_forward = 0, max_backward = 0;
  double objective() const { return max_forward + max_backward; }
};

// Exact minimum of max_i forward + max_i backward over contiguous splits into `nodes` non-empty
// parts within memory. Enumerates the candidate forward bottlenecks and, for each, finds the
// smallest backward bottleneck by dynamic programming.
Split solve_split(const PartCosts& c);
// The same by trying every split (tests; small instances only).
Split brute_force_split(const PartCosts& c);
// The smallest possible largest memory of a node (same memory limit everywhere): the least
// per-node memory that admits some split (limits ignored).
// With `cuts`, also the split that achieves it.
int64_t min_max_memory(const PartCosts& c, std::vector<int>* cuts = nullptr);

struct PlanRequest {
  const Profile* profile = nullptr;
  int owners = 1;
  int owner_ranks = 1;
  int stages = 0;  // 0: the smallest N that fits the memory (and the round-time target)
  bool one_f_one_b = false;
  int micro_batches = 1;
  int64_t steps_per_owner = 16;  // batches each owner trains per round (r * B)
  Device owner_device;
  std::vector<Device> nodes;  // one per stage, or one for all
  int first_end = 1;          // end of part 1 (fixed unless optimise_owner_cuts)
  int last_begin = -1;        // start of part P (-1: the last unit)
  bool optimise_owner_cuts = false;
  double target_round_s = 0;  // with stages == 0: also meet this predicted round time
  int cores = 0;              // ranks share this many cores (cost simulation)
  int threads = 1;
};

struct PlanResult {
  Scenario scenario;      // the chosen configuration (split, devices)
  Split split;            // the stage cut points and their paper objective
  Prediction prediction;  // simulate(scenario)
  // The split that minimises the paper's objective (exact); the chosen split has the least
  // simulated round time (exact over at most 500 splits, else refined from this or the even
  // split).
  Split objective_split;
  Prediction objective_prediction;
  std::vector<int> even;  // an even split by unit count, for comparison
  Prediction even_prediction;
  double even_objective = 0;
  bool even_feasible = false;
  std::vector<int> memory_split;   // the split with the smallest largest node memory
  int64_t memory_split_bytes = 0;  // that memory
};

// Plans; InputError (exit 2) when nothing fits, saying what would (the smallest per-node
// memory for the requested stage count, the smallest stage count for the given memory, or the
// most stages the model allows).
PlanResult make_plan(const PlanRequest& r);

// Builds the per-part costs of a request with fixed owner cuts.
PartCosts part_costs(const PlanRequest& r, int stages, int first_end, int last_begin);

// The round-time scenario of a request for given cut points.
Scenario scenario_for(const PlanRequest& r, const std::vector<int>& split);

// Activation slots a stage is assumed to hold when its memory is checked while planning.
int planned_in_flight(int owners, int stages, int window);

// A plan file (`mpsl plan --output`, read by `mpsl train --plan`): JSON, format "mpsl-plan".
struct PlanFile {
  std::string model;
  int batch = 0, micro_batches = 1, owners = 1, stages = 0;
  std::vector<int> split;  // N + 1 cut points, as --split takes them
  std::string schedule;
  Profile profile;  // the profile it was made from (for predictions)
};
nlohmann::json plan_json(const PlanRequest& r, const PlanResult& res);
PlanFile read_plan(const std::string& path);  // InputError naming the file

// `mpsl inspect` of a plan or profile file: whether `path` is one, and its summary on stdout.
bool is_plan_or_profile(const std::string& path);
int inspect_json(const std::string& path);
// The per-unit table `mpsl profile` prints.
void print_profile(const Profile& p);

}  // namespace mpsl::plan
