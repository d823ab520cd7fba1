# Shared helpers for the multi-rank integration tests. Sourced by them; ctest runs only *.sh.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
PASSED=0
FAILED=0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=/usr/bin/python3

pass() { PASSED=$((PASSED + 1)); echo "ok   - $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL - $*"; }

# mpsl_run RANKS ARGS...: runs mpsl on RANKS ranks (RANKS=1: no mpirun) within a time bound.
mpsl_run() {
  local ranks=$1
  shift
  if [ "$ranks" = 1 ]; then
    timeout 120 "$MPSL" "$@"
  else
    timeout 120 mpirun -n "$ranks" "$MPSL" "$@"
  fi
}

summary() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}
