// Device and link emulation (--emulate): the file format, its validation, and the emulator's
// device clocks and link queues.
#include <gtest/gtest.h>

#include <omp.h>

#include <chrono>
#include <string>
#include <thread>

#include "mpsl/core/error.hpp"
#include "mpsl/emulate/emulate.hpp"

namespace em = mpsl::emulate;
using mpsl::InputError;

namespace {

double secs(em::Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// The message of the InputError `text` raises (empty when it parses).
std::string error_of(const std::string& text, int owners = 4, int stages = 2) {
  try {
    em::parse_emulation(text, "dev.json", owners, stages);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Emulation, ParsesClassesDefaultsRangesAndIndices) {
  const std::string text = R"({
    "format": "mpsl-emulation",
    "classes": {
      "slow": {"class": "pi", "compute_factor": 46},
      "pi": {"compute_factor": 20, "bandwidth_bps": 8e6, "latency_s": 0.001},
      "vm": {"bandwidth_bps": 7e9}
    },
    "owners": {"default": "pi", "0-1": "slow", "1": {"class": "pi", "up_bps": 1e6}},
    "stages": {"default": "vm", "1": {"compute_factor": 2.5, "down_latency_s": 0.01}}
  })";
  const em::Emulation e = em::parse_emulation(text, "dev.json", 4, 2);
  ASSERT_TRUE(e.enabled);
  ASSERT_EQ(e.owners.size(), 4u);
  EXPECT_EQ(e.owners[0].class_name, "slow");
  EXPECT_DOUBLE_EQ(e.owners[0].compute_factor, 46);
  EXPECT_DOUBLE_EQ(e.owners[0].up.bps, 8e6);  // inherited from "pi"
  EXPECT_DOUBLE_EQ(e.owners[0].down.latency_s, 0.001);
  EXPECT_DOUBLE_EQ(e.owners[1].compute_factor, 20);  // the index beats the range
  EXPECT_DOUBLE_EQ(e.owners[1].up.bps, 1e6);
  EXPECT_DOUBLE_EQ(e.owners[1].down.bps, 8e6);
  EXPECT_DOUBLE_EQ(e.owners[3].compute_factor, 20);
  EXPECT_DOUBLE_EQ(e.stages[0].compute_factor, 1);
  EXPECT_DOUBLE_EQ(e.stages[0].up.bps, 7e9);
  EXPECT_DOUBLE_EQ(e.stages[1].compute_factor, 2.5);  // fields on top of the default
  EXPECT_DOUBLE_EQ(e.stages[1].down.bps, 7e9);
  EXPECT_DOUBLE_EQ(e.stages[1].down.latency_s, 0.01);
  EXPECT_DOUBLE_EQ(e.stages[1].up.latency_s, 0);
}

TEST(Emulation, RefusesBadFilesNamingTheFileAndTheEntry) {
  struct Case {
    const char* text;
    const char* expect;
  } cases[] = {
      {"{", "not valid JSON"},
      {"[1]", "top level"},
      {R"({"owner": {}})", "unknown key 'owner'"},
      {R"({"format": "other"})", "format"},
      {R"({"owners": {"default": "pi"}})", "owners.default: unknown device class 'pi'"},
      {R"({"owners": {"2": {"compute_factor": 0.5}}})", "owners.2: 'compute_factor' must be >= 1"},
      {R"({"owners": {"2": {"compute_factor": "fast"}}})",
       "owners.2: 'compute_factor' must be a number"},
      {R"({"stages": {"0": {"up_bps": 0}}})", "stages.0: 'up_bps' must be > 0"},
      {R"({"stages": {"0": {"latency_s": -1}}})", "stages.0: 'latency_s' must be >= 0"},
      {R"({"stages": {"0": {"speed": 2}}})", "stages.0: unknown field 'speed'"},
      {R"({"stages": {"2": "vm"}, "classes": {"vm": {}}})", "stages.2: the run has 2 stages"},
      {R"({"owners": {"3-9": {}}})", "owners.3-9: the run has 4 owners"},
      {R"({"owners": {"x": {}}})", "owners.x: expected"},
      {R"({"owners": {"0-2": {}, "2-3": {}}})", "owner 2 is covered by two entries"},
      {R"({"classes": {"a": {"class": "b"}, "b": {"class": "a"}}})", "in a circle"},
      {R"({"classes": {"a": 3}})", "classes.a: must be an object"},
  };
  for (const auto& c : cases) {
    const std::string msg = error_of(c.text);
    EXPECT_NE(msg.find("--emulate dev.json"), std::string::npos) << c.text << " -> " << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.text << " -> " << msg;
  }
  EXPECT_THROW(em::load_emulation("/nonexistent/dev.json", 1, 1), InputError);
}

TEST(Emulation, ShippedDeviceFilesParse) {
  for (const char* f :
       {"paper-vgg19.json", "paper-resnet101.json", "paper-vgg19-30owners-half-slow.json"}) {
    const em::Emulation e =
        em::load_emulation(std::string(MPSL_SOURCE_DIR) + "/data/devices/" + f, 30, 4);
    EXPECT_DOUBLE_EQ(e.owners[29].up.bps, 8e6) << f;
    EXPECT_DOUBLE_EQ(e.stages[3].up.bps, 7e9) << f;
    EXPECT_GE(e.owners[0].compute_factor, 20) << f;
  }
  const em::Emulation half = em::load_emulation(
      std::string(MPSL_SOURCE_DIR) + "/data/devices/paper-vgg19-30owners-half-slow.json", 30, 2);
  EXPECT_DOUBLE_EQ(half.owners[14].compute_factor / half.owners[15].compute_factor, 2.3);
}

TEST(Emulation, DeviceClocksScaleComputeAndSerialiseWork) {
  const em::Emulation e =
      em::parse_emulation(R"({"owners": {"default": {"compute_factor": 3}}})", "dev.json", 2, 1);
  em::RankEmulator r(&e);
  const auto t0 = em::Clock::now();
  const auto end1 = r.compute(em::owner_entity(0), t0, 0.1);
  EXPECT_NEAR(secs(end1 - t0), 0.3, 1e-9);
  // The device is busy until end1: a span begun earlier starts then.
  const auto end2 = r.compute(em::owner_entity(0), t0 + std::chrono::milliseconds(10), 0.1);
  EXPECT_NEAR(secs(end2 - t0), 0.6, 1e-9);
  // FedAvg's upload waits for it; a device without spans is free.
  EXPECT_EQ(r.free_at(em::owner_entity(0)), end2);
  EXPECT_EQ(r.free_at(em::owner_entity(1)), em::Clock::time_point::min());
  // Another owner is another device.
  EXPECT_NEAR(secs(r.compute(em::owner_entity(1), t0, 0.1) - t0), 0.3, 1e-9);
  EXPECT_NEAR(r.stats().compute_delay_s, 3 * 0.2, 1e-12);
  // Stages default to the identity.
  EXPECT_NEAR(secs(r.compute(em::stage_entity(0), t0, 0.1) - t0), 0.1, 1e-9);
}

TEST(Emulation, SpansMeasureTheirCpuTimeNotTheirWaitForACore) {
  // A span that waits 50 ms (as for a core other ranks hold) and computes 20 ms of CPU: with
  // one thread per rank its device takes factor x 20 ms, with more threads factor x its wall time.
  auto span = [] {
    const em::SpanStart start = em::span_start();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const double c0 = em::thread_cpu_seconds();
    while (em::thread_cpu_seconds() - c0 < 0.02) {
    }
    return em::span_seconds(start);
  };
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = span();
  omp_set_num_threads(2);
  const double two = span();
  omp_set_num_threads(threads);
  EXPECT_GE(one, 0.02);
  EXPECT_LT(one, 0.04);
  EXPECT_GE(two, 0.07);
  const em::Emulation e =
      em::parse_emulation(R"({"owners": {"default": {"compute_factor": 3}}})", "dev.json", 1, 1);
  em::RankEmulator r(&e);
  omp_set_num_threads(1);
  const em::SpanStart start = em::span_start();
  const auto end = r.compute(em::owner_entity(0), start);
  omp_set_num_threads(threads);
  // No CPU spent: the result is ready now, not before.
  EXPECT_GE(end, start.wall);
  EXPECT_LE(secs(end - start.wall), 0.01);
}

TEST(Emulation, LinksTakeBytesOverBandwidthPlusLatencyOneMessageAtATime) {
  const em::Emulation e = em::parse_emulation(
      R"({"owners": {"default": {"up_bps": 8e6, "down_bps": 16e6, "up_latency_s": 0.01}},
          "stages": {"default": {"bandwidth_bps": 4e6, "latency_s": 0.002}}})",
      "dev.json", 1, 2);
  em::RankEmulator r(&e);
  const auto t0 = em::Clock::now();
  const auto o = em::owner_entity(0), s0 = em::stage_entity(0), s1 = em::stage_entity(1);
  // Owner -> stage: min(8, 4) Mbit/s; latency 0.01 + 0.002.
  EXPECT_NEAR(secs(r.transfer(o, s0, 500000, t0) - t0), 1.0 + 0.012, 1e-9);
  // The next message on the same link waits for the first to leave the wire.
  EXPECT_NEAR(secs(r.transfer(o, s0, 500000, t0) - t0), 2.0 + 0.012, 1e-9);
  EXPECT_NEAR(r.stats().link_queue_s, 1.0, 1e-9);
  // Another link is free.
  EXPECT_NEAR(secs(r.transfer(s0, s1, 500000, t0) - t0), 1.0 + 0.004, 1e-9);
  // Stage -> owner: min(4, 16) Mbit/s.
  EXPECT_NEAR(secs(r.transfer(s1, o, 1000000, t0) - t0), 2.0 + 0.002, 1e-9);
  EXPECT_EQ(r.stats().messages, 4);
  EXPECT_NEAR(r.stats().transfer_s, 1.012 + 1.012 + 1.004 + 2.002, 1e-9);
  // FedAvg: parts up at 8 Mbit/s (+10 ms), down at 16 Mbit/s.
  EXPECT_NEAR(r.aggregation_seconds(0, 1000000), 1.0 + 0.01 + 0.5, 1e-9);
  // Replicas of stage 0 reduce 3 MB of sums in a ring of 3: 4 steps of 1 MB at 4 Mbit/s, each
  // waiting the latency twice (up 0.002 and down 0.002); one replica reduces nothing.
  EXPECT_NEAR(r.ring_allreduce_seconds(s0, 3000000, 3), 4 * (2.0 + 0.004), 1e-9);
  EXPECT_EQ(r.ring_allreduce_seconds(s0, 3000000, 1), 0);
  // No emulation: nothing changes.
  em::RankEmulator off(nullptr);
  EXPECT_FALSE(off.active());
  EXPECT_EQ(off.transfer(o, s0, 1 << 20, t0), t0);
  EXPECT_EQ(off.ring_allreduce_seconds(s0, 1 << 20, 4), 0);
}
