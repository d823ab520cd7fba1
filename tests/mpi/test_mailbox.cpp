// Mailbox behaviour that needs real MPI ranks: run with `mpirun -n 2` (ctest does).
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "mpsl/comm/mailbox.hpp"
#include "mpsl/comm/mpi_environment.hpp"

namespace mpsl::comm {
namespace {

// Gradients first must hold for a gradient that arrived while the rank was busy (no MPI calls),
// when an activation had already completed before: the pipeline's last stage otherwise runs
// forwards ahead of the schedule and holds more batches than it keeps (memory, cache).
// MPI_Testsome drives Open MPI's progress engine only when none of its requests has completed,
// so a mailbox that only tests would report the activation alone and return it first.
TEST(Mailbox, GradientThatArrivedWhileBusyIsTakenBeforeAnEarlierActivation) {
  ASSERT_EQ(world_size(), 2) << "run with mpirun -n 2";
  const int rank = world_rank();
  Communicator comm = Communicator::world().dup();
  Mailbox box(comm.get());
  constexpr int64_t kActivationFloats = 256 * 1024, kGradFloats = 16 * 1024;
  if (rank == 0) box.listen(1, kActivationFloats, 4);
  using Clock = std::chrono::steady_clock;  // one clock for both ranks (same host)
  auto us = [](Clock::time_point t) {
    return static_cast<double>(
        std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count());
  };
  // A trial counts only if the gradient was sent well before rank 0 looked (on a loaded host
  // rank 1 may be descheduled past rank 0's busy time); up to 5 trials.
  bool conclusive = false;
  for (int trial = 0; trial < 5 && !conclusive; ++trial) {
    double times[2] = {0, 0};  // rank 0: when it called wait; rank 1: when it sent the gradient
    MessageKind first_kind = MessageKind::kActivation, second_kind = MessageKind::kActivation;
    int64_t first_floats = 0;
    if (rank == 0) {
      // The activation completes while this rank is inside MPI (the barriers), unseen by the box.
      MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
      MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
      // Busy (no MPI calls) while the gradient arrives.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      times[0] = us(Clock::now());
      Mailbox::Message first = box.wait();
      first_kind = first.env.kind;
      first_floats = first.floats;
      box.release(first);
      Mailbox::Message second = box.wait();
      second_kind = second.env.kind;
      box.release(second);
    } else {
      float* a = box.send_buffer(kActivationFloats);
      std::fill(a, a + kActivationFloats, 1.f);
      box.send(a, kActivationFloats, 0, MessageKind::kActivation, 0, 0);
      box.flush();  // received: rank 0's progress (inside its barrier) completed it
      MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
      MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      float* g = box.send_buffer(kGradFloats);
      std::fill(g, g + kGradFloats, 2.f);
      times[1] = us(Clock::now());
      box.send(g, kGradFloats, 0, MessageKind::kActivationGrad, 0, 0);
      box.flush();
    }
    double both[2] = {0, 0};
    MPSL_MPI_CHECK(MPI_Allreduce(times, both, 2, MPI_DOUBLE, MPI_MAX, comm.get()));
    conclusive = both[1] + 50e3 < both[0];
    if (conclusive && rank == 0) {
      EXPECT_EQ(first_kind, MessageKind::kActivationGrad) << "trial " << trial;
      EXPECT_EQ(first_floats, kGradFloats);
      EXPECT_EQ(second_kind, MessageKind::kActivation);
    }
  }
  EXPECT_TRUE(conclusive) << "rank 1 never sent its gradient while rank 0 was busy";
}

// --max-in-flight auto creates the predicted send buffers up front: the pool then holds them
// (zero-filled, so resident) and sends up to that many at once take no new buffer.
TEST(Mailbox, ReservedSendBuffersServeTheSendsWithoutGrowingThePool) {
  ASSERT_EQ(world_size(), 2) << "run with mpirun -n 2";
  Communicator comm = Communicator::world().dup();
  Mailbox box(comm.get());
  constexpr int64_t kFloats = 1000;
  constexpr int64_t kBytes = kFloats * static_cast<int64_t>(sizeof(float));
  if (world_rank() == 0) {
    box.listen(1, kFloats, 3);
    for (int i = 0; i < 3; ++i) {
      Mailbox::Message m = box.wait();
      EXPECT_EQ(m.env.micro, i);
      EXPECT_EQ(m.floats, kFloats - i);
      EXPECT_EQ(m.data[0], static_cast<float>(i));
      box.release(m);
    }
  } else {
    EXPECT_EQ(box.send_pool_bytes(), 0);
    box.reserve_send_buffers(3, kFloats);
    EXPECT_EQ(box.send_pool_bytes(), 3 * kBytes);
    box.reserve_send_buffers(2, kFloats);  // already there
    EXPECT_EQ(box.send_pool_bytes(), 3 * kBytes);
    box.reserve_send_buffers(1, 2 * kFloats);  // none that large yet
    EXPECT_EQ(box.send_pool_bytes(), 5 * kBytes);
    // Three sends in transfer at once (none completes before the receiver waits).
    for (int i = 0; i < 3; ++i) {
      float* b = box.send_buffer(kFloats - i);
      b[0] = static_cast<float>(i);
      box.send(b, kFloats - i, 0, MessageKind::kActivation, 0, i);
    }
    box.flush();
    EXPECT_EQ(box.send_pool_bytes(), 5 * kBytes);
  }
  MPSL_MPI_CHECK(MPI_Barrier(comm.get()));
}

}  // namespace
}  // namespace mpsl::comm

int main(int argc, char** argv) {
  mpsl::comm::MpiEnvironment mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  // Only rank 0 prints the report; every rank runs the tests.
  if (mpi.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any;
}
