// Profiles: what each unit of a model costs on a device (time per micro-batch, bytes), measured
// by `mpsl profile` and read by the cost model and the planner; and device descriptions that
// scale a profile to other machines ("20x slower, 8 Mbit/s link, 4 GiB").
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpsl/nn/model.hpp"

namespace mpsl::plan {

// A device: how much slower it computes than the profiled machine, its link and its memory.
// Written "slow=20,bw=8Mbit,lat=20ms,mem=4G,cores=2" (any subset; bw in bit/s with k/M/G
// suffixes or bytes/s with a "B" suffix, e.g. 1GB/s; lat in s, ms or us; mem in bytes with
// K/M/G suffixes). "speed=0.5" is the same as "slow=2".
struct Device {
  double slowdown = 1.0;   // compute time multiplier
  double bandwidth = 0.0;  // bytes/s of its link; 0 = the profiled machine's local link
  double latency = -1.0;   // seconds per message; < 0 = the local link's
  int64_t memory = 0;      // bytes; 0 = unlimited
  int cores = 0;           // cores of the node the ranks share; 0 = not given

  static Device parse(const std::string& text, const std::string& what);
  std::string str() const;
  nlohmann::json to_json() const;
  static Device from_json(const nlohmann::json& j);
};

// What crosses ranks on the profiled machine (Open MPI over shared memory) plus what a waiting
// rank loses to its polling sleep (MPSL_POLL_SLEEP_US 200 us). Over shared memory Open MPI's
// single copy (CMA) is made by the receiving process inside its MPI calls: the cost model
// charges bytes / kLocalBandwidth to the receiver's CPU. The mean, not the best: an MPI_Send /
// MPI_Recv of 1-16 MB between two ranks runs at 9-11 GB/s at best but 5.7-6.9 GB/s on average
// (30 repeats), and a 6.4 MB activation took 1.1 ms from its sender's end to its receiver's
// start in fmnist-cnn runs with idle cores (docs/cost-model-validation).
inline constexpr double kLocalBandwidth = 6.0e9;
inline constexpr double kLocalLatency = 60e-6;
// What a message costs its receiver beyond the copy when the host's ranks outnumber its cores:
// the rank it wakes takes a core from another, and both come back to cold caches. Measured in
// traces of fmnist-cnn mpsl, 4 ranks on 2 cores (each span's process CPU time): 0.5-0.9 ms of
// CPU per message received beyond bytes / kLocalBandwidth; fitted on grid val31 (the value that
// leaves the 3- and 4-rank runs unbiased) and checked on val32-val34 (per configuration, the
// median error of predictions from profiles made before the runs 4.4% and 5.0%, without it
// 6.8% and 6.6%) and val35 (docs/cost-model-validation). Not charged when every rank has a core.
inline constexpr double kOversubscribedMessageCpuS = 0.3e-3;

struct UnitProfile {
  int index = 0;
  std::string type, description, output_shape;
  double flops = 0;          // forward FLOPs of one micro-batch
  double forward_s = 0;      // one micro-batch (median over repeats)
  double backward_s = 0;     // one micro-batch, without the optimiser step
  double step_s = 0;         // the optimiser step of the unit (once per batch)
  int64_t output_bytes = 0;  // activation of one micro-batch at the unit's output (a cut there)
  int64_t param_bytes = 0;
  int64_t optimizer_bytes = 0;   // gradients + momentum
  int64_t buffer_bytes = 0;      // BatchNorm statistics
  int64_t activation_bytes = 0;  // one micro-batch in flight (what a slot holds)
  int64_t work_bytes = 0;        // primitives, scratchpads, reordered weight caches
  // The part of work_bytes that every unit of a process shares rather than adds: oneDNN's
  // library scratchpad is one buffer per thread, as large as the largest primitive needs.
  int64_t shared_work_bytes = 0;
  // What a part saves when this unit runs inside it after the previous unit instead of
  // starting it: the layout conversions and gradient buffers at a cut that a part does not
  // have. Measured as work(u-1) + work(u) - work(both as one part), shared scratchpad aside;
  // 0 for unit 0 and in profiles written before it existed.
  int64_t joined_work_saving_bytes = 0;
  // What each slot allocates on its first step when this unit starts a part (a copy of the
  // part's input in the layout the unit wants), and what joining it after the previous unit
  // adds to a part's slots (a conversion at a layout change inside the part). Both 0 in
  // profiles written before they existed (their work_bytes counted them once).
  int64_t slot_input_bytes = 0;
  int64_t joined_slot_bytes = 0;
  int64_t copy_bytes() const { return param_bytes + optimizer_bytes + buffer_bytes; }
};

// One calibration run (plan/calibration.hpp): `ranks` ranks on the profiled host (one owner rank,
// ranks - 1 stages) trained a few rounds; factor = measured / predicted round time, with the
// prediction's times at the host's speed of the moment (speed: the whole model's step timed just
// before the run over the profile's step; > 1 = slower now).
struct PipelineCalibration {
  int ranks = 0;
  double factor = 1.0;
  double measured_s = 0, predicted_s = 0, speed = 1.0;
};

struct Profile {
  std::string model;
  int batch = 128, micro_batches = 1, threads = 1, repeats = 0;
  Device device;               // what the times describe (slowdown relative to measured)
  int64_t input_bytes = 0;     // one micro-batch of model input (floats)
  int64_t base_rss_bytes = 0;  // a process with oneDNN and no model
  double loss_s = 0;           // softmax cross-entropy of one micro-batch
  // FedAvg as the owner ranks and replicated stages do it (sums in double, reduced over ranks,
  // then assigned): seconds per byte of one copy averaged.
  double average_s_per_byte = 0;
  // FedAvg in place, as the other stages and the single process do it (optim::average_in_place):
  // seconds per byte of the part, once, plus per byte of each copy (the average is computed once
  // and copied to every copy). 0 = not measured: average_s_per_byte per copy.
  double in_place_average_s_per_part_byte = 0;
  double in_place_average_s_per_byte = 0;
  // Seconds to average `copies` copies of a part of `bytes` parameter bytes in place.
  double in_place_average_s(double bytes, int copies) const {
    if (in_place_average_s_per_byte <= 0) return average_s_per_byte * bytes * copies;
    return bytes * (in_place_average_s_per_part_byte + copies * in_place_average_s_per_byte);
  }
  double evaluate_s_per_sample = 0;  // inference through the whole model, per sample
  // What crossing a cut costs the CPUs on both sides beyond the link: copying the activation
  // (reorder to plain, MPI's shared-memory copy, copy into the part's input); seconds per byte.
  double copy_s_per_byte = 0;
  // The runtime's checks for non-finite values (core/finite.hpp): seconds per byte scanned.
  // Every message is checked on both sides, and every part's gradient before each step.
  double check_s_per_byte = 0;
  double assemble_s_per_sample = 0;  // an owner normalising its images into a batch
  // Placement on the profiled host: concurrency[n - 1] = how much longer a training step takes
  // while n processes (one thread each) train at the same time (concurrency[0] = 1). Empty when
  // not measured. Shared cores are rarely n/cores-fast: caches, memory bandwidth and the
  // hypervisor all take their share.
  std::vector<double> concurrency;
  // How far the sweeps behind each concurrency[n - 1] disagreed: the largest over the smallest
  // (index 0 unused, 1). Empty when not measured (or in profiles written before it existed).
  std::vector<double> concurrency_spread;
  // How much this host's speed moved while the steps were timed: the medians of the first and
  // the second half of the timed steps, the larger over the smaller, minus 1 (0 = not known).
  double timing_drift = 0;
  // How many windows of steps were timed: another while the steadiest so far drifted by more
  // than kTimingDriftWarning, at most kMaxTimingWindows (0 = not known).
  int timing_windows = 0;
  // The CPUs the placement processes could run on (0 = not known): the profiling process's
  // cpuset, even when its launcher had bound it to fewer (core/cpus.hpp WidenedAffinity).
  int placement_cpus = 0;
  // Hops on the profiled host (comm/hop_probe.hpp): hop_s[n - 1] = median one-way time of a
  // kHopProbeBytes message between two processes, the receiver waiting as the mailbox does,
  // while n - 2 other processes compute (hop_s[0] unused). Empty when not measured.
  std::vector<double> hop_s;
  // What a real pipeline on this host loses beyond the above (plan/calibration.hpp): for each
  // rank count measured, a small `mpsl train` of this model, spawned, against the cost model's
  // prediction from the rest of this profile. Empty when not measured.
  std::vector<PipelineCalibration> pipeline_calibration;
  std::vector<UnitProfile> units;

  int num_units() const { return static_cast<int>(units.size()); }
  int64_t micro_batch() const { return batch / micro_batches; }
  // Sums over units [b, e).
  double forward(int b, int e) const;
  double backward(int b, int e) const;
  double step(int b, int e) const;
  int64_t copy_bytes(int b, int e) const;
  int64_t param_bytes(int b, int e) const;
  int64_t buffer_bytes(int b, int e) const;
  int64_t activation_bytes(int b, int e) const;
  // Working memory of a process holding units [b, e) (or several such ranges, as an owner
  // holds parts 1 and P): the units' own work plus the largest shared scratchpad.
  int64_t work_bytes(int b, int e) const;
  // What a slot of part [b, e) allocates on its first step, beyond activation_bytes.
  int64_t slot_first_use_bytes(int b, int e) const;
  int64_t work_bytes(const std::vector<std::pair<int, int>>& ranges) const;
  // Bytes of one micro-batch crossing a cut before unit u (u = 0: the model input).
  int64_t cut_bytes(int u) const { return u == 0 ? input_bytes : units[u - 1].output_bytes; }

  // The same profile on a device `d` (times multiplied by d.slowdown; memory and links are
  // what d says).
  Profile scaled(const Device& d) const;

  nlohmann::json to_json() const;
  static Profile from_json(const nlohmann::json& j, const std::string& what);
  static Profile read(const std::string& path);  // InputError naming the file
  void write(const std::string& path) const;     // atomic
};

struct ProfileSettings {
  int batch = 128;
  int micro_batches = 1;
  int repeats = 5;        // timed steps; 0 = bytes only (no timing)
  double min_time_s = 0;  // and time steps for at least this long (when repeats > 0)
  int warmup = 2;
  uint64_t seed = 1;
  int concurrency = 0;  // measure the slowdown with up to this many processes (0 = not)
  // Measure hop_s with up to this many processes (0 = not); needs MPI_Comm_spawn.
  int hop_processes = 0;
  std::string executable = "/proc/self/exe";  // what the hop probe spawns
  // Only the units' forward, backward and step times and the loss (no FedAvg, evaluation,
  // copies, checks or assembly): what a quick look at the host's speed needs.
  bool steps_only = false;
};

// The hop probe's message: small enough that its copy is negligible (64 KiB: 0.01 ms between
// idle ranks), so what it measures is the waiting, whatever a real message's size.
inline constexpr int64_t kHopProbeBytes = int64_t{64} << 10;

// What a message between ranks of the profiled host waits beyond the idle-core hop when n
// processes share it (n - 2 of them computing): max(0, hop_s[n - 1] - hop_s[1]), the last
// measured n's for larger n; 0 when not measured.
double hop_wait_s(const Profile& p, int n);

// The pipeline calibration's factor for `ranks` processes on the profiled host (interpolated
// between measured rank counts; the nearest measured one outside them); 1 when not measured.
double pipeline_factor(const Profile& p, double ranks);

// The placement slowdown of `processes` single-threaded processes computing at once on `cpus`:
// their mean step time over the mean of the windows alone just before and after, and never
// less than an even share of the CPUs allows (below it, the host's speed moved).
double placement_slowdown(double shared_step_s, double alone_before_s, double alone_after_s,
                          int processes, int cpus);

// timing_drift of these step times (in timing order): the larger of the medians of their first
// and second half over the smaller, minus 1; 0 with fewer than 4 steps.
double timing_drift(const std::vector<double>& step_s);
// A drift above kTimingDriftWarning is timed again (up to kMaxTimingWindows windows of steps, the
// steadiest kept) and reported (a warning) if every window drifted. Sweeps that disagree by more
// than kPlacementSpreadLimit are measured again, at most kMaxPlacementSweeps in all, and reported
// if they still disagree by more than kPlacementSpreadWarning (on this 2-core virtual machine, 3-5
// sweeps of the same process count spread by up to 1.36).
inline constexpr double kTimingDriftWarning = 0.15;
inline constexpr int kMaxTimingWindows = 3;
inline constexpr double kPlacementSpreadLimit = 1.25, kPlacementSpreadWarning = 1.5;
inline constexpr int kPlacementSweeps = 3, kMaxPlacementSweeps = 5;
// Whether the placement sweeps so far (ratios[n] = one slowdown per sweep, for each n measured)
// disagree by more than `limit` for some n.
bool placement_sweeps_disagree(const std::vector<std::vector<double>>& ratios,
                               double limit = kPlacementSpreadLimit);
double spread_of(const std::vector<double>& v);  // largest / smallest (1 when empty)

// Measures `model` on this machine with the current OpenMP thread count.
Profile measure_profile(const nn::Model& model, const ProfileSettings& s);

// `old` with its times measured again on this host now (`repeats` timed steps, same batch and
// micro-batches), its bytes, placement slowdowns and hop times kept: a machine whose speed
// drifts (a virtual machine's neighbours) is described as it is at the moment, in seconds
// rather than the minutes a full profile takes.
// steps_only: only the units' times and the loss (ProfileSettings::steps_only).
Profile retime_profile(const nn::Model& model, const Profile& old, int repeats, double min_time_s,
                       uint64_t seed, bool steps_only = false);
// The whole model's training step of one batch: every unit's forward and backward of each
// micro-batch, the loss and the optimiser step (from the units' medians).
double model_step_s(const Profile& p);

// Median of a non-empty vector (copied).
double median(std::vector<double> v);

}  // namespace mpsl::plan
