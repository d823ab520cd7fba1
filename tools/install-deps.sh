#!/usr/bin/env bash
# Installs the Debian packages mpsl needs to build, test and run. Idempotent: packages already
# installed are skipped, and when nothing is missing no network access happens at all.
# Works as root, or as a user with sudo.
set -euo pipefail

packages=(
  cmake g++ make
  openmpi-bin libopenmpi-dev
  libdnnl-dev ocl-icd-opencl-dev
  libhdf5-dev hdf5-tools
  libboost-program-options-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  zlib1g-dev nlohmann-json3-dev
  dataset-fashion-mnist
  python3-h5py python3-numpy python3-matplotlib
  clang-format
  slurmctld slurmd slurm-client munge
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-deps: missing packages (${missing[*]}) and neither root nor sudo is available" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  "${missing[@]}"
