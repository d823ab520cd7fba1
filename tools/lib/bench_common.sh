# Shared helpers for the mpsl-vs-PyTorch scripts (tools/bench_vs_torch.sh,
# tools/accuracy_vs_torch.sh) and the MPI micro-benchmarks (tools/bench_hop.sh,
# tools/bench_allreduce.sh). Source it; it defines functions and these variables:
#   REPO        the repository root
#   SHARED      the shared folder with baselines/ ($MPSL_SHARED_DIR, else $REPO/../shared)
#   TORCH_PY    the interpreter that can import Debian's torch (/usr/bin/python3)
#   OPENBLAS_DIR  where libopenblas0-pthread puts its libblas.so.3
# shellcheck shell=bash disable=SC2034

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SHARED="${MPSL_SHARED_DIR:-$REPO/../shared}"
TORCH_PY=/usr/bin/python3
OPENBLAS_DIR=/usr/lib/x86_64-linux-gnu/openblas-pthread
TORCH_PACKAGES=(python3-torch python3-torchvision libopenblas0-pthread)

# The name of the calling script, for messages.
bc_me() { basename "${0%.sh}"; }

bc_die() {
  echo "$(bc_me): error: $*" >&2
  exit 2
}

bc_note() { echo "$(bc_me): $*" >&2; }

# bc_as_root CMD...: runs CMD as root (directly, or through sudo).
bc_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    bc_die "'$*' needs root, and sudo is not available"
  fi
}

# bc_install_torch: installs Debian's torch, torchvision and OpenBLAS (opt-in: --install).
bc_install_torch() {
  local missing=() p
  for p in "${TORCH_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    bc_note "${TORCH_PACKAGES[*]} are installed"
    return 0
  fi
  bc_note "installing ${missing[*]}"
  bc_as_root apt-get update -q
  bc_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# bc_check_torch [torchvision]: dies with a clear message unless PyTorch (and torchvision when
# asked) can be imported by TORCH_PY and OpenBLAS is installed.
bc_check_torch() {
  local hint="run tools/install-deps.sh, then 'apt-get install -y --no-install-recommends ${TORCH_PACKAGES[*]}' (or pass --install to this script)"
  [ -x "$TORCH_PY" ] || bc_die "$TORCH_PY is missing; $hint"
  "$TORCH_PY" -c 'import torch, numpy' 2>/dev/null ||
    bc_die "$TORCH_PY cannot import torch (Debian's python3-torch); $hint"
  if [ "${1:-}" = torchvision ]; then
    "$TORCH_PY" -c 'import torchvision' 2>/dev/null ||
      bc_die "$TORCH_PY cannot import torchvision (python3-torchvision, needed by torch_models_bench.py); $hint"
  fi
  [ -e "$OPENBLAS_DIR/libblas.so.3" ] ||
    bc_die "OpenBLAS is not installed ($OPENBLAS_DIR/libblas.so.3 is missing): PyTorch would run on the slow reference BLAS; $hint"
}

# bc_baseline NAME: the path of a script in $SHARED/baselines, or dies.
bc_baseline() {
  local p="$SHARED/baselines/$1"
  [ -f "$p" ] || bc_die "$p is missing (set MPSL_SHARED_DIR to the folder that holds baselines/)"
  echo "$p"
}

# bc_torch_env THREADS: sets the array TORCH_ENV to an `env ...` prefix that runs a command with
# OpenBLAS as the BLAS and THREADS threads (usable under timeout, unlike a function).
bc_torch_env() {
  TORCH_ENV=(env "LD_LIBRARY_PATH=$OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
             "OPENBLAS_NUM_THREADS=$1" "OMP_NUM_THREADS=$1")
}

# bc_build: builds mpsl unless MPSL_BIN names a binary already; sets MPSL_BIN.
# The build goes to $MPSL_BUILD_DIR (default build/) through tools/build.sh; an up-to-date
# tree takes a few seconds. MPSL_NO_BUILD=1 skips it when the binary exists.
bc_build() {
  if [ -n "${MPSL_BIN:-}" ]; then
    [ -x "$MPSL_BIN" ] || bc_die "MPSL_BIN='$MPSL_BIN' is not an executable"
    return 0
  fi
  local dir="${MPSL_BUILD_DIR:-build}"
  case "$dir" in /*) ;; *) dir="$REPO/$dir" ;; esac
  MPSL_BIN="$dir/mpsl"
  if [ "${MPSL_NO_BUILD:-0}" = 1 ] && [ -x "$MPSL_BIN" ]; then
    return 0
  fi
  local log
  log="$(mktemp "${TMPDIR:-/tmp}/mpsl-build.XXXXXX.log")"
  bc_note "building mpsl into $dir (log: $log)"
  if ! MPSL_BUILD_DIR="$dir" bash "$REPO/tools/build.sh" >"$log" 2>&1; then
    tail -30 "$log" >&2
    bc_die "the build failed (full log: $log)"
  fi
  rm -f "$log"
  [ -x "$MPSL_BIN" ] || bc_die "the build left no binary at $MPSL_BIN"
}

# bc_fmnist_data: converts Fashion-MNIST once into $MPSL_DATA_DIR (default $REPO/data), the
# files tools/run-main.sh uses; sets FM_TRAIN and FM_TEST.
bc_fmnist_data() {
  local dir="${MPSL_DATA_DIR:-$REPO/data}" split tmp out
  local src="${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
  mkdir -p "$dir"
  FM_TRAIN="$dir/fashion-mnist-train.h5"
  FM_TEST="$dir/fashion-mnist-test.h5"
  for split in train test; do
    out="$dir/fashion-mnist-$split.h5"
    [ -s "$out" ] && continue
    [ -d "$src" ] || bc_die "Fashion-MNIST is not in $src (apt-get install dataset-fashion-mnist, or run tools/install-deps.sh)"
    tmp="$dir/.fashion-mnist-$split.$$.tmp.h5"
    "$MPSL_BIN" convert --format fashion-mnist --input "$src" --split "$split" --output "$tmp" --quiet ||
      { rm -f "$tmp"; bc_die "converting Fashion-MNIST ($split) failed"; }
    mv "$tmp" "$out"
  done
}

# bc_field KEY < TEXT: the value of the last KEY=value token in TEXT (empty if none).
bc_field() {
  grep -o "\\b$1=[^ ]*" | tail -1 | cut -d= -f2-
}

# bc_median NUMBERS...: the median (mean of the middle two for an even count).
bc_median() {
  printf '%s\n' "$@" | LC_ALL=C sort -g | awk '{v[NR]=$1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bc_seed_list "1 2 3": sets the array seed_list from a --seeds value, or dies naming the problem.
bc_seed_list() {
  local s
  read -r -a seed_list <<<"$1"
  [ ${#seed_list[@]} -gt 0 ] || bc_die "--seeds is empty"
  for s in "${seed_list[@]}"; do
    [[ "$s" =~ ^[0-9]+$ ]] || bc_die "--seeds: '$s' is not a non-negative integer"
  done
}

# bc_load: the 1-minute load average.
bc_load() { cut -d' ' -f1 /proc/loadavg; }

# bc_warn_if_busy: warns when other work is running (the figures would be unreliable).
bc_warn_if_busy() {
  local load
  load="$(bc_load)"
  if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    bc_note "warning: the 1-minute load average is $load before starting; other work on this" \
      "$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)-core machine makes both sides slower and the figures noisy"
  fi
}

# bc_mpi_tool NAME: compiles tools/lib/NAME.c with mpicc into $MPSL_BUILD_DIR (default build/)
# when it is missing or older than its source (installing Open MPI first if mpicc is missing);
# prints the binary's path.
bc_mpi_tool() {
  local dir="${MPSL_BUILD_DIR:-build}" src="$REPO/tools/lib/$1.c"
  case "$dir" in /*) ;; *) dir="$REPO/$dir" ;; esac
  command -v mpicc >/dev/null || "$REPO/tools/install-deps.sh" >&2
  mkdir -p "$dir"
  if [ ! -x "$dir/$1" ] || [ "$src" -nt "$dir/$1" ]; then
    mpicc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L "$src" -o "$dir/$1" >&2 || bc_die "compiling $src failed"
  fi
  echo "$dir/$1"
}

# bc_mpi_oversubscribed: sets CORES to the host's cores and exports what runs more ranks than
# cores: one thread per rank, Open MPI's oversubscription and, as root, its consent.
bc_mpi_oversubscribed() {
  CORES="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc reports OMP_NUM_THREADS
  export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
  if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
}
