#!/usr/bin/env bash
# How a rank waits, side by side in one run: the mailbox's doorbell (comm/doorbell.hpp: an idle
# rank sleeps until a peer on its node sends to it) against polling with 20-200 us sleeps
# (MPSL_DOORBELL=0), on configurations with as many ranks as cores and more. fmnist-cnn,
# batch 64, synthetic data, one thread per rank; the two sides alternate, each configuration
# REPS times. Prints per configuration the median round time (rounds 2 on) and the CPU seconds
# all ranks used per round, of both, and their ratios.
# --against send-polling: the other side is the doorbell with a sender polling every 20-160 us
# while a send of its own is in transfer (MPSL_POLL_SENDS=1, as until fe350da) instead of the
# receiver ringing it when it has copied the message.
#
#   tools/bench_wait.sh [--reps N] [--rounds R] [--against polling|send-polling] [--out FILE.md]
set -euo pipefail
source "$(dirname "$0")/lib/bench_common.sh"
REPS=5 ROUNDS=8 OUT="" AGAINST=polling
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --against) AGAINST=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "bench_wait.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $AGAINST in
  polling) OTHER="MPSL_DOORBELL=0" ;;
  send-polling) OTHER="MPSL_POLL_SENDS=1" ;;
  *) echo "bench_wait.sh: --against must be polling or send-polling, got '$AGAINST'" >&2; exit 2 ;;
esac
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "bench_wait.sh: --reps must be a positive integer, got '$REPS'" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 3 ] || { echo "bench_wait.sh: --rounds must be a number >= 3, got '$ROUNDS'" >&2; exit 2; }
bc_build
bc_mpi_oversubscribed
bc_warn_if_busy
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# name schedule stages owners micro-batches
CONFIGS=("1f1b 1 4 4" "mpsl 2 4 1" "1f1b 2 4 4" "1f1b 3 4 4" "mpsl 3 8 1")

# run CONFIG SETTING FILE: one training run with the environment SETTING (VAR=value);
# appends "round_s cpu_s_per_round" to FILE.
run() {
  read -r sched n k micro <<< "$1"
  env "$2" mpirun -x "${2%%=*}" -n $((1 + n)) "$MPSL_BIN" train --model fmnist-cnn \
    --synthetic --synthetic-count $((k * 64 * 4)) --batch 64 --batches-per-epoch 4 \
    --rounds "$ROUNDS" --owners "$k" --stages "$n" --schedule "$sched" --micro-batches "$micro" \
    --threads 1 --quiet --metrics "$T/m.jsonl" > /dev/null
  python3 - "$T/m.jsonl" >> "$3" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds = [r["seconds"] for r in rows if r["event"] == "round_end"]
cpu = sum(r["cpu_s"] for r in rows if r["event"] == "rank_summary")
print(statistics.median(rounds[1:]), cpu / len(rounds))
PY
}

for c in "${CONFIGS[@]}"; do
  f=$T/$(echo "$c" | tr ' ' _)
  : > "$f.bell"; : > "$f.poll"
  for rep in $(seq 1 "$REPS"); do
    run "$c" MPSL_DOORBELL=1 "$f.bell"
    run "$c" "$OTHER" "$f.poll"
    echo "$c rep $rep: doorbell $(tail -1 "$f.bell"), $AGAINST $(tail -1 "$f.poll") (round s, CPU s per round)" >&2
  done
done

{
  echo "## How ranks wait: doorbell vs $AGAINST ($OTHER; fmnist-cnn, batch 64, 4 batches per owner and round, $ROUNDS rounds, median of $REPS alternating runs, $CORES cores)"
  echo
  echo "| schedule | N | K | ranks | round s, doorbell | round s, $AGAINST | ratio | CPU s/round, doorbell | $AGAINST | ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for c in "${CONFIGS[@]}"; do
    f=$T/$(echo "$c" | tr ' ' _)
    python3 - "$c" "$f.bell" "$f.poll" <<'PY'
import statistics, sys
sched, n, k, micro = sys.argv[1].split()
b = [tuple(map(float, l.split())) for l in open(sys.argv[2])]
p = [tuple(map(float, l.split())) for l in open(sys.argv[3])]
br, pr = statistics.median(x[0] for x in b), statistics.median(x[0] for x in p)
bc, pc = statistics.median(x[1] for x in b), statistics.median(x[1] for x in p)
label = f"{sched} M={micro}" if sched == "1f1b" else sched
print(f"| {label} | {n} | {k} | {int(n) + 1} | {br:.3f} | {pr:.3f} | {br / pr:.2f} | {bc:.3f} | {pc:.3f} | {bc / pc:.2f} |")
PY
  done
  echo
  echo "ratio < 1: the doorbell is faster (or uses less CPU)."
} | tee "${OUT:-/dev/null}"
