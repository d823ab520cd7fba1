/* Times an in-place MPI_Allreduce (MPI_SUM) of `doubles` doubles, the way FedAvg reduces its
 * weighted sums across ranks: over the whole buffer in one call (chunk 0), or in chunks of
 * `chunk` doubles (comm::allreduce_sum). The buffer is rewritten before every repeat, as
 * FedAvg's kept sums are every round. Prints, from rank 0, one line per repeat:
 *   <chunk> <repeat> <seconds (slowest rank)> <rank 0's peak RSS in KiB>
 * Usage: mpirun -n P allreduce_chunks DOUBLES CHUNK REPEATS */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long peak_rss_kib(void) {
  FILE* f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmHWM:", 6) == 0) kib = atol(line + 6);
  if (f) fclose(f);
  return kib;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (argc != 4) {
    if (rank == 0) fprintf(stderr, "usage: allreduce_chunks DOUBLES CHUNK REPEATS\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  const long count = atol(argv[1]), chunk = atol(argv[2]) > 0 ? atol(argv[2]) : count;
  const int repeats = atoi(argv[3]);
  double* v = malloc((size_t)count * sizeof(double));
  if (!v) MPI_Abort(MPI_COMM_WORLD, 1);
  for (int rep = 0; rep < repeats; ++rep) {
    for (long i = 0; i < count; ++i) v[i] = rank + 1e-9 * (double)(i + rep);
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    for (long o = 0; o < count; o += chunk) {
      const long n = count - o < chunk ? count - o : chunk;
      MPI_Allreduce(MPI_IN_PLACE, v + o, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    }
    double t = MPI_Wtime() - t0, slowest;
    MPI_Reduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("%ld %d %.6f %ld\n", atol(argv[2]), rep, slowest, peak_rss_kib());
  }
  free(v);
  MPI_Finalize();
  return 0;
}
