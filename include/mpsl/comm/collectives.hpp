// Collectives on large buffers: FedAvg's weighted sums (hundreds of MB of doubles for a VGG part).
#pragma once

#include <mpi.h>

#include <cstdint>

namespace mpsl::comm {

// Doubles per MPI_Allreduce call in allreduce_sum: 2 MiB.
inline constexpr int64_t kAllreduceChunkDoubles = int64_t{1} << 18;

// Sums `count` doubles over `comm` in place, in chunks of kAllreduceChunkDoubles. One call over
// the whole buffer makes Open MPI allocate temporary buffers as large as a part of it on every
// call; those are mmapped, handed back when freed and faulted in afresh the next round (0.3 GB/s
// on the development VM: 4 replicas of a vgg19 stage summing 1.1 GB took 8-9 s per round, in
// chunks 0.5-0.9 s). Chunks keep the temporaries small and reused, and counts beyond INT_MAX fine.
// Every rank gets the same sums: each chunk is one MPI_Allreduce, as before.
void allreduce_sum(double* data, int64_t count, MPI_Comm comm);

}  // namespace mpsl::comm
