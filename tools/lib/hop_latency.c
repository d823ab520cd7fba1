// One-way time of a message between two MPI ranks when the receiver waits as mpsl's mailbox
// does (MPI_Iprobe and MPI_Test, then sleeps of 20 us doubling up to 200 us), while the other
// ranks of the job (if any) compute. What a hop costs on a host with more ranks than cores.
//
//   mpirun -n P hop_latency BYTES [REPEATS]   (rank 1 prints median, mean, p10, p90 in ms)
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void compute_for(double seconds) {
  const double t0 = now_s();
  volatile double x = 0;
  while (now_s() - t0 < seconds) x += 1;
}

static int by_value(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc < 2 || atol(argv[1]) < 4 || size < 2) {
    if (rank == 0) fprintf(stderr, "usage: mpirun -n P (>= 2) hop_latency BYTES [REPEATS]\n");
    MPI_Finalize();
    return 2;
  }
  const long bytes = atol(argv[1]);
  const int repeats = argc > 2 ? atoi(argv[2]) : 60;
  float* buffer = malloc((size_t)bytes);
  double* hop_ms = malloc(sizeof(double) * (size_t)repeats);
  memset(buffer, 1, (size_t)bytes);
  MPI_Comm pair;  // ranks 0 and 1; the others only compute
  MPI_Comm_split(MPI_COMM_WORLD, rank < 2 ? 0 : 1, rank, &pair);
  if (rank >= 2) {
    int stop = 0, done = 0;
    MPI_Request r;
    MPI_Irecv(&stop, 1, MPI_INT, 0, 9, MPI_COMM_WORLD, &r);
    while (!done) {
      compute_for(0.002);
      MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    }
  } else {
    for (int i = 0; i < repeats; ++i) {
      MPI_Barrier(pair);
      if (rank == 0) {  // computes, sends its "activation", computes on
        compute_for(0.003);
        const double sent = now_s();
        MPI_Send(&sent, 1, MPI_DOUBLE, 1, 1, MPI_COMM_WORLD);
        MPI_Request r;
        MPI_Isend(buffer, (int)(bytes / 4), MPI_FLOAT, 1, 0, MPI_COMM_WORLD, &r);
        int done = 0;
        while (!done) {
          compute_for(0.001);
          MPI_Test(&r, &done, MPI_STATUS_IGNORE);
        }
      } else {  // waits like comm::Mailbox::wait
        double sent = 0;
        MPI_Recv(&sent, 1, MPI_DOUBLE, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Request r;
        MPI_Irecv(buffer, (int)(bytes / 4), MPI_FLOAT, 0, 0, MPI_COMM_WORLD, &r);
        int done = 0, idle = 0;
        for (;;) {
          int flag = 0;
          MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE);
          MPI_Test(&r, &done, MPI_STATUS_IGNORE);
          if (done) break;
          if (++idle > 5) {
            const int step = (idle - 5) / 20 < 3 ? (idle - 5) / 20 : 3;
            const int us = (20 << step) > 200 ? 200 : (20 << step);
            const struct timespec ts = {0, us * 1000L};
            nanosleep(&ts, NULL);
          }
        }
        hop_ms[i] = (now_s() - sent) * 1e3;
      }
    }
  }
  if (rank == 1) {
    qsort(hop_ms, (size_t)repeats, sizeof(double), by_value);
    double sum = 0;
    for (int i = 0; i < repeats; ++i) sum += hop_ms[i];
    printf("%d %ld %.3f %.3f %.3f %.3f\n", size, bytes, hop_ms[repeats / 2], sum / repeats,
           hop_ms[repeats / 10], hop_ms[repeats * 9 / 10]);
  }
  if (rank == 0)
    for (int k = 2; k < size; ++k) {
      int stop = 1;
      MPI_Send(&stop, 1, MPI_INT, k, 9, MPI_COMM_WORLD);
    }
  MPI_Comm_free(&pair);
  free(buffer);
  free(hop_ms);
  MPI_Finalize();
  return 0;
}
