#!/usr/bin/env bash
# --replicas H: horizontally scaled one-hop (--stages 1 --replicas H: several compute ranks each
# hold the whole middle for a subset of owners) and replicated multihop pipelines (--stages N
# --replicas H), against the single-process simulation of the same per-owner training plus
# FedAvg (bitwise), as the multihop runtime is (multihop_equivalence.sh); bad replica counts.
set -uo pipefail
MPSL=${1:?usage: replicas.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

same() {
  if out=$($PY "$HERE/compare_models.py" "$2" "$3"); then pass "$1: $out"; else fail "$1: $out"; fi
}

C4="--model fmnist-cnn --synthetic --synthetic-count 2048 --batch 32 --batches-per-epoch 4"
C4="$C4 --owners 4 --threads 1 --quiet --partition dirichlet --alpha 1"
C1="$C4"            # one round (checkpoint test)
C4="$C4 --rounds 2"
mpsl_run 1 train $C4 --save-model "$T/ref.h5" > /dev/null || fail "K=4 simulation"

run() {  # run NAME RANKS ARGS...
  local name=$1 ranks=$2
  shift 2
  mpsl_run "$ranks" train $C4 "$@" --save-model "$T/x.h5" > /dev/null \
    && same "$name == simulation (bitwise)" "$T/ref.h5" "$T/x.h5" || fail "$name run"
}
run "horizontal one-hop: 1 owner rank, 3 compute ranks (--stages 1 --replicas 3)" 4 \
  --stages 1 --replicas 3
run "horizontal one-hop: 2 owner ranks, 2 compute ranks" 4 --stages 1 --replicas 2
run "horizontal one-hop, owners spread by speed 1,2,1 (1, 2, 1 owners)" 4 --stages 1 \
  --replicas 3 --replica-speed 1,2,1
run "replicated multihop: 2 pipelines of 2 stages" 5 --stages 2 --replicas 2
run "replicated multihop, 1f1b M=1" 5 --stages 2 --replicas 2 \
  --schedule 1f1b --micro-batches 1

# Checkpoints: each compute rank writes its replica's copies; a resumed run continues bitwise,
# and eval / inspect read the checkpoint.
H="--stages 1 --replicas 3"
mpsl_run 4 train $C1 $H --checkpoint-dir "$T/ck" > /dev/null || fail "first round"
[ -f "$T/ck/latest" ] || fail "no checkpoint after round 1"
mpsl_run 4 train $C4 $H --checkpoint-dir "$T/ck" --resume latest --save-model "$T/res.h5" \
  > /dev/null && same "replicas: resumed after round 1 == simulation (bitwise)" "$T/ref.h5" \
  "$T/res.h5" || fail "resumed run"
"$MPSL" inspect "$T/ck" > "$T/inspect.txt" 2>&1 && grep -q "owners 0,3" "$T/inspect.txt" \
  && pass "inspect: the replica ranks' copies are checked" || fail "inspect: $(cat "$T/inspect.txt")"

# The role map: each compute rank holds copies for its replica's owners only.
out=$(mpsl_run 4 train $C4 --stages 1 --replicas 3 --dry-run 2>&1)
if grep -q "rank 1: compute stage 1/1 replica 1/3, .*2 per-owner copies" <<<"$out" \
  && grep -q "rank 3: compute stage 1/1 replica 3/3, .*1 per-owner copies" <<<"$out"; then
  pass "dry run: owners spread over replicas (k mod H)"
else
  fail "dry run: $out"
fi

bad() {  # bad NAME RANKS PATTERN ARGS...
  local name=$1 ranks=$2 pattern=$3
  shift 3
  local out
  out=$(mpsl_run "$ranks" train $C4 "$@" 2>&1 >/dev/null)
  local rc=$?
  if [ "$rc" = 2 ] && grep -q -- "$pattern" <<<"$out"; then pass "refused: $name"; else
    fail "$name: exit $rc: $out"; fi
}
out=$(mpsl_run 4 train $C4 --stages 1 --replicas 3 --replica-speed 1,2,1 --dry-run 2>&1)
if grep -q "replica 1/3, .*1 per-owner copies" <<<"$out" && grep -q "replica 2/3, .*2 per-owner copies" <<<"$out"; then
  pass "dry run: --replica-speed 1,2,1 gives replica 2 two owners"
else
  fail "dry run with --replica-speed: $out"
fi
bad "replica speeds: wrong count" 4 "gives 2 speeds for --replicas 3" --stages 1 --replicas 3 \
  --replica-speed 1,2
bad "replica speed not > 0" 4 "'0' is not a speed > 0" --stages 1 --replicas 3 --replica-speed 1,0,1
bad "more replicas than owners" 6 "fewer than --replicas 5" --stages 1 --replicas 5
bad "replicas without stages" 1 "--replicas needs --stages" --replicas 2
bad "too few ranks" 3 "needs at least 5 ranks" --stages 2 --replicas 2

summary
