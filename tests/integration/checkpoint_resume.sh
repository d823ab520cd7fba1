#!/usr/bin/env bash
# Restart equivalence: training straight through and training with a stop and `--resume latest`
# give bitwise the same weights AND optimiser state (momentum, steps, owner cursors) on every
# rank. K = 4 owners on 2 owner ranks (K > owner ranks), a non-IID (Dirichlet) partition, two
# stages, both schedules:
#  - stop after round 1 (--rounds 1), resume for round 2;
#  - stop in the middle of a round (checkpoints every N steps; the run is stopped right after a
#    mid-round checkpoint by the test hook MPSL_TEST_EXIT_AFTER_CHECKPOINTS), resume.
# The compared checkpoint is the one each run writes at its end; the round-2 training loss
# reported after a mid-round resume equals the uninterrupted run's. Also: the single-process
# trainer (K = 4 simulated owners) stopped mid-round. 1F1B also runs with --max-in-flight 1.
set -uo pipefail
MPSL=${1:?usage: checkpoint_resume.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

same_model() {  # NAME A B
  if out=$($PY "$HERE/compare_models.py" "$2" "$3"); then pass "$1 (model): $out"; else fail "$1 (model): $out"; fi
}
same_ckpt() {  # NAME A_FOLDER B_FOLDER
  if out=$($PY "$HERE/checkpoint_compare.py" "$2" "$3"); then pass "$1 (checkpoint): $out"; else fail "$1 (checkpoint): $out"; fi
}
round_loss() {  # METRICS ROUND: the train_loss of that round's last round_end event
  $PY -c "import json,sys; print([e['train_loss'] for e in map(json.loads, open(sys.argv[1])) if e['event']=='round_end' and e['round']==int(sys.argv[2])][-1])" "$1" "$2"
}

# 6 steps per owner and round; every 4 steps puts cuts at (round 1, step 4), (2, 2), (2, end).
C="--model fmnist-cnn --synthetic --synthetic-count 2048 --batch 32 --batches-per-epoch 6"
C="$C --owners 4 --partition dirichlet --alpha 1 --threads 1 --quiet"
END=ckpt-r0002-s000006

check_schedule() {  # LABEL STOP_AFTER STOP_NAME SCHEDULE_OPTIONS...
  local label=$1 stop_after=$2 stop_name=$3
  shift 3
  local S="$*" d="$T/$label"
  mkdir -p "$d"
  mpsl_run 4 train $C --stages 2 $S --rounds 2 --checkpoint-dir "$d/straight" --checkpoint-every 0 \
    --save-model "$d/straight.h5" --metrics "$d/straight.jsonl" > /dev/null || fail "$label straight run"

  mpsl_run 4 train $C --stages 2 $S --rounds 1 --checkpoint-dir "$d/rounds" > /dev/null \
    || fail "$label round 1"
  mpsl_run 4 train $C --stages 2 $S --rounds 2 --checkpoint-dir "$d/rounds" --resume latest \
    --save-model "$d/rounds.h5" > /dev/null || fail "$label resume for round 2"
  same_model "$label: 1 round + stop + resume + 1 round == 2 rounds" "$d/straight.h5" "$d/rounds.h5"
  same_ckpt "$label: 1 round + stop + resume + 1 round == 2 rounds" "$d/straight/$END" "$d/rounds/$END"

  MPSL_TEST_EXIT_AFTER_CHECKPOINTS=$stop_after mpsl_run 4 train $C --stages 2 $S --rounds 2 \
    --checkpoint-dir "$d/mid" --checkpoint-every 4steps --metrics "$d/mid.jsonl" > /dev/null \
    || fail "$label run stopped mid-round"
  if [ "$(cat "$d/mid/latest")" = "$stop_name" ]; then pass "$label: stopped right after $stop_name"
  else fail "$label: latest is '$(cat "$d/mid/latest")', expected $stop_name"; fi
  mpsl_run 4 train $C --stages 2 $S --rounds 2 --checkpoint-dir "$d/mid" --checkpoint-every 4steps \
    --resume latest --save-model "$d/mid.h5" --metrics "$d/mid.jsonl" > /dev/null \
    || fail "$label resume mid-round"
  same_model "$label: stop at $stop_name + resume == straight" "$d/straight.h5" "$d/mid.h5"
  same_ckpt "$label: stop at $stop_name + resume == straight" "$d/straight/$END" "$d/mid/$END"
  a=$(round_loss "$d/straight.jsonl" 2) b=$(round_loss "$d/mid.jsonl" 2)
  if [ "$a" = "$b" ]; then pass "$label: round 2 train loss after the resume $b == straight"
  else fail "$label: round 2 train loss $b after the resume, $a straight"; fi
}

# Momentum must survive the round ends to be worth comparing: keep (each copy its own) and
# average (FedAvg'd with the weights) rather than the default reset.
check_schedule mpsl 1 ckpt-r0001-s000004 --schedule mpsl --optimizer-state keep
check_schedule 1f1b 2 ckpt-r0002-s000002 --schedule 1f1b --micro-batches 2 --optimizer-state average
# A stage at its --max-in-flight limit keeps activations that arrive early for the next window
# waiting across the window's end (and the mid-round checkpoint there).
check_schedule 1f1b-limit1 2 ckpt-r0002-s000002 --schedule 1f1b --micro-batches 2 \
  --optimizer-state average --max-in-flight 1

# Wall-clock interval: rank 0 looks at the clock between steps and all ranks follow its call.
d="$T/clock"
MPSL_TEST_EXIT_AFTER_CHECKPOINTS=1 mpsl_run 4 train $C --stages 2 --rounds 2 --optimizer-state keep \
  --checkpoint-dir "$d" --checkpoint-every 0.2s > /dev/null || fail "wall-clock run"
mpsl_run 4 train $C --stages 2 --rounds 2 --optimizer-state keep --checkpoint-dir "$d" \
  --checkpoint-every 0.2s --resume latest --save-model "$d.h5" > /dev/null || fail "wall-clock resume"
same_model "--checkpoint-every 0.2s: stop at $(ls "$d" | head -1) + resume == straight" \
  "$T/mpsl/straight.h5" "$d.h5"

# Wall-clock interval with one slow owner (emulated, on owner rank 1): rank 0 decides at each
# look at the clock with a non-synchronising MPI_Bcast, so owner rank 0 runs ahead into the next
# step window while rank 1 is still in this one. A stage must not count that early work as
# this window's (it would leave the window and wait in the Bcast for a rank that waits for it).
cat > "$T/slow.json" <<'EOF2'
{"classes": {"fast": {}, "slow": {"compute_factor": 10, "latency_s": 0.05}},
 "owners": {"default": "fast", "3": "slow"}}
EOF2
mpsl_run 4 train $C --stages 2 --rounds 2 --optimizer-state keep --checkpoint-dir "$T/ahead" \
  --checkpoint-every 1000s --emulate "$T/slow.json" --save-model "$T/ahead.h5" > /dev/null \
  || fail "wall-clock windows with a slow owner (exit $?: 124 is a deadlock)"
same_model "--checkpoint-every 1000s, owner 3 slow: windows == straight" \
  "$T/mpsl/straight.h5" "$T/ahead.h5"

# Single process, K = 4 simulated owners, stopped at (round 1, step 2).
d="$T/single"
C="$C --rounds 2"
C="$C --optimizer-state keep"
mpsl_run 1 train $C --checkpoint-dir "$d/straight" --checkpoint-every 0 --save-model "$d/straight.h5" \
  > /dev/null || fail "single straight run"
MPSL_TEST_EXIT_AFTER_CHECKPOINTS=1 mpsl_run 1 train $C --checkpoint-dir "$d/mid" --checkpoint-every 2steps \
  > /dev/null || fail "single run stopped mid-round"
mpsl_run 1 train $C --checkpoint-dir "$d/mid" --checkpoint-every 2steps --resume latest \
  --save-model "$d/mid.h5" > /dev/null || fail "single resume"
same_model "single process K=4: stop at $(ls "$d/mid" | head -1) + resume == straight" "$d/straight.h5" "$d/mid.h5"
same_ckpt "single process K=4: stop mid-round + resume == straight" "$d/straight/$END" "$d/mid/$END"
# BatchNorm running statistics (resnet18, single process, K = 2), with --checkpoint-keep 1.
d="$T/bn"
B="--model resnet18 --synthetic --synthetic-count 64 --batch 4 --batches-per-epoch 3 --owners 2"
B="$B --rounds 2 --threads 1 --quiet --optimizer-state keep"
mpsl_run 1 train $B --checkpoint-dir "$d/straight" --checkpoint-every 0 > /dev/null || fail "resnet18 straight"
MPSL_TEST_EXIT_AFTER_CHECKPOINTS=2 mpsl_run 1 train $B --checkpoint-dir "$d/mid" --checkpoint-every 2steps \
  --checkpoint-keep 1 > /dev/null || fail "resnet18 run stopped mid-round"
n=$(ls -d "$d"/mid/ckpt-* | wc -l)
if [ "$n" = 1 ]; then pass "--checkpoint-keep 1 keeps one checkpoint"; else fail "--checkpoint-keep 1 left $n"; fi
mpsl_run 1 train $B --checkpoint-dir "$d/mid" --checkpoint-every 2steps --checkpoint-keep 1 \
  --resume latest > /dev/null || fail "resnet18 resume"
same_ckpt "resnet18 (BatchNorm) K=2: stop at ckpt-r0002-s000001 + resume == straight" \
  "$d/straight/ckpt-r0002-s000003" "$d/mid/ckpt-r0002-s000003"

# The single-process simulation and the multihop run hold the same aggregated model.
same_model "single-process simulation == multihop mpsl schedule" "$T/single/straight.h5" \
  "$T/mpsl/straight.h5"
summary
