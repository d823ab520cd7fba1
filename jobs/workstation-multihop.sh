#!/usr/bin/env bash
# Multihop training on one workstation with mpirun: OWNER_RANKS data-owner ranks plus STAGES
# compute stages, one thread per rank, outputs under runs/<name>/.
#
#   jobs/workstation-multihop.sh [extra mpsl train options]
#   MODEL=fmnist-cnn STAGES=2 OWNER_RANKS=2 OWNERS=4 ROUNDS=3 jobs/workstation-multihop.sh --split 3,4,7
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
MPSL=${MPSL:-$REPO/build/mpsl}
MODEL=${MODEL:-fmnist-cnn}
STAGES=${STAGES:-2}
OWNER_RANKS=${OWNER_RANKS:-2}
OWNERS=${OWNERS:-4}
ROUNDS=${ROUNDS:-3}
BATCH=${BATCH:-64}
TRAIN=${TRAIN:-$REPO/data/fashion-mnist-train.h5}
TEST=${TEST:-$REPO/data/fashion-mnist-test.h5}
NAME=${NAME:-$MODEL-k$OWNERS-n$STAGES-$(date +%Y%m%d-%H%M%S)}
OUT=$REPO/runs/$NAME
mkdir -p "$OUT"
[ -x "$MPSL" ] || "$REPO/tools/build.sh"
export OMP_NUM_THREADS=1
[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# More ranks than cores is fine: waiting ranks sleep instead of spinning.
export OMPI_MCA_rmaps_base_oversubscribe=1
echo "run directory: $OUT"
mpirun -n $((OWNER_RANKS + STAGES)) "$MPSL" train --model "$MODEL" --data "$TRAIN" \
  --test-data "$TEST" --stages "$STAGES" --owners "$OWNERS" --batch "$BATCH" --rounds "$ROUNDS" \
  --threads 1 --metrics "$OUT/metrics.jsonl" --checkpoint-dir "$OUT/checkpoints" \
  --save-model "$OUT/model.h5" "$@" 2>&1 | tee "$OUT/log.txt"
