// Pipeline calibration: what a real multihop run on this host loses beyond what the profile's
// parts describe, measured by `mpsl profile` and read by the cost model.
//
// The profile times each unit in one process, measures how processes that compute all the time
// slow each other on the host's cores (placement) and what a message waits (hops). A pipeline's
// ranks also wake up, wait, exchange and check messages between their tasks, and when they share
// cores each one's work takes longer than both measurements say: on this 2-core virtual machine
// 3-16% with 2-4 ranks, growing with the ranks (docs/cost-model-validation, val26-val28).
//
// calibrate_pipeline() measures it directly. For each rank count R = 2..max_ranks it spawns R
// processes of this executable that run a small `mpsl train` of the profiled model (one owner
// rank holding 3 owners, R - 1 stages split as `train --profile` splits them, synthetic data,
// the profile's batch, micro-batches and schedule: mpsl for one micro-batch, 1f1b otherwise, a
// few rounds of about half a second each), with the profile written so far as its --profile.
// Each run reports measured and predicted round times; the whole model's steps are timed for a
// second just before it and just after it (the host's speed of the moment), so
//   factor(R) = median measured round (rounds 2..) / (predicted round * speed)
// where speed = the mean of (step then / the profile's step) before and after. The cost model
// divides the speed of every rank by factor(ranks sharing the host's cores) (cost.cpp share_rate).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpsl/nn/model.hpp"
#include "mpsl/plan/profile.hpp"

namespace mpsl::plan {

// `mpsl profile --pipeline-ranks -1`: R = 2..min(cores + 2, kDefaultCalibrationRanks); more
// ranks than that use the largest measured rank count's factor.
inline constexpr int kDefaultCalibrationRanks = 8;

struct CalibrationSettings {
  int max_ranks = 0;  // calibrate R = 2..max_ranks (fewer when the model has too few units)
  int owners = 3;     // K of the calibration runs (not one the grid of issue 6 measures)
  uint64_t seed = 1;
  std::string executable = "/proc/self/exe";
};

// The largest rank count a calibration can run for a model of `units` units: one owner rank and
// at most units - 2 stages (the owners keep a unit at each end).
int max_calibration_ranks(int units);

// Measures p.pipeline_calibration (replacing it). `p` must be a timed profile of `model` with one
// thread. Progress goes to the log; a run that cannot be started or fails ends the calibration
// with a warning (the rank counts measured so far are kept).
void calibrate_pipeline(const nn::Model& model, Profile& p, const CalibrationSettings& s);

// factor(R) from one run: measured / (predicted * speed); the round times of the run's
// round_end events in order (the first, which builds every primitive, is left out when there
// are others).
double calibration_factor(const std::vector<double>& measured_round_s, double predicted_round_s,
                          double speed);

}  // namespace mpsl::plan
