#!/usr/bin/env bash
# Bad input to the real binary: every case must
#   - exit with code 2 (bad input),
#   - print exactly one "mpsl: error:" line on stderr, naming the offending input
#     (file path, option, model name, config key), and nothing else on stdout/stderr
#     (mpirun cases: exactly one error line; mpirun's own abort notice is allowed),
#   - finish within 30 s,
#   - leave the working folder as it was: no new file (no partial model, metrics or
#     temporary file) and every pre-existing file byte-identical.
#
# Usage: bash bad_input.sh PATH_TO_MPSL        (ctest: integration.bad_input)
# Needs /usr/bin/python3 with numpy and h5py (python3-h5py) to make the bad files.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

MPSL="${1:?usage: bad_input.sh PATH_TO_MPSL}"
MPSL="$(cd "$(dirname "$MPSL")" && pwd)/$(basename "$MPSL")"
PY=/usr/bin/python3
TIME_LIMIT=30

fatal() { echo "bad_input: $*" >&2; exit 1; }
[ -x "$MPSL" ] || fatal "'$MPSL' is not an executable"
"$PY" -c 'import h5py, numpy' 2>/dev/null ||
  fatal "$PY cannot import h5py and numpy (apt-get install python3-h5py)"

root="$(mktemp -d "${TMPDIR:-/tmp}/mpsl-bad-input.XXXXXX")"
trap 'rm -rf "$root"' EXIT
work="$root/work"   # the commands run here; its files are checked before and after
logs="$root/logs"   # captured stdout/stderr (outside work, so not part of the snapshot)
mkdir -p "$work" "$logs"
cd "$work" || exit 1
start_s=$SECONDS

# ---------------------------------------------------------------------------------- fixtures
# A tiny Fashion-MNIST-format folder (gzipped IDX) and a tiny CIFAR-10 binary file, converted
# by mpsl itself; then hand-made bad files derived from them.
"$PY" - <<'EOF' || fatal "making the fixture files failed"
import gzip, struct, numpy as np
rng = np.random.default_rng(7)
import os
os.makedirs("fmnist", exist_ok=True)
def idx(path, a, magic):
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes())
for kind in ("train", "t10k"):
    idx(f"fmnist/{kind}-images-idx3-ubyte.gz", rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), 0x803)
    idx(f"fmnist/{kind}-labels-idx1-ubyte.gz", rng.integers(0, 10, 64, dtype=np.uint8), 0x801)
rec = np.zeros((32, 3073), np.uint8)
rec[:, 0] = rng.integers(0, 10, 32)
rec[:, 1:] = rng.integers(0, 256, (32, 3072))
rec.tofile("cifar.bin")
os.makedirs("cifar-partial", exist_ok=True)
rec.tofile("cifar-partial/data_batch_1.bin")       # data_batch_2..5.bin are missing
with open("random.h5", "wb") as f:
    f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
with open("random.bin", "wb") as f:
    f.write(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
with open("text.h5", "w") as f:
    f.write("images,labels\n1,2\n")
with open("text.ini", "w") as f:
    f.write("this is not an ini file [[[\n")
open("empty.h5", "wb").close()
with open("unknown-key.ini", "w") as f:
    f.write("[train]\nmodel = fmnist-cnn\nbogus_key = 3\n")
with open("bad-value.ini", "w") as f:
    f.write("model = fmnist-cnn\nbatch = abc\n")
EOF

q() { "$MPSL" "$@" --quiet >"$logs/fixture.out" 2>"$logs/fixture.err" ||
  { cat "$logs/fixture.err" >&2; fatal "fixture command failed: mpsl $*"; }; }
q convert --format fashion-mnist --input fmnist --split train --output fm.h5
q convert --format cifar10 --input cifar.bin --output cifar.h5
cp cifar.h5 previous-good.h5
q train --model fmnist-cnn --synthetic --synthetic-count 16 --batch 8 --max-steps 1 \
  --warmup-steps 0 --threads 1 --save-model model.h5

"$PY" - <<'EOF' || fatal "making the tampered HDF5 files failed"
import shutil, h5py, numpy as np
def copy(src, dst):
    shutil.copy(src, dst)
    return h5py.File(dst, "a")
with copy("cifar.h5", "no-labels.h5") as f:
    del f["labels"]
with copy("cifar.h5", "few-labels.h5") as f:
    del f["labels"]; f["labels"] = np.zeros(5, np.uint8)
with copy("cifar.h5", "float-labels.h5") as f:
    n = f["labels"].shape[0]; del f["labels"]; f["labels"] = np.zeros(n, np.float32)
with copy("cifar.h5", "label-range.h5") as f:
    l = f["labels"][...]; l[3] = 200; f["labels"][...] = l
with copy("model.h5", "wrong-shape.h5") as f:
    del f["units/000/weight"]; f["units/000/weight"] = np.zeros((16, 1, 3, 3), np.float32)
with copy("model.h5", "missing-tensor.h5") as f:
    del f["units/003/bias"]
with copy("model.h5", "unknown-model.h5") as f:
    f.attrs["model"] = "nosuch-net"
with open("model.h5", "rb") as f:
    head = f.read(3000)
with open("truncated-model.h5", "wb") as f:
    f.write(head)
with open("fm.h5", "rb") as f:
    head = f.read(3000)
with open("truncated.h5", "wb") as f:
    f.write(head)
EOF
# A real checkpoint (single process, --batch 8) for the resume cases.
q train --model fmnist-cnn --synthetic --synthetic-count 16 --batch 8 --max-steps 2 \
  --warmup-steps 0 --threads 1 --checkpoint-dir ckpt
mkdir -p a-folder out-folder empty-folder
echo '{"event":"run_end","exit":"ok"}' >old-metrics.jsonl
rm -f "$logs"/fixture.*

# ------------------------------------------------------------------------------------ checks
passed=0
failed=0
failures=()

snapshot() { find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r md5sum; }

# check NAME [--mpi] NEEDLE... -- COMMAND...
# Runs COMMAND in the work folder; NEEDLEs must all appear (fixed strings) in the error line.
check() {
  local name="$1"; shift
  local mpi=0
  if [ "${1:-}" = "--mpi" ]; then mpi=1; shift; fi
  local needles=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do needles+=("$1"); shift; done
  shift
  local out="$logs/$passed-$failed.out" err="$logs/$passed-$failed.err"
  local before after rc t0 secs problems=()
  before="$(snapshot)"
  t0=$(date +%s%N)
  timeout -k 5 "$TIME_LIMIT" "$@" >"$out" 2>"$err" </dev/null
  rc=$?
  local ms=$((($(date +%s%N) - t0) / 1000000))
  secs="$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
  after="$(snapshot)"

  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    problems+=("did not finish within ${TIME_LIMIT}s")
  elif [ "$rc" -ne 2 ]; then
    problems+=("exit code $rc, expected 2")
  fi
  local nerr
  nerr=$(grep -c '^mpsl: error:' "$err")
  if [ "$nerr" -ne 1 ]; then
    problems+=("$nerr 'mpsl: error:' lines on stderr, expected exactly 1")
  fi
  local line
  line=$(grep -m1 '^mpsl: error:' "$err")
  local n
  for n in "${needles[@]}"; do
    if [[ "$line" != *"$n"* ]]; then problems+=("the error line does not name '$n'"); fi
  done
  if [ "$mpi" -eq 0 ]; then
    if [ -s "$out" ]; then problems+=("stdout is not empty"); fi
    if grep -v -e '^mpsl: error:' -e '^mpsl: warning:' "$err" | grep -q .; then
      problems+=("stderr has more than the error line")
    fi
  fi
  if [ "$before" != "$after" ]; then
    problems+=("files changed: $(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | tr '\n' ' ')")
  fi

  if [ ${#problems[@]} -eq 0 ]; then
    passed=$((passed + 1))
    printf 'PASS  %-46s %6ss  %s\n' "$name" "$secs" "$line"
  else
    failed=$((failed + 1))
    failures+=("$name")
    local cmd="$*"
    printf 'FAIL  %-46s %6ss  %s\n' "$name" "$secs" "${cmd//"$MPSL"/mpsl}"
    local p
    for p in "${problems[@]}"; do echo "        - $p"; done
    echo "        stdout: $(head -c 400 "$out" | tr '\n' '|')"
    echo "        stderr: $(head -c 800 "$err" | tr '\n' '|')"
  fi
}

M="$MPSL"
T=(--max-steps 2 --warmup-steps 0 --batch 8 --threads 1)   # keep any accidental run short

# Dataset files (train --data / --test-data, eval --test-data).
check "train: missing dataset file"        missing.h5 -- "$M" train --model fmnist-cnn --data missing.h5 "${T[@]}"
check "train: dataset of random bytes"     random.h5 -- "$M" train --model fmnist-cnn --data random.h5 "${T[@]}"
check "train: dataset is a text file"      text.h5 -- "$M" train --model fmnist-cnn --data text.h5 "${T[@]}"
check "train: empty dataset file"          empty.h5 -- "$M" train --model fmnist-cnn --data empty.h5 "${T[@]}"
check "train: truncated dataset file"      truncated.h5 -- "$M" train --model fmnist-cnn --data truncated.h5 "${T[@]}"
check "train: dataset path is a folder"    a-folder -- "$M" train --model fmnist-cnn --data a-folder "${T[@]}"
check "train: dataset without /labels"     no-labels.h5 labels -- "$M" train --model vgg11 --data no-labels.h5 "${T[@]}"
check "train: fewer labels than images"    few-labels.h5 -- "$M" train --model vgg11 --data few-labels.h5 "${T[@]}"
check "train: float labels"                float-labels.h5 -- "$M" train --model vgg11 --data float-labels.h5 "${T[@]}"
check "train: label out of range"          label-range.h5 -- "$M" train --model vgg11 --data label-range.h5 "${T[@]}"
check "train: fmnist data, vgg19 model"    fm.h5 vgg19 -- "$M" train --model vgg19 --data fm.h5 "${T[@]}"
check "train: cifar data, fmnist-cnn"      cifar.h5 fmnist-cnn -- "$M" train --model fmnist-cnn --data cifar.h5 "${T[@]}"
check "train: bad --test-data, no outputs" no-labels.h5 -- \
  "$M" train --model fmnist-cnn --data fm.h5 --test-data no-labels.h5 --save-model new-model.h5 \
  --metrics new-metrics.jsonl "${T[@]}"
check "train: bad --test-data shape"       cifar.h5 -- \
  "$M" train --model fmnist-cnn --synthetic --test-data cifar.h5 --save-model new-model.h5 "${T[@]}"
check "train: bad data, existing model kept" random.h5 -- \
  "$M" train --model fmnist-cnn --data random.h5 --save-model model.h5 "${T[@]}"
check "train: bad data, existing metrics kept" missing.h5 -- \
  "$M" train --model fmnist-cnn --data missing.h5 --metrics old-metrics.jsonl "${T[@]}"

# Model names.
check "train: unknown model name"          nosuch-net -- "$M" train --model nosuch-net --synthetic "${T[@]}"
check "train: unknown model, real data"    nosuch-net -- "$M" train --model nosuch-net --data fm.h5 "${T[@]}"
check "inspect: unknown model name"        nosuch-net -- "$M" inspect --model nosuch-net

# Options and commands.
check "train: --batch abc"                 --batch abc -- "$M" train --model fmnist-cnn --synthetic --batch abc --max-steps 2
check "train: --batch without a value"     --batch -- "$M" train --model fmnist-cnn --synthetic --max-steps 2 --batch
check "train: --batch 0"                   --batch -- "$M" train --model fmnist-cnn --synthetic --batch 0 --max-steps 2
check "train: --lr -1"                     --lr -- "$M" train --model fmnist-cnn --synthetic --lr -1 "${T[@]}"
check "train: --threads abc"               --threads abc -- "$M" train --model fmnist-cnn --synthetic --threads abc --max-steps 2
check "train: --max-steps -3"              --max-steps -- "$M" train --model fmnist-cnn --synthetic --max-steps -3
check "train: --partition foo"             --partition foo -- "$M" train --model fmnist-cnn --synthetic --partition foo "${T[@]}"
check "train: --log-level loud"            --log-level loud -- "$M" train --model fmnist-cnn --synthetic --log-level loud "${T[@]}"
check "train: unknown option"              --bogus -- "$M" train --model fmnist-cnn --synthetic --bogus 3 "${T[@]}"
check "eval: unknown option"               --bogus -- "$M" eval --model-file model.h5 --test-data fm.h5 --bogus
check "convert: unknown --format"          --format foo -- "$M" convert --format foo --output new.h5
check "convert: unknown --split"           --split val -- "$M" convert --format cifar10 --input cifar.bin --split val --output new.h5
check "unknown command"                    frobnicate -- "$M" frobnicate --model fmnist-cnn
check "no command"                         command -- "$M"
check "train: missing --model"             --model -- "$M" train --synthetic "${T[@]}"
check "train: missing --data"              --data -- "$M" train --model fmnist-cnn "${T[@]}"
check "eval: missing --test-data"          --test-data -- "$M" eval --model-file model.h5
check "eval: missing --model-file"         --model-file -- "$M" eval --test-data fm.h5
check "convert: missing --output"          --output -- "$M" convert --format cifar10 --input cifar.bin

# Config files.
check "config: unknown key"                bogus_key unknown-key.ini -- "$M" train --config unknown-key.ini --synthetic "${T[@]}"
check "config: malformed value"            --batch bad-value.ini -- "$M" train --config bad-value.ini --synthetic --max-steps 2
check "config: malformed line"             text.ini -- "$M" train --config text.ini --model fmnist-cnn --synthetic "${T[@]}"
check "config: missing file"               missing.ini -- "$M" train --config missing.ini --model fmnist-cnn --synthetic "${T[@]}"

# Model files for eval (and inspect).
check "eval: missing model file"           missing-model.h5 -- "$M" eval --model-file missing-model.h5 --test-data fm.h5
check "eval: model file of random bytes"   random.h5 -- "$M" eval --model-file random.h5 --test-data fm.h5
check "eval: truncated model file"         truncated-model.h5 -- "$M" eval --model-file truncated-model.h5 --test-data fm.h5
check "eval: HDF5 file that is no model"   cifar.h5 -- "$M" eval --model-file cifar.h5 --test-data fm.h5
check "eval: tensor of the wrong shape"    wrong-shape.h5 units/000/weight -- "$M" eval --model-file wrong-shape.h5 --test-data fm.h5
check "eval: missing tensor"               missing-tensor.h5 units/003/bias -- "$M" eval --model-file missing-tensor.h5 --test-data fm.h5
check "eval: unknown model in file"        nosuch-net -- "$M" eval --model-file unknown-model.h5 --test-data fm.h5
check "eval: missing test data"            missing.h5 -- "$M" eval --model-file model.h5 --test-data missing.h5
check "eval: test data of another shape"   cifar.h5 -- "$M" eval --model-file model.h5 --test-data cifar.h5
check "train: --init-model missing"        missing-model.h5 -- "$M" train --model fmnist-cnn --synthetic --init-model missing-model.h5 "${T[@]}"
check "train: --init-model of another net"  lenet5 model.h5 -- "$M" train --model lenet5 --synthetic --init-model model.h5 "${T[@]}"
check "train: --init-model wrong shape"     wrong-shape.h5 units/000/weight -- "$M" train --model fmnist-cnn --synthetic --init-model wrong-shape.h5 "${T[@]}"
check "train: --init-model missing tensor"  missing-tensor.h5 units/003/bias -- "$M" train --model fmnist-cnn --synthetic --init-model missing-tensor.h5 "${T[@]}"
check "eval: bad model, metrics untouched" wrong-shape.h5 -- \
  "$M" eval --model-file wrong-shape.h5 --test-data fm.h5 --metrics new-metrics.jsonl
check "inspect: missing file"              missing-model.h5 -- "$M" inspect missing-model.h5
check "inspect: file of random bytes"      random.h5 -- "$M" inspect random.h5

# convert: bad input never replaces or creates the output.
check "convert: missing fashion-mnist dir" no-such-dir -- "$M" convert --format fashion-mnist --input no-such-dir --output new.h5
check "convert: missing cifar10 input"     no-such-dir -- "$M" convert --format cifar10 --input no-such-dir --output new.h5
check "convert: cifar10 text file, keep output" text.h5 -- \
  "$M" convert --format cifar10 --input text.h5 --output previous-good.h5
check "convert: cifar10 random bytes, keep output" random.bin -- \
  "$M" convert --format cifar10 --input random.bin --output previous-good.h5
check "convert: cifar10 folder lacks batches" cifar-partial -- \
  "$M" convert --format cifar10 --input cifar-partial --output out-folder/new.h5
check "convert: fmnist given a file"       cifar.bin -- "$M" convert --format fashion-mnist --input cifar.bin --output out-folder/new.h5

# Output paths that cannot be written are bad input too: reported before any training.
# (A missing parent folder is created, as --metrics does, so it is not a case here.)
check "train: --save-model under a file"   cifar.bin/model.h5 -- \
  "$M" train --model fmnist-cnn --synthetic --save-model cifar.bin/model.h5 "${T[@]}"
check "train: --save-model is a folder"    a-folder -- \
  "$M" train --model fmnist-cnn --synthetic --save-model a-folder "${T[@]}"
check "train: --metrics under a file"      cifar.bin -- \
  "$M" train --model fmnist-cnn --synthetic --metrics cifar.bin/metrics.jsonl "${T[@]}"
check "train: --metrics is a folder"       a-folder -- \
  "$M" train --model fmnist-cnn --synthetic --metrics a-folder "${T[@]}"

# Checkpoints: what --resume is given and what it must match.
check "train: --resume of a missing folder"   no-such-ckpt -- \
  "$M" train --model fmnist-cnn --synthetic --resume no-such-ckpt "${T[@]}"
check "train: --resume of a plain file"       cifar.bin "not a checkpoint" -- \
  "$M" train --model fmnist-cnn --synthetic --resume cifar.bin "${T[@]}"
check "train: --resume of an empty folder"    empty-folder "not a checkpoint" -- \
  "$M" train --model fmnist-cnn --synthetic --resume empty-folder "${T[@]}"
check "train: --resume latest, no --checkpoint-dir" "--resume latest" --checkpoint-dir -- \
  "$M" train --model fmnist-cnn --synthetic --resume latest "${T[@]}"
check "train: --checkpoint-dir is a file"     --checkpoint-dir cifar.bin -- \
  "$M" train --model fmnist-cnn --synthetic --checkpoint-dir cifar.bin "${T[@]}"
check "train: --checkpoint-every 3weeks"      --checkpoint-every 3weeks -- \
  "$M" train --model fmnist-cnn --synthetic --checkpoint-every 3weeks "${T[@]}"
check "train: resume with another --batch"    ckpt/ckpt-r0001-s000002 "--batch 8" -- \
  "$M" train --model fmnist-cnn --synthetic --synthetic-count 16 --checkpoint-dir ckpt \
  --resume latest --max-steps 2 --warmup-steps 0 --batch 4 --threads 1
check "train: resume with another model"      ckpt/ckpt-r0001-s000002 fmnist-cnn lenet5 -- \
  "$M" train --model lenet5 --synthetic --synthetic-count 16 --checkpoint-dir ckpt \
  --resume latest "${T[@]}"
check "eval: --checkpoint of a missing folder" no-such-ckpt -- \
  "$M" eval --checkpoint no-such-ckpt --test-data fm.h5
check "inspect: an empty folder"              empty-folder -- "$M" inspect empty-folder

# Reliability options.
check "train: --stall-warn soon"              --stall-warn soon -- \
  "$M" train --model fmnist-cnn --synthetic --stall-warn soon "${T[@]}"
check "train: --stall-abort 10x"              --stall-abort 10x -- \
  "$M" train --model fmnist-cnn --synthetic --stall-abort 10x "${T[@]}"
check "train: --nan-policy ignore"            --nan-policy ignore -- \
  "$M" train --model fmnist-cnn --synthetic --nan-policy ignore "${T[@]}"

# Under mpirun a bad input is reported once (by rank 0) and the job exits with 2.
if command -v mpirun >/dev/null 2>&1; then
  check "mpirun -n 2: missing dataset file" --mpi missing.h5 -- \
    mpirun -n 2 "$M" train --model fmnist-cnn --data missing.h5 --stages 1 "${T[@]}"
  check "mpirun -n 2: unknown option"      --mpi --bogus -- \
    mpirun -n 2 "$M" train --model fmnist-cnn --synthetic --stages 1 --bogus "${T[@]}"
  # Rank counts against the topology, and against a checkpoint's.
  check "mpirun -n 3: --split with too few cuts" --mpi --split 1,2 -- \
    mpirun -n 3 "$M" train --model fmnist-cnn --synthetic --stages 2 --split 1,2 "${T[@]}"
  check "mpirun -n 2: too few ranks for 3 stages" --mpi "--stages 3" "4 ranks" -- \
    mpirun -n 2 "$M" train --model fmnist-cnn --synthetic --stages 3 "${T[@]}"
  check "mpirun -n 4: 1 owner for 2 owner ranks" --mpi --owners -- \
    mpirun -n 4 "$M" train --model fmnist-cnn --synthetic --stages 2 --owners 1 "${T[@]}"
  check "mpirun -n 3: resume a 1-rank checkpoint" --mpi ckpt/ckpt-r0001-s000002 "3 ranks" -- \
    mpirun -n 3 "$M" train --model fmnist-cnn --synthetic --synthetic-count 16 --stages 2 \
    --checkpoint-dir ckpt --resume latest "${T[@]}"
else
  echo "SKIP  mpirun cases (no mpirun on PATH)"
fi

echo
echo "bad_input: $passed passed, $failed failed ($((SECONDS - start_s)) s)"
if [ "$failed" -ne 0 ]; then
  printf '  failed: %s\n' "${failures[@]}"
  exit 1
fi
exit 0
