#!/usr/bin/env bash
# The main job from a fresh machine: install the packages, build, convert Fashion-MNIST (once)
# and train. Extra arguments are passed to `mpsl train` (later ones win, e.g. --rounds 3).
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

"$mpsl" train --model fmnist-cnn \
  --data data/fashion-mnist-train.h5 --test-data data/fashion-mnist-test.h5 \
  --batch 64 --weight-decay 0 --rounds 1 --threads 2 \
  --metrics runs/main/metrics.jsonl "$@"
