#!/usr/bin/env bash
# What a hop costs when ranks share cores: the one-way time of a message between two MPI ranks
# whose receiver polls as mpsl's mailbox did before doorbells (MPSL_DOORBELL=0), alone (2 ranks) and beside 1, 2, ... ranks that
# compute (tools/lib/hop_latency.c), for a few message sizes. The cost model charges a local
# message its latency (plan/profile.hpp kLocalLatency) plus its copy on the receiver's share of
# a core; on a host with more ranks than cores the measured hop is longer (docs/cost-model-
# validation, "Hops with more ranks than cores"). Repeats alternate; medians.
#
#   tools/bench_hop.sh [--reps N] [--ranks "2 3 4"] [--bytes "65536 1605632 6422528"]
set -euo pipefail
source "$(dirname "$0")/lib/bench_common.sh"
REPS=2 RANKS="2 3 4" BYTES="65536 1605632 6422528"
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --ranks) RANKS=$2; shift 2 ;;
    --bytes) BYTES=$2; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "bench_hop.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "bench_hop.sh: --reps must be a positive integer, got '$REPS'" >&2; exit 2; }
for p in $RANKS; do
  [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -ge 2 ] || { echo "bench_hop.sh: --ranks takes numbers >= 2, got '$p'" >&2; exit 2; }
done
for b in $BYTES; do
  [[ "$b" =~ ^[0-9]+$ ]] && [ "$b" -ge 4 ] || { echo "bench_hop.sh: --bytes takes numbers >= 4, got '$b'" >&2; exit 2; }
done
BIN=$(bc_mpi_tool hop_latency)
bc_mpi_oversubscribed
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
echo "bench_hop: $CORES cores; $REPS alternating repeat(s) of 60 messages per cell" >&2
for rep in $(seq "$REPS"); do
  for b in $BYTES; do
    for p in $RANKS; do
      timeout 120 mpirun -n "$p" "$BIN" "$b" 60 >> "$W/results" ||
        { echo "bench_hop.sh: mpirun -n $p hop_latency $b failed" >&2; exit 1; }
    done
  done
done
python3 - "$W/results" "$CORES" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p, b, med, mean, p10, p90 = line.split()
    rows[(int(b), int(p))].append((float(med), float(mean)))
cores = int(sys.argv[2])
ranks = sorted({p for _, p in rows})
sizes = sorted({b for b, _ in rows})
print("| message | " + " | ".join(f"{p} ranks{' (idle cores)' if p <= cores else f' on {cores} cores'}" for p in ranks) + " |")
print("|---|" + "---:|" * len(ranks))
for b in sizes:
    label = f"{b / 2**20:.1f} MiB" if b >= 2**20 else f"{b / 2**10:.0f} KiB"
    cells = []
    for p in ranks:
        v = rows.get((b, p), [])
        cells.append(f"{statistics.median(m for m, _ in v):.2f} ms (mean {statistics.median(x for _, x in v):.2f})" if v else "-")
    print(f"| {label} | " + " | ".join(cells) + " |")
print("\nmedian one-way time (sender's send to receiver's completed receive), median over repeats")
PY
