#!/usr/bin/env bash
# What checkpoints cost (issue: HDF5 checkpoints with exact resume, point 4): per-rank file size
# and write time, the whole stall of the training (barrier, every rank's write + fsync + file
# CRC, rank 0's manifest, rename and `latest`), and as a floor the time `dd ... conv=fsync`
# takes to write the same number of bytes into the same folder. Two setups, 4 ranks (2 owner
# ranks + 2 stages, K = 4 owners, 1 thread each), synthetic data, a checkpoint after each of 2
# rounds (the figures are the median of the two):
#   fmnist-cnn  batch 64, 5 steps per owner and round
#   resnet18    batch 16, 2 steps per owner and round
#
#   tools/bench_checkpoint.sh [--dir DIR] [--out FILE.md] [--models "fmnist-cnn resnet18"]
# DIR (default: a temporary folder under /tmp) is where the checkpoints go: point it at the file
# system whose speed matters (e.g. the cluster's scratch).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MPSL_BUILD_DIR:-$REPO/build}
DIR="" OUT="" MODELS="fmnist-cnn resnet18"
while [ $# -gt 0 ]; do
  case $1 in
    --dir) DIR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
    *) echo "bench_checkpoint.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$BUILD/mpsl" ] || "$REPO/tools/build.sh"
MPSL=$BUILD/mpsl
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
T=$(mktemp -d ${DIR:+-p "$DIR"})
trap 'rm -rf "$T"' EXIT

report() {  # MODEL METRICS: a markdown table from the run's metrics
  /usr/bin/python3 - "$1" "$2" "$T" << 'EOF'
import json, os, statistics, subprocess, sys, time
model, metrics, tmp = sys.argv[1], sys.argv[2], sys.argv[3]
events = [json.loads(l) for l in open(metrics)]
ckpts = [e for e in events if e["event"] == "checkpoint"]
rounds = [e for e in events if e["event"] == "round_end"]
def dd_seconds(nbytes):
    path = os.path.join(tmp, "dd.bin")
    t = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={max(1, nbytes >> 20)}",
                    "conv=fsync"], check=True, capture_output=True)
    t = time.perf_counter() - t
    os.remove(path)
    return t
print(f"### {model}: 4 ranks (2 owner ranks + 2 stages), K = 4 owners")
print()
print("| rank | role | file size | write + fsync + CRC (s) | MB/s | dd of the same size (s) |")
print("|---:|---|---:|---:|---:|---:|")
for r in ckpts[0]["ranks"]:
    nbytes = r["bytes"]
    secs = statistics.median(c["ranks"][r["rank"]]["write_seconds"] for c in ckpts)
    print(f"| {r['rank']} | {r['role']} | {nbytes / 2**20:.1f} MiB | {secs:.3f} | "
          f"{nbytes / 2**20 / max(secs, 1e-9):.0f} | {dd_seconds(nbytes):.3f} |")
stall = statistics.median(c["seconds"] for c in ckpts)
total = ckpts[0]["bytes"]
round_s = statistics.median(e["seconds"] for e in rounds)
print()
print(f"Checkpoint {total / 2**20:.1f} MiB in all; training stalls {stall:.3f} s per checkpoint "
      f"(median of {len(ckpts)}), {100 * stall / round_s:.0f}% of a round of this tiny run "
      f"({round_s:.2f} s); the slowest rank's file write is "
      f"{max(statistics.median(c['ranks'][i]['write_seconds'] for c in ckpts) for i in range(len(ckpts[0]['ranks']))):.3f} s.")
print()
EOF
}

{
  echo "## Checkpoint cost on $(hostname) ($(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) cores), checkpoints in $(df -P "$T" | awk 'NR==2 {print $1}')"
  echo
  for model in $MODELS; do
    case $model in
      fmnist-cnn) ARGS="--model fmnist-cnn --batch 64 --batches-per-epoch 5 --synthetic-count 2048" ;;
      resnet18) ARGS="--model resnet18 --batch 16 --batches-per-epoch 2 --synthetic-count 512" ;;
      *) ARGS="--model $model --batch 16 --batches-per-epoch 2 --synthetic-count 512" ;;
    esac
    rm -rf "$T/ck"
    mpirun -n 4 "$MPSL" train $ARGS --synthetic --owners 4 --stages 2 --rounds 2 --threads 1 \
      --quiet --checkpoint-dir "$T/ck" --checkpoint-every 1 --metrics "$T/$model.jsonl" > /dev/null
    report "$model" "$T/$model.jsonl"
  done
} | tee ${OUT:+"$OUT"}
