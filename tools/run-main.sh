#!/usr/bin/env bash
# The main job from a fresh machine: install the packages, build, convert Fashion-MNIST (once)
# and train it with multihop parallel split learning: 4 MPI ranks = 2 data-owner ranks holding
# 4 data owners + 2 compute stages, 3 rounds with FedAvg. Extra arguments are passed to
# `mpsl train` (later ones win, e.g. --rounds 1). MPSL_RANKS changes the rank count.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/install-deps.sh
bash tools/build.sh

build_dir="${MPSL_BUILD_DIR:-build}"
mpsl="$build_dir/mpsl"

mkdir -p data runs/main
for split in train test; do
  out="data/fashion-mnist-$split.h5"
  if [ ! -s "$out" ]; then
    # Convert into a temporary name first so an interrupted conversion leaves no partial file.
    tmp="data/.fashion-mnist-$split.tmp.h5"
    rm -f "$tmp"
    "$mpsl" convert --format fashion-mnist --split "$split" --output "$tmp"
    mv "$tmp" "$out"
  fi
done

# More ranks than cores is fine (waiting ranks sleep); one thread per rank.
export OMP_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
mpirun -n "${MPSL_RANKS:-4}" "$mpsl" train --model fmnist-cnn \
  --data data/fashion-mnist-train.h5 --test-data data/fashion-mnist-test.h5 \
  --stages 2 --owners 4 --split 3,4,7 --batch 64 --weight-decay 0 --rounds 3 --threads 1 \
  --metrics runs/main/metrics.jsonl --save-model runs/main/model.h5 "$@"
