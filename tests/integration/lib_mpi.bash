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

# random_test_set OUT.h5 COUNT SEED: a test set of COUNT random 28x28 images and labels in the
# Fashion-MNIST format, written as IDX files and converted by mpsl (MPSL must be set).
random_test_set() {
  local out=$1 count=$2 seed=$3 dir
  dir=$(mktemp -d)
  $PY - "$dir" "$count" "$seed" <<'PY' &&
import gzip, struct, sys, numpy as np
d, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
def idx(path, a, magic):
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", k) for k in a.shape) + a.tobytes())
idx(d + "/t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x803)
idx(d + "/t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8), 0x801)
PY
    "$MPSL" convert --format fashion-mnist --input "$dir" --split test --output "$out" --quiet
  local rc=$?
  rm -rf "$dir"
  return $rc
}
