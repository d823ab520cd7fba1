#!/usr/bin/env bash
# Stall watchdog: rank 2 (compute stage 1 of 2) stops on purpose (MPSL_TEST_STALL: it sleeps
# 60 s before handling its 5th message). With --stall-warn 2 the waiting ranks say what they wait
# for and from whom (the waiting rank, the awaited rank 2, owner, micro-batch); with
# --stall-abort 5 the job ends within 15 s with a non-zero code. Without --stall-abort (and a
# 3 s stall) the run warns and then finishes normally.
set -uo pipefail
MPSL=${1:?usage: stall_watchdog.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
A="train --model fmnist-cnn --synthetic --synthetic-count 2048 --batch 32 --stages 2 --owners 4
   --threads 1 --quiet"

t0=$(date +%s%N)
# shellcheck disable=SC2086
MPSL_TEST_STALL=2:60:5 timeout 60 mpirun -x MPSL_TEST_STALL -n 4 "$MPSL" $A --stall-warn 2 \
  --stall-abort 5 > /dev/null 2> "$T/err"
rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
warn=$(grep -m1 "warning: rank 3 (stage 2/2.*) has waited .* s for an activation of owner .* from rank 2 (stage 1/2" "$T/err")
owner_warn=$(grep -m1 "warning: rank 0 (owner rank.*) has waited .* s for the .* of owner 0, micro-batch 0 .* from rank [23] " "$T/err")
abort=$(grep -m1 "stall: rank .* waited .* --stall-abort 5.0 s ends the job" "$T/err")
if [ -n "$warn" ] && [ -n "$owner_warn" ]; then
  pass "stall warnings name the waiting and the awaited rank: $(echo "$warn" | cut -c1-220)..."
else
  fail "stall warnings missing; stderr: $(head -c 2000 "$T/err")"
fi
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$ms" -le 15000 ] && [ -n "$abort" ]; then
  pass "--stall-abort 5 ended the job: exit $rc after $ms ms: $(echo "$abort" | cut -c1-160)..."
else
  fail "--stall-abort: exit $rc after $ms ms; abort line '$abort'; stderr: $(tail -c 1500 "$T/err")"
fi

# Warn only: a 3 s stall is reported and the run completes.
# shellcheck disable=SC2086
if MPSL_TEST_STALL=3:3:5 timeout 60 mpirun -x MPSL_TEST_STALL -n 4 "$MPSL" $A --stall-warn 1 \
  > /dev/null 2> "$T/err2" && grep -q "has waited .* s for .* from rank 3 (stage 2/2" "$T/err2"; then
  pass "warn-only stall of rank 3: warned, then the run finished with exit 0"
else
  fail "warn-only stall: stderr: $(head -c 1500 "$T/err2")"
fi
summary
