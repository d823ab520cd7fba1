#!/usr/bin/env bash
# Configures and builds mpsl (Release) into build/ (or $MPSL_BUILD_DIR), with all cores.
# Extra arguments go to the CMake configure step (e.g. -DMPSL_BUILD_BENCHMARKS=OFF).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir="${MPSL_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build_dir" -j"$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
