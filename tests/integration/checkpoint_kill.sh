#!/usr/bin/env bash
# kill -9 of one rank while a checkpoint is being written: the job ends without hanging, the
# previous checkpoint stays intact and named by `latest`, and resuming from it reaches the
# uninterrupted run's final weights bitwise. MPSL_TEST_CHECKPOINT_DELAY_MS (tests only) makes
# every rank pause half way through writing its file, which opens a reliable window for the kill.
set -uo pipefail
MPSL=${1:?usage: checkpoint_kill.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
JOB=
cleanup() {
  [ -n "$JOB" ] && kill -9 "$JOB" 2> /dev/null
  rm -rf "$T"
}
trap cleanup EXIT

C="--model fmnist-cnn --synthetic --synthetic-count 2048 --batch 32 --batches-per-epoch 6"
C="$C --owners 4 --partition dirichlet --alpha 1 --stages 2 --threads 1 --quiet --rounds 3"
C="$C --optimizer-state keep"
mpsl_run 4 train $C --save-model "$T/ref.h5" --checkpoint-dir "$T/ref" --checkpoint-every 0 \
  > /dev/null || fail "uninterrupted run"

# The run to kill: a checkpoint every round, each taking at least 1.5 s to write.
D="$T/ck"
MPSL_TEST_CHECKPOINT_DELAY_MS=1500 timeout 60 mpirun -n 4 "$MPSL" train $C --checkpoint-dir "$D" \
  > "$T/killed.log" 2>&1 &
JOB=$!
# Wait until round 1's checkpoint is published and round 2's is being written.
victim=
for _ in $(seq 1 300); do
  if [ "$(cat "$D/latest" 2> /dev/null)" = ckpt-r0001-s000006 ] \
    && [ -e "$D/ckpt-r0002-s000006.tmp/rank-2.h5" ]; then
    # Rank 2 (the first stage): the process whose environment says so, among this job's.
    for p in $(pgrep -f -- "--checkpoint-dir $D"); do
      if tr '\0' '\n' < "/proc/$p/environ" 2> /dev/null | grep -qx OMPI_COMM_WORLD_RANK=2; then
        victim=$p
      fi
    done
    break
  fi
  sleep 0.1
done
if [ -n "$victim" ]; then
  kill -9 "$victim"
  pass "killed rank 2 (pid $victim) while it was writing ckpt-r0002-s000006"
else
  fail "never saw round 2's checkpoint being written (log: $(tail -3 "$T/killed.log"))"
fi
start=$(date +%s)
wait "$JOB"
rc=$?
JOB=
took=$(($(date +%s) - start))
if [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$took" -lt 30 ]; then
  pass "the job ended by itself ${took} s after the kill (exit $rc), no hang"
else
  fail "the job did not end properly after the kill (exit $rc, ${took} s)"
fi
if [ "$(cat "$D/latest")" = ckpt-r0001-s000006 ]; then pass "latest still names ckpt-r0001-s000006"
else fail "latest names '$(cat "$D/latest")'"; fi
if [ ! -e "$D/ckpt-r0002-s000006" ]; then pass "the interrupted checkpoint was never published"
else fail "ckpt-r0002-s000006 exists after the kill"; fi
if out=$("$MPSL" inspect "$D" 2>&1); then pass "the previous checkpoint is intact (inspect checks every checksum)"
else fail "inspect of the previous checkpoint: $out"; fi

# Resume (the unfinished folder is cleaned away by the next checkpoint) and finish.
mpsl_run 4 train $C --checkpoint-dir "$D" --resume latest --save-model "$T/resumed.h5" > /dev/null \
  || fail "resume after the kill"
if out=$($PY "$HERE/compare_models.py" "$T/ref.h5" "$T/resumed.h5"); then
  pass "resumed from latest after the kill == uninterrupted run: $out"
else
  fail "resumed after the kill differs from the uninterrupted run: $out"
fi
if out=$($PY "$HERE/checkpoint_compare.py" "$T/ref/ckpt-r0003-s000006" "$D/ckpt-r0003-s000006"); then
  pass "optimiser state too: $out"
else
  fail "final checkpoints differ: $out"
fi
if ls -d "$D"/*.tmp > /dev/null 2>&1; then fail "an unfinished .tmp folder is left: $(ls "$D")"
else pass "no unfinished folder left: $(ls "$D" | tr '\n' ' ')"; fi
summary
