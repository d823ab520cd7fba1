#!/usr/bin/env bash
# Multihop == single process: the backbone equivalence tests of the multihop runtime.
#  - K = 1 owner, N = 1, 2, 3 stages, mpsl schedule and 1f1b with M = 1: bitwise equal weights.
#  - 1f1b with M = 2, 4 micro-batches vs whole-batch training: max relative difference <= 1e-5
#    (micro-batches sum gradients in another order, so bitwise equality is not possible); and
#    with M = 4, N = 2, 3, three times each, bitwise equal to the single process with M = 4.
#  - K = 4 owners (non-IID), N = 2, two rounds with FedAvg vs the single-process simulation of the
#    same per-owner training plus FedAvg: bitwise equal.
#  - --max-in-flight 1 (K = 4, N = 2) and 1, 2 (K = 1, N = 1, 1f1b M = 4): bitwise equal to the
#    runs without a limit, and no stage holds more micro-batches than the limit.
#  - K = 1 owner, three rounds, each --optimizer-state: bitwise equal (the round's end treats the
#    momentum the same way with one owner as with many).
#  - Evaluation after every round (owner rank 0 keeps two batches in flight through the stages,
#    the last one partial): the same test accuracy and loss as the single process, N = 1, 3.
set -uo pipefail
MPSL=${1:?usage: multihop_equivalence.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

same() {  # same NAME A B [--tolerance X]
  local name=$1 a=$2 b=$3
  shift 3
  if out=$($PY "$HERE/compare_models.py" "$a" "$b" "$@"); then pass "$name: $out"; else fail "$name: $out"; fi
}

C="--model fmnist-cnn --synthetic --synthetic-count 1024 --batch 32 --threads 1 --quiet"
mpsl_run 1 train $C --max-steps 12 --save-model "$T/ref.h5" > /dev/null || fail "reference run"
for n in 1 2 3; do
  mpsl_run $((n + 1)) train $C --max-steps 12 --stages "$n" --save-model "$T/mh$n.h5" > /dev/null \
    && same "K=1 N=$n mpsl schedule == single process (bitwise)" "$T/ref.h5" "$T/mh$n.h5" \
    || fail "K=1 N=$n run"
done
mpsl_run 3 train $C --max-steps 12 --stages 2 --schedule 1f1b --micro-batches 1 \
  --save-model "$T/f1.h5" > /dev/null \
  && same "K=1 N=2 1f1b M=1 == single process (bitwise)" "$T/ref.h5" "$T/f1.h5" || fail "1f1b M=1 run"

# Micro-batches: compare after 3 steps, before chaotic growth of rounding differences.
mpsl_run 1 train $C --max-steps 3 --save-model "$T/ref3.h5" > /dev/null || fail "reference run (3 steps)"
for m in 2 4; do
  for n in 1 3; do
    mpsl_run $((n + 1)) train $C --max-steps 3 --stages "$n" --schedule 1f1b --micro-batches "$m" \
      --save-model "$T/m$m$n.h5" > /dev/null \
      && same "K=1 N=$n 1f1b M=$m == whole batch (rel <= 1e-5)" "$T/ref3.h5" "$T/m$m$n.h5" \
        --tolerance 1e-5 || fail "1f1b M=$m N=$n run"
  done
  mpsl_run 1 train $C --max-steps 3 --schedule 1f1b --micro-batches "$m" --save-model "$T/s$m.h5" \
    > /dev/null && same "single process M=$m == whole batch (rel <= 1e-5)" "$T/ref3.h5" "$T/s$m.h5" \
    --tolerance 1e-5 || fail "single process M=$m run"
done

# Every rank sums a batch's micro-batch gradients in micro-batch order, so a micro-batched
# pipeline equals the single process with the same micro-batches bitwise, run after run. (Before
# the mailbox kept each peer's messages in posting order, a large message still in transfer
# could be overtaken by the next, and runs differed in the last bits.)
mpsl_run 1 train $C --max-steps 12 --schedule 1f1b --micro-batches 4 --save-model "$T/s4x12.h5" \
  > /dev/null || fail "single process M=4 run (12 steps)"
for rep in 1 2 3; do
  for n in 2 3; do
    mpsl_run $((n + 1)) train $C --max-steps 12 --stages "$n" --schedule 1f1b --micro-batches 4 \
      --save-model "$T/r$rep$n.h5" > /dev/null \
      && same "K=1 N=$n 1f1b M=4 == single process M=4 (bitwise, run $rep)" "$T/s4x12.h5" \
        "$T/r$rep$n.h5" || fail "1f1b M=4 N=$n run $rep"
  done
done

C4="--model fmnist-cnn --synthetic --synthetic-count 2048 --batch 32 --batches-per-epoch 6 --rounds 2"
C4="$C4 --owners 4 --threads 1 --quiet --partition dirichlet --alpha 1"
mpsl_run 1 train $C4 --save-model "$T/k4ref.h5" > /dev/null || fail "K=4 simulation"
mpsl_run 4 train $C4 --stages 2 --save-model "$T/k4.h5" > /dev/null \
  && same "K=4 (2 owner ranks) N=2 two rounds == single-process FedAvg simulation (bitwise)" \
    "$T/k4ref.h5" "$T/k4.h5" || fail "K=4 N=2 run"
mpsl_run 3 train $C4 --stages 2 --schedule 1f1b --micro-batches 1 --save-model "$T/k4b.h5" \
  > /dev/null && same "K=4 (1 owner rank) N=2 1f1b == simulation (bitwise)" "$T/k4ref.h5" \
  "$T/k4b.h5" || fail "K=4 1 owner rank run"

# --max-in-flight N: a stage at its limit leaves further activations in their receive buffers
# until a gradient frees a slot. The work and its order per owner are the same (bitwise), and
# no stage ever holds more. With one stage the owner rank sends activations and gradients
# through the same receives, so a gradient must still get past the activations kept waiting.
held_at_most() {  # METRICS LIMIT: every stage reserved LIMIT slots and held at most LIMIT
  $PY - "$1" "$2" <<'PY'
import json, sys
stages = [e for e in map(json.loads, open(sys.argv[1]))
          if e["event"] == "rank_summary" and e["role"] == "stage"]
limit = int(sys.argv[2])
assert stages and all(s["max_in_flight"] <= limit for s in stages), stages
assert all(s["in_flight_slots"] == limit for s in stages), stages
PY
}
mpsl_run 4 train $C4 --stages 2 --max-in-flight 1 --save-model "$T/k4l.h5" --metrics "$T/k4l.jsonl" \
  > /dev/null && same "K=4 N=2 --max-in-flight 1 == single-process FedAvg simulation (bitwise)" \
  "$T/k4ref.h5" "$T/k4l.h5" || fail "K=4 N=2 --max-in-flight 1 run"
held_at_most "$T/k4l.jsonl" 1 && pass "K=4 N=2 --max-in-flight 1: no stage held more than 1" \
  || fail "K=4 N=2 --max-in-flight 1: a stage held more"
for lim in 1 2; do
  mpsl_run 2 train $C --max-steps 12 --stages 1 --schedule 1f1b --micro-batches 4 \
    --max-in-flight "$lim" --save-model "$T/l1-$lim.h5" --metrics "$T/l1-$lim.jsonl" > /dev/null \
    && same "K=1 N=1 1f1b M=4 --max-in-flight $lim == single process M=4 (bitwise)" \
      "$T/s4x12.h5" "$T/l1-$lim.h5" || fail "N=1 --max-in-flight $lim run"
  held_at_most "$T/l1-$lim.jsonl" "$lim" \
    && pass "K=1 N=1 1f1b M=4 --max-in-flight $lim: the stage held at most $lim" \
    || fail "K=1 N=1 --max-in-flight $lim: the stage held more"
done

# --init-model: every part on every rank starts from the file's weights (here the trained K=4
# model, so a run that ignored the file would reproduce k4ref.h5 bitwise).
mpsl_run 1 train $C4 --init-model "$T/k4ref.h5" --save-model "$T/i1.h5" > /dev/null \
  || fail "single process from --init-model"
if $PY "$HERE/compare_models.py" "$T/k4ref.h5" "$T/i1.h5" > /dev/null; then
  fail "--init-model changed nothing: the run from the file equals the run from the seed"
else
  pass "--init-model: the run starts from the file (its weights differ from the seeded run's)"
fi
mpsl_run 4 train $C4 --stages 2 --init-model "$T/k4ref.h5" --save-model "$T/i4.h5" > /dev/null \
  && same "K=4 N=2 from --init-model == single process from --init-model (bitwise)" \
    "$T/i1.h5" "$T/i4.h5" || fail "K=4 N=2 run from --init-model"
# K = 1 over rounds: each round ends with the aggregation step on every path.
CR="--model fmnist-cnn --synthetic --synthetic-count 1024 --batch 32 --batches-per-epoch 4"
CR="$CR --rounds 3 --owners 1 --threads 1 --quiet"
for os in reset average keep; do
  mpsl_run 1 train $CR --optimizer-state $os --save-model "$T/r1-$os.h5" > /dev/null \
    || fail "K=1 three rounds, $os: single process"
  mpsl_run 3 train $CR --optimizer-state $os --stages 2 --save-model "$T/r3-$os.h5" > /dev/null \
    && same "K=1 N=2 three rounds, --optimizer-state $os == single process (bitwise)" \
      "$T/r1-$os.h5" "$T/r3-$os.h5" || fail "K=1 N=2 three rounds, $os"
done

# Evaluation: 700 test images in batches of 128 (the last one 60).
random_test_set "$T/test.h5" 700 5 || fail "making the test set"
CE="$CR --test-data $T/test.h5 --eval-batch 128"
mpsl_run 1 train $CE --metrics "$T/e1.jsonl" > /dev/null || fail "single process with evaluation"
for n in 1 3; do
  if mpsl_run $((n + 1)) train $CE --stages "$n" --metrics "$T/e$n-mh.jsonl" > /dev/null &&
    out=$($PY - "$T/e1.jsonl" "$T/e$n-mh.jsonl" 2>&1 <<'PY'
import json, sys
def rounds(p):
    return [(x["test_accuracy"], x["test_loss"]) for x in map(json.loads, open(p)) if x["event"] == "round_end"]
a, b = rounds(sys.argv[1]), rounds(sys.argv[2])
assert len(a) == len(b) == 3, (a, b)
for (acc1, loss1), (acc2, loss2) in zip(a, b):
    assert acc1 == acc2 and abs(loss1 - loss2) <= 1e-6 * abs(loss1), (a, b)
print("test accuracy " + ", ".join(f"{x[0]:.4f}" for x in a) + "; loss within 1e-6")
PY
    ); then
    pass "K=1 N=$n evaluation after each round == single process: $out"
  else
    fail "K=1 N=$n evaluation after each round: ${out:-run failed}"
  fi
done
summary
