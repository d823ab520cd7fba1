#!/usr/bin/env bash
# Checks the cost model against real runs on this machine and prints the tables of issue 6:
#   grid      predicted vs measured round time (median of rounds 2..R, R = --rounds, default 5,
#             or more so that rounds 2..R last --min-seconds, default 10, as predicted: the
#             host's speed moves over seconds; round 1 warms up), fmnist-cnn and
#             vgg19, N in {1,2,3}, K in {2,4,8}, schedules mpsl and 1f1b; and predicted vs
#             measured peak memory (RSS) of every rank of those runs. A virtual machine's speed
#             drifts by tens of percent within an hour, so a speed probe (one second of
#             fmnist-cnn steps) runs beside every profile and before every run; the table also
#             gives the prediction with the profile's times scaled by probe(run) / probe(profile),
#             with the profile retimed just before the run, and with that retimed profile at the
#             mean of its speed and the speed of a retime just after the run ("around")
#   headline  largest per-node memory, multihop (N = 1..4) vs one hop, vgg19 and resnet101,
#             K in {4,16,100}, batch 128 (predicted from bytes-only profiles)
#   gain      planner vs an even split by unit count: predicted round-time gain for paper-like
#             devices (vgg19, resnet101, batch 128), and one measured pair on this machine
# Timing (profiles and runs) happens under the EXCLUSIVE CPU lock (/tmp/mpsl-cpu.lock), one run
# at a time, so other builds and tests wait only for short sections.
#
# --passes P measures the grid P times (OUT/pass1..P, each with its own profiles) and also
# prints, per configuration, the median measured against the median predicted round time:
# the virtual machine's drift (over 10% within minutes) then averages out of both sides.
#
#   tools/validate_cost_model.sh [--sections "grid headline gain"] [--models "fmnist-cnn vgg19"]
#       [--owners "2 4 8"] [--stages "1 2 3"] [--schedules "mpsl 1f1b"] [--rounds R] [--out DIR]
#       [--passes P] [--min-seconds T] [--pipeline-ranks R]
# --pipeline-ranks R: profiles calibrate the cost model with real runs of 2..R ranks (-1 =
# cores + 2; default 0, none: `mpsl profile --pipeline-ranks`; val29 ran with -1)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MPSL_BUILD_DIR:-$REPO/build}
SECTIONS="grid headline gain" MODELS="fmnist-cnn vgg19" OWNERS="2 4 8" STAGES="1 2 3"
SCHEDULES="mpsl 1f1b" OUT="" ROUNDS=5 PASSES=1 MIN_SECONDS=10 PIPELINE_RANKS=0
ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --sections) SECTIONS=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    --owners) OWNERS=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --schedules) SCHEDULES=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --passes) PASSES=$2; shift 2 ;;
    --min-seconds) MIN_SECONDS=$2; shift 2 ;;
    --pipeline-ranks) PIPELINE_RANKS=$2; shift 2 ;;
    -h|--help) sed -n 2,28p "$0"; exit 0 ;;
    *) echo "validate_cost_model.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$PASSES" =~ ^[1-9][0-9]*$ ]] || { echo "validate_cost_model.sh: --passes must be a positive integer, got '$PASSES'" >&2; exit 2; }
[[ "$MIN_SECONDS" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "validate_cost_model.sh: --min-seconds must be a number of seconds, got '$MIN_SECONDS'" >&2; exit 2; }
[ -x "$BUILD/mpsl" ] || "$REPO/tools/build.sh"
MPSL=$BUILD/mpsl
OUT=${OUT:-$REPO/runs/cost-model}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# The host's cores, before OMP_NUM_THREADS=1 below: GNU nproc reports OMP_NUM_THREADS when set
# (until b2c98d3 the gain section planned its measured runs for 1 core).
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
export OMP_NUM_THREADS=1
LOCK=/tmp/mpsl-cpu.lock
TABLES="python3 $REPO/tools/lib/cost_tables.py"
note() { echo "validate_cost_model: $*" >&2; }

if [ "$PASSES" -gt 1 ] && [[ " $SECTIONS " == *" grid "* ]]; then
  # Each pass is this script with one pass into its own folder (the other sections run once).
  one=() skip=0
  for a in "${ARGS[@]}"; do
    if [ $skip = 1 ]; then skip=0; continue; fi
    case $a in --passes|--out|--sections) skip=1 ;; *) one+=("$a") ;; esac
  done
  dirs=()
  for p in $(seq 1 "$PASSES"); do
    note "pass $p of $PASSES"
    "$0" "${one[@]}" --sections grid --out "$OUT/pass$p"
    dirs+=("$OUT/pass$p")
  done
  $TABLES repeated "${dirs[@]}"
  rest=$(echo " $SECTIONS " | sed 's/ grid / /')
  if [ -n "${rest// /}" ]; then exec "$0" "${one[@]}" --sections "$rest" --out "$OUT"; fi
  exit 0
fi

# Per model: batch, batches per owner and round, micro-batches for 1f1b.
batch_of() { case $1 in vgg19) echo 16 ;; *) echo 64 ;; esac; }
steps_of() { case $1 in vgg19) echo 1 ;; *) echo 4 ;; esac; }
micro_of() { case $1 in vgg19) echo 2 ;; *) echo 4 ;; esac; }

profile() {  # model batch micro repeats out [concurrency]
  [ -s "$5" ] && return 0
  note "profiling $1 (batch $2, $3 micro-batch(es), $4 repeats)"
  flock -x $LOCK "$MPSL" profile --model "$1" --batch "$2" --micro-batches "$3" --repeats "$4" \
    --concurrency "${6:--1}" --pipeline-ranks "$PIPELINE_RANKS" --threads 1 --quiet --output "$5"
  [ "$4" -gt 0 ] && probe "${5%.json}.probe.json"
  return 0
}

# The machine's speed now: fmnist-cnn training steps, alone, 20 timed (about a second).
probe() {
  flock -x $LOCK "$MPSL" profile --model fmnist-cnn --batch 64 --repeats 20 --concurrency 0 \
    --threads 1 --quiet --output "$1"
}
probe_seconds() {
  python3 -c "import json, sys
print(sum(u['forward_s'] + u['backward_s'] for u in json.load(open(sys.argv[1]))['units']))" "$1"
}

available_bytes() { awk '/MemAvailable/ {printf "%.0f", $2 * 1024}' /proc/meminfo; }

if [[ " $SECTIONS " == *" grid "* ]]; then
  for model in $MODELS; do
    batch=$(batch_of "$model") steps=$(steps_of "$model")
    for sched in $SCHEDULES; do
      micro=1
      [ "$sched" = 1f1b ] && micro=$(micro_of "$model")
      prof=$OUT/profile-$model-b$batch-m$micro.json
      profile "$model" "$batch" "$micro" 7 "$prof"
      for n in $STAGES; do
        for k in $OWNERS; do
          name=$model-$sched-n$n-k$k
          m=$OUT/grid/$name.jsonl
          [ -s "$m" ] && grep -q run_end "$m" && continue
          mkdir -p "$OUT/grid"
          # Skip what this machine cannot hold (the dry run predicts it).
          dry=$(mpirun -n $((1 + n)) "$MPSL" train --model "$model" --synthetic \
            --synthetic-count $((k * batch * steps)) --batch "$batch" --batches-per-epoch "$steps" \
            --owners "$k" --stages "$n" --schedule "$sched" --micro-batches "$micro" --threads 1 \
            --profile "$prof" --dry-run)
          need=$(awk '/predicted peak/ {
                v = $0; sub(/.*predicted peak /, "", v); split(v, a, " ");
                f = a[2] == "GiB" ? 2^30 : a[2] == "MiB" ? 2^20 : 2^10; s += a[1] * f } END { printf "%.0f", s }' <<< "$dry")
          # Rounds 2..R long enough (as predicted) to average over the host's speed.
          rounds=$(awk -v r="$ROUNDS" -v t="$MIN_SECONDS" '/^predicted round time:/ {
                n = int(t / $4) + 2; if (n > r) r = n } END { print r }' <<< "$dry")
          if [ "$need" -gt $(($(available_bytes) * 8 / 10)) ]; then
            note "skipping $name: predicted $((need >> 20)) MiB, $(($(available_bytes) >> 20)) MiB available"
            continue
          fi
          note "run $name"
          probe "$OUT/grid/$name.probe.json"
          # The profile's times measured again just before the run (its bytes, placement and
          # hops kept): the machine's speed drifts by more than the target within minutes.
          flock -x $LOCK "$MPSL" profile --from "$prof" --retime --repeats 5 --threads 1 --quiet \
            --output "$OUT/grid/$name.retimed.json"
          flock -x $LOCK mpirun -n $((1 + n)) "$MPSL" train --model "$model" --synthetic \
            --synthetic-count $((k * batch * steps)) --batch "$batch" --batches-per-epoch "$steps" \
            --rounds "$rounds" --owners "$k" --stages "$n" --schedule "$sched" --micro-batches "$micro" \
            --threads 1 --quiet --profile "$prof" --metrics "$m" > /dev/null
          # And just after it: the mean of the two speeds is the host's during the run, as
          # near as a measurement outside the run gets.
          flock -x $LOCK "$MPSL" profile --from "$prof" --retime --repeats 5 --threads 1 --quiet \
            --output "$OUT/grid/$name.after.json"
        done
      done
    done
  done
  # The current cost model's predictions for every measured run (the same profile; the runs
  # themselves also wrote the predictions of the binary that ran them into their metrics).
  for m in "$OUT"/grid/*.jsonl; do
    [ -s "$m" ] || continue
    args=$(python3 -c "
import json, sys
s = next(json.loads(l) for l in open(sys.argv[1]) if '\"run_start\"' in l)
print(s['model'], s['stages'], s['owners'], s['schedule'], s['micro_batches'], s['batch'],
      s['train_images'])" "$m")
    read -r model n k sched micro batch images <<< "$args"
    # predict PROFILE OUT: the run's dry run with PROFILE.
    predict() {
      mpirun -n $((1 + n)) "$MPSL" train --model "$model" --synthetic --synthetic-count "$images" \
        --batch "$batch" --batches-per-epoch "$(steps_of "$model")" --owners "$k" --stages "$n" \
        --schedule "$sched" --micro-batches "$micro" --threads 1 --profile "$1" --dry-run > "$2"
    }
    prof=$OUT/profile-$model-b$batch-m$micro.json
    predict "$prof" "${m%.jsonl}.pred"
    # The same with the profile's times at the speed the probe saw just before the run.
    if [ -s "${m%.jsonl}.probe.json" ] && [ -s "${prof%.json}.probe.json" ]; then
      f=$(python3 -c "import sys; print(float(sys.argv[1]) / float(sys.argv[2]))" \
        "$(probe_seconds "${m%.jsonl}.probe.json")" "$(probe_seconds "${prof%.json}.probe.json")")
      "$MPSL" profile --from "$prof" --device "slow=$f" --quiet --output "${m%.jsonl}.now.json"
      predict "${m%.jsonl}.now.json" "${m%.jsonl}.now.pred"
      echo "$f" > "${m%.jsonl}.speed"
    fi
    if [ -s "${m%.jsonl}.retimed.json" ]; then
      predict "${m%.jsonl}.retimed.json" "${m%.jsonl}.retimed.pred"
      # Retimed before and after the run: the before-profile at the mean of both speeds.
      if [ -s "${m%.jsonl}.after.json" ]; then
        f=$(python3 -c "import sys; print(0.5 * (1 + float(sys.argv[2]) / float(sys.argv[1])))" \
          "$(probe_seconds "${m%.jsonl}.retimed.json")" "$(probe_seconds "${m%.jsonl}.after.json")")
        "$MPSL" profile --from "${m%.jsonl}.retimed.json" --device "slow=$f" --quiet \
          --output "${m%.jsonl}.around.json"
        predict "${m%.jsonl}.around.json" "${m%.jsonl}.around.pred"
      fi
    fi
  done
  $TABLES grid "$OUT"/grid/*.jsonl
fi

if [[ " $SECTIONS " == *" headline "* ]]; then
  mkdir -p "$OUT/headline"
  for model in vgg19 resnet101; do
    prof=$OUT/profile-$model-b128-bytes.json
    profile "$model" 128 1 0 "$prof"
    for k in 4 16 100; do
      for n in 1 2 3 4; do
        "$MPSL" plan --profile "$prof" --owners "$k" --stages "$n" --quiet \
          --output "$OUT/headline/$model-k$k-n$n.json"
      done
    done
  done
  $TABLES headline "$OUT"/headline/*.json
fi

if [[ " $SECTIONS " == *" gain "* ]]; then
  mkdir -p "$OUT/gain"
  # Paper-like devices: owners 20x slower than this machine on 8 Mbit/s links; compute nodes
  # like this machine, 7 Gbit/s between them; 16 batches per owner and round.
  for model in vgg19 resnet101; do
    prof=$OUT/profile-$model-b128-timed.json
    profile "$model" 128 1 3 "$prof" 0
    for k in 10 50; do
      for n in 2 3 4; do
        "$MPSL" plan --profile "$prof" --owners "$k" --owner-ranks "$k" --stages "$n" --quiet \
          --owner-device slow=20,bw=8Mbit,lat=1ms --node-device bw=7Gbit,lat=0.1ms \
          --batches-per-round 16 --output "$OUT/gain/$model-k$k-n$n.json"
      done
    done
  done
  # Measured on this machine: fmnist-cnn, K = 4, N = 3, planned split vs even split, 7 repeats
  # (alternating; the median of each).
  prof=$OUT/profile-fmnist-cnn-b64-m1.json
  profile fmnist-cnn 64 1 7 "$prof"
  "$MPSL" plan --profile "$prof" --owners 4 --stages 3 --cores "$CORES" --batches-per-round 8 \
    --quiet --output "$OUT/gain/measured-plan.json"
  even=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['even_split']['split'])))" "$OUT/gain/measured-plan.json")
  for rep in 1 2 3 4 5 6 7; do
    for side in plan even; do
      m=$OUT/gain/measured-$side-$rep.jsonl
      [ -s "$m" ] && grep -q run_end "$m" && continue
      if [ $side = plan ]; then how=(--plan "$OUT/gain/measured-plan.json"); else how=(--split "$even" --profile "$prof"); fi
      flock -x $LOCK mpirun -n 4 "$MPSL" train --model fmnist-cnn --synthetic --synthetic-count 2048 \
        --batch 64 --batches-per-epoch 8 --rounds 2 --owners 4 --stages 3 --threads 1 --quiet \
        "${how[@]}" --metrics "$m" > /dev/null
    done
  done
  $TABLES gain "$OUT"/gain/*.json "$OUT"/gain/measured-*.jsonl
fi
