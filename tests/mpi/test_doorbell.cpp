// Doorbells (comm/doorbell.hpp) between two real ranks on one host: `mpirun -n 2` (ctest does).
#include <gtest/gtest.h>

#include <time.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "mpsl/comm/doorbell.hpp"
#include "mpsl/comm/mailbox.hpp"
#include "mpsl/comm/mpi_environment.hpp"

namespace mpsl::comm {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

TEST(Doorbells, BothRanksOfOneHostCanBeRung) {
  ASSERT_EQ(world_size(), 2) << "run with mpirun -n 2";
  Communicator comm = Communicator::world().dup();
  Doorbells bells(comm.get());
  EXPECT_TRUE(bells.local(0));
  EXPECT_TRUE(bells.local(1));
}

// A ring ends the sleep at once: rank 1 sleeps with a 20 s timeout, rank 0 rings after 200 ms.
TEST(Doorbells, RingWakesASleeperLongBeforeItsTimeout) {
  ASSERT_EQ(world_size(), 2) << "run with mpirun -n 2";
  Communicator comm = Communicator::world().dup();
  Doorbells bells(comm.get());
  double slept = 0;
  if (world_rank() == 1) {
    const uint32_t armed = bells.arm();
    MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
    const auto t0 = Clock::now();
    const double cpu0 = cpu_seconds();
    bells.sleep(armed, 20.0);
    slept = seconds_since(t0);
    bells.disarm();
    EXPECT_EQ(bells.wakeups(), 1);
    // Asleep, not polling: a few ms of CPU at most over 200 ms.
    EXPECT_LT(cpu_seconds() - cpu0, 0.05);
  } else {
    MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    bells.ring(1);
  }
  MPSL_MPI_CHECK(MPI_Bcast(&slept, 1, MPI_DOUBLE, 1, comm.get()));
  EXPECT_GT(slept, 0.1) << "returned before the ring";
  EXPECT_LT(slept, 10.0) << "the ring did not wake the sleeper";
}

// A ring between arm() and sleep() is not lost: the sleep returns at once.
TEST(Doorbells, RingBeforeTheSleepIsNotLost) {
  ASSERT_EQ(world_size(), 2) << "run with mpirun -n 2";
  Communicator comm = Communicator::world().dup();
  Doorbells bells(comm.get());
  if (world_rank() == 1) {
    const uint32_t armed = bells.arm();
    MPSL_MPI_CHECK(MPI_Barrier(comm.get()));  // rank 0 rings
    MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
    const auto t0 = Clock::now();
    bells.sleep(armed, 20.0);
    bells.disarm();
    EXPECT_LT(seconds_since(t0), 5.0);
  } else {
    MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
    bells.ring(1);
    MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
  }
}

// Without a ring the sleep lasts its timeout.
TEST(Doorbells, SleepWithoutARingLastsTheTimeout) {
  ASSERT_EQ(world_size(), 2) << "run with mpirun -n 2";
  Communicator comm = Communicator::world().dup();
  Doorbells bells(comm.get());
  const auto t0 = Clock::now();
  bells.sleep(bells.arm(), 0.15);
  bells.disarm();
  EXPECT_GE(seconds_since(t0), 0.14);
  EXPECT_EQ(bells.wakeups(), 0);
}

// The mailbox rings the receiver's doorbell with every send, so a rank waiting in
// Mailbox::wait() wakes when the message is sent, not at the end of its doorbell sleep (here
// 20 s, MPSL_DOORBELL_TIMEOUT_US), and uses next to no CPU meanwhile.
TEST(Doorbells, MailboxWaitWakesOnTheSendNotTheTimeout) {
  ASSERT_EQ(world_size(), 2) << "run with mpirun -n 2";
  setenv("MPSL_DOORBELL_TIMEOUT_US", "20000000", 1);
  Communicator comm = Communicator::world().dup();
  Mailbox box(comm.get());
  unsetenv("MPSL_DOORBELL_TIMEOUT_US");
  constexpr int64_t kFloats = 64 * 1024;
  double waited = 0, cpu = 0;
  if (world_rank() == 0) {
    box.listen(1, kFloats, 2);
    MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
    const auto t0 = Clock::now();
    const double cpu0 = cpu_seconds();
    Mailbox::Message m = box.wait();
    waited = seconds_since(t0);
    cpu = cpu_seconds() - cpu0;
    EXPECT_EQ(m.floats, kFloats);
    EXPECT_EQ(m.data[kFloats - 1], 3.f);
    box.release(m);
    EXPECT_GE(box.doorbell_wakeups(), 1);
  } else {
    MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    float* b = box.send_buffer(kFloats);
    std::fill(b, b + kFloats, 3.f);
    box.send(b, kFloats, 0, MessageKind::kActivation, 0, 0);
    // No MPI call for a while: the ring that goes with the send must do the waking.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    box.flush();
  }
  MPSL_MPI_CHECK(MPI_Bcast(&waited, 1, MPI_DOUBLE, 0, comm.get()));
  MPSL_MPI_CHECK(MPI_Bcast(&cpu, 1, MPI_DOUBLE, 0, comm.get()));
  EXPECT_GT(waited, 0.2);
  EXPECT_LT(waited, 1.0) << "woke at the timeout or a later poll, not on the send";
  EXPECT_LT(cpu, 0.1) << "the waiting rank polled instead of sleeping";
}

// broadcast_watched: a rank that reaches a broadcast long before its root waits without taking
// a core (a blocking MPI_Bcast polls it: 0.3 s of CPU here), and gets the root's value.
TEST(Doorbells, BroadcastWaitsWithoutPollingACore) {
  ASSERT_EQ(world_size(), 2) << "run with mpirun -n 2";
  Communicator comm = Communicator::world().dup();
  int64_t value = world_rank() == 0 ? 42 : 0;
  double waited = 0, cpu = 0;
  MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
  if (world_rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto t0 = Clock::now();
  const double cpu0 = cpu_seconds();
  broadcast_watched(&value, 1, MPI_INT64_T, 0, comm.get(), [] { return std::string("a test"); });
  waited = seconds_since(t0);
  cpu = cpu_seconds() - cpu0;
  EXPECT_EQ(value, 42);
  MPSL_MPI_CHECK(MPI_Bcast(&waited, 1, MPI_DOUBLE, 1, comm.get()));
  MPSL_MPI_CHECK(MPI_Bcast(&cpu, 1, MPI_DOUBLE, 1, comm.get()));
  EXPECT_GT(waited, 0.2);
  EXPECT_LT(cpu, 0.1) << "the rank waiting for the root's broadcast polled instead of sleeping";
}

// A rank whose large send is still in transfer sleeps while it waits: its receiver rings it
// when it has copied the message (Open MPI's single copy completes the send only when the
// sender reads the receiver's note), so the sender neither polls for its send (it did, every
// 20-160 us: an owner rank took twice its CPU time on shared cores) nor misses its end.
TEST(Doorbells, ASenderWaitsAsleepUntilItsReceiverHasCopiedTheMessage) {
  ASSERT_EQ(world_size(), 2) << "run with mpirun -n 2";
  setenv("MPSL_DOORBELL_TIMEOUT_US", "20000000", 1);
  Communicator comm = Communicator::world().dup();
  Mailbox box(comm.get());
  unsetenv("MPSL_DOORBELL_TIMEOUT_US");
  constexpr int64_t kLarge = 2 * 1024 * 1024, kSmall = 16;  // 8 MiB: single copy
  box.listen(1 - world_rank(), kLarge, 2);
  double waited = 0, cpu = 0;
  int64_t wakeups = 0;
  MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
  if (world_rank() == 1) {
    float* b = box.send_buffer(kLarge);
    std::fill(b, b + kLarge, 2.f);
    box.send(b, kLarge, 0, MessageKind::kActivation, 0, 0);
    const auto t0 = Clock::now();
    const double cpu0 = cpu_seconds();
    Mailbox::Message m = box.wait();  // rank 0's answer, 1.5 s later
    waited = seconds_since(t0);
    cpu = cpu_seconds() - cpu0;
    wakeups = box.doorbell_wakeups();
    EXPECT_EQ(m.floats, kSmall);
    box.release(m);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    Mailbox::Message m = box.wait();
    EXPECT_EQ(m.floats, kLarge);
    EXPECT_EQ(m.data[kLarge - 1], 2.f);
    box.release(m);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    float* b = box.send_buffer(kSmall);
    std::fill(b, b + kSmall, 1.f);
    box.send(b, kSmall, 1, MessageKind::kActivationGrad, 0, 0);
  }
  box.flush();
  MPSL_MPI_CHECK(MPI_Bcast(&waited, 1, MPI_DOUBLE, 1, comm.get()));
  MPSL_MPI_CHECK(MPI_Bcast(&cpu, 1, MPI_DOUBLE, 1, comm.get()));
  EXPECT_GT(waited, 1.4);
  EXPECT_LT(waited, 5.0) << "the answer's ring did not wake the sender";
  if (world_rank() == 1) {
    // Woken by the receiver's copy and by the answer.
    EXPECT_GE(wakeups, 2);
  }
  EXPECT_LT(cpu, 0.02) << "the sender polled for its send instead of sleeping";
}

}  // namespace
}  // namespace mpsl::comm
