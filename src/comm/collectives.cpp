#include "mpsl/comm/collectives.hpp"

#include <algorithm>

#include "mpsl/comm/mpi_environment.hpp"

namespace mpsl::comm {

void allreduce_sum(double* data, int64_t count, MPI_Comm comm) {
  for (int64_t offset = 0; offset < count; offset += kAllreduceChunkDoubles) {
    const int n = static_cast<int>(std::min(kAllreduceChunkDoubles, count - offset));
    MPSL_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + offset, n, MPI_DOUBLE, MPI_SUM, comm));
  }
}

}  // namespace mpsl::comm
