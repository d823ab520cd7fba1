// Point-to-point messaging of the pipeline: activations forward, gradients with respect to
// activations backward. Nothing else can be sent through it: there is no way to send labels or
// samples, and every message is recorded (kind, peer, bytes) in the audit log (comm/audit.hpp).
//
// Receives are posted early (several per peer) into buffers the mailbox owns; sends are
// non-blocking from pooled buffers. A rank that waits for peers on its own node sleeps on its
// doorbell (comm/doorbell.hpp) until one of them sends to it; otherwise it polls with a short,
// growing sleep instead of spinning a core, which matters when ranks outnumber cores.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mpsl/comm/audit.hpp"
#include "mpsl/comm/doorbell.hpp"
#include "mpsl/comm/mpi_environment.hpp"

namespace mpsl::comm {

// An owned or borrowed MPI communicator (MPI_Comm_free on destruction when owned).
class Communicator {
 public:
  Communicator() = default;
  Communicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {}
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  Communicator(Communicator&& o) noexcept;
  Communicator& operator=(Communicator&& o) noexcept;

  static Communicator world() { return Communicator(MPI_COMM_WORLD, false); }
  Communicator split(int color, int key) const;
  // The ranks of this communicator on this host (MPI_COMM_TYPE_SHARED), in their order here.
  Communicator split_by_host() const;
  Communicator dup() const;

  MPI_Comm get() const { return comm_; }
  int rank() const;
  int size() const;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
};

enum class MessageKind : int {
  kActivation = 0,      // forward: the output of a part, owner -> stage -> ... -> owner
  kActivationGrad = 1,  // backward: d loss / d activation, the reverse way
};
const char* kind_name(MessageKind kind);

struct Envelope {
  MessageKind kind = MessageKind::kActivation;
  int owner = 0;   // logical data owner
  int micro = 0;   // micro-batch index within the owner's batch
  int source = 0;  // sending rank
};

// Evaluation batches rank 0 keeps in flight through the stages (pipeline/multihop.cpp evaluate;
// plan/cost.cpp counts them): two, double buffering, so a rank computes one batch while the next
// hop computes the other. That is all two cores run at once; more would hold one more
// evaluation activation per batch on rank 0 (hundreds of MB for vgg19 at --eval-batch 1000).
inline constexpr int kEvalInFlight = 2;

// How many receives a rank posts for a peer that carries the traffic of `owners_behind` owners
// with up to `window` micro-batches each in flight: one per message that can be on its way, at
// most 16, plus one. The runtimes (pipeline/multihop.cpp) post this many and the cost model
// (plan/cost.cpp) counts them.
inline int receive_depth(int owners_behind, int window) {
  return std::min(owners_behind * window, 16) + 1;
}

struct MailboxStats {
  double wait_seconds = 0;  // blocked in wait() with nothing to do
  double comm_seconds = 0;  // inside MPI calls that post or test messages
  int64_t messages_sent = 0, bytes_sent = 0;
};

// How the mailbox waits between polls that find nothing: `spin_polls` polls, then sleeps of
// 20 us doubling up to `max_sleep_us` (spinning steals cores from ranks that share them), or,
// when every peer it listens to is on this node, sleeps on its doorbell for up to
// `doorbell_timeout_us` (no longer than those sleeps while a send of its own to another node is
// pending: a peer on this node rings when it has copied the message).
struct PollBackOff {
  int spin_polls = 5;
  int max_sleep_us = 200;
  bool doorbell = true;
  int doorbell_timeout_us = 1000;
  // Doorbell sleeps no longer than the polling sleeps while a send of its own is in transfer,
  // even to a peer that rings when it has copied it (as before; for comparisons).
  bool poll_sends = false;
  // MPSL_POLL_SPIN, MPSL_POLL_SLEEP_US, MPSL_DOORBELL (0: off), MPSL_DOORBELL_TIMEOUT_US and
  // MPSL_POLL_SENDS (1: on) override the defaults.
  static PollBackOff from_environment();
  // The sleep after the idle-th fruitless poll in a row (0 while spinning).
  int sleep_us(int idle) const;
  // After the idle-th fruitless poll in a row (counts `idle` up).
  void pause(int& idle) const;
};

class Mailbox {
 public:
  // Collective over `comm` (the doorbells' shared segment).
  explicit Mailbox(MPI_Comm comm);
  ~Mailbox();
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  // Posts `depth` receives from `source`, each for up to `max_floats` floats.
  void listen(int source, int64_t max_floats, int depth);

  // A buffer of at least `floats` floats to fill and pass to send(); it returns to the pool
  // once the send has completed.
  float* send_buffer(int64_t floats);
  // Grows the send pool to `count` buffers of at least `floats` floats now (written, so they
  // count in the RSS from the start; Settings::Reservation).
  void reserve_send_buffers(int count, int64_t floats);
  void send(float* buffer, int64_t floats, int dest, MessageKind kind, int owner, int micro);
  // The same, but the MPI send is posted only at `release` (emulated links, emulate/); sends
  // are posted in release order as the mailbox makes progress (wait, poll, flush).
  void send_at(std::chrono::steady_clock::time_point release, float* buffer, int64_t floats,
               int dest, MessageKind kind, int owner, int micro);

  struct Message {
    Envelope env;
    const float* data = nullptr;
    int64_t floats = 0;
    int handle = -1;  // for release()
  };
  // Waits for the next message. Among those already arrived it returns gradients first, then
  // those from `preferred_sources` (neighbouring stages), then the earliest.
  Message wait(const std::vector<int>& preferred_sources = {});
  // Waits at most `timeout_s` seconds: false when nothing arrived by then.
  bool wait_for(Message& out, const std::vector<int>& preferred_sources, double timeout_s);
  // The same without waiting: false when nothing has arrived.
  bool poll(Message& out, const std::vector<int>& preferred_sources = {});
  // Hands the buffer back; the receive is posted again.
  void release(const Message& m);
  // Waits until every send has completed.
  void flush();

  const MailboxStats& stats() const { return stats_; }
  // Times a doorbell woke this rank from a sleep (0 when it never slept on one).
  int64_t doorbell_wakeups() const { return bells_->wakeups(); }
  // Bytes held in receive buffers and in the send pool (which grows to the most sends in
  // transfer at once): what the mailbox adds to the rank's memory.
  int64_t receive_buffer_bytes() const;
  int64_t send_pool_bytes() const;
  // Says what this rank waits for and from whom, for the stall watchdog and the termination
  // report (comm/watchdog.hpp); called only when a wait has lasted a while.
  void set_describer(std::function<std::string()> describe) { describe_ = std::move(describe); }

  static int encode_tag(MessageKind kind, int owner, int micro);
  static Envelope decode_tag(int tag, int source);

 private:
  struct Recv {
    int source;
    std::vector<float> buffer;
    MPI_Request request = MPI_REQUEST_NULL;
    bool completed = false;  // MPI reported it complete
    bool ready = false;      // complete, and so is every earlier receive from the same peer
    uint64_t posted = 0;     // posting order: MPI matches a peer's messages in this order
    MPI_Status status{};
  };
  struct Send {
    std::vector<float> buffer;
    int dest = -1;
    MPI_Request request = MPI_REQUEST_NULL;
    bool busy = false;
  };
  struct Deferred {
    std::chrono::steady_clock::time_point release;
    uint64_t seq;
    Send* slot;
    int64_t floats;
    int dest, tag;
  };
  void post(int i);
  Send* send_slot(float* buffer);
  void post_send(Send* slot, int64_t floats, int dest, int tag);
  void post_due_sends();
  std::vector<Deferred> deferred_;  // sorted by (release, seq)
  uint64_t deferred_seq_ = 0;
  Message take(const std::vector<int>& preferred_sources);
  uint64_t post_counter_ = 0;
  PollBackOff back_off_ = PollBackOff::from_environment();
  bool progress();  // tests all requests; true when something completed
  // One idle step of a wait: a doorbell sleep of at most `max_s` seconds when one can be used,
  // else the back-off's pause.
  void idle_step(int& idle, double max_s);
  bool sends_pending() const;
  bool sends_pending_off_node() const;  // to a rank whose doorbell we cannot ring
  // progress()'s scratch, kept to allocate nothing per poll.
  std::vector<int> t_arrived_, t_index_, t_done_;
  std::vector<MPI_Request> t_requests_;
  std::vector<MPI_Status> t_statuses_;
  std::vector<Send*> t_sends_;

  MPI_Comm comm_;
  std::unique_ptr<Doorbells> bells_;  // rung always; slept on only when back_off_.doorbell
  bool all_sources_local_ = true;     // every peer listen() was given shares our node
  std::vector<int> t_rung_;           // progress()'s scratch: destinations rung this call
  std::vector<std::unique_ptr<Recv>> recvs_;
  std::vector<std::unique_ptr<Send>> sends_;
  std::deque<int> ready_;  // receive indices in arrival order
  MailboxStats stats_;
  std::function<std::string()> describe_;
};

// Waits for a non-blocking MPI request (e.g. MPI_Ibarrier) the way the mailbox waits: polling
// with short sleeps, under the stall watchdog (`describe` says what is awaited).
void wait_watched(MPI_Request& request, const std::function<std::string()>& describe);

// MPI_Bcast that waits as wait_watched() does. A blocking MPI_Bcast busy-polls while the root is
// still at work: at a round's end the stage ranks that finish first took cores from the ranks
// still training (4 ranks on 2 cores, fmnist-cnn: up to 30 ms of CPU per rank and round).
void broadcast_watched(void* buffer, int count, MPI_Datatype type, int root, MPI_Comm comm,
                       const std::function<std::string()>& describe);

}  // namespace mpsl::comm
