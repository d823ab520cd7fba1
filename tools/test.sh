#!/usr/bin/env bash
# Installs the packages, builds, and runs every test (unit, MPI, integration) through ctest.
# CI reads ctest's closing line ("100% tests passed, 0 tests failed out of N").
# Extra arguments go to ctest (e.g. -L unit, -R cli).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/install-deps.sh
bash tools/build.sh

# mpirun as root (containers, CI) and more ranks than cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1

build_dir="${MPSL_BUILD_DIR:-build}"
# --timeout is the limit for a test that sets none of its own (integration tests set 900 s).
ctest --test-dir "$build_dir" --output-on-failure -j1 --timeout "${MPSL_TEST_TIMEOUT:-1200}" "$@"
