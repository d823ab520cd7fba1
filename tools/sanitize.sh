#!/usr/bin/env bash
# Memory and undefined-behaviour checks (not part of .ci/run; see the README):
#   asan      builds everything with AddressSanitizer + UndefinedBehaviorSanitizer
#             (-DMPSL_SANITIZE=address,undefined, RelWithDebInfo) into build-sanitize/ and runs
#             the ctest suite there: the unit tests and the MPI/integration tests (any report
#             ends the process with an error, so the test fails). Extra arguments go to ctest,
#             e.g. `tools/sanitize.sh asan -L unit`.
#   valgrind  short training runs of the normal build (build/) under valgrind memcheck: one
#             process, and 3 ranks (owner rank + 2 stages) under mpirun; any error in any
#             process fails. Suppressed: Open MPI's own file (openmpi-valgrind.supp) and
#             tools/sanitize/valgrind.supp (MPI, PMIx, hwloc, libevent, OpenMP start-up noise).
#   all       both (the default).
# Installs valgrind from Debian if missing. Needs the packages of tools/install-deps.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
here=$PWD
what=${1:-all}
[ $# -gt 0 ] && shift

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1

run_asan() {
  # Leaks: Open MPI, PMIx and hwloc keep allocations until exit (tools/sanitize/lsan.supp).
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=86:strict_string_checks=1:detect_stack_use_after_return=0"
  export LSAN_OPTIONS="suppressions=$here/tools/sanitize/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87"
  local dir=${MPSL_SANITIZE_BUILD_DIR:-build-sanitize}
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMPSL_SANITIZE=address,undefined \
    -DMPSL_BUILD_BENCHMARKS=OFF > /dev/null
  cmake --build "$dir" -j"$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
  # Unit tests with leak detection; the MPI and integration runs without it: Open MPI unloads
  # its components at exit, so their leaks show up from "<unknown module>" and cannot be
  # suppressed by name (AddressSanitizer's memory errors and UBSan stay on there).
  ctest --test-dir "$dir" --output-on-failure -j1 --timeout 1800 -L unit "$@"
  ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}" \
    ctest --test-dir "$dir" --output-on-failure -j1 --timeout 1800 -L integration "$@"
}

run_valgrind() {
  command -v valgrind > /dev/null || {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y --no-install-recommends valgrind > /dev/null
  }
  [ -x build/mpsl ] || bash tools/build.sh > /dev/null
  local logs
  logs=$(mktemp -d)
  local vg=(valgrind --error-exitcode=97 --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite --num-callers=40 --track-origins=no
    --suppressions=/usr/share/openmpi/openmpi-valgrind.supp
    --suppressions="$here/tools/sanitize/valgrind.supp")
  # oneDNN picks its kernels from CPUID; valgrind runs AVX2 code but not AVX-512.
  export ONEDNN_MAX_CPU_ISA=AVX2
  local args=(train --model fmnist-cnn --synthetic --synthetic-count 64 --batch 8 --max-steps 2
    --warmup-steps 0 --threads 1 --quiet)
  local rc=0 code=0
  echo "valgrind: one process"
  "${vg[@]}" --log-file="$logs/single.%p.log" build/mpsl "${args[@]}" --owners 2 > /dev/null ||
    code=$?
  echo "  exit code $code"
  [ "$code" = 0 ] || rc=1
  code=0
  echo "valgrind: 3 ranks (1 owner rank + 2 stages) under mpirun"
  mpirun -n 3 "${vg[@]}" --log-file="$logs/multihop.%p.log" build/mpsl "${args[@]}" --stages 2 \
    --owners 2 > /dev/null || code=$?
  echo "  exit code $code"
  [ "$code" = 0 ] || rc=1
  local f
  for f in "$logs"/*.log; do
    if ! grep -q "ERROR SUMMARY" "$f"; then
      # A child that a checked process forked and that then exec'd another program (Open MPI's
      # singleton start-up runs its launcher so): valgrind stops following it at the exec, and
      # its log has the header only. Its parent's log is in the same folder.
      local parent
      parent=$(sed -n 's/.*Parent PID: \([0-9]*\).*/\1/p' "$f" | head -1)
      if [ -n "$parent" ] && ls "$logs"/*."$parent".log > /dev/null 2>&1 &&
        [ "$(grep -c "^==[0-9]*== [^ ]" "$f")" -le 5 ]; then
        echo "  $(basename "$f"): no summary: a child of process $parent that exec'd another program"
        continue
      fi
      echo "  $(basename "$f"): no ERROR SUMMARY (the process did not end normally)"
      rc=1
      cat "$f"
      continue
    fi
    local summary
    summary=$(grep -h "ERROR SUMMARY" "$f" | tail -1)
    echo "  $(basename "$f"): ${summary#*== }"
    if ! grep -q "ERROR SUMMARY: 0 errors" "$f"; then
      rc=1
      cat "$f"
    fi
  done
  rm -rf "$logs"
  [ "$rc" = 0 ] && echo "valgrind: clean" || echo "valgrind: ERRORS (see above)"
  return "$rc"
}

case "$what" in
  asan) run_asan "$@" ;;
  valgrind) run_valgrind ;;
  all) run_asan "$@" && run_valgrind ;;
  *) echo "usage: tools/sanitize.sh [asan|valgrind|all] [ctest arguments]" >&2; exit 2 ;;
esac
