#!/usr/bin/env bash
# No deadlock: every topology with up to 8 ranks finishes a round within a time bound.
# For R = 2..8 ranks and N = 1..R-1 stages (owner ranks O = R - N), with K = O and K = 2O + 1
# logical owners, under the mpsl schedule and 1f1b with M = 2 (and M = 4 for K = 2O + 1), a
# short round must end with exit code 0 within 60 s.
set -uo pipefail
MPSL=${1:?usage: multihop_deadlock.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
TMPDIR_ERR=$(mktemp)
trap 'rm -f "$TMPDIR_ERR"' EXIT
start=$(date +%s)
for r in 2 3 4 5 6 7 8; do
  for n in $(seq 1 $((r - 1))); do
    o=$((r - n))
    for k in $o $((2 * o + 1)); do
      scheds="mpsl:1 1f1b:2"
      [ "$k" -gt "$o" ] && scheds="$scheds 1f1b:4"
      for sm in $scheds; do
        s=${sm%:*} m=${sm#*:}
        what="R=$r N=$n O=$o K=$k $s M=$m"
        t0=$SECONDS
        if timeout 60 mpirun -n "$r" "$MPSL" train --model fmnist-cnn --synthetic \
          --synthetic-count $((16 * k)) --batch 8 --batches-per-epoch 2 --threads 1 --quiet \
          --stages "$n" --owners "$k" --schedule "$s" --micro-batches "$m" > /dev/null 2> "$TMPDIR_ERR"; then
          PASSED=$((PASSED + 1))
        else
          fail "$what (exit $?, $((SECONDS - t0)) s): $(tail -2 "$TMPDIR_ERR")"
        fi
      done
    done
  done
done
echo "$((PASSED + FAILED)) topologies in $(($(date +%s) - start)) s"
summary
