#!/usr/bin/env bash
# Bad multihop topologies: one clear message (printed once, by rank 0), exit code 2, no hang.
set -uo pipefail
MPSL=${1:?usage: multihop_bad_input.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
ERR=$(mktemp)
trap 'rm -f "$ERR"' EXIT

# expect_bad NAME RANKS PATTERN ARGS...: exit 2 within 30 s, exactly one error line matching.
expect_bad() {
  local name=$1 ranks=$2 pattern=$3
  shift 3
  local t0=$SECONDS rc
  if [ "$ranks" = 1 ]; then
    timeout 30 "$MPSL" train "$@" > /dev/null 2> "$ERR"
  else
    timeout 30 mpirun -n "$ranks" "$MPSL" train "$@" > /dev/null 2> "$ERR"
  fi
  rc=$?
  local lines
  lines=$(grep -c "^mpsl: error:" "$ERR")
  if [ "$rc" = 2 ] && [ "$lines" = 1 ] && grep -q -- "$pattern" "$ERR"; then
    pass "$name ($((SECONDS - t0)) s): $(grep '^mpsl: error:' "$ERR")"
  else
    fail "$name: exit $rc, $lines error line(s), wanted '$pattern'; stderr: $(head -c 600 "$ERR")"
  fi
}

B="--model fmnist-cnn --synthetic --synthetic-count 256 --batch 16 --max-steps 1 --threads 1"
expect_bad "split point out of range" 3 "out of range" $B --stages 2 --split 1,4,9
expect_bad "split point zero" 3 "at least 1" $B --stages 2 --split 0,4,8
expect_bad "split not increasing" 3 "increasing" $B --stages 2 --split 1,5,4
expect_bad "split with too few cut points" 3 "3 indices" $B --stages 2 --split 1,5
expect_bad "split not a number" 3 "comma-separated" $B --stages 2 --split 1,x,5
expect_bad "more stages than units" 9 "at most 7 compute stages" $B --stages 8
expect_bad "too few ranks for the stages" 2 "needs at least 4 ranks" $B --stages 3
expect_bad "ranks without --stages" 2 "no --stages" $B
expect_bad "fewer owners than owner ranks" 4 "fewer than the 2 owner ranks" $B --stages 2 --owners 1
expect_bad "micro-batches not dividing the batch" 3 "must divide" $B --stages 2 --schedule 1f1b --micro-batches 3
expect_bad "micro-batches with the mpsl schedule" 3 "needs --schedule 1f1b" $B --stages 2 --micro-batches 2
expect_bad "owner shard smaller than a batch" 3 "fewer than --batch" $B --stages 2 --owners 32
expect_bad "missing training data on owner ranks" 3 "no-such-file.h5" --model fmnist-cnn --data /nonexistent/no-such-file.h5 --stages 2 --threads 1
summary
