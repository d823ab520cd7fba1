#!/usr/bin/env bash
# Multihop training on one workstation with mpirun (the counterpart of slurm-multihop.sbatch):
# OWNER_RANKS data-owner ranks plus STAGES compute stages, THREADS threads per rank, outputs
# under runs/<name>/.
#
#   jobs/workstation-multihop.sh [extra mpsl train options]
#   CONFIG=jobs/configs/fmnist-1f1b.ini jobs/workstation-multihop.sh --rounds 1
#   MODEL=fmnist-cnn STAGES=2 OWNER_RANKS=2 OWNERS=4 ROUNDS=3 jobs/workstation-multihop.sh --split 3,4,7
#
# Parameters (environment): CONFIG (INI of `mpsl train` options, default
# jobs/configs/fmnist-multihop.ini; relative paths in it are relative to the repository),
# STAGES (default 2), OWNER_RANKS (default 2), THREADS (default 1), and when set OWNERS, MODEL,
# ROUNDS, BATCH, TRAIN, TEST override the config; NAME names the run folder (default
# <model>-k<owners>-n<stages>-<date>), RUNS_DIR holds it (default runs/), TRACE=0 skips the
# trace; RETIME_PROFILE=P.json first retimes that profile on this machine (`mpsl profile --from P
# --retime`, a few seconds) into runs/<name>/profile.json and trains with --profile that, so the
# predictions and the stages' reservations follow the machine's speed now. Outputs:
# metrics.jsonl, trace.json, checkpoints/, model.h5, log.txt, job.txt, exit_code. To continue a
# stopped run, call it again with the same NAME and `--resume latest` (the newest checkpoint in
# runs/NAME/checkpoints).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
MPSL=${MPSL:-$REPO/build/mpsl}
CONFIG=${CONFIG:-jobs/configs/fmnist-multihop.ini}
STAGES=${STAGES:-2}
OWNER_RANKS=${OWNER_RANKS:-2}
THREADS=${THREADS:-1}
NAME=${NAME:-${MODEL:-$(basename "$CONFIG" .ini)}-k${OWNERS:-cfg}-n$STAGES-$(date +%Y%m%d-%H%M%S)}
OUT=${RUNS_DIR:-$REPO/runs}/$NAME
mkdir -p "$OUT"
rm -f "$OUT/exit_code"
trap 'echo $? > "$OUT/exit_code"' EXIT
[ -x "$MPSL" ] || "$REPO/tools/build.sh"
[ -z "${RETIME_PROFILE:-}" ] || [ -f "$RETIME_PROFILE" ] || {
  echo "error: RETIME_PROFILE=$RETIME_PROFILE: no such file" >&2
  exit 2
}

args=(train --config "$CONFIG" --stages "$STAGES" --threads "$THREADS"
  --metrics "$OUT/metrics.jsonl" --checkpoint-dir "$OUT/checkpoints" --save-model "$OUT/model.h5")
[ "${TRACE:-1}" = 0 ] || args+=(--trace "$OUT/trace.json")
[ -z "${OWNERS:-}" ] || args+=(--owners "$OWNERS")
[ -z "${MODEL:-}" ] || args+=(--model "$MODEL")
[ -z "${ROUNDS:-}" ] || args+=(--rounds "$ROUNDS")
[ -z "${BATCH:-}" ] || args+=(--batch "$BATCH")
[ -z "${TRAIN:-}" ] || args+=(--data "$TRAIN")
[ -z "${TEST:-}" ] || args+=(--test-data "$TEST")
args+=("$@")

export OMP_NUM_THREADS=$THREADS
if [ -n "${RETIME_PROFILE:-}" ]; then
  "$MPSL" profile --from "$RETIME_PROFILE" --retime --threads "$THREADS" --quiet \
    --output "$OUT/profile.json" 2>&1 | tee -a "$OUT/log.txt"
  args+=(--profile "$OUT/profile.json")
fi
[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# More ranks than cores is fine: waiting ranks sleep instead of spinning.
export OMPI_MCA_rmaps_base_oversubscribe=1
ranks=$((OWNER_RANKS + STAGES))
{
  echo "workstation run $NAME on $(hostname): $ranks ranks x $THREADS threads"
  echo "started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "mpirun -n $ranks $MPSL ${args[*]}"
} > "$OUT/job.txt"
echo "run directory: $OUT"
# In a terminal, rank 0 redraws a progress line (mpirun gives ranks a pipe, so ask for it);
# log.txt keeps only whole lines.
[ -t 1 ] && export MPSL_PROGRESS=${MPSL_PROGRESS:-1}
mpirun -n "$ranks" "$MPSL" "${args[@]}" 2>&1 |
  tee >(sed -u -e 's/.*\r//' -e 's/\x1b\[K//g' >> "$OUT/log.txt")
