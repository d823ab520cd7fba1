#!/usr/bin/env bash
# Rank 0's progress in a multihop run (4 ranks). Asked for (MPSL_PROGRESS=1: under mpirun a
# rank's stderr is a pipe even in a terminal), it redraws a live line with the round, batches
# done of the round, images/s and the time left; in a pipe without it, there is no redraw at all
# and exactly one summary line per round, the first one with the time left.
set -uo pipefail
MPSL=${1:?usage: progress.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
args=(train --model fmnist-cnn --synthetic --synthetic-count 1024 --batch 32 --threads 1
  --rounds 2 --batches-per-epoch 8 --stages 2 --owners 4)

MPSL_PROGRESS=1 mpsl_run 4 "${args[@]}" > /dev/null 2> "$T/live.txt"
rc=$?
redraws=$(grep -o $'\r[^\r]*round 1/2, batches [0-9]*/32  [0-9]* img/s, [0-9hms]* left' "$T/live.txt" | wc -l)
if [ "$rc" = 0 ] && [ "$redraws" -ge 1 ] && grep -q $'\r[^\r]*round 2/2, batches 32/32' "$T/live.txt"; then
  pass "MPSL_PROGRESS=1: $redraws live redraws in round 1 (round, batches, img/s, time left)"
else
  fail "live progress: exit $rc, $redraws redraws: $(tr '\r' '|' < "$T/live.txt" | tail -c 600)"
fi

MPSL_PROGRESS= mpsl_run 4 "${args[@]}" > /dev/null 2> "$T/pipe.txt"
rc=$?
if [ "$rc" = 0 ] && ! grep -q $'\r' "$T/pipe.txt" &&
  [ "$(grep -c 'round [12]/2: train loss' "$T/pipe.txt")" = 2 ] &&
  grep -q 'round 1/2: train loss.*img/s), about [0-9hms]* left' "$T/pipe.txt"; then
  pass "in a pipe: no redraws, one summary line per round (with the time left)"
else
  fail "pipe: exit $rc: $(tr '\r' '|' < "$T/pipe.txt" | tail -c 600)"
fi
summary
