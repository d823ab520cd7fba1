#!/usr/bin/env bash
# FedAvg's reduction of large weighted sums across ranks (the replicas of a stage, or the owner
# ranks): one in-place MPI_Allreduce over the whole buffer against comm::allreduce_sum's chunks
# of 2 MiB (tools/lib/allreduce_chunks.c), side by side in one run. Default: 139 M doubles
# (1.1 GB, a vgg19 stage of units 1-26) on 4 ranks, as 4 one-stage replicas sum them. The first
# call over a buffer is reported apart (Open MPI's single-copy path is slow the first time);
# the table gives the median of the later ones and rank 0's peak RSS.
#
#   tools/bench_allreduce.sh [--reps N] [--ranks P] [--doubles D] [--chunk C]
set -euo pipefail
source "$(dirname "$0")/lib/bench_common.sh"
REPS=4 RANKS=4 DOUBLES=139000000 CHUNK=262144
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --ranks) RANKS=$2; shift 2 ;;
    --doubles) DOUBLES=$2; shift 2 ;;
    --chunk) CHUNK=$2; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "bench_allreduce.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for x in REPS RANKS DOUBLES CHUNK; do
  [[ "${!x}" =~ ^[1-9][0-9]*$ ]] || { echo "bench_allreduce.sh: --${x,,} must be a positive integer, got '${!x}'" >&2; exit 2; }
done
[ "$REPS" -ge 2 ] || { echo "bench_allreduce.sh: --reps must be at least 2 (the first call is reported apart)" >&2; exit 2; }
[ "$RANKS" -ge 2 ] || { echo "bench_allreduce.sh: --ranks must be at least 2" >&2; exit 2; }
BIN=$(bc_mpi_tool allreduce_chunks)
bc_mpi_oversubscribed
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
echo "bench_allreduce: $RANKS ranks on $CORES cores, $DOUBLES doubles, $REPS calls each" >&2
for chunk in 0 "$CHUNK"; do
  timeout 900 mpirun -n "$RANKS" "$BIN" "$DOUBLES" "$chunk" "$REPS" >> "$W/results" ||
    { echo "bench_allreduce.sh: mpirun -n $RANKS allreduce_chunks $DOUBLES $chunk failed" >&2; exit 1; }
done
python3 - "$W/results" "$DOUBLES" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    chunk, rep, sec, rss = line.split()
    rows[int(chunk)].append((int(rep), float(sec), int(rss)))
mb = int(sys.argv[2]) * 8 / 1e6
print(f"| reduction of {mb:.0f} MB | first call s | later calls s (median) | rank 0 peak RSS MiB |")
print("|---|---:|---:|---:|")
med = {}
for chunk in sorted(rows):
    r = sorted(rows[chunk])
    med[chunk] = statistics.median(s for _, s, _ in r[1:])
    name = "one call" if chunk == 0 else f"chunks of {chunk * 8 / 2**20:g} MiB"
    print(f"| {name} | {r[0][1]:.3f} | {med[chunk]:.3f} | {max(x for _, _, x in r) / 1024:.0f} |")
chunked = [c for c in med if c]
if chunked:
    print(f"\none call / chunks (later calls): {med[0] / med[chunked[0]]:.2f}x")
PY
