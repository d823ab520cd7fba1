#!/usr/bin/env bash
# Numerical faults: a NaN injected (MPSL_TEST_NAN="RANK:OWNER:ROUND:STEP") into what one rank
# produces for one owner's batch is caught where it appears and reported with rank, owner,
# round and step.
#  - --nan-policy abort (the default): exit code 1 (multihop: the whole job ends) within 30 s.
#  - --nan-policy skip: the run finishes, round_end counts skipped_batches = 1, and the batch
#    left no trace: the single process and the multihop runs (mpsl and 1f1b schedules), which
#    skip the same batch, end with bitwise the same weights; a run without the NaN differs.
set -uo pipefail
MPSL=${1:?usage: nan_policy.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
C="train --model fmnist-cnn --synthetic --synthetic-count 1024 --batch 32 --batches-per-epoch 4
   --rounds 2 --owners 4 --threads 1 --quiet"

run() {  # run RANKS SPEC ARGS... -> exit code; stderr in $T/err
  local ranks=$1 spec=$2
  shift 2
  if [ "$ranks" = 1 ]; then
    MPSL_TEST_NAN=$spec timeout 60 "$MPSL" "$@" > /dev/null 2> "$T/err"
  else
    MPSL_TEST_NAN=$spec timeout 60 mpirun -x MPSL_TEST_NAN -n "$ranks" "$MPSL" "$@" > /dev/null \
      2> "$T/err"
  fi
}

abort_case() {  # abort_case NAME RANKS SPEC NEEDLE ARGS...
  local name=$1 ranks=$2 spec=$3 needle=$4
  shift 4
  local t0 rc
  t0=$SECONDS
  run "$ranks" "$spec" "$@"
  rc=$?
  local line
  line=$(grep -m1 -- "$needle" "$T/err")
  if [ "$rc" = 1 ] && [ -n "$line" ] && [ $((SECONDS - t0)) -le 30 ]; then
    pass "$name: exit 1 in $((SECONDS - t0)) s: $(echo "$line" | cut -c1-240)"
  else
    fail "$name: exit $rc, wanted '$needle'; stderr: $(head -c 1500 "$T/err")"
  fi
}

# shellcheck disable=SC2086
{
abort_case "single process, abort" 1 0:1:1:3 \
  "non-finite input images .* on rank 0 (single process): owner 1, round 1, step 3 (--nan-policy abort)" $C
abort_case "multihop mpsl, NaN on stage rank 2, abort" 4 2:1:1:3 \
  "non-finite activation at the output of stage 1 .* on rank 2 (stage 1/2, units 1-2): owner 1, round 1, step 3, micro-batch 0" \
  $C --stages 2
abort_case "multihop 1f1b M=2, NaN on owner rank 1, abort" 4 1:3:2:2 \
  "non-finite activation at cut 1 .* on rank 1 (owner rank, owners {1,3}): owner 3, round 2, step 2, micro-batch 0" \
  $C --stages 2 --schedule 1f1b --micro-batches 2
}

skip_case() {  # skip_case NAME RANKS SPEC NEEDLE MODEL ARGS...
  local name=$1 ranks=$2 spec=$3 needle=$4 model=$5
  shift 5
  run "$ranks" "$spec" "$@" --nan-policy skip --save-model "$T/$model.h5" --metrics "$T/$model.jsonl"
  local rc=$? line skipped
  line=$(grep -m1 -- "$needle" "$T/err")
  skipped=$(grep -o '"skipped_batches":[0-9]*' "$T/$model.jsonl" 2> /dev/null | cut -d: -f2 | paste -sd+ | bc)
  if [ "$rc" = 0 ] && [ -n "$line" ] && [ "$skipped" = 1 ]; then
    pass "$name: exit 0, skipped_batches 1: $(echo "$line" | cut -c1-200)"
  else
    fail "$name: exit $rc, skipped '$skipped', wanted '$needle'; stderr: $(head -c 1500 "$T/err")"
  fi
}

# shellcheck disable=SC2086
{
skip_case "single process, skip" 1 0:1:1:3 "owner 1, round 1, step 3; --nan-policy skip" single $C
skip_case "multihop mpsl, owner rank 1, skip" 4 1:1:1:3 \
  "rank 1 (owner rank, owners {1,3}): owner 1, round 1, step 3, micro-batch 0 (element 0 = nan); --nan-policy skip" \
  mh $C --stages 2
skip_case "multihop 1f1b M=1, stage rank 2 (1 owner rank), skip" 3 1:1:1:3 \
  "rank 1 (stage 1/2, units 1-2): owner 1, round 1, step 3, micro-batch 0 (element 0 = nan); --nan-policy skip" \
  f1 $C --stages 2 --schedule 1f1b --micro-batches 1
skip_case "multihop 1f1b M=2, stage rank 3, skip" 4 3:1:1:3 \
  "rank 3 (stage 2/2, units 3-7): owner 1, round 1, step 3, micro-batch 0" m2 $C --stages 2 \
  --schedule 1f1b --micro-batches 2
mpsl_run 1 $C --save-model "$T/clean.h5" > /dev/null || fail "clean run"
}
cmp_models() {
  $PY "$HERE/compare_models.py" "$@"
}
if out=$(cmp_models "$T/single.h5" "$T/mh.h5") && out2=$(cmp_models "$T/single.h5" "$T/f1.h5"); then
  pass "skip leaves no trace: single process == multihop mpsl == multihop 1f1b (bitwise): $out"
else
  fail "skipped runs differ: $out ${out2:-}"
fi
if ! cmp_models "$T/single.h5" "$T/clean.h5" > /dev/null; then
  pass "the skipped batch mattered: the run without NaN ends with other weights"
else
  fail "the run without NaN has the same weights as the skipped run"
fi
summary
