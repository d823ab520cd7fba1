#!/usr/bin/env bash
# Evaluation after each round, side by side in one run: the test set (Fashion-MNIST's 10,000
# images, --eval-batch 1000) through the pipeline, fmnist-cnn, K = 2 owners on one owner rank,
# N = 1, 2, 3 stages, one thread per rank; optionally against another mpsl binary (--baseline,
# e.g. a build of an older commit). Per run the median over rounds 2..R of the round's time
# outside training (FedAvg, a few ms here, plus the evaluation) and the cost model's
# prediction of it (--profile, made here unless given). Repeats alternate; medians and ratios.
#
#   tools/bench_eval.sh [--reps N] [--rounds R] [--baseline PATH_TO_MPSL] [--profile P.json]
#                       [--out FILE.md]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MPSL_BUILD_DIR:-$REPO/build}
REPS=3 ROUNDS=4 BASELINE="" PROFILE="" OUT=""
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --baseline) BASELINE=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "bench_eval.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "bench_eval.sh: --reps must be a positive integer, got '$REPS'" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[2-9]$|^[1-9][0-9]+$ ]] || { echo "bench_eval.sh: --rounds must be at least 2, got '$ROUNDS'" >&2; exit 2; }
if [ -n "$BASELINE" ] && [ ! -x "$BASELINE" ]; then
  echo "bench_eval.sh: --baseline '$BASELINE' is not an executable" >&2; exit 2
fi
[ -x "$BUILD/mpsl" ] || "$REPO/tools/build.sh"
MPSL=$BUILD/mpsl
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

for split in train test; do
  f=$REPO/data/fashion-mnist-$split.h5
  if [ ! -s "$f" ]; then
    mkdir -p "$REPO/data"
    "$MPSL" convert --format fashion-mnist --split "$split" --output "$W/$split.h5" --quiet
    mv "$W/$split.h5" "$f"
  fi
done
if [ -z "$PROFILE" ]; then
  PROFILE=$W/profile.json
  "$MPSL" profile --model fmnist-cnn --batch 64 --repeats 7 --threads 1 --quiet --output "$PROFILE"
fi

sides=(this)
[ -n "$BASELINE" ] && sides+=(baseline)
for rep in $(seq 1 "$REPS"); do
  for n in 1 2 3; do
    for side in "${sides[@]}"; do
      bin=$MPSL
      [ "$side" = baseline ] && bin=$BASELINE
      echo "bench_eval: rep $rep/$REPS, N = $n, $side" >&2
      mpirun -n $((1 + n)) "$bin" train --model fmnist-cnn --data "$REPO/data/fashion-mnist-train.h5" \
        --test-data "$REPO/data/fashion-mnist-test.h5" --owners 2 --batch 64 \
        --batches-per-epoch 4 --rounds "$ROUNDS" --stages "$n" --threads 1 --quiet \
        --profile "$PROFILE" --metrics "$W/$side-n$n-$rep.jsonl" > /dev/null
    done
  done
done

python3 - "$W" "$REPS" "${sides[@]}" <<'PY' | tee ${OUT:+"$OUT"}
import json, statistics as st, sys
w, reps, sides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def outside(path):
    r = [json.loads(l) for l in open(path) if '"round_end"' in l][1:]
    return (st.median(x["seconds"] - x["train_seconds"] for x in r),
            st.median(x["predicted_round_seconds"] - x["predicted_train_seconds"] for x in r))
print("Seconds per round outside training (evaluation of 10,000 test images + FedAvg), "
      f"median of {reps} runs, each the median of rounds 2..R")
print()
head = "| N | this build s | predicted s | error |"
rule = "|---|---|---|---|"
if "baseline" in sides:
    head += " baseline s | baseline / this |"
    rule += "---|---|"
print(head)
print(rule)
for n in (1, 2, 3):
    m = [outside(f"{w}/this-n{n}-{r}.jsonl") for r in range(1, reps + 1)]
    t, p = st.median(x[0] for x in m), st.median(x[1] for x in m)
    row = f"| {n} | {t:.2f} | {p:.2f} | {100 * (p - t) / t:+.1f}% |"
    if "baseline" in sides:
        b = st.median(outside(f"{w}/baseline-n{n}-{r}.jsonl")[0] for r in range(1, reps + 1))
        row += f" {b:.2f} | {b / t:.2f}x |"
    print(row)
PY
