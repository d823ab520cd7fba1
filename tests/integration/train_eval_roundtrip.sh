#!/usr/bin/env bash
# Train -> save -> eval -> inspect round trip with the real binary, on a small Fashion-MNIST
# subset (6,000 train / 2,000 test images; a generated learnable stand-in when the
# dataset-fashion-mnist package is missing):
#   - a short training (fmnist-cnn, 80 steps) exits 0, prints its RESULT line, writes the model
#     file (and no temporary file) and metrics JSON lines with run_start, round_end,
#     rank_summary and run_end events that agree with each other and with the RESULT line;
#   - the model learned something (test accuracy above 30%; chance is 10%);
#   - `mpsl eval` on the same test file reports exactly the test accuracy (and loss) training
#     reported, also with an eval batch that leaves a partial last batch;
#   - `mpsl inspect FILE` describes the model; h5py reads /units/000/weight as [32,1,3,3]
#     float32 with the documented attributes; if torch is importable, the tensors loaded into
#     the equivalent torch.nn network give the same test accuracy (the README's promise);
#   - `mpirun -n 1 mpsl train ...` works and trains the same model as the plain run.
#
# Usage: bash train_eval_roundtrip.sh PATH_TO_MPSL      (ctest: integration.train_eval_roundtrip)
# Needs /usr/bin/python3 with numpy and h5py.
set -uo pipefail

MPSL="${1:?usage: train_eval_roundtrip.sh PATH_TO_MPSL}"
MPSL="$(cd "$(dirname "$MPSL")" && pwd)/$(basename "$MPSL")"
PY=/usr/bin/python3
FMNIST_DIR="${MPSL_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
STEPS=80

fatal() { echo "train_eval_roundtrip: $*" >&2; exit 1; }
[ -x "$MPSL" ] || fatal "'$MPSL' is not an executable"
"$PY" -c 'import h5py, numpy' 2>/dev/null ||
  fatal "$PY cannot import h5py and numpy (apt-get install python3-h5py)"

work="$(mktemp -d "${TMPDIR:-/tmp}/mpsl-roundtrip.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
start_s=$SECONDS

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "PASS  $*"; }
bad() { failed=$((failed + 1)); echo "FAIL  $*"; }
# expect NAME COMMAND...: passes when COMMAND succeeds (its output is shown when it fails).
expect() {
  local name="$1"; shift
  local out
  # shellcheck disable=SC2001
  if out="$("$@" 2>&1)"; then ok "$name${out:+: $out}"; else bad "$name"; echo "$out" | sed 's/^/        /'; fi
}
# run NAME LOGBASE COMMAND...: runs an mpsl command with a time limit, stdout/stderr to files.
run() {
  local name="$1" log="$2"; shift 2
  local t0=$SECONDS rc
  timeout -k 5 300 "$@" >"$log.out" 2>"$log.err" </dev/null
  rc=$?
  if [ "$rc" -eq 0 ]; then
    ok "$name (exit 0, $((SECONDS - t0)) s)"
  else
    bad "$name: exit code $rc"
    sed 's/^/        stdout: /' "$log.out"; sed 's/^/        stderr: /' "$log.err"
  fi
  return "$rc"
}

# ------------------------------------------------------------------------------------ data
mkdir -p idx
"$PY" - "$FMNIST_DIR" <<'EOF' || fatal "making the Fashion-MNIST subset failed"
import gzip, os, struct, sys
import numpy as np
src = sys.argv[1]
def read(path):
    d = gzip.open(path).read()
    _, _, nd = struct.unpack(">HBB", d[:4])
    dims = struct.unpack(">" + "I" * nd, d[4:4 + 4 * nd])
    return np.frombuffer(d, np.uint8, offset=4 + 4 * nd).reshape(dims)
def write(path, a, magic):
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes())
have = all(os.path.exists(f"{src}/{k}-{p}-ubyte.gz") for k in ("train", "t10k")
           for p in ("images-idx3", "labels-idx1"))
rng = np.random.default_rng(11)
for kind, n in (("train", 6000), ("t10k", 2000)):
    if have:
        x = read(f"{src}/{kind}-images-idx3-ubyte.gz")[:n]
        y = read(f"{src}/{kind}-labels-idx1-ubyte.gz")[:n]
    else:  # learnable stand-in: class k = a bright 7x7 block at one of 10 places, plus noise
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            r, c = 3 + 12 * (k // 5), 1 + 5 * (k % 5)
            x[i, r:r + 7, c:c + 7] = 230
    write(f"idx/{kind}-images-idx3-ubyte.gz", x, 0x803)
    write(f"idx/{kind}-labels-idx1-ubyte.gz", y, 0x801)
print("Fashion-MNIST subset" if have else f"no Fashion-MNIST in {src}: generated stand-in data")
EOF
"$MPSL" convert --format fashion-mnist --input idx --split train --output train.h5 --quiet ||
  fatal "convert (train) failed"
"$MPSL" convert --format fashion-mnist --input idx --split test --output test.h5 --quiet ||
  fatal "convert (test) failed"

# -------------------------------------------------------------------------------- training
mkdir -p run1 run2
TRAIN=(train --model fmnist-cnn --data train.h5 --test-data test.h5 --batch 64 --lr 0.02
       --momentum 0.9 --weight-decay 0 --max-steps "$STEPS" --warmup-steps 5 --threads 2 --seed 3)
if run "train (fmnist-cnn, $STEPS steps, --save-model, --metrics)" train \
    "$MPSL" "${TRAIN[@]}" --metrics run1/metrics.jsonl --save-model run1/model.h5; then
  cat train.out
  # shellcheck disable=SC2016
  expect "model file written, no temporary file left" \
    bash -c '[ -s run1/model.h5 ] && [ "$(ls run1)" = "$(printf "metrics.jsonl\nmodel.h5")" ] || { ls -la run1; exit 1; }'
  expect "metrics JSON lines parse and agree" "$PY" - run1/metrics.jsonl train.out "$STEPS" <<'EOF'
import json, math, re, sys
path, result_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
events = [json.loads(line) for line in open(path) if line.strip()]
kinds = [e["event"] for e in events]
for k in ("run_start", "round_end", "rank_summary", "run_end"):
    assert k in kinds, f"no {k} event in {kinds}"
assert kinds[0] == "run_start" and kinds[-1] == "run_end", f"order: {kinds}"
start, end = events[0], events[-1]
rounds = [e for e in events if e["event"] == "round_end"]
ranks = [e for e in events if e["event"] == "rank_summary"]
for key in ("command", "model", "ranks", "owners", "stages", "schedule"):
    assert key in start, f"run_start lacks {key}"
assert start["model"] == "fmnist-cnn" and start["ranks"] == 1, start
for key in ("round", "train_loss", "test_accuracy", "images", "seconds", "images_per_s",
            "predicted_seconds"):
    assert key in rounds[-1], f"round_end lacks {key}"
for key in ("rank", "role", "peak_rss_bytes", "busy_s", "wait_s", "comm_s", "cpu_s",
            "predicted_peak_bytes"):
    assert key in ranks[0], f"rank_summary lacks {key}"
assert len(ranks) == 1 and ranks[0]["rank"] == 0 and ranks[0]["peak_rss_bytes"] > 0, ranks
# One process with 2 threads: its CPU seconds cover its steps (busy_s, wall time) and cannot
# exceed 2 threads for the whole run.
assert 0.5 * ranks[0]["busy_s"] <= ranks[0]["cpu_s"] <= 2 * end["seconds"] + 0.5, (ranks, end)
for key in ("seconds", "images_per_s", "test_accuracy", "exit"):
    assert key in end, f"run_end lacks {key}"
assert end["exit"] == "ok", end
assert end.get("steps", steps) == steps, f"steps {end.get('steps')} != {steps}"
assert rounds[-1]["images"] == steps * 64, f"images {rounds[-1]['images']} != {steps * 64}"
assert end["test_accuracy"] == rounds[-1]["test_accuracy"], (end, rounds[-1])
acc = end["test_accuracy"]
assert 0.3 < acc <= 1.0, f"test accuracy {acc}: the model did not learn"
assert end["images_per_s"] > 0 and math.isfinite(rounds[-1]["train_loss"]), end
res = [l for l in open(result_path) if l.startswith("RESULT ")]
assert len(res) == 1, f"{len(res)} RESULT lines on stdout"
f = dict(kv.split("=", 1) for kv in res[0].split()[1:])
assert f["model"] == "fmnist-cnn" and int(f["steps"]) == steps, res[0]
assert abs(float(f["test_acc"]) - acc) < 1e-6, f"RESULT test_acc {f['test_acc']} vs metrics {acc}"
assert float(f["train_img_per_s"]) > 0, res[0]
print(f"{len(events)} events, test accuracy {acc:.4f}, {end['images_per_s']:.0f} img/s")
EOF
else
  fatal "training failed; nothing else can be checked ($passed passed, $((failed)) failed)"
fi

# ------------------------------------------------------------------------------------ eval
train_pct="$(grep -o 'test accuracy [0-9.]*%' train.err | tail -1)"
if run "eval --model-file on the same test file" eval \
    "$MPSL" eval --model-file run1/model.h5 --test-data test.h5 --threads 2 --metrics eval.jsonl; then
  cat eval.out
  eval_pct="$(grep -o 'test accuracy [0-9.]*%' eval.out eval.err | tail -1 | sed 's/^[^:]*://')"
  expect "eval prints the accuracy training printed ('$train_pct')" \
    test -n "$train_pct" -a "$train_pct" = "$eval_pct"
  expect "eval metrics equal training's test accuracy and loss" \
    "$PY" - eval.jsonl run1/metrics.jsonl <<'EOF'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tr = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
e = [x for x in ev if x.get("test_accuracy") is not None][-1]
r = [x for x in tr if x["event"] == "round_end"][-1]
assert e["test_accuracy"] == r["test_accuracy"], f"eval {e['test_accuracy']} vs train {r['test_accuracy']}"
if "test_loss" in e and "test_loss" in r:
    assert abs(e["test_loss"] - r["test_loss"]) <= 1e-6 * abs(r["test_loss"]), (e["test_loss"], r["test_loss"])
assert e.get("images", 2000) == 2000, e
print(f"accuracy {e['test_accuracy']}, loss {e.get('test_loss')}")
EOF
fi
if run "eval --eval-batch 128 (partial last batch)" eval128 \
    "$MPSL" eval --model-file run1/model.h5 --test-data test.h5 --threads 2 --eval-batch 128; then
  pct128="$(grep -o 'test accuracy [0-9.]*%' eval128.out eval128.err | tail -1 | sed 's/^[^:]*://')"
  expect "same accuracy with --eval-batch 128 ('$pct128')" test "$pct128" = "$train_pct"
fi

# --------------------------------------------------------------------------------- inspect
if run "inspect the model file" inspect "$MPSL" inspect run1/model.h5; then
  # shellcheck disable=SC2016
  expect "inspect names the model, its tensors and parameter count" bash -c '
    f=inspect.out; grep -q fmnist-cnn $f && grep -q 467818 $f &&
    grep -Eq "units/000/weight +32x1x3x3" $f && grep -Eq "units/007/weight +128x3136" $f ||
    { cat $f; exit 1; }'
fi

expect "h5py reads the model file as documented" "$PY" - run1/model.h5 train.h5 "$STEPS" <<'EOF'
import sys
import h5py, numpy as np
path, data, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(path, "r") as f, h5py.File(data, "r") as d:
    a = f.attrs
    fmt = a["format"]; fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    model = a["model"]; model = model.decode() if isinstance(model, bytes) else model
    assert fmt == "mpsl-model", fmt
    assert model == "fmnist-cnn", model
    for k in ("format_version", "mpsl_version", "classes", "input_shape", "step", "input_mean", "input_std"):
        assert k in a, f"no attribute {k}"
    assert list(a["input_shape"]) == [1, 28, 28], a["input_shape"]
    assert int(a["classes"]) == 10 and int(a["step"]) == steps, (a["classes"], a["step"])
    assert np.allclose(a["input_mean"], d.attrs["mean"]) and np.allclose(a["input_std"], d.attrs["std"])
    w = f["units/000/weight"]
    assert w.shape == (32, 1, 3, 3) and w.dtype == np.float32, (w.shape, w.dtype)
    shapes = {"units/000/bias": (32,), "units/001/weight": (32, 32, 3, 3), "units/003/weight": (64, 32, 3, 3),
              "units/004/weight": (64, 64, 3, 3), "units/007/weight": (128, 3136), "units/007/bias": (128,),
              "units/008/weight": (10, 128), "units/008/bias": (10,)}
    for name, shape in shapes.items():
        assert f[name].shape == shape, f"{name}: {f[name].shape} != {shape}"
    total = 0
    def visit(name, obj):
        global total
        if isinstance(obj, h5py.Dataset):
            x = obj[...]
            assert np.all(np.isfinite(x)), f"{name} has non-finite values"
            total += x.size
    f.visititems(visit)
    assert total == 467818, f"{total} parameters"
print("units/000/weight [32,1,3,3] float32, 467818 finite parameters, attributes as documented")
EOF

# The saved tensors in torch: same predictions (only when Debian's torch is installed).
if "$PY" -c 'import torch' 2>/dev/null; then
  eval_acc="$("$PY" -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]["test_accuracy"])' eval.jsonl 2>/dev/null || echo missing)"
  expect "torch.nn with the saved tensors gives the same accuracy" "$PY" - run1/model.h5 test.h5 "$eval_acc" <<'EOF'
import sys
import h5py, numpy as np, torch, torch.nn as nn
path, data, want = sys.argv[1], sys.argv[2], float(sys.argv[3])
torch.set_num_threads(2)
net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                    nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                    nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
units = {0: 0, 1: 2, 3: 5, 4: 7, 7: 11, 8: 13}   # mpsl unit -> torch Sequential index
with h5py.File(path, "r") as f, h5py.File(data, "r") as d:
    for u, i in units.items():
        net[i].weight.data.copy_(torch.from_numpy(f[f"units/{u:03d}/weight"][...]))
        net[i].bias.data.copy_(torch.from_numpy(f[f"units/{u:03d}/bias"][...]))
    mean, std = float(f.attrs["input_mean"][0]), float(f.attrs["input_std"][0])
    x = torch.from_numpy(d["images"][...].astype(np.float32) / 255.0)
    y = torch.from_numpy(d["labels"][...].astype(np.int64))
with torch.no_grad():
    acc = (net((x - mean) / std).argmax(1) == y).float().mean().item()
# Float summation order differs between the libraries: allow 2 images of 2,000 to flip.
assert abs(acc - want) <= 2 / len(y) + 1e-9, f"torch accuracy {acc:.4f} vs mpsl {want:.4f}"
print(f"torch {acc:.4f}, mpsl {want:.4f}")
EOF
else
  echo "SKIP  torch check (/usr/bin/python3 cannot import torch)"
fi

# ---------------------------------------------------------------------------- mpirun -n 1
if command -v mpirun >/dev/null 2>&1; then
  if run "mpirun -n 1 mpsl train (same options)" mpirun \
      mpirun -n 1 "$MPSL" "${TRAIN[@]}" --metrics run2/metrics.jsonl --save-model run2/model.h5; then
    expect "mpirun -n 1 trains the same model as the plain run" \
      "$PY" - run1/model.h5 run2/model.h5 run1/metrics.jsonl run2/metrics.jsonl <<'EOF'
import json, sys
import h5py, numpy as np
def tensors(p):
    out = {}
    with h5py.File(p, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[...]) if isinstance(o, h5py.Dataset) else None)
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert sorted(a) == sorted(b), f"different tensors: {sorted(set(a) ^ set(b))}"
worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) / max(float(np.max(np.abs(a[k]))), 1e-30)
            for k in a)
assert worst <= 1e-5, f"largest relative difference {worst:.3e}"
acc = [[json.loads(l) for l in open(p) if l.strip()][-1]["test_accuracy"] for p in sys.argv[3:5]]
assert acc[0] == acc[1], f"test accuracy {acc[0]} vs {acc[1]}"
print(f"{len(a)} tensors, largest relative difference {worst:.1e}, test accuracy {acc[1]}")
EOF
  fi
else
  bad "mpirun is not on PATH (apt-get install openmpi-bin)"
fi

echo
echo "train_eval_roundtrip: $passed passed, $failed failed ($((SECONDS - start_s)) s)"
[ "$failed" -eq 0 ]
