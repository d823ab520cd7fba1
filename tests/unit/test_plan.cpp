// The profile file, device descriptions, the cost model and the split planner.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "mpsl/core/error.hpp"
#include "mpsl/nn/zoo.hpp"
#include "mpsl/plan/cost.hpp"
#include "mpsl/plan/planner.hpp"
#include "temp_dir_test.hpp"

namespace mpsl::plan {
namespace {

// A synthetic profile: S units with the given per-unit times and bytes.
Profile make_profile(const std::vector<double>& fwd, const std::vector<double>& bwd,
                     const std::vector<int64_t>& params, int64_t out_bytes = 1000) {
  Profile p;
  p.model = "synthetic";
  p.batch = 8;
  p.micro_batches = 1;
  p.input_bytes = out_bytes;
  for (size_t u = 0; u < fwd.size(); ++u) {
    UnitProfile x;
    x.index = static_cast<int>(u);
    x.forward_s = fwd[u];
    x.backward_s = bwd[u];
    x.output_bytes = out_bytes;
    x.param_bytes = params[u];
    x.optimizer_bytes = 2 * params[u];
    x.activation_bytes = 2 * out_bytes;
    p.units.push_back(x);
  }
  return p;
}

TEST(Planner, EqualsBruteForceOnRandomInstances) {
  std::mt19937 gen(12345);
  int feasible = 0, infeasible = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int S = 3 + static_cast<int>(gen() % 8);  // 3..10 units
    std::uniform_real_distribution<double> t(0.001, 0.1);
    std::vector<double> fwd(S), bwd(S);
    std::vector<int64_t> params(S);
    for (int u = 0; u < S; ++u) {
      fwd[u] = t(gen);
      bwd[u] = t(gen) * 2;
      params[u] = static_cast<int64_t>(gen() % 1000) * 1000;
    }
    const Profile p = make_profile(fwd, bwd, params, 100 + gen() % 100000);
    PlanRequest r;
    r.profile = &p;
    r.owners = 1 + static_cast<int>(gen() % 8);
    const int L = S - 2;
    r.stages = 1 + static_cast<int>(gen() % std::min(L, 4));
    // Heterogeneous nodes: speed, link and (sometimes) a memory limit.
    for (int i = 0; i < r.stages; ++i) {
      Device d;
      d.slowdown = 0.5 + (gen() % 100) / 40.0;
      d.bandwidth = 1e6 * (1 + gen() % 1000);
      if (gen() % 2) d.memory = kMpiRssBytes + (gen() % 6000) * int64_t{2000};
      r.nodes.push_back(d);
    }
    const PartCosts c = part_costs(r, r.stages, 1, S - 1);
    const Split fast = solve_split(c);
    const Split slow = brute_force_split(c);
    ASSERT_EQ(fast.feasible, slow.feasible) << "trial " << trial;
    if (!fast.feasible) {
      ++infeasible;
      continue;
    }
    ++feasible;
    EXPECT_NEAR(fast.objective(), slow.objective(), 1e-12) << "trial " << trial;
    // The chosen split is a valid one: contiguous, non-empty, within memory.
    ASSERT_EQ(static_cast<int>(fast.cuts.size()), r.stages + 1);
    EXPECT_EQ(fast.cuts.front(), 1);
    EXPECT_EQ(fast.cuts.back(), S - 1);
    for (int i = 0; i < r.stages; ++i) {
      EXPECT_LT(fast.cuts[i], fast.cuts[i + 1]);
      if (c.limit[i] > 0) EXPECT_LE(c.memory(i, fast.cuts[i], fast.cuts[i + 1]), c.limit[i]);
    }
  }
  // Both kinds of instance were exercised.
  EXPECT_GT(feasible, 50);
  EXPECT_GT(infeasible, 10);
}

TEST(Planner, MinMaxMemoryIsTheSmallestFeasibleLimit) {
  const Profile p = make_profile({1, 1, 1, 1, 1, 1}, {2, 2, 2, 2, 2, 2},
                                 {0, 5000000, 1000000, 3000000, 2000000, 0});
  PlanRequest r;
  r.profile = &p;
  r.owners = 4;
  r.stages = 2;
  std::vector<int> cuts;
  const int64_t need = min_max_memory(part_costs(r, 2, 1, 5), &cuts);
  ASSERT_GT(need, 0);
  Device d;
  d.memory = need;
  r.nodes = {d};
  EXPECT_TRUE(solve_split(part_costs(r, 2, 1, 5)).feasible);
  r.nodes[0].memory = need - 1;
  EXPECT_FALSE(solve_split(part_costs(r, 2, 1, 5)).feasible);
  // make_plan says what would fit, with exit code 2 (InputError).
  try {
    make_plan(r);
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(need) + " bytes"), std::string::npos)
        << e.what();
  }
  r.stages = 5;
  EXPECT_THROW(make_plan(r), InputError);  // more stages than middle units
}

TEST(CostModel, OneOwnerOneStageIsASumOfTasks) {
  const Profile p = make_profile({0.01, 0.02, 0.03}, {0.02, 0.04, 0.06}, {0, 0, 0}, 1000000);
  Scenario s;
  s.profile = &p;
  s.split = {1, 2};
  s.owners = 1;
  s.steps = {5};
  Device link;
  link.bandwidth = 1e8;  // 10 ms per 1 MB message
  link.latency = 0.001;
  s.owner_device = link;
  s.node_device = link;
  const Prediction pr = simulate(s);
  const double trip = 0.01 + 0.011 + 0.02 + 0.011 + (0.03 + 0.06) + 0.011 + 0.04 + 0.011 + 0.02;
  EXPECT_NEAR(pr.train_s, 5 * trip, 1e-9);
  // The paper's formula: start + fill + (n - 1) * (Lf + Lb) + end.
  // (Links to the owners are latency, in startT and endT; a single stage has no stage link.)
  const double lf = 0.02, lb = 0.04;
  const double paper =
      (0.01 + 0.011) + (lf + lb) + 4 * (lf + lb) + (0.03 + 0.06 + 0.02) + 3 * 0.011;
  EXPECT_NEAR(paper_round_seconds(s), paper, 1e-9);
}

TEST(CostModel, SharedCoresSlowBusyRanks) {
  // Two stages of equal work, many owners: on one core for three ranks the pipeline runs at the
  // speed of the shared core, with a node each it runs at the bottleneck stage's speed.
  const Profile p =
      make_profile({0.001, 0.01, 0.01, 0.001}, {0.001, 0.02, 0.02, 0.001}, {0, 0, 0, 0}, 1000);
  Scenario s;
  s.profile = &p;
  s.split = {1, 2, 3};
  s.owners = 8;
  s.steps.assign(8, 4);
  const double alone = simulate(s).train_s;
  s.cores = 1;
  const double shared = simulate(s).train_s;
  EXPECT_NEAR(alone, 32 * 0.03, 0.1);
  EXPECT_NEAR(shared, 32 * (0.06 + 0.004), 0.1);
  EXPECT_GT(shared, 1.8 * alone);
}

TEST(CostModel, StageMemoryGrowsByOneCopyPerOwner) {
  const Profile p = make_profile({1, 1, 1}, {1, 1, 1}, {0, 4000000, 0});
  // (Past 16 owners the receive buffers stop growing.)
  const int64_t one = stage_memory_bytes(p, 1, 2, 20, 1);
  const int64_t two = stage_memory_bytes(p, 1, 2, 21, 1);
  EXPECT_EQ(two - one, 12000000);  // params + gradients + momentum
}

TEST(Device, ParsesSpecs) {
  const Device d = Device::parse("slow=20,bw=8Mbit,lat=20ms,mem=4G,cores=2", "--device");
  EXPECT_DOUBLE_EQ(d.slowdown, 20);
  EXPECT_DOUBLE_EQ(d.bandwidth, 1e6);
  EXPECT_DOUBLE_EQ(d.latency, 0.02);
  EXPECT_EQ(d.memory, int64_t{4} << 30);
  EXPECT_EQ(d.cores, 2);
  EXPECT_DOUBLE_EQ(Device::parse("speed=0.5,bw=1GB/s", "x").slowdown, 2.0);
  EXPECT_DOUBLE_EQ(Device::parse("bw=1GB/s", "x").bandwidth, 1e9);
  EXPECT_THROW(Device::parse("slow=-1", "--device"), InputError);
  EXPECT_THROW(Device::parse("fast=2", "--device"), InputError);
  EXPECT_THROW(Device::parse("bw=lots", "--device"), InputError);
}

class ProfileFile : public mpsl::testing::TempDirTest {};

TEST_F(ProfileFile, RoundTripsAndScales) {
  auto model = nn::make_model("fmnist-cnn");
  ProfileSettings s;
  s.batch = 8;
  s.repeats = 2;
  s.warmup = 1;
  const Profile p = measure_profile(*model, s);
  ASSERT_EQ(p.num_units(), model->num_units());
  for (const auto& u : p.units) {
    EXPECT_GT(u.forward_s, 0);
    EXPECT_GT(u.backward_s, 0);
    EXPECT_GT(u.output_bytes, 0);
  }
  EXPECT_EQ(p.units[1].param_bytes, (32 * 32 * 9 + 32) * 4);
  EXPECT_EQ(p.units[1].optimizer_bytes, 2 * p.units[1].param_bytes);
  EXPECT_EQ(p.units[1].output_bytes, 8 * 32 * 28 * 28 * 4);
  const std::string file = path("p.json");
  p.write(file);
  const Profile q = Profile::read(file);
  ASSERT_EQ(q.num_units(), p.num_units());
  EXPECT_DOUBLE_EQ(q.units[3].forward_s, p.units[3].forward_s);
  EXPECT_EQ(q.units[7].param_bytes, p.units[7].param_bytes);
  const Profile slow = q.scaled(Device::parse("slow=20,mem=1G", "x"));
  EXPECT_DOUBLE_EQ(slow.units[3].backward_s, 20 * q.units[3].backward_s);
  EXPECT_EQ(slow.units[3].param_bytes, q.units[3].param_bytes);
  EXPECT_EQ(slow.device.memory, int64_t{1} << 30);
  std::ofstream(path("bad.json")) << "{\"format\": \"something\"}";
  EXPECT_THROW(Profile::read(path("bad.json")), InputError);
  EXPECT_THROW(Profile::read(path("missing.json")), InputError);
}

}  // namespace
}  // namespace mpsl::plan
