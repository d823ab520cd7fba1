#!/usr/bin/env bash
# Multihop throughput on this machine, side by side in one run (issue: multihop over MPI):
#   single  mpsl train, one process, 2 threads                       (the reference)
#   mpsl    mpirun -n 4: 2 owner ranks (K logical owners, default 4) + 2 compute stages, 1 thread
#           each (OMP_NUM_THREADS=1); every side trains the same number of images (--steps x 64)
#   gloo    ../shared/baselines/torch_baseline.py split: 2-process split learning over gloo
# fmnist-cnn, batch 64, Fashion-MNIST shapes (synthetic data). Repeats alternate; medians and
# ratios are printed, with each rank's busy / waiting / communicating fractions.
#
#   tools/bench_multihop.sh [--reps N] [--steps N] [--owners K] [--split i,j,k] [--schedule mpsl|1f1b]
#                           [--micro-batches M] [--out FILE.md] [--no-torch]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${MPSL_SHARED_DIR:-$REPO/../shared}
BUILD=${MPSL_BUILD_DIR:-$REPO/build}
REPS=3 STEPS=600 OWNERS=4 SPLIT=3,4,7 SCHEDULE=mpsl MICRO=1 OUT="" TORCH=1
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --owners) OWNERS=$2; shift 2 ;;
    --split) SPLIT=$2; shift 2 ;;
    --schedule) SCHEDULE=$2; shift 2 ;;
    --micro-batches) MICRO=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-torch) TORCH=0; shift ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "bench_multihop.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$BUILD/mpsl" ] || "$REPO/tools/build.sh"
MPSL=$BUILD/mpsl
if [ "$TORCH" = 1 ] && ! /usr/bin/python3 -c "import torch" 2> /dev/null; then
  echo "bench_multihop.sh: PyTorch is missing: apt-get install -y python3-torch libopenblas0-pthread (or pass --no-torch)" >&2
  exit 2
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
COMMON="--model fmnist-cnn --synthetic --synthetic-count $((64 * STEPS)) --batch 64 --quiet"

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" | tail -1; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

: > "$T/single" ; : > "$T/mpsl" ; : > "$T/gloo"
for rep in $(seq 1 "$REPS"); do
  OMP_NUM_THREADS=2 "$MPSL" train $COMMON --threads 2 --max-steps "$STEPS" --warmup-steps 0 \
    | field train_img_per_s >> "$T/single"
  OMP_NUM_THREADS=1 mpirun -n 4 "$MPSL" train $COMMON --threads 1 --stages 2 --owners "$OWNERS" \
    --split "$SPLIT" --schedule "$SCHEDULE" --micro-batches "$MICRO" --max-steps $((STEPS / OWNERS)) \
    --metrics "$T/metrics$rep.jsonl" | field train_img_per_s >> "$T/mpsl"
  if [ "$TORCH" = 1 ]; then
    LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread OPENBLAS_NUM_THREADS=1 \
      /usr/bin/python3 "$SHARED/baselines/torch_baseline.py" split --steps "$STEPS" --threads 1 \
      2> /dev/null | sed -n 's/.*img\/s=\([0-9.]*\).*/\1/p' >> "$T/gloo"
  fi
  echo "rep $rep: single $(tail -1 "$T/single") img/s, multihop $(tail -1 "$T/mpsl") img/s$([ "$TORCH" = 1 ] && echo ", gloo split $(tail -1 "$T/gloo") img/s")" >&2
done
S=$(median < "$T/single") M=$(median < "$T/mpsl")
G=$([ "$TORCH" = 1 ] && median < "$T/gloo" || echo 0)
{
  echo "## fmnist-cnn, batch 64, $STEPS steps: multihop (2 owner ranks with $OWNERS owners + 2 stages, split $SPLIT, $SCHEDULE M=$MICRO) vs single process vs gloo split"
  echo
  echo "| run | img/s (median of $REPS) | all runs |"
  echo "|---|---|---|"
  echo "| single process, 2 threads | $S | $(paste -sd' ' "$T/single") |"
  echo "| mpsl multihop, 4 ranks x 1 thread | $M | $(paste -sd' ' "$T/mpsl") |"
  [ "$TORCH" = 1 ] && echo "| torch gloo split, 2 procs x 1 thread | $G | $(paste -sd' ' "$T/gloo") |"
  echo
  awk -v m="$M" -v s="$S" -v g="$G" 'BEGIN {
    printf "multihop / single process = %.2f (target >= 0.85)\n", m / s;
    if (g > 0) printf "multihop / gloo split = %.2f (target >= 3)\n", m / g }'
  echo
  echo "Per-rank time fractions of the last multihop run (busy = compute, wait = idle in the mailbox,"
  echo "comm = inside MPI calls; fractions of the run's wall time):"
  echo
  /usr/bin/python3 - "$T/metrics$REPS.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
end = [r for r in rows if r["event"] == "run_end"][0]
wall = sum(r["seconds"] for r in rows if r["event"] == "round_end")
print("| rank | role | busy | wait | comm | peak RSS MiB |")
print("|---|---|---|---|---|---|")
for r in rows:
    if r["event"] != "rank_summary":
        continue
    role = r["role"] + (f" {r['stage']}" if r["role"] == "stage" else "")
    print(f"| {r['rank']} | {role} | {r['busy_s'] / wall:.0%} | {r['wait_s'] / wall:.0%} | "
          f"{r['comm_s'] / wall:.1%} | {r['peak_rss_bytes'] / 2**20:.0f} |")
PY
} | tee "${OUT:-/dev/null}"
