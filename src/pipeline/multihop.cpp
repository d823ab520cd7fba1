#include "mpsl/pipeline/multihop.hpp"

#include <array>
#include <chrono>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <thread>
#include <tuple>

#include "mpsl/comm/collectives.hpp"
#include "mpsl/comm/mpi_environment.hpp"
#include "mpsl/comm/watchdog.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/core/finite.hpp"
#include "mpsl/io/model_file.hpp"
#include "mpsl/nn/loss.hpp"
#include "mpsl/obs/log.hpp"
#include "mpsl/obs/memory.hpp"
#include "mpsl/obs/trace.hpp"
#include "mpsl/train/local.hpp"

namespace mpsl::pipeline {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

constexpr int kEvalTag = 7;
constexpr int kModelTag = 8;
constexpr int kFinishedTag = 9;  // straggler coordination: owner k finished (to rank 0)

// Waits for a non-blocking request, sleeping between tests.
void wait_request(MPI_Request& req) {
  int done = 0, idle = 0;
  while (true) {
    MPSL_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (done) return;
    if (++idle > 50) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

// Blocking receive of a message of unknown size that sleeps while it waits (a plain MPI_Recv
// busy-polls a core, which slows everyone when ranks outnumber cores). Into `v`, resized to the
// message: a buffer kept across calls is not allocated, page-faulted and zeroed again (an
// evaluation batch's activation is 100 MB and more).
void recv_any_size_into(std::vector<float>& v, MPI_Comm comm, int source, int tag,
                        const char* kind) {
  MPI_Status st;
  int flag = 0, idle = 0;
  comm::StallClock stall(
      [&] { return std::string("an ") + kind + " message from " + comm::describe_rank(source); });
  while (true) {
    MPSL_MPI_CHECK(MPI_Iprobe(source, tag, comm, &flag, &st));
    if (flag) break;
    stall.check();
    if (++idle > 50) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  int count = 0;
  MPSL_MPI_CHECK(MPI_Get_count(&st, MPI_FLOAT, &count));
  v.resize(count);
  MPSL_MPI_CHECK(MPI_Recv(v.data(), count, MPI_FLOAT, source, tag, comm, MPI_STATUS_IGNORE));
  comm::audit_message(kind, source, count * static_cast<int64_t>(sizeof(float)), false);
}

std::vector<float> recv_any_size(MPI_Comm comm, int source, int tag, const char* kind) {
  std::vector<float> v;
  recv_any_size_into(v, comm, source, tag, kind);
  return v;
}

// A non-blocking send of floats that finish() waits for, sleeping between tests, under the stall
// watchdog. The buffer must stay untouched until then. (A request still pending when the object
// dies belongs to a run that is failing: it is freed, not waited for.)
class FloatSend {
 public:
  FloatSend() = default;
  FloatSend(const FloatSend&) = delete;
  FloatSend& operator=(const FloatSend&) = delete;
  ~FloatSend() {
    if (req_ != MPI_REQUEST_NULL && !comm::MpiEnvironment::finalized()) MPI_Request_free(&req_);
  }
  void start(MPI_Comm comm, const float* data, int64_t n, int dest, int tag, const char* kind) {
    MPSL_CHECK(req_ == MPI_REQUEST_NULL, "FloatSend::start while a send is pending");
    comm::audit_message(kind, dest, n * static_cast<int64_t>(sizeof(float)), true);
    MPSL_MPI_CHECK(MPI_Isend(data, static_cast<int>(n), MPI_FLOAT, dest, tag, comm, &req_));
    dest_ = dest;
    kind_ = kind;
  }
  void finish() {
    if (req_ == MPI_REQUEST_NULL) return;
    comm::wait_watched(req_, [&] {  // done: req_ = MPI_REQUEST_NULL
      return std::string("its ") + kind_ + " message to be received by " +
             comm::describe_rank(dest_);
    });
  }

 private:
  MPI_Request req_ = MPI_REQUEST_NULL;
  int dest_ = 0;
  const char* kind_ = "";
};

void send_floats(MPI_Comm comm, const float* data, int64_t n, int dest, int tag, const char* kind) {
  FloatSend send;
  send.start(comm, data, n, dest, tag, kind);
  send.finish();
}

using comm::kEvalInFlight;

// The round's late owners as the owner ranks agreed on them (owner ranks pass theirs, stages
// an empty list), on every rank: rank 0 broadcasts them. All zero when nothing can be late.
std::vector<int> agree_on_late(std::vector<int> late, int owners, bool active) {
  late.resize(owners, 0);
  if (!active) return late;
  int rank = 0;
  MPSL_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  comm::audit_message("late-owners", rank == 0 ? -1 : 0, static_cast<int64_t>(owners * sizeof(int)),
                      rank == 0);
  comm::broadcast_watched(late.data(), owners, MPI_INT, 0, MPI_COMM_WORLD,
                          [] { return std::string("rank 0's list of the round's late owners"); });
  return late;
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// "non-finite activation ... on rank 2 (stage 1/2, units 1-2): owner 3, round 1, step 4,
// micro-batch 0 (element 17 = nan)".
std::string fault_text(const std::string& what, int rank, int owner, int round, int64_t step,
                       int micro, int64_t index, float value) {
  std::string s = "non-finite " + what + " on " + comm::describe_rank(rank) + ": owner " +
                  std::to_string(owner) + ", round " + std::to_string(round) + ", step " +
                  std::to_string(step) + ", micro-batch " + std::to_string(micro);
  if (index >= 0) s += " (element " + std::to_string(index) + " = " + std::to_string(value) + ")";
  return s;
}

// The first non-finite value of a batch on this rank: ends the job (RuntimeFailure, exit 1)
// under --nan-policy abort; a warning under skip where it appeared (`received` = it came from
// another rank that has reported it already: a debug line).
void report_fault(bool skip, bool received, const std::string& text) {
  if (!skip) throw RuntimeFailure(text + " (--nan-policy abort)");
  if (received)
    MPSL_LOG(Debug, text << "; --nan-policy skip: this rank skips the batch too");
  else
    obs::log_warn(text + "; --nan-policy skip: this batch of the owner is skipped");
}

// Checks data[0, n) and, at the first non-finite value of a batch, reports it. Returns whether
// the batch is poisoned now.
bool check_values(bool& poisoned, bool skip, bool received, const float* data, int64_t n,
                  const std::function<std::string(int64_t, float)>& text) {
  const int64_t i = first_non_finite(data, n);
  if (i >= 0 && !poisoned) {
    report_fault(skip, received, text(i, data[i]));
    poisoned = true;
  }
  return poisoned;
}

void save_buffers(const nn::PartState& p, std::vector<float>& out) {
  out.assign(p.buffers.data(), p.buffers.data() + p.buffers.size());
}
void restore_buffers(nn::PartState& p, const std::vector<float>& saved) {
  if (saved.size() == static_cast<size_t>(p.buffers.size()))
    std::copy(saved.begin(), saved.end(), p.buffers.data());
}

int64_t eval_batches(int64_t count, int64_t eval_batch) {
  return (count + eval_batch - 1) / eval_batch;
}

// Inference programs of one part, built on demand per batch size.
class InferencePrograms {
 public:
  InferencePrograms(const nn::Model& m, int begin, int end) : model_(m), begin_(begin), end_(end) {}
  void forward(nn::PartState& state, int64_t batch, const float* in, float* out) {
    auto it = progs_.find(batch);
    if (it == progs_.end()) {
      auto p = std::make_unique<nn::PartProgram>(model_, begin_, end_, batch, false, false);
      auto s = p->make_slot();
      it = progs_.emplace(batch, std::make_pair(std::move(p), std::move(s))).first;
    }
    it->second.first->forward(*it->second.second, state, in, out, nn::StepInfo{0, 0, 0, false});
  }

 private:
  const nn::Model& model_;
  int begin_, end_;
  std::map<int64_t, std::pair<std::unique_ptr<nn::PartProgram>, std::unique_ptr<nn::PartSlot>>>
      progs_;
};

// A pool of activation slots for batches in flight through one program.
class SlotPool {
 public:
  explicit SlotPool(const nn::PartProgram& p) : program_(p) {}
  // Creates slots up to `n` now (the run's reservation, Settings::Reservation). Each is
  // handed out once before any slot is reused, so all their pages are written within the first n
  // acquisitions: the reservation shows in the RSS from the first round, not only once a
  // rank happens to hold that many.
  void reserve(int n) {
    for (; created_ < n; ++created_) fresh_.push_back(program_.make_slot());
  }
  std::unique_ptr<nn::PartSlot> acquire() {
    std::unique_ptr<nn::PartSlot> s;
    if (!fresh_.empty()) {
      s = std::move(fresh_.back());
      fresh_.pop_back();
    } else if (!free_.empty()) {
      s = std::move(free_.back());
      free_.pop_back();
    } else {
      ++created_;
      s = program_.make_slot();
    }
    most_in_use_ = std::max(most_in_use_, ++in_use_);
    return s;
  }
  void release(std::unique_ptr<nn::PartSlot> s) {
    free_.push_back(std::move(s));
    --in_use_;
  }
  int in_use() const { return in_use_; }
  // The most slots in use at once.
  int most_in_use() const { return most_in_use_; }
  // Slots created (reserved or grown to; the pool never shrinks).
  int created() const { return created_; }

 private:
  const nn::PartProgram& program_;
  int created_ = 0, in_use_ = 0, most_in_use_ = 0;
  std::vector<std::unique_ptr<nn::PartSlot>> fresh_, free_;
};

// ---- owner ranks ----------------------------------------------------------------------------

class OwnerRuntime : public RankRuntime {
 public:
  OwnerRuntime(const Settings& s, const data::Dataset& train, int rank)
      : s_(s),
        t_(s.topology),
        model_(*s.model),
        train_(train),
        rank_(rank),
        world_(comm::Communicator::world()),
        owner_comm_(world_.split(0, rank)),
        eval_comm_(world_.dup()),
        ctrl_world_(world_.dup()),
        ctrl_group_(owner_comm_.dup()),
        mailbox_(world_.get()),
        micro_batch_(s.plan.batch / s.micro_batches),
        window_(s.one_f_one_b ? std::min(s.micro_batches, t_.stages + 2) : 1),
        first_(model_, t_.first_part().first, t_.first_part().second, micro_batch_, false, true),
        last_(model_, t_.last_part().first, t_.last_part().second, micro_batch_, true, true),
        first_slots_(first_),
        last_slot_(last_.make_slot()),
        first_eval_(model_, t_.first_part().first, t_.first_part().second),
        last_eval_(model_, t_.last_part().first, t_.last_part().second),
        logits_(micro_batch_ * model_.classes()),
        dlogits_(micro_batch_ * model_.classes()),
        emu_(&s.emulation) {
    for (int k : t_.owners_of_rank(rank)) {
      auto o = std::make_unique<Owner>();
      o->id = k;
      o->first = nn::PartState(model_, t_.first_part().first, t_.first_part().second);
      o->last = nn::PartState(model_, t_.last_part().first, t_.last_part().second);
      io::initialise_part(model_, o->first, s.seed, s.init_model);
      io::initialise_part(model_, o->last, s.seed, s.init_model);
      o->first.adopt_formats(first_);  // weights in the layouts the primitives want
      o->last.adopt_formats(last_);
      o->images.resize(s.plan.batch * train.image_size());
      o->labels.resize(s.plan.batch);
      o->slots.resize(s.micro_batches);
      const auto& shard = s.plan.shards.at(k);
      o->shard_crc32 = io::crc32_bytes(shard.data(), shard.size() * sizeof(int64_t));
      owners_.push_back(std::move(o));
    }
    // Each replica of the pipeline that serves some of this rank's owners sends to it.
    const int64_t out_floats = micro_batch_ * last_.input_shape().per_sample();
    const int64_t grad_floats = micro_batch_ * first_.output_shape().per_sample();
    for (int h = 0; h < t_.replicas; ++h) {
      int served = 0;
      for (const auto& o : owners_) served += t_.replica_of_owner(o->id) == h ? 1 : 0;
      if (served == 0) continue;
      const int last_stage = t_.rank_of_stage(t_.stages - 1, h);
      const int first_stage = t_.rank_of_stage(0, h);
      const int depth = comm::receive_depth(served, window_);
      if (first_stage == last_stage) {
        mailbox_.listen(first_stage, std::max(out_floats, grad_floats), 2 * depth);
      } else {
        mailbox_.listen(last_stage, out_floats, depth);
        mailbox_.listen(first_stage, grad_floats, depth);
      }
      preferred_.push_back(last_stage);
      preferred_.push_back(first_stage);
    }
    first_slots_.reserve(s.reservation.in_flight);
    mailbox_.reserve_send_buffers(s.reservation.send_buffers, std::max(out_floats, grad_floats));
    mailbox_.set_describer([this] { return awaiting(); });
  }

  const char* role() const override { return "owner"; }
  int max_in_flight() const override { return first_slots_.most_in_use(); }
  int reserved_in_flight() const override { return first_slots_.created(); }
  emulate::EmulationStats emulation_stats() const override { return emu_.stats(); }
  const comm::Mailbox& mailbox() const override { return mailbox_; }
  RankTimes times() const override {
    return {busy_, mailbox_.stats().wait_seconds, mailbox_.stats().comm_seconds};
  }

  void begin_round(int round, int64_t start_step) override {
    round_ = round;
    for (auto& o : owners_) {
      const int64_t steps = s_.plan.round_steps(o->id, round);
      o->steps_done = std::min(start_step, steps);
      std::tie(o->epoch, o->step_in_epoch) = s_.plan.cursor(o->id, round, o->steps_done);
      o->window_left = 0;
      o->batch_active = false;
      o->loss_sum = 0;
      o->correct = o->seen = 0;
      o->finished = o->late = false;
      o->finished_s = -1;
      o->busy_s = 0;
      o->skipped = 0;
      if (o->steps_done < steps) start_epoch(*o);
    }
    round_start_ = Clock::now();
    stopped_ = false;
    finished_known_ = fins_received_ = 0;
  }

  void run_steps(int64_t from, int64_t to) override {
    const bool coordinated = s_.stragglers.coordinated();
    MPSL_CHECK(!coordinated || from == 0, "a coordinated round runs as one step window");
    for (auto& o : owners_) {
      const int64_t steps = s_.plan.round_steps(o->id, round_);
      MPSL_CHECK(o->steps_done == std::min(from, steps), "step windows must follow each other");
      o->window_left = std::min(to, steps) - std::min(from, steps);
    }
    if (coordinated && rank_ != 0)  // rank 0 says when the round is over
      MPSL_MPI_CHECK(MPI_Ibcast(&stop_round_, 1, MPI_INT, 0, ctrl_group_.get(), &stop_req_));
    for (auto& o : owners_)
      if (!o->finished && o->steps_done >= s_.plan.round_steps(o->id, round_)) mark_finished(*o);
    size_t next = 0;
    while (!window_done() || (coordinated && !stopped_)) {
      if (coordinated) straggler_tick();
      comm::Mailbox::Message m;
      if (mailbox_.poll(m, preferred_)) {
        handle(m);
        continue;
      }
      // Start one forward pass, visiting owners round-robin.
      bool started = false;
      for (size_t i = 0; i < owners_.size() && !started; ++i) {
        Owner& o = *owners_[(next + i) % owners_.size()];
        if (can_send(o)) {
          send_forward(o);
          next = (next + i + 1) % owners_.size();
          started = true;
        }
      }
      if (started) continue;
      if (!coordinated)
        handle(mailbox_.wait(preferred_));
      else if (mailbox_.wait_for(m, preferred_, 0.002))
        handle(m);
    }
    mailbox_.flush();
    if (coordinated) {
      // Tells the stages that every owner rank is done with the round.
      MPI_Request barrier;
      MPSL_MPI_CHECK(MPI_Ibarrier(ctrl_world_.get(), &barrier));
      wait_request(barrier);
    }
  }

  RoundResult finish_round() override {
    // Rank 0 reports the totals over all owner ranks (summed in owner order, so where step
    // windows fell does not change the figures).
    RoundResult mine;
    for (const auto& o : owners_) {
      mine.loss_sum += o->loss_sum;
      mine.correct += o->correct;
      mine.images += o->seen;
      mine.skipped += o->skipped;
    }
    double loss = mine.loss_sum;
    int64_t counts[3] = {mine.correct, mine.images, mine.skipped};
    RoundResult total = mine;
    MPSL_MPI_CHECK(
        MPI_Reduce(&loss, &total.loss_sum, 1, MPI_DOUBLE, MPI_SUM, 0, owner_comm_.get()));
    int64_t sums[3] = {0, 0, 0};
    // The round's loss sum and counts (no per-sample values) go to rank 0.
    if (rank_ != 0) comm::audit_message("round-tallies", 0, sizeof loss + sizeof counts, true);
    MPSL_MPI_CHECK(MPI_Reduce(counts, sums, 3, MPI_INT64_T, MPI_SUM, 0, owner_comm_.get()));
    total.correct = sums[0];
    total.images = sums[1];
    if (s_.stragglers.coordinated()) finish_coordination();
    // Per-owner figures, and the late owners every owner rank (and, in aggregate(), every
    // stage) agrees on.
    const int K = t_.owners;
    std::vector<double> fig(4 * K, 0.0);
    for (const auto& o : owners_) {
      o->late = o->late || s_.stragglers.forced_late(o->id);
      fig[o->id] = static_cast<double>(o->steps_done);
      fig[K + o->id] = o->late ? 1.0 : 0.0;
      fig[2 * K + o->id] = o->finished ? o->finished_s : -1.0;
      fig[3 * K + o->id] = o->busy_s;
    }
    MPSL_MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, fig.data(), 4 * K, MPI_DOUBLE, MPI_SUM, owner_comm_.get()));
    late_.assign(K, 0);
    for (int k = 0; k < K; ++k) {
      late_[k] = fig[K + k] > 0.5 ? 1 : 0;
      if (rank_ == 0)
        total.owners.push_back(
            {k, static_cast<int64_t>(fig[k]), late_[k] != 0, fig[2 * K + k], fig[3 * K + k]});
    }
    total.skipped = sums[2];
    return total;
  }

  RankState checkpoint_state() override {
    RankState st;
    for (auto& o : owners_) {
      io::OwnerRecord r;
      r.owner = o->id;
      r.samples = s_.plan.samples[o->id];
      r.shard_crc32 = o->shard_crc32;
      r.steps_in_round = o->steps_done;
      std::tie(r.epoch, r.step_in_epoch) = s_.plan.cursor(o->id, round_, o->steps_done);
      r.global_epoch = static_cast<int64_t>(round_ - 1) * s_.plan.local_epochs + r.epoch;
      r.loss_sum = o->loss_sum;
      r.correct = o->correct;
      r.images = o->seen;
      st.owners.push_back(r);
      const std::string base = "owners/" + std::to_string(o->id);
      st.parts.push_back({base + "/first", o->id, &o->first});
      st.parts.push_back({base + "/last", o->id, &o->last});
    }
    return st;
  }

  void restore_tallies(const std::vector<io::OwnerRecord>& records) override {
    for (const auto& r : records) {
      Owner& o = owner(r.owner);
      o.loss_sum = r.loss_sum;
      o.correct = r.correct;
      o.seen = r.images;
    }
  }

  void aggregate() override {
    obs::Span span(obs::Activity::kAggregation);
    const bool momentum = s_.policy == optim::OptimizerStatePolicy::kAverage;
    if (emu_.active()) {
      // Every owner uploads its parts 1 and P and downloads the average over its own link once
      // its device has ended its last span (the host ran it faster); this rank's owners do so
      // in parallel.
      double longest = 0;
      const auto now = Clock::now();
      auto until = now;
      for (const auto& o : owners_) {
        // Averaged momentum travels with the parameters.
        const int64_t floats = static_cast<int64_t>(
            o->first.params.size() + o->first.buffers.size() + o->last.params.size() +
            o->last.buffers.size() +
            (momentum ? o->first.momentum.size() + o->last.momentum.size() : 0));
        const double transfer = emu_.aggregation_seconds(o->id, floats * 4);
        longest = std::max(longest, transfer);
        until = std::max(until, std::max(now, emu_.free_at(emulate::owner_entity(o->id))) +
                                    std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(transfer)));
      }
      emu_.account_aggregation(longest);
      emulate::RankEmulator::sleep_until(until);
    }
    const auto t0 = Clock::now();
    // Late owners join with weight 0; with --late-policy drop they still receive the average.
    const std::vector<int> late = agree_on_late(late_, t_.owners, s_.stragglers.active());
    double total = 0;
    for (int k = 0; k < t_.owners; ++k)
      if (!late[k]) total += static_cast<double>(s_.plan.samples[k]);
    bool any_late = false;
    for (int l : late) any_late |= l != 0;
    for (auto& o : owners_)
      for (const nn::PartState* p : {&o->first, &o->last})
        if (!all_finite(p->params.data(), p->params.size()))
          throw RuntimeFailure("non-finite parameters in part " +
                               std::string(p == &o->first ? "1" : "P") + " of owner " +
                               std::to_string(o->id) + " on " + comm::describe_rank(rank_) +
                               " at the end of round " + std::to_string(round_));
    for (int which = 0; which < 2; ++which) {
      std::vector<const nn::PartState*> copies;
      std::vector<nn::PartState*> targets;
      std::vector<double> weights;
      for (auto& o : owners_) {
        nn::PartState& p = which == 0 ? o->first : o->last;
        copies.push_back(&p);
        if (!late[o->id] || !s_.stragglers.carry) targets.push_back(&p);
        weights.push_back(late[o->id] ? 0.0 : static_cast<double>(s_.plan.samples[o->id]));
      }
      optim::PartSums& sums = which == 0 ? fedavg_first_ : fedavg_last_;
      optim::weighted_sums_into(copies, weights, momentum, sums);
      // Only these weighted sums leave the rank; the reduction returns the global sums.
      for (auto* v : {&sums.params, &sums.buffers, &sums.momentum})
        if (!v->empty()) {
          comm::audit_message("fedavg-weighted-sum", -1,
                              static_cast<int64_t>(v->size() * sizeof(double)), true);
          comm::allreduce_sum(v->data(), static_cast<int64_t>(v->size()), owner_comm_.get());
        }
      optim::assign_average(sums, total, targets, s_.policy);
      // Carried late owners keep their own parts: the aggregated model is kept aside (for
      // evaluation and --save-model).
      auto& global = which == 0 ? global_first_ : global_last_;
      if (s_.stragglers.carry && any_late) {
        if (!global) global.emplace(which == 0 ? owners_.front()->first : owners_.front()->last);
        optim::assign_average(sums, total, {&*global}, s_.policy);
      } else {
        global.reset();
      }
    }
    if (!s_.stragglers.carry)  // dropped owners stand where a full round would have left them
      for (auto& o : owners_)
        if (late[o->id]) o->first.steps = o->last.steps = plan_steps_through(o->id, round_);
    busy_ += since(t0);
  }

  std::pair<double, double> evaluate(const data::Dataset* test) override {
    // Everyone learns how many evaluation batches will come.
    obs::Span span(obs::Activity::kEval);
    int64_t count = test ? test->count : 0;
    comm::broadcast_watched(&count, 1, MPI_INT64_T, 0, MPI_COMM_WORLD,
                            [] { return std::string("rank 0's evaluation batch count"); });
    comm::audit_message("eval-count", rank_ == 0 ? -1 : 0, sizeof count, rank_ == 0);
    if (rank_ != 0 || count == 0) return {0, 0};
    // All owners hold the same aggregated parts, except carried late owners: then the
    // aggregated parts are kept aside.
    Owner& o = *owners_.front();
    nn::PartState& first = global_first_ ? *global_first_ : o.first;
    nn::PartState& last = global_last_ ? *global_last_ : o.last;
    const int64_t eb = s_.eval_batch;
    const int64_t in_floats = model_.input_shape(1).per_sample();
    // Kept from round to round: fresh pages of tensor-sized buffers every round cost (about
    // 100 MB for fmnist-cnn at --eval-batch 1000; some VMs fault pages in at 0.3-0.4 GB/s).
    EvalBuffers& e = eval_buffers_;
    e.images.resize(eb * in_floats);
    e.idx.resize(eb);
    const int64_t act_per = model_.shape_before(t_.first_part().second, 1).per_sample();
    double loss = 0;
    int64_t correct = 0;
    const int first_stage = t_.rank_of_stage(0), last_stage = t_.rank_of_stage(t_.stages - 1);
    // Batches leave in order and come back in order (MPI does not overtake between two ranks):
    // up to kEvalInFlight are out, each with its activation buffer, send and labels.
    const int64_t batches = eval_batches(count, eb);
    int64_t sent = 0, back = 0;
    while (back < batches) {
      if (sent < batches && sent - back < kEvalInFlight) {
        EvalBuffers::InFlight& f = e.in_flight[sent % kEvalInFlight];
        f.send.finish();  // that buffer's previous batch went round long ago
        const int64_t start = sent * eb, b = std::min(eb, count - start);
        for (int64_t i = 0; i < b; ++i) e.idx[i] = start + i;
        f.labels.resize(eb);
        data::assemble_batch(*test, e.idx.data(), b, e.images.data(), f.labels.data());
        f.act.resize(b * act_per);
        first_eval_.forward(first, b, e.images.data(), f.act.data());
        f.send.start(eval_comm_.get(), f.act.data(), static_cast<int64_t>(f.act.size()),
                     first_stage, kEvalTag, "eval-activation");
        ++sent;
        continue;
      }
      const EvalBuffers::InFlight& f = e.in_flight[back % kEvalInFlight];
      const int64_t b = std::min(eb, count - back * eb);
      recv_any_size_into(e.out, eval_comm_.get(), last_stage, kEvalTag, "eval-activation");
      e.logits.resize(b * model_.classes());
      last_eval_.forward(last, b, e.out.data(), e.logits.data());
      const nn::LossResult r = nn::softmax_cross_entropy(e.logits.data(), f.labels.data(), b,
                                                         model_.classes(), nullptr, 1.f);
      loss += r.loss_sum;
      correct += r.correct;
      ++back;
    }
    for (auto& f : e.in_flight) f.send.finish();
    return {loss / count, static_cast<double>(correct) / count};
  }

  std::optional<nn::PartState> gather_model() override {
    if (rank_ != 0) return std::nullopt;
    nn::PartState whole(model_, 0, model_.num_units());
    const nn::PartState& o_first = global_first_ ? *global_first_ : owners_.front()->first;
    const nn::PartState& o_last = global_last_ ? *global_last_ : owners_.front()->last;
    auto place = [&](const float* params, int64_t np, const float* buffers, int64_t nb, int unit) {
      const auto& l = whole.layout;
      const int64_t po = l.unit_param_offset[unit], bo = l.unit_buffer_offset[unit];
      std::copy(params, params + np, whole.params.data() + po);
      std::copy(buffers, buffers + nb, whole.buffers.data() + bo);
    };
    // The model file holds plain layouts; the parts may store weights in oneDNN's.
    const nn::FloatBuffer first = o_first.plain_array(o_first.params);
    const nn::FloatBuffer last = o_last.plain_array(o_last.params);
    place(first.data(), first.size(), o_first.buffers.data(), o_first.buffers.size(),
          t_.first_part().first);
    for (int st = 0; st < t_.stages; ++st) {
      std::vector<float> v =
          recv_any_size(eval_comm_.get(), t_.rank_of_stage(st), kModelTag, "stage-part");
      const auto [b, e] = t_.stage_part(st);
      const nn::PartLayout l = nn::PartLayout::make(model_, b, e);
      MPSL_CHECK(static_cast<int64_t>(v.size()) == l.param_count + l.buffer_count,
                 "stage model size mismatch");
      place(v.data(), l.param_count, v.data() + l.param_count, l.buffer_count, b);
    }
    place(last.data(), last.size(), o_last.buffers.data(), o_last.buffers.size(),
          t_.last_part().first);
    whole.steps = o_first.steps;
    ++whole.version;
    return whole;
  }

 private:
  struct Owner {
    int id = 0;
    nn::PartState first, last;
    std::vector<int64_t> order;
    int epoch = 0;
    int64_t step_in_epoch = 0;
    int64_t steps_done = 0;   // in the round
    int64_t window_left = 0;  // steps left in the current window
    uint32_t shard_crc32 = 0;
    double loss_sum = 0;  // this round's tallies
    int64_t correct = 0, seen = 0;
    std::vector<float> images;
    std::vector<int32_t> labels;
    bool batch_active = false;
    int next_micro = 0, outputs_done = 0, grads_done = 0, in_flight = 0;
    bool finished = false;  // took all its steps of the round before the round ended
    bool late = false;      // the round ended before it finished
    double finished_s = -1, busy_s = 0;
    // The current batch: a non-finite value was seen, its tallies (committed at its step), and
    // the BatchNorm statistics before it (restored when it is skipped).
    bool poisoned = false;
    double batch_loss = 0;
    int64_t batch_correct = 0, batch_seen = 0;
    std::vector<float> saved_first, saved_last;
    int64_t skipped = 0;                               // batches skipped this round
    std::vector<std::unique_ptr<nn::PartSlot>> slots;  // part-1 activations per micro-batch
  };

  void start_epoch(Owner& o) {
    const uint64_t global_epoch =
        static_cast<uint64_t>(round_ - 1) * s_.plan.local_epochs + o.epoch;
    o.order = train::epoch_order(s_.plan.shards[o.id], s_.seed, o.id, global_epoch);
  }

  bool window_done() const {
    for (const auto& o : owners_)
      if (o->window_left > 0 || o->in_flight > 0) return false;
    return true;
  }

  bool can_send(const Owner& o) const {
    if (o.window_left <= 0 || o.in_flight >= window_) return false;
    return !o.batch_active || o.next_micro < s_.micro_batches;
  }

  nn::StepInfo info(const Owner& o, int micro) const {
    return nn::StepInfo{s_.seed, o.first.steps, micro * micro_batch_, true,
                        static_cast<uint64_t>(o.id)};
  }

  void send_forward(Owner& o) {
    const emulate::SpanStart t0 = emulate::span_start();
    if (!o.batch_active) {
      while (o.step_in_epoch >= s_.plan.steps(o.id, round_, o.epoch)) {
        ++o.epoch;
        o.step_in_epoch = 0;
        start_epoch(o);
      }
      data::assemble_batch(train_, o.order.data() + o.step_in_epoch * s_.plan.batch, s_.plan.batch,
                           o.images.data(), o.labels.data());
      o.batch_active = true;
      o.next_micro = o.outputs_done = o.grads_done = 0;
      o.poisoned = false;
      check(o, 0, o.images.data(), static_cast<int64_t>(o.images.size()),
            [](int64_t, float) { return std::string("input images (after normalisation)"); });
      o.batch_loss = 0;
      o.batch_correct = o.batch_seen = 0;
      if (s_.nan_skip) {
        save_buffers(o.first, o.saved_first);
        save_buffers(o.last, o.saved_last);
      }
    }
    const int m = o.next_micro++;
    obs::Span span(obs::Activity::kForward, o.id, m);
    o.slots[m] = first_slots_.acquire();
    const int64_t floats = micro_batch_ * first_.output_shape().per_sample();
    float* buf = mailbox_.send_buffer(floats);
    first_.forward(*o.slots[m], o.first, o.images.data() + m * micro_batch_ * train_.image_size(),
                   buf, info(o, m));
    if (m == 0 && test_nan_due(rank_, o.id, round_, o.steps_done + 1)) buf[0] = kNaN;
    check(o, m, buf, floats, [&] {
      return "activation at cut 1 (output of part 1, to " +
             comm::describe_rank(t_.rank_of_stage(0, t_.replica_of_owner(o.id))) + ")";
    });
    span.end();
    send(buf, floats, emulate::stage_entity(0), comm::MessageKind::kActivation, o.id, m,
         span_end(o.id, t0));
    ++o.in_flight;
    obs::note_heap();  // the tracked peak (rank_summary)
  }

  Owner& owner(int id) {
    return *owners_[id / t_.owner_ranks];  // owners of this rank are rank, rank + O, ...
  }

  void handle(const comm::Mailbox::Message& msg) {
    const emulate::SpanStart t0 = emulate::span_start();
    comm::test_message_hook(rank_);
    Owner& o = owner(msg.env.owner);
    const int m = msg.env.micro;
    const int source = msg.env.source;
    if (msg.env.kind == comm::MessageKind::kActivation) {
      // The last stage's output: part P, the loss (labels never leave this rank), backward.
      check(
          o, m, msg.data, msg.floats,
          [&] { return "activation received from " + comm::describe_rank(source); }, true);
      obs::Span fwd(obs::Activity::kForward, o.id, m);
      last_.forward(*last_slot_, o.last, msg.data, logits_.data(), info(o, m));
      const nn::LossResult r = nn::softmax_cross_entropy(
          logits_.data(), o.labels.data() + m * micro_batch_, micro_batch_, model_.classes(),
          dlogits_.data(), 1.f / static_cast<float>(s_.plan.batch));
      const float loss = static_cast<float>(r.loss_sum);
      check(o, m, &loss, 1, [&](int64_t, float) { return std::string("loss"); });
      o.batch_loss += r.loss_sum;
      o.batch_correct += r.correct;
      o.batch_seen += micro_batch_;
      mailbox_.release(msg);
      fwd.end();
      obs::Span bwd(obs::Activity::kBackward, o.id, m);
      const int64_t floats = micro_batch_ * last_.input_shape().per_sample();
      float* buf = mailbox_.send_buffer(floats);
      last_.backward(*last_slot_, o.last, dlogits_.data(), buf, info(o, m), o.outputs_done > 0);
      check(o, m, buf, floats, [&] {
        return "gradient at cut P (input of part P, to " + comm::describe_rank(source) + ")";
      });
      if (o.poisoned) buf[0] = kNaN;  // so every stage on the way back skips the batch too
      ++o.outputs_done;
      bwd.end();
      send(buf, floats, emulate::stage_entity(t_.stages - 1), comm::MessageKind::kActivationGrad,
           o.id, m, span_end(o.id, t0));
    } else {
      check(
          o, m, msg.data, msg.floats,
          [&] { return "gradient received from " + comm::describe_rank(source); }, true);
      obs::Span bwd(obs::Activity::kBackward, o.id, m);
      first_.backward(*o.slots[m], o.first, msg.data, nullptr, info(o, m), o.grads_done > 0);
      mailbox_.release(msg);
      bwd.end();
      first_slots_.release(std::move(o.slots[m]));
      ++o.grads_done;
      --o.in_flight;
      if (o.grads_done == s_.micro_batches) {
        check(o, m, o.first.grads.data(), o.first.grads.size(),
              [](int64_t, float) { return std::string("parameter gradient of part 1"); });
        check(o, m, o.last.grads.data(), o.last.grads.size(),
              [](int64_t, float) { return std::string("parameter gradient of part P"); });
        if (o.poisoned) {
          // Skipped: no update, no tallies; the BatchNorm statistics as before the batch.
          restore_buffers(o.first, o.saved_first);
          restore_buffers(o.last, o.saved_last);
          ++o.skipped;
        } else {
          obs::Span opt(obs::Activity::kOptimizer, o.id);
          optim::sgd_step(o.first, s_.sgd);
          optim::sgd_step(o.last, s_.sgd);
          o.loss_sum += o.batch_loss;
          o.correct += o.batch_correct;
          o.seen += o.batch_seen;
        }
        o.batch_active = false;
        ++o.step_in_epoch;
        ++o.steps_done;
        --o.window_left;
        if (s_.on_step) s_.on_step();
        if (!o.finished && !stopped_ && o.steps_done == s_.plan.round_steps(o.id, round_))
          mark_finished(o);
      }
      span_end(o.id, t0);
    }
    obs::note_heap();
  }

  // Ends a compute span of owner k that began at t0: when its (emulated) device finishes it.
  Clock::time_point span_end(int k, const emulate::SpanStart& t0) {
    const double dt = since(t0.wall);
    busy_ += dt;
    if (!emu_.active()) {
      owner(k).busy_s += dt;
      return t0.wall +
             std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(dt));
    }
    owner(k).busy_s +=
        emulate::span_seconds(t0) * emu_.device(emulate::owner_entity(k)).compute_factor;
    return emu_.compute(emulate::owner_entity(k), t0);
  }

  // ---- stragglers (Settings::stragglers) ----

  int64_t plan_steps_through(int k, int round) const {
    int64_t n = 0;
    for (int r = 1; r <= round; ++r) n += s_.plan.round_steps(k, r);
    return n;
  }

  void mark_finished(Owner& o) {
    o.finished = true;
    o.finished_s = since(round_start_);
    if (!s_.stragglers.coordinated()) return;
    if (rank_ == 0) {
      ++finished_known_;
      return;
    }
    fin_payload_.push_back(o.id);
    fin_reqs_.emplace_back();
    comm::audit_message("straggler-finished", 0, sizeof(int), true);
    MPSL_MPI_CHECK(MPI_Isend(&fin_payload_.back(), 1, MPI_INT, 0, kFinishedTag, ctrl_group_.get(),
                             &fin_reqs_.back()));
  }

  // Rank 0 decides when the round ends (every owner finished, or the deadline / minimum
  // fraction allows it) and tells the other owner ranks; they learn it here.
  void straggler_tick() {
    if (stopped_) return;
    if (rank_ != 0) {
      int done = 0;
      MPSL_MPI_CHECK(MPI_Test(&stop_req_, &done, MPI_STATUS_IGNORE));
      if (done) {
        comm::audit_message("straggler-stop", 0, sizeof(int), false);
        stop_owners();
      }
      return;
    }
    while (true) {
      int flag = 0;
      MPI_Status st;
      MPSL_MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, kFinishedTag, ctrl_group_.get(), &flag, &st));
      if (!flag) break;
      receive_finished(st.MPI_SOURCE);
    }
    const auto& p = s_.stragglers;
    const bool enough = finished_known_ >= p.needed(t_.owners);
    const bool cut = enough && (p.deadline_s <= 0 || since(round_start_) >= p.deadline_s);
    if (finished_known_ == t_.owners || cut) {
      stop_round_ = round_;
      for (int r = 1; r < t_.owner_ranks; ++r)
        comm::audit_message("straggler-stop", r, sizeof(int), true);
      MPSL_MPI_CHECK(MPI_Ibcast(&stop_round_, 1, MPI_INT, 0, ctrl_group_.get(), &stop_req_));
      stop_owners();
    }
  }

  void receive_finished(int source) {
    int k = 0;
    MPSL_MPI_CHECK(
        MPI_Recv(&k, 1, MPI_INT, source, kFinishedTag, ctrl_group_.get(), MPI_STATUS_IGNORE));
    comm::audit_message("straggler-finished", source, sizeof(int), false);
    ++finished_known_;
    ++fins_received_;
  }

  // The round is over: owners that have not finished are late and start no new batch (one
  // already started completes, so nothing stays in flight).
  void stop_owners() {
    stopped_ = true;
    for (auto& o : owners_)
      if (!o->finished) {
        o->late = true;
        o->window_left = o->batch_active ? 1 : 0;
      }
  }

  // After the round: completes the coordination messages (rank 0 receives every "finished"
  // sent to it; the others' sends complete).
  void finish_coordination() {
    int sent = static_cast<int>(fin_reqs_.size()), total = 0;
    MPSL_MPI_CHECK(MPI_Reduce(&sent, &total, 1, MPI_INT, MPI_SUM, 0, owner_comm_.get()));
    if (rank_ == 0) {
      while (fins_received_ < total) receive_finished(MPI_ANY_SOURCE);
    }
    for (auto& r : fin_reqs_) wait_request(r);
    fin_reqs_.clear();
    fin_payload_.clear();
    wait_request(stop_req_);
  }

  // Sends owner k's message to a stage, through its emulated link when emulating.
  void send(float* buf, int64_t floats, emulate::Entity stage, comm::MessageKind kind, int k, int m,
            Clock::time_point ready) {
    const int dest = t_.rank_of_stage(stage.index, t_.replica_of_owner(k));
    if (!emu_.active()) return mailbox_.send(buf, floats, dest, kind, k, m);
    mailbox_.send_at(emu_.transfer(emulate::owner_entity(k), stage,
                                   floats * static_cast<int64_t>(sizeof(float)), ready),
                     buf, floats, dest, kind, k, m);
  }

  // Checks values produced or received for owner o's current batch (micro-batch m).
  template <class Text>
  void check(Owner& o, int m, const float* data, int64_t n, Text text, bool received = false) {
    check_values(o.poisoned, s_.nan_skip, received, data, n, [&](int64_t i, float v) {
      if constexpr (std::is_invocable_v<Text, int64_t, float>)
        return fault_text(text(i, v), rank_, o.id, round_, o.steps_done + 1, m, -1, v);
      else
        return fault_text(text(), rank_, o.id, round_, o.steps_done + 1, m, i, v);
    });
  }

  // What this rank waits for: the output of the last stage or the gradient from the first
  // stage, for each micro-batch in flight.
  std::string awaiting() const {
    std::string s;
    int n = 0, more = 0;
    for (const auto& o : owners_) {
      if (!o->batch_active) continue;
      const int h = t_.replica_of_owner(o->id);
      const int last_stage = t_.rank_of_stage(t_.stages - 1, h);
      const int first_stage = t_.rank_of_stage(0, h);
      for (int m = o->grads_done; m < o->next_micro; ++m) {
        if (n == 4) {
          ++more;
          continue;
        }
        const bool output = m >= o->outputs_done;
        s += std::string(n++ ? "; " : "") + (output ? "the activation" : "the gradient") +
             " of owner " + std::to_string(o->id) + ", micro-batch " + std::to_string(m) +
             " (round " + std::to_string(round_) + ", step " + std::to_string(o->steps_done + 1) +
             ") from " + comm::describe_rank(output ? last_stage : first_stage);
      }
    }
    if (more) s += "; and " + std::to_string(more) + " more";
    return s.empty() ? std::string("any message") : s;
  }

  const Settings& s_;
  const Topology& t_;
  const nn::Model& model_;
  const data::Dataset& train_;
  int rank_;
  comm::Communicator world_, owner_comm_, eval_comm_;
  comm::Communicator ctrl_world_, ctrl_group_;  // straggler coordination
  comm::Mailbox mailbox_;
  int64_t micro_batch_;
  int window_;
  nn::PartProgram first_, last_;
  SlotPool first_slots_;
  std::unique_ptr<nn::PartSlot> last_slot_;
  InferencePrograms first_eval_, last_eval_;
  struct EvalBuffers {
    struct InFlight {
      std::vector<float> act;  // the first part's output, being sent
      std::vector<int32_t> labels;
      FloatSend send;
    };
    std::vector<float> images;
    std::vector<int64_t> idx;
    std::vector<float> out, logits;
    std::array<InFlight, kEvalInFlight> in_flight;
  } eval_buffers_;
  std::vector<float> logits_, dlogits_;
  std::vector<std::unique_ptr<Owner>> owners_;
  std::vector<int> preferred_;
  int round_ = 1;
  double busy_ = 0;
  emulate::RankEmulator emu_;
  // stragglers
  Clock::time_point round_start_ = Clock::now();
  bool stopped_ = false;
  int finished_known_ = 0, fins_received_ = 0;  // rank 0: owners known to have finished
  int stop_round_ = 0;
  MPI_Request stop_req_ = MPI_REQUEST_NULL;
  std::deque<int> fin_payload_;
  std::deque<MPI_Request> fin_reqs_;
  std::vector<int> late_;                                    // per owner, agreed at the round's end
  std::optional<nn::PartState> global_first_, global_last_;  // aggregate, when owners carry
  optim::PartSums fedavg_first_, fedavg_last_;  // FedAvg's sums, kept from round to round
};

// ---- compute stages -------------------------------------------------------------------------

class StageRuntime : public RankRuntime {
 public:
  StageRuntime(const Settings& s, int rank)
      : s_(s),
        t_(s.topology),
        model_(*s.model),
        rank_(rank),
        stage_(t_.stage_of_rank(rank)),
        replica_(t_.replica_of_rank(rank)),
        world_(comm::Communicator::world()),
        owner_comm_(world_.split(1, rank)),
        eval_comm_(world_.dup()),
        ctrl_world_(world_.dup()),
        ctrl_group_(owner_comm_.dup()),
        replica_group_(owner_comm_.split(stage_, replica_)),
        mailbox_(world_.get()),
        micro_batch_(s.plan.batch / s.micro_batches),
        program_(model_, t_.stage_part(stage_).first, t_.stage_part(stage_).second, micro_batch_,
                 true, true),
        slots_(program_),
        eval_(model_, t_.stage_part(stage_).first, t_.stage_part(stage_).second),
        emu_(&s.emulation) {
    const auto [b, e] = t_.stage_part(stage_);
    // A copy per owner this replica serves (--replicas: owner k goes to replica k mod H), all
    // from the same weights: the first is initialised in place and the others copied from it
    // (a separate prototype would hold one more copy while the stage builds: 1.6 GB for vgg19's
    // units 1-26, the stage's peak RSS).
    mine_ = t_.owners_of_replica(replica_);
    local_.assign(t_.owners, -1);
    copies_.reserve(mine_.size());
    for (int k : mine_) {
      local_[k] = static_cast<int>(copies_.size());
      if (copies_.empty()) {
        copies_.emplace_back(model_, b, e);
        io::initialise_part(model_, copies_.back(), s.seed, s.init_model);
      } else {
        copies_.push_back(copies_.front());
      }
    }
    for (nn::PartState& c : copies_) c.adopt_formats(program_);
    grads_done_.assign(t_.owners, 0);
    batches_done_.assign(t_.owners, 0);
    window_end_.assign(t_.owners, 0);
    poisoned_.assign(t_.owners, false);
    saved_buffers_.resize(t_.owners);
    mailbox_.set_describer([this] { return awaiting(); });
    const int64_t in_floats = micro_batch_ * program_.input_shape().per_sample();
    const int64_t out_floats = micro_batch_ * program_.output_shape().per_sample();
    const int window = s.one_f_one_b ? std::min(s.micro_batches, t_.stages + 2) : 1;
    std::vector<int> prev, next, owner_peers;
    auto mine_on = [&](int r) {  // this replica's owners on owner rank r
      int n = 0;
      for (int k : mine_) n += t_.rank_of_owner(k) == r ? 1 : 0;
      return n;
    };
    for (int r = 0; r < t_.owner_ranks; ++r)
      if (mine_on(r) > 0) owner_peers.push_back(r);
    if (stage_ == 0)
      prev = owner_peers;
    else
      prev.push_back(t_.rank_of_stage(stage_ - 1, replica_));
    if (stage_ == t_.stages - 1)
      next = owner_peers;
    else
      next.push_back(t_.rank_of_stage(stage_ + 1, replica_));
    auto depth_for = [&](int peer) {
      const int owners_behind =
          peer < t_.owner_ranks ? mine_on(peer) : static_cast<int>(mine_.size());
      return comm::receive_depth(owners_behind, window);
    };
    std::map<int, int64_t> size;
    std::map<int, int> depth;
    for (int p : prev) size[p] = std::max(size[p], in_floats), depth[p] += depth_for(p);
    for (int p : next) size[p] = std::max(size[p], out_floats), depth[p] += depth_for(p);
    for (auto [peer, floats] : size) mailbox_.listen(peer, floats, depth[peer]);
    limit_ = s.reservation.in_flight;
    // An activation beyond the limit waits in its receive buffer. With one stage the owner
    // rank sends both kinds through the same receives: they must hold every message that can
    // be on its way from it (one per micro-batch in flight), or a gradient could wait behind
    // activations this rank keeps.
    if (limit_ > 0 && t_.stages == 1)
      for (int r : owner_peers)
        if (mine_on(r) * window > depth[r]) {
          MPSL_LOG(Warn, "rank " << rank_ << ": no limit on micro-batches in flight (owner rank "
                                 << r << " can have " << mine_on(r) * window
                                 << " messages on their way, " << depth[r] << " receives posted)");
          limit_ = 0;
        }
    slots_.reserve(limit_);
    mailbox_.reserve_send_buffers(s.reservation.send_buffers, std::max(in_floats, out_floats));
    if (stage_ > 0) preferred_.push_back(t_.rank_of_stage(stage_ - 1, replica_));
    if (stage_ < t_.stages - 1) preferred_.push_back(t_.rank_of_stage(stage_ + 1, replica_));
  }

  const char* role() const override { return "stage"; }
  int max_in_flight() const override { return slots_.most_in_use(); }
  int reserved_in_flight() const override { return slots_.created(); }
  emulate::EmulationStats emulation_stats() const override { return emu_.stats(); }
  const comm::Mailbox& mailbox() const override { return mailbox_; }
  RankTimes times() const override {
    return {busy_, mailbox_.stats().wait_seconds, mailbox_.stats().comm_seconds};
  }

  void begin_round(int round, int64_t start_step) override {
    round_ = round;
    grads_done_.assign(t_.owners, 0);
    poisoned_.assign(t_.owners, false);
    for (int k : mine_) batches_done_[k] = std::min(start_step, s_.plan.round_steps(k, round));
  }

  void run_steps(int64_t, int64_t to) override {
    for (int k : mine_) window_end_[k] = std::min(to, s_.plan.round_steps(k, round_));
    // The window is over when every owner's batches up to its end are done, owner by owner.
    // Work of the next window may arrive (and is done) early: the collective between windows
    // (rank 0's MPI_Bcast of the checkpoint decision) does not synchronise, so an owner rank can
    // be ahead. That work must not count for another owner's missing batch: this rank would
    // then leave the window, and wait in the collective for a rank that waits for it.
    auto window_open = [&] {
      for (int k : mine_)
        if (batches_done_[k] < window_end_[k]) return true;
      return false;
    };
    const int64_t in_floats = micro_batch_ * program_.input_shape().per_sample();
    const int64_t out_floats = micro_batch_ * program_.output_shape().per_sample();
    // With a deadline or a minimum fraction the owners' step counts are not known in advance:
    // the round is over when every owner rank has reached the end-of-round barrier (they do so
    // once all their batches have come back, so no work is left here then).
    const bool coordinated = s_.stragglers.coordinated();
    MPI_Request barrier = MPI_REQUEST_NULL;
    if (coordinated) MPSL_MPI_CHECK(MPI_Ibarrier(ctrl_world_.get(), &barrier));
    const auto full = [&] { return limit_ > 0 && slots_.in_use() >= limit_; };
    while (coordinated || window_open()) {
      comm::Mailbox::Message msg;
      const bool from_held = !held_.empty() && !full();
      if (from_held) {
        msg = held_.front();  // in arrival order: each owner's micro-batches in sequence
        held_.pop_front();
      } else if (!coordinated) {
        msg = mailbox_.wait(preferred_);
      } else if (!mailbox_.wait_for(msg, preferred_, 0.002)) {
        int done = 0;
        MPSL_MPI_CHECK(MPI_Test(&barrier, &done, MPI_STATUS_IGNORE));
        if (done) break;
        continue;
      }
      if (!from_held && msg.env.kind == comm::MessageKind::kActivation &&
          (full() || !held_.empty())) {
        // At the limit: the activation stays in its receive buffer until a gradient frees
        // a slot (the slots in use come back: the ranks after this one hold at most their
        // own limits, and owner ranks answer every activation).
        held_.push_back(msg);
        continue;
      }
      comm::test_message_hook(rank_);
      const emulate::SpanStart t0 = emulate::span_start();
      const int k = msg.env.owner, m = msg.env.micro, source = msg.env.source;
      nn::PartState& copy = copies_[local_[k]];
      const nn::StepInfo info{s_.seed, copy.steps, m * micro_batch_, true,
                              static_cast<uint64_t>(k)};
      const std::string stage_name = "stage " + std::to_string(stage_ + 1);
      if (msg.env.kind == comm::MessageKind::kActivation) {
        if (m == 0) {  // a new batch of owner k
          poisoned_[k] = false;
          if (s_.nan_skip) save_buffers(copy, saved_buffers_[k]);
        }
        check(
            k, m, msg.data, msg.floats,
            [&] { return "activation received from " + comm::describe_rank(source); }, true);
        obs::Span span(obs::Activity::kForward, k, m);
        auto slot = slots_.acquire();
        float* buf = mailbox_.send_buffer(out_floats);
        program_.forward(*slot, copy, msg.data, buf, info);
        if (m == 0 && test_nan_due(rank_, k, round_, batches_done_[k] + 1)) buf[0] = kNaN;
        check(k, m, buf, out_floats, [&] {
          return "activation at the output of " + stage_name + " (to " +
                 comm::describe_rank(next_rank(k)) + ")";
        });
        mailbox_.release(msg);
        in_flight_[key(k, m)] = std::move(slot);
        span.end();
        send(buf, out_floats, /*forward=*/true, comm::MessageKind::kActivation, k, m, t0);
      } else {
        obs::Span span(obs::Activity::kBackward, k, m);
        auto it = in_flight_.find(key(k, m));
        MPSL_CHECK(it != in_flight_.end(), "gradient for a micro-batch that was never forwarded");
        check(
            k, m, msg.data, msg.floats,
            [&] { return "gradient received from " + comm::describe_rank(source); }, true);
        float* buf = mailbox_.send_buffer(in_floats);
        program_.backward(*it->second, copy, msg.data, buf, info, grads_done_[k] > 0);
        check(k, m, buf, in_floats, [&] {
          return "gradient at the input of " + stage_name + " (to " +
                 comm::describe_rank(prev_rank(k)) + ")";
        });
        mailbox_.release(msg);
        slots_.release(std::move(it->second));
        in_flight_.erase(it);
        span.end();
        if (++grads_done_[k] == s_.micro_batches) {
          check(k, m, copy.grads.data(), copy.grads.size(),
                [&](int64_t, float) { return "parameter gradient of " + stage_name; });
          if (poisoned_[k])
            restore_buffers(copy, saved_buffers_[k]);  // skipped: no update
          else {
            obs::Span opt(obs::Activity::kOptimizer, k);
            optim::sgd_step(copy, s_.sgd);
          }
          grads_done_[k] = 0;
          ++batches_done_[k];
        }
        // A poisoned batch stays poisoned on its way back, so every part on it skips.
        if (poisoned_[k]) buf[0] = kNaN;
        send(buf, in_floats, /*forward=*/false, comm::MessageKind::kActivationGrad, k, m, t0);
      }
      obs::note_heap();
    }
    // Activations still held belong to the next window (an owner rank can be ahead, above):
    // they stay in their receive buffers and are the first work of the next call.
    mailbox_.flush();
  }

  RoundResult finish_round() override { return {}; }

  RankState checkpoint_state() override {
    RankState st;
    for (int k : mine_) st.parts.push_back({"copies/" + std::to_string(k), k, &copies_[local_[k]]});
    return st;
  }

  void restore_tallies(const std::vector<io::OwnerRecord>&) override {}

  void aggregate() override {
    const std::vector<int> late = agree_on_late({}, t_.owners, s_.stragglers.active());
    obs::Span span(obs::Activity::kAggregation);
    const emulate::SpanStart t0 = emulate::span_start();
    for (int k : mine_)
      if (!all_finite(copies_[local_[k]].params.data(), copies_[local_[k]].params.size()))
        throw RuntimeFailure("non-finite parameters in the copy of owner " + std::to_string(k) +
                             " on " + comm::describe_rank(rank_) + " at the end of round " +
                             std::to_string(round_));
    std::vector<const nn::PartState*> all;
    std::vector<nn::PartState*> targets;
    std::vector<double> weights;
    double total = 0;
    bool any_late = false;
    for (int k = 0; k < t_.owners; ++k) {
      if (!late[k]) total += static_cast<double>(s_.plan.samples[k]);
      any_late |= late[k] != 0;
    }
    for (int k : mine_) {
      nn::PartState& c = copies_[local_[k]];
      all.push_back(&c);
      if (!late[k] || !s_.stragglers.carry) targets.push_back(&c);
      weights.push_back(late[k] ? 0.0 : static_cast<double>(s_.plan.samples[k]));
    }
    const bool carry_global = s_.stragglers.carry && any_late;
    if (carry_global) {
      if (!global_) global_.emplace(copies_.front());
    } else {
      global_.reset();
    }
    // Emulation: the averaging is a compute span of this stage's device. (Sleeps are not busy.)
    double slept = 0;
    auto sleep_until = [&slept](Clock::time_point t) {
      const auto before = Clock::now();
      emulate::RankEmulator::sleep_until(t);
      slept += since(before);
    };
    if (t_.replicas == 1) {
      // Every copy of this stage is here: averaged in place, chunk by chunk, with no sums kept.
      if (carry_global) targets.push_back(&*global_);
      optim::average_in_place(all, weights, total, targets, s_.policy);
      if (emu_.active()) sleep_until(emu_.compute(emulate::stage_entity(stage_), t0));
    } else {
      reduce_and_average(all, weights, total, targets, carry_global, t0, sleep_until);
    }
    if (!s_.stragglers.carry)
      for (int k : mine_)
        if (late[k]) {
          int64_t n = 0;
          for (int r = 1; r <= round_; ++r) n += s_.plan.round_steps(k, r);
          copies_[local_[k]].steps = n;
        }
    busy_ += since(t0.wall) - slept;
  }

  // FedAvg over the replicas of this stage: each sums its owners' copies, the replicas add up
  // their sums (an all-reduce in double), and each sets its copies to the average.
  template <typename SleepUntil>
  void reduce_and_average(const std::vector<const nn::PartState*>& all,
                          const std::vector<double>& weights, double total,
                          const std::vector<nn::PartState*>& targets, bool carry_global,
                          const emulate::SpanStart& t0, SleepUntil& sleep_until) {
    optim::PartSums& sums = fedavg_sums_;
    optim::weighted_sums_into(all, weights, s_.policy == optim::OptimizerStatePolicy::kAverage,
                              sums);
    if (emu_.active()) sleep_until(emu_.compute(emulate::stage_entity(stage_), t0));
    const auto reduce_start = Clock::now();
    int64_t bytes = 0;
    for (auto* v : {&sums.params, &sums.buffers, &sums.momentum})
      if (!v->empty()) {
        comm::audit_message("replica-weighted-sum", -1,
                            static_cast<int64_t>(v->size() * sizeof(double)), true);
        comm::allreduce_sum(v->data(), static_cast<int64_t>(v->size()), replica_group_.get());
        bytes += static_cast<int64_t>(v->size() * sizeof(double));
      }
    // Emulation: each replica is a node of its own; the reduction crosses their links.
    const double ring =
        emu_.ring_allreduce_seconds(emulate::stage_entity(stage_), bytes, t_.replicas);
    if (ring > 0) {
      emu_.account_aggregation(ring);
      sleep_until(reduce_start +
                  std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(ring)));
    }
    optim::assign_average(sums, total, targets, s_.policy);
    if (carry_global) optim::assign_average(sums, total, {&*global_}, s_.policy);
  }

  std::pair<double, double> evaluate(const data::Dataset*) override {
    obs::Span span(obs::Activity::kEval);
    int64_t count = 0;
    comm::broadcast_watched(&count, 1, MPI_INT64_T, 0, MPI_COMM_WORLD,
                            [] { return std::string("rank 0's evaluation batch count"); });
    comm::audit_message("eval-count", 0, sizeof count, false);
    if (replica_ != 0) return {0, 0};  // replica 0 evaluates: every replica holds the average
    const int prev = stage_ == 0 ? 0 : t_.rank_of_stage(stage_ - 1);
    const int next = stage_ == t_.stages - 1 ? 0 : t_.rank_of_stage(stage_ + 1);
    const int64_t in_per = program_.input_shape().per_sample();
    const int64_t out_per = program_.output_shape().per_sample();
    // Buffers kept across batches and rounds (see OwnerRuntime::evaluate). While one output is
    // on its way, the next batch is received and computed into the other.
    for (int64_t i = 0; i < eval_batches(count, s_.eval_batch); ++i) {
      recv_any_size_into(eval_in_, eval_comm_.get(), prev, kEvalTag, "eval-activation");
      const int64_t b = static_cast<int64_t>(eval_in_.size()) / in_per;
      auto& [out, send] = eval_out_[i % kEvalInFlight];
      send.finish();
      out.resize(b * out_per);
      eval_.forward(global_ ? *global_ : copies_.front(), b, eval_in_.data(), out.data());
      send.start(eval_comm_.get(), out.data(), static_cast<int64_t>(out.size()), next, kEvalTag,
                 "eval-activation");
    }
    for (auto& o : eval_out_) o.send.finish();
    return {0, 0};
  }

  std::optional<nn::PartState> gather_model() override {
    if (replica_ != 0) return std::nullopt;
    const nn::PartState& c = global_ ? *global_ : copies_.front();
    std::vector<float> v(c.params.size() + c.buffers.size());
    const nn::FloatBuffer plain = c.plain_array(c.params);  // plain layouts on the wire
    std::copy(plain.data(), plain.data() + plain.size(), v.begin());
    std::copy(c.buffers.data(), c.buffers.data() + c.buffers.size(), v.begin() + c.params.size());
    send_floats(eval_comm_.get(), v.data(), static_cast<int64_t>(v.size()), 0, kModelTag,
                "stage-part");
    return std::nullopt;
  }

 private:
  static int64_t key(int owner, int micro) { return static_cast<int64_t>(owner) * 4096 + micro; }

  // Ends the compute span begun at t0 (emulation: sleeps until the emulated device would have
  // finished it, emulate::span_seconds) and sends its result on, through the emulated link when
  // emulating.
  void send(float* buf, int64_t floats, bool forward, comm::MessageKind kind, int k, int m,
            const emulate::SpanStart& t0) {
    busy_ += since(t0.wall);
    const int dest = forward ? next_rank(k) : prev_rank(k);
    if (!emu_.active()) return mailbox_.send(buf, floats, dest, kind, k, m);
    const auto ready = emu_.compute(emulate::stage_entity(stage_), t0);
    emulate::RankEmulator::sleep_until(ready);
    const bool to_owner = forward ? stage_ == t_.stages - 1 : stage_ == 0;
    const emulate::Entity to =
        to_owner ? emulate::owner_entity(k) : emulate::stage_entity(stage_ + (forward ? 1 : -1));
    mailbox_.send_at(emu_.transfer(emulate::stage_entity(stage_), to,
                                   floats * static_cast<int64_t>(sizeof(float)), ready),
                     buf, floats, dest, kind, k, m);
  }

  template <class Text>
  void check(int k, int m, const float* data, int64_t n, Text text, bool received = false) {
    bool poisoned = poisoned_[k];
    check_values(poisoned, s_.nan_skip, received, data, n, [&](int64_t i, float v) {
      if constexpr (std::is_invocable_v<Text, int64_t, float>)
        return fault_text(text(i, v), rank_, k, round_, batches_done_[k] + 1, m, -1, v);
      else
        return fault_text(text(), rank_, k, round_, batches_done_[k] + 1, m, i, v);
    });
    poisoned_[k] = poisoned;
  }

  // What this stage waits for: gradients of the micro-batches it forwarded, and activations of
  // owners with work left in the window.
  std::string awaiting() const {
    std::vector<std::string> items;
    int more = 0;
    auto add = [&](std::string item) {
      if (items.size() < 4)
        items.push_back(std::move(item));
      else
        ++more;
    };
    for (const auto& [key, slot] : in_flight_) {
      const int k = static_cast<int>(key / 4096), m = static_cast<int>(key % 4096);
      add("the gradient of owner " + std::to_string(k) + ", micro-batch " + std::to_string(m) +
          " (round " + std::to_string(round_) + ", step " + std::to_string(batches_done_[k] + 1) +
          ") from " + comm::describe_rank(next_rank(k)));
    }
    for (int k : mine_) {
      bool busy = false;
      for (const auto& [key, slot] : in_flight_) busy |= key / 4096 == k;
      if (busy || grads_done_[k] > 0 || batches_done_[k] >= window_end_[k]) continue;
      add("an activation of owner " + std::to_string(k) + " (round " + std::to_string(round_) +
          ", step " + std::to_string(batches_done_[k] + 1) + ") from " +
          comm::describe_rank(prev_rank(k)));
    }
    std::string s;
    for (size_t i = 0; i < items.size(); ++i) s += (i ? "; " : "") + items[i];
    if (more) s += "; and " + std::to_string(more) + " more";
    return s.empty() ? std::string("any message") : s;
  }
  int next_rank(int owner) const {
    return stage_ == t_.stages - 1 ? t_.rank_of_owner(owner)
                                   : t_.rank_of_stage(stage_ + 1, replica_);
  }
  int prev_rank(int owner) const {
    return stage_ == 0 ? t_.rank_of_owner(owner) : t_.rank_of_stage(stage_ - 1, replica_);
  }

  const Settings& s_;
  const Topology& t_;
  const nn::Model& model_;
  int rank_;
  int stage_;
  int replica_;
  comm::Communicator world_, owner_comm_, eval_comm_;
  comm::Communicator ctrl_world_, ctrl_group_;  // straggler coordination
  comm::Communicator replica_group_;            // this stage's replicas (--replicas)
  comm::Mailbox mailbox_;
  int64_t micro_batch_;
  nn::PartProgram program_;
  SlotPool slots_;
  InferencePrograms eval_;
  std::vector<float> eval_in_;
  struct EvalOutput {
    std::vector<float> out;
    FloatSend send;
  };
  std::array<EvalOutput, kEvalInFlight> eval_out_;
  std::vector<nn::PartState> copies_;  // per owner of this replica (mine_), in that order
  std::vector<int> mine_, local_;      // owners served; owner -> index in copies_ (-1: none)
  std::vector<int> grads_done_;
  std::vector<int64_t> batches_done_;  // per owner, in the round
  std::vector<int64_t> window_end_;    // per owner: batches it takes until the window ends
  std::vector<bool> poisoned_;         // per owner: the current batch saw a non-finite value
  std::vector<std::vector<float>> saved_buffers_;  // BatchNorm statistics before the batch
  std::map<int64_t, std::unique_ptr<nn::PartSlot>> in_flight_;
  int limit_ = 0;                            // most micro-batches in flight (0: no limit)
  std::deque<comm::Mailbox::Message> held_;  // activations received beyond the limit (kept
                                             // from window to window)
  std::vector<int> preferred_;
  int round_ = 1;
  double busy_ = 0;
  emulate::RankEmulator emu_;
  std::optional<nn::PartState> global_;  // the aggregate, when late owners carry their copies
  optim::PartSums fedavg_sums_;          // with replicas: FedAvg's sums, kept from round to round
};

}  // namespace

std::unique_ptr<RankRuntime> make_runtime(const Settings& s, const data::Dataset* train, int rank) {
  if (s.topology.is_owner_rank(rank)) {
    MPSL_CHECK(train != nullptr, "owner ranks need the training set");
    return std::make_unique<OwnerRuntime>(s, *train, rank);
  }
  return std::make_unique<StageRuntime>(s, rank);
}

}  // namespace mpsl::pipeline
