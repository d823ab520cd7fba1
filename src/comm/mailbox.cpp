#include "mpsl/comm/mailbox.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <tuple>

#include "mpsl/comm/watchdog.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/obs/log.hpp"
#include "mpsl/obs/trace.hpp"

namespace mpsl::comm {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
constexpr int kMaxMicro = 1024;
}  // namespace

// ---- Communicator ---------------------------------------------------------------------------

Communicator::~Communicator() {
  if (owned_ && comm_ != MPI_COMM_NULL && !MpiEnvironment::finalized()) MPI_Comm_free(&comm_);
}
Communicator::Communicator(Communicator&& o) noexcept : comm_(o.comm_), owned_(o.owned_) {
  o.comm_ = MPI_COMM_NULL;
  o.owned_ = false;
}
Communicator& Communicator::operator=(Communicator&& o) noexcept {
  if (this != &o) {
    if (owned_ && comm_ != MPI_COMM_NULL && !MpiEnvironment::finalized()) MPI_Comm_free(&comm_);
    comm_ = o.comm_;
    owned_ = o.owned_;
    o.comm_ = MPI_COMM_NULL;
    o.owned_ = false;
  }
  return *this;
}
Communicator Communicator::split(int color, int key) const {
  MPI_Comm out;
  MPSL_MPI_CHECK(MPI_Comm_split(comm_, color, key, &out));
  return Communicator(out, true);
}
Communicator Communicator::split_by_host() const {
  MPI_Comm out;
  MPSL_MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &out));
  return Communicator(out, true);
}
Communicator Communicator::dup() const {
  MPI_Comm out;
  MPSL_MPI_CHECK(MPI_Comm_dup(comm_, &out));
  return Communicator(out, true);
}
int Communicator::rank() const {
  int r = 0;
  MPSL_MPI_CHECK(MPI_Comm_rank(comm_, &r));
  return r;
}
int Communicator::size() const {
  int s = 0;
  MPSL_MPI_CHECK(MPI_Comm_size(comm_, &s));
  return s;
}

// ---- Mailbox --------------------------------------------------------------------------------

const char* kind_name(MessageKind kind) {
  switch (kind) {
    case MessageKind::kActivation:
      return "activation";
    case MessageKind::kActivationGrad:
      return "activation-gradient";
  }
  return "?";
}

int Mailbox::encode_tag(MessageKind kind, int owner, int micro) {
  MPSL_CHECK(micro >= 0 && micro < kMaxMicro, "micro-batch index out of range");
  return ((owner * kMaxMicro + micro) << 1) | static_cast<int>(kind);
}

Envelope Mailbox::decode_tag(int tag, int source) {
  Envelope e;
  e.kind = static_cast<MessageKind>(tag & 1);
  e.micro = (tag >> 1) % kMaxMicro;
  e.owner = (tag >> 1) / kMaxMicro;
  e.source = source;
  return e;
}

PollBackOff PollBackOff::from_environment() {
  PollBackOff b;
  if (const char* v = std::getenv("MPSL_POLL_SLEEP_US")) b.max_sleep_us = std::max(0, std::atoi(v));
  if (const char* v = std::getenv("MPSL_POLL_SPIN")) b.spin_polls = std::max(0, std::atoi(v));
  if (const char* v = std::getenv("MPSL_DOORBELL")) b.doorbell = std::atoi(v) != 0;
  if (const char* v = std::getenv("MPSL_DOORBELL_TIMEOUT_US"))
    b.doorbell_timeout_us = std::max(1, std::atoi(v));
  if (const char* v = std::getenv("MPSL_POLL_SENDS")) b.poll_sends = std::atoi(v) != 0;
  return b;
}

int PollBackOff::sleep_us(int idle) const {
  if (idle <= spin_polls) return 0;
  return std::min(max_sleep_us, 20 << std::min(3, (idle - spin_polls) / 20));
}

void PollBackOff::pause(int& idle) const {
  if (const int us = sleep_us(++idle); us > 0)
    std::this_thread::sleep_for(std::chrono::microseconds(us));
}

Mailbox::Mailbox(MPI_Comm comm) : comm_(comm), bells_(std::make_unique<Doorbells>(comm)) {
  if (!bells_->available()) {
    if (back_off_.doorbell)
      obs::log_warn("no doorbells for waiting ranks (shared memory: " + bells_->problem() +
                    "): they poll instead");
    back_off_.doorbell = false;
  }
}

Mailbox::~Mailbox() {
  if (MpiEnvironment::finalized()) return;
  for (auto& r : recvs_) {
    if (r->request != MPI_REQUEST_NULL) {
      MPI_Cancel(&r->request);
      MPI_Wait(&r->request, MPI_STATUS_IGNORE);
    }
  }
  for (auto& s : sends_)
    if (s->request != MPI_REQUEST_NULL) MPI_Wait(&s->request, MPI_STATUS_IGNORE);
}

void Mailbox::listen(int source, int64_t max_floats, int depth) {
  all_sources_local_ = all_sources_local_ && bells_->local(source);
  for (int d = 0; d < depth; ++d) {
    auto r = std::make_unique<Recv>();
    r->source = source;
    r->buffer.resize(static_cast<size_t>(max_floats));
    recvs_.push_back(std::move(r));
    post(static_cast<int>(recvs_.size()) - 1);
  }
}

void Mailbox::post(int i) {
  Recv& r = *recvs_[i];
  r.ready = false;
  r.completed = false;
  r.posted = post_counter_++;
  const auto t = Clock::now();
  MPSL_MPI_CHECK(MPI_Irecv(r.buffer.data(), static_cast<int>(r.buffer.size()), MPI_FLOAT, r.source,
                           MPI_ANY_TAG, comm_, &r.request));
  stats_.comm_seconds += since(t);
}

int64_t Mailbox::receive_buffer_bytes() const {
  int64_t n = 0;
  for (const auto& r : recvs_) n += static_cast<int64_t>(r->buffer.size() * sizeof(float));
  return n;
}

int64_t Mailbox::send_pool_bytes() const {
  int64_t n = 0;
  for (const auto& s : sends_) n += static_cast<int64_t>(s->buffer.size() * sizeof(float));
  return n;
}

void Mailbox::reserve_send_buffers(int count, int64_t floats) {
  int have = 0;
  for (const auto& s : sends_) have += static_cast<int64_t>(s->buffer.size()) >= floats ? 1 : 0;
  for (; have < count; ++have) {
    auto s = std::make_unique<Send>();
    s->buffer.resize(static_cast<size_t>(floats));  // zero-filled: its pages are written
    sends_.push_back(std::move(s));
  }
}

float* Mailbox::send_buffer(int64_t floats) {
  for (auto& s : sends_) {
    if (!s->busy && static_cast<int64_t>(s->buffer.size()) >= floats) {
      s->busy = true;
      return s->buffer.data();
    }
  }
  // Complete finished sends before growing the pool.
  progress();
  for (auto& s : sends_) {
    if (!s->busy && static_cast<int64_t>(s->buffer.size()) >= floats) {
      s->busy = true;
      return s->buffer.data();
    }
  }
  auto s = std::make_unique<Send>();
  s->buffer.resize(static_cast<size_t>(floats));
  s->busy = true;
  sends_.push_back(std::move(s));
  return sends_.back()->buffer.data();
}

Mailbox::Send* Mailbox::send_slot(float* buffer) {
  Send* slot = nullptr;
  for (auto& s : sends_)
    if (s->buffer.data() == buffer) slot = s.get();
  MPSL_CHECK(slot && slot->busy && slot->request == MPI_REQUEST_NULL,
             "send() needs a buffer from send_buffer()");
  return slot;
}

void Mailbox::post_send(Send* slot, int64_t floats, int dest, int tag) {
  const Envelope env = decode_tag(tag, dest);
  obs::Span span(obs::Activity::kSend, env.owner, env.micro, dest,
                 floats * static_cast<int64_t>(sizeof(float)));
  const auto t = Clock::now();
  MPSL_MPI_CHECK(MPI_Isend(slot->buffer.data(), static_cast<int>(floats), MPI_FLOAT, dest, tag,
                           comm_, &slot->request));
  slot->dest = dest;
  bells_->ring(dest);
  stats_.comm_seconds += since(t);
}

void Mailbox::send(float* buffer, int64_t floats, int dest, MessageKind kind, int owner,
                   int micro) {
  Send* slot = send_slot(buffer);
  post_send(slot, floats, dest, encode_tag(kind, owner, micro));
  audit_message(kind_name(kind), dest, floats * static_cast<int64_t>(sizeof(float)), true);
  ++stats_.messages_sent;
  stats_.bytes_sent += floats * static_cast<int64_t>(sizeof(float));
}

void Mailbox::send_at(Clock::time_point release, float* buffer, int64_t floats, int dest,
                      MessageKind kind, int owner, int micro) {
  if (release <= Clock::now() && deferred_.empty()) {
    send(buffer, floats, dest, kind, owner, micro);
    return;
  }
  Send* slot = send_slot(buffer);
  const Deferred d{release, deferred_seq_++, slot, floats, dest, encode_tag(kind, owner, micro)};
  deferred_.insert(std::upper_bound(deferred_.begin(), deferred_.end(), d,
                                    [](const Deferred& a, const Deferred& b) {
                                      return std::tie(a.release, a.seq) <
                                             std::tie(b.release, b.seq);
                                    }),
                   d);
  audit_message(kind_name(kind), dest, floats * static_cast<int64_t>(sizeof(float)), true);
  ++stats_.messages_sent;
  stats_.bytes_sent += floats * static_cast<int64_t>(sizeof(float));
}

void Mailbox::post_due_sends() {
  if (deferred_.empty()) return;
  const auto now = Clock::now();
  size_t n = 0;
  while (n < deferred_.size() && deferred_[n].release <= now) {
    const Deferred& d = deferred_[n];
    post_send(d.slot, d.floats, d.dest, d.tag);
    ++n;
  }
  deferred_.erase(deferred_.begin(), deferred_.begin() + static_cast<std::ptrdiff_t>(n));
}

bool Mailbox::progress() {
  post_due_sends();
  const auto t = Clock::now();
  bool any = false;
  // One MPI_Testsome per kind rather than an MPI_Test per request: every MPI call drives
  // Open MPI's progress engine, which on an oversubscribed host (more ranks than cores) yields
  // the core whenever it finds nothing to do, so testing 40 requests one by one gave the core
  // away up to 40 times per poll (4 ranks on 2 cores, 1F1B: the owner rank's time in MPI fell
  // from 0.24 to 0.21 s per round, stage 1's from 0.11 to 0.08 s).
  std::vector<int>& arrived = t_arrived_;
  arrived.clear();
  const bool tracing = obs::Tracer::on();
  const double trace_us = tracing ? obs::Tracer::instance().now_us() : 0;
  const double trace_cpu_us = tracing ? obs::Tracer::process_cpu_us() : 0;
  // Drive the progress engine first. A message is matched to its receive only when this rank
  // drives the engine, and MPI_Testsome drives it only when none of its requests has completed
  // yet: with an activation already complete (it arrived while this rank computed), a gradient
  // sent meanwhile stayed unmatched, the rank took the activation, and the gradient only after
  // that forward. Stages then ran forwards ahead of the schedule (a last stage held 4-5
  // batches where the schedule keeps 2), which cost memory. MPI_Iprobe finds nothing (every
  // source has receives posted) and drives the engine once.
  {
    int flag = 0;
    MPSL_MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, MPI_STATUS_IGNORE));
  }
  {
    std::vector<int>& index = t_index_;
    index.clear();
    for (size_t i = 0; i < recvs_.size(); ++i)
      if (!recvs_[i]->completed && recvs_[i]->request != MPI_REQUEST_NULL)
        index.push_back(static_cast<int>(i));
    if (!index.empty()) {
      std::vector<MPI_Request>& requests = t_requests_;
      requests.resize(index.size());
      for (size_t j = 0; j < index.size(); ++j) requests[j] = recvs_[index[j]]->request;
      std::vector<int>& done = t_done_;
      done.resize(index.size());
      std::vector<MPI_Status>& statuses = t_statuses_;
      statuses.resize(index.size());
      int count = 0;
      MPSL_MPI_CHECK(MPI_Testsome(static_cast<int>(requests.size()), requests.data(), &count,
                                  done.data(), statuses.data()));
      for (int c = 0; c < (count == MPI_UNDEFINED ? 0 : count); ++c) {
        Recv& r = *recvs_[index[done[c]]];
        r.request = MPI_REQUEST_NULL;
        r.status = statuses[c];
        r.completed = true;
        arrived.push_back(index[done[c]]);
        // A large message's send completes when its sender reads our completion note (Open
        // MPI's single copy: we copied it out of the sender's memory): wake the sender, which
        // sleeps on its doorbell meanwhile (idle_step).
        bells_->ring(r.status.MPI_SOURCE);
      }
    }
  }
  // Open MPI's single copy of what arrived was made inside these calls, on this rank's CPU:
  // traced as a "copy in" span, as the cost model's simulated trace has one.
  if (tracing && !arrived.empty()) {
    int64_t bytes = 0;
    for (int i : arrived) {
      int count = 0;
      MPSL_MPI_CHECK(MPI_Get_count(&recvs_[i]->status, MPI_FLOAT, &count));
      bytes += count * static_cast<int64_t>(sizeof(float));
    }
    obs::Tracer::instance().record(obs::Activity::kCopyIn, trace_us,
                                   obs::Tracer::instance().now_us(), -1, -1,
                                   recvs_[arrived.front()]->status.MPI_SOURCE, bytes,
                                   obs::Tracer::process_cpu_us() - trace_cpu_us);
  }
  // MPI matches a peer's messages to its receives in posting order, but may report them
  // complete in another: a large message can still be in transfer when the next one, matched
  // to a later receive, is seen complete. A receive is ready only once every earlier-posted
  // receive from the same peer is, so each owner's micro-batches are handled in sequence (and
  // their gradients summed in the same order in every run).
  if (!arrived.empty()) {
    std::vector<int> order;
    for (size_t i = 0; i < recvs_.size(); ++i)
      if (recvs_[i]->completed && !recvs_[i]->ready) order.push_back(static_cast<int>(i));
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return recvs_[a]->posted < recvs_[b]->posted; });
    for (int i : order) {
      Recv& r = *recvs_[i];
      bool earlier_pending = false;
      for (const auto& o : recvs_)
        if (o->source == r.source && !o->completed && o->request != MPI_REQUEST_NULL &&
            o->posted < r.posted)
          earlier_pending = true;
      if (earlier_pending) continue;
      r.ready = true;
      ready_.push_back(i);
      any = true;
    }
  }
  {
    std::vector<Send*>& pending = t_sends_;
    pending.clear();
    for (auto& s : sends_)
      if (s->request != MPI_REQUEST_NULL) pending.push_back(s.get());
    if (!pending.empty()) {
      std::vector<MPI_Request>& requests = t_requests_;
      requests.resize(pending.size());
      for (size_t j = 0; j < pending.size(); ++j) requests[j] = pending[j]->request;
      std::vector<int>& done = t_done_;
      done.resize(pending.size());
      int count = 0;
      MPSL_MPI_CHECK(MPI_Testsome(static_cast<int>(requests.size()), requests.data(), &count,
                                  done.data(), MPI_STATUSES_IGNORE));
      for (int c = 0; c < (count == MPI_UNDEFINED ? 0 : count); ++c) {
        Send& s = *pending[done[c]];
        s.request = MPI_REQUEST_NULL;
        s.busy = false;
        any = true;
      }
      // This call may have moved a pending send on (a message MPI held back in this rank, the
      // next fragments of a long one) and its receiver has to poll to see it: ring again, once
      // per destination.
      std::vector<int>& rung = t_rung_;
      rung.clear();
      for (Send* s : pending)
        if (std::find(rung.begin(), rung.end(), s->dest) == rung.end()) {
          rung.push_back(s->dest);
          bells_->ring(s->dest);
        }
    }
  }
  stats_.comm_seconds += since(t);
  return any;
}

Mailbox::Message Mailbox::wait(const std::vector<int>& preferred_sources) {
  const auto t0 = Clock::now();
  const double comm_before = stats_.comm_seconds;
  progress();
  if (!ready_.empty()) return take(preferred_sources);
  obs::Span span(obs::Activity::kWait);
  StallClock stall([this] { return describe_ ? describe_() : std::string("any message"); });
  int idle = 0;
  while (true) {
    progress();
    if (!ready_.empty()) break;
    stall.check();
    idle_step(idle, back_off_.doorbell_timeout_us * 1e-6);
  }
  // Time inside MPI calls counts as communication, the rest of the wait as waiting.
  stats_.wait_seconds += since(t0) - (stats_.comm_seconds - comm_before);
  span.end();
  return take(preferred_sources);
}

bool Mailbox::wait_for(Message& out, const std::vector<int>& preferred_sources, double timeout_s) {
  const auto t0 = Clock::now();
  const double comm_before = stats_.comm_seconds;
  int idle = 0;
  bool got = false;
  while (true) {
    progress();
    if (!ready_.empty()) {
      got = true;
      break;
    }
    const double left = timeout_s - since(t0);
    if (left <= 0) break;
    idle_step(idle, std::min(left, back_off_.doorbell_timeout_us * 1e-6));
  }
  stats_.wait_seconds += since(t0) - (stats_.comm_seconds - comm_before);
  if (got) out = take(preferred_sources);
  return got;
}

bool Mailbox::sends_pending() const {
  for (const auto& s : sends_)
    if (s->request != MPI_REQUEST_NULL) return true;
  return false;
}

bool Mailbox::sends_pending_off_node() const {
  for (const auto& s : sends_)
    if (s->request != MPI_REQUEST_NULL && !bells_->local(s->dest)) return true;
  return false;
}

void Mailbox::idle_step(int& idle, double max_s) {
  // The doorbell only when every ring can reach us (peers on this node).
  if (!back_off_.doorbell || !all_sources_local_ || idle < back_off_.spin_polls) {
    back_off_.pause(idle);
    return;
  }
  ++idle;
  // A send of ours in progress moves on only while we call MPI. With shared-memory single copy
  // it just awaits the receiver's completion note, and the receiver rings us when it has
  // copied the message (progress()), so we sleep. Polling for it every 20-160 us instead cost
  // a sender 0.06 s of CPU over a 1.5 s wait, taken from the ranks sharing its cores (asleep:
  // 0.001 s; test_doorbell.cpp). A send to a rank without a doorbell here (another node) is
  // polled for as before.
  if (back_off_.poll_sends ? sends_pending() : sends_pending_off_node())
    max_s = std::min(max_s, back_off_.sleep_us(idle) * 1e-6);
  if (!deferred_.empty())  // an emulated send is due then: be up to post it
    max_s = std::min(
        max_s, std::chrono::duration<double>(deferred_.front().release - Clock::now()).count());
  const uint32_t armed = bells_->arm();
  progress();  // what arrived between the last poll and arm() rang before we listened
  if (ready_.empty()) bells_->sleep(armed, max_s);
  bells_->disarm();
}

bool Mailbox::poll(Message& out, const std::vector<int>& preferred_sources) {
  progress();
  if (ready_.empty()) return false;
  out = take(preferred_sources);
  return true;
}

Mailbox::Message Mailbox::take(const std::vector<int>& preferred_sources) {
  // Choose: gradients first, then preferred sources, then arrival order.
  auto rank_of = [&](int i) {
    const Recv& r = *recvs_[i];
    const Envelope e = decode_tag(r.status.MPI_TAG, r.status.MPI_SOURCE);
    int score = 0;
    if (e.kind == MessageKind::kActivationGrad) score -= 2;
    for (int p : preferred_sources)
      if (p == e.source) score -= 1;
    return score;
  };
  auto best = ready_.begin();
  for (auto it = ready_.begin(); it != ready_.end(); ++it)
    if (rank_of(*it) < rank_of(*best)) best = it;
  const int i = *best;
  ready_.erase(best);
  Recv& r = *recvs_[i];
  const double t_us = obs::Tracer::on() ? obs::Tracer::instance().now_us() : 0;
  int count = 0;
  MPSL_MPI_CHECK(MPI_Get_count(&r.status, MPI_FLOAT, &count));
  Message m;
  m.env = decode_tag(r.status.MPI_TAG, r.status.MPI_SOURCE);
  if (obs::Tracer::on())
    obs::Tracer::instance().record(obs::Activity::kReceive, t_us, obs::Tracer::instance().now_us(),
                                   m.env.owner, m.env.micro, m.env.source,
                                   count * static_cast<int64_t>(sizeof(float)));
  m.data = r.buffer.data();
  m.floats = count;
  m.handle = i;
  audit_message(kind_name(m.env.kind), m.env.source, count * static_cast<int64_t>(sizeof(float)),
                false);
  return m;
}

void Mailbox::release(const Message& m) {
  post(m.handle);
}

void Mailbox::flush() {
  const auto t0 = Clock::now();
  const double comm_before = stats_.comm_seconds;
  progress();
  if (deferred_.empty() && !sends_pending()) return;  // deferred: emulated sends not yet posted
  obs::Span span(obs::Activity::kWait);
  StallClock stall([this] {
    std::string to;
    for (auto& s : sends_)
      if (s->request != MPI_REQUEST_NULL) to += (to.empty() ? "" : ", ") + describe_rank(s->dest);
    return "its sends to complete (received by " + to + ")";
  });
  int idle = 0;
  while (!deferred_.empty() || sends_pending()) {
    stall.check();
    if (!progress() && ++idle > 50) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  stats_.wait_seconds += since(t0) - (stats_.comm_seconds - comm_before);
}

void wait_watched(MPI_Request& request, const std::function<std::string()>& describe) {
  StallClock stall(describe);
  int done = 0, idle = 0;
  while (true) {
    MPSL_MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) return;
    stall.check();
    if (++idle > 50) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

void broadcast_watched(void* buffer, int count, MPI_Datatype type, int root, MPI_Comm comm,
                       const std::function<std::string()>& describe) {
  MPI_Request request = MPI_REQUEST_NULL;
  MPSL_MPI_CHECK(MPI_Ibcast(buffer, count, type, root, comm, &request));
  wait_watched(request, describe);
}

}  // namespace mpsl::comm
