#!/usr/bin/env bash
# Bad checkpoints are refused with exit code 2 and one message that names the file and the
# problem: truncated, corrupted (a tensor's checksum), missing rank file, wrong model (option and
# rank file), wrong format version (manifest and rank file), another topology, other settings,
# a `latest` naming nothing, an unfinished folder, broken JSON; for train --resume (4 ranks),
# eval --checkpoint and inspect. Nothing is written into a refused checkpoint.
set -uo pipefail
MPSL=${1:?usage: checkpoint_bad.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# expect_bad NAME "NEEDLE|NEEDLE..." CMD...: exit code 2 and every needle in the output.
expect_bad() {
  local name=$1 needles=$2
  shift 2
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  local msg
  msg=$(grep -m1 "mpsl: error" <<< "$out")
  if [ "$rc" != 2 ]; then
    fail "$name: exit $rc, expected 2 ($(tail -2 <<< "$out"))"
    return
  fi
  local IFS='|'
  for n in $needles; do
    if ! grep -qF -- "$n" <<< "$msg"; then
      fail "$name: message lacks '$n': $msg"
      return
    fi
  done
  pass "$name: $msg"
}

C="--model fmnist-cnn --synthetic --synthetic-count 2048 --batch 32 --batches-per-epoch 6"
C="$C --owners 4 --partition dirichlet --alpha 1 --threads 1 --quiet"
G="$T/good"
if ! mpsl_run 4 train $C --stages 2 --rounds 1 --checkpoint-dir "$G" --checkpoint-every 3steps \
  > /dev/null; then
  fail "the run writing the good checkpoint"
  summary
  exit 1
fi
GOOD="$G/ckpt-r0001-s000006"
resume() {  # resume FOLDER [more options]: 4 ranks
  local folder=$1
  shift
  timeout 120 mpirun -n 4 "$MPSL" train $C --stages 2 --resume "$folder" "$@"
}
copy() {  # copy NAME: a fresh copy of the good checkpoint
  rm -rf "$T/$1"
  cp -r "$GOOD" "$T/$1"
  echo "$T/$1"
}
# Rewrites a manifest's record of a rank file after the file was edited, as if written so.
refresh_manifest() {  # FOLDER RANK
  $PY - "$1" "$2" << 'EOF'
import json, os, sys, zlib
folder, rank = sys.argv[1], int(sys.argv[2])
m = json.load(open(os.path.join(folder, "manifest.json")))
data = open(os.path.join(folder, m["ranks"][rank]["file"]), "rb").read()
m["ranks"][rank]["bytes"], m["ranks"][rank]["crc32"] = len(data), zlib.crc32(data)
json.dump(m, open(os.path.join(folder, "manifest.json"), "w"))
EOF
}

d=$(copy truncated)
truncate -s 50000 "$d/rank-2.h5"
expect_bad "truncated rank file" "rank-2.h5|truncated" resume "$d"
expect_bad "inspect of a truncated checkpoint" "rank-2.h5|truncated" "$MPSL" inspect "$d"

d=$(copy corrupted)
$PY - "$d/rank-3.h5" << 'EOF'
import sys, h5py
path = sys.argv[1]
with h5py.File(path, "r") as f:
    offset = f["copies/2/units/004/weight"].id.get_offset()
with open(path, "r+b") as f:
    f.seek(offset + 4096)
    b = f.read(4)
    f.seek(offset + 4096)
    f.write(bytes(x ^ 0x5A for x in b))
EOF
expect_bad "corrupted tensor (resume, 4 ranks)" "rank-3.h5|/copies/2/units/004/weight|checksum mismatch" resume "$d"
expect_bad "corrupted tensor (inspect)" "rank-3.h5|/copies/2/units/004/weight|checksum mismatch" "$MPSL" inspect "$d"

d=$(copy missing)
rm "$d/rank-1.h5"
expect_bad "missing rank file" "rank-1.h5|missing" resume "$d"

expect_bad "another model" "holds model 'fmnist-cnn'|lenet5" \
  timeout 120 mpirun -n 4 "$MPSL" train ${C/fmnist-cnn/lenet5} --stages 2 --resume "$GOOD"

d=$(copy model-attr)
$PY -c "import h5py,sys; h5py.File(sys.argv[1],'r+').attrs['model']='lenet5'" "$d/rank-1.h5"
refresh_manifest "$d" 1
expect_bad "rank file of another model" "rank-1.h5|holds model 'lenet5'" resume "$d"

d=$(copy version-manifest)
$PY -c "
import json,sys; p=sys.argv[1]+'/manifest.json'; m=json.load(open(p)); m['format_version']=99
json.dump(m,open(p,'w'))" "$d"
expect_bad "manifest of a newer format version" "manifest.json|format version 99" resume "$d"

d=$(copy version-rank)
$PY -c "import h5py,sys; h5py.File(sys.argv[1],'r+').attrs['format_version']=2" "$d/rank-0.h5"
refresh_manifest "$d" 0
expect_bad "rank file of another format version" "rank-0.h5|format version 2" resume "$d"

expect_bad "another topology" "written by 4 ranks|this run has 5 ranks|--stages 3" \
  timeout 120 mpirun -n 5 "$MPSL" train $C --stages 3 --resume "$GOOD"
expect_bad "other settings" "--lr 0.01|--lr 0.02" resume "$GOOD" --lr 0.02

mkdir -p "$T/dangling" && echo ckpt-r0009-s000001 > "$T/dangling/latest"
expect_bad "latest naming nothing" "latest|ckpt-r0009-s000001|does not exist" \
  "$MPSL" train $C --checkpoint-dir "$T/dangling" --resume latest

d="$T/ckpt-r0001-s000006.tmp"
cp -r "$GOOD" "$d" && rm "$d/manifest.json"
expect_bad "unfinished checkpoint folder" "unfinished" resume "$d"

d=$(copy badjson)
echo '{"format": "mpsl-checkpoint-manifest",' > "$d/manifest.json"
expect_bad "manifest that is not JSON" "manifest.json|not valid JSON" "$MPSL" inspect "$d"

# eval --checkpoint: refused for damage and for a mid-round checkpoint of K > 1 owners.
$PY - "$T/test.h5" << 'EOF'
import sys, h5py, numpy as np
rng = np.random.default_rng(0)
with h5py.File(sys.argv[1], "w") as f:
    f["images"] = rng.integers(0, 256, size=(100, 1, 28, 28), dtype=np.uint8)
    f["labels"] = rng.integers(0, 10, size=100, dtype=np.uint8)
    f.attrs["format_version"] = 1
    f.attrs["content"] = "mpsl-dataset"
    f.attrs["class_names"] = [str(i) for i in range(10)]
    f.attrs["mean"] = np.array([0.5], np.float32)
    f.attrs["std"] = np.array([0.29], np.float32)
EOF
expect_bad "eval of a corrupted checkpoint" "rank-3.h5|/copies/2/units/004/weight|checksum mismatch" \
  "$MPSL" eval --checkpoint "$T/corrupted" --test-data "$T/test.h5"
expect_bad "eval of a mid-round checkpoint" "middle of round 1|ckpt-r0001-s000003" \
  "$MPSL" eval --checkpoint "$G/ckpt-r0001-s000003" --test-data "$T/test.h5"
if out=$("$MPSL" eval --checkpoint "$G" --test-data "$T/test.h5" 2>&1); then
  pass "eval of the good checkpoint (through 'latest'): $out"
else
  fail "eval of the good checkpoint: $out"
fi
if [ "$(ls "$T/corrupted")" = "$(printf 'manifest.json\nrank-0.h5\nrank-1.h5\nrank-2.h5\nrank-3.h5')" ]; then
  pass "nothing was written into the refused checkpoints"
else
  fail "the refused checkpoint changed: $(ls "$T/corrupted")"
fi
summary
