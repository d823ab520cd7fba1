#!/usr/bin/env bash
# jobs/workstation-multihop.sh, the mpirun counterpart of the Slurm batch script: a 4-rank
# multihop training (2 owner ranks + 2 stages) writes its run folder runs/NAME (exit_code 0,
# metrics of 4 ranks ending ok, trace of 4 ranks, checkpoints, model, job.txt, log); called
# again with the same NAME, one more round and --resume latest, it continues from the
# checkpoint; RETIME_PROFILE retimes a profile into the run folder and trains with it (the
# metrics carry its predictions); a missing RETIME_PROFILE and a bad option end with exit
# code 2, recorded in exit_code, without training.
set -uo pipefail
MPSL=$(cd "$(dirname "${1:?usage: workstation_job.sh PATH_TO_MPSL}")" && pwd)/$(basename "$1")
source "$(dirname "$0")/lib_mpi.bash"
SRC=${MPSL_SOURCE_DIR:-$(cd "$HERE/../.." && pwd)}
JOB="$SRC/jobs/workstation-multihop.sh"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

cat > "$T/job.ini" << 'INI'
[train]
model = fmnist-cnn
synthetic = true
synthetic-count = 1024
batch = 32
owners = 4
rounds = 2
batches-per-epoch = 3
quiet = true
INI
# job NAME [ENV=VALUE ...] -- [ARGS...]: the script with the test's binary, config and folder.
job() {
  local name=$1
  shift
  local envs=()
  while [ "$1" != -- ]; do
    envs+=("$1")
    shift
  done
  shift
  env MPSL="$MPSL" CONFIG="$T/job.ini" RUNS_DIR="$T/runs" NAME="$name" STAGES=2 OWNER_RANKS=2 \
    "${envs[@]}" timeout 300 bash "$JOB" "$@" > "$T/$name.out" 2>&1
}

job ws --
rc=$?
dir="$T/runs/ws"
if [ "$rc" = 0 ] && [ "$(cat "$dir/exit_code" 2>/dev/null)" = 0 ] && [ -s "$dir/model.h5" ] &&
  [ -f "$dir/checkpoints/latest" ] && grep -q "mpirun -n 4 " "$dir/job.txt" &&
  grep -q "RESULT model=fmnist-cnn" "$dir/log.txt"; then
  pass "run folder runs/ws: exit 0 (and in exit_code), model, checkpoints, job.txt, log"
else
  fail "run folder: exit $rc; $(ls "$dir" 2>&1 | tr '\n' ' '); $(tail -5 "$T/ws.out")"
fi
if out=$($PY - "$dir" << 'PY'
import json, sys
d = sys.argv[1]
ev = [json.loads(l) for l in open(d + "/metrics.jsonl")]
start = [e for e in ev if e["event"] == "run_start"][0]
assert start["ranks"] == 4 and start["stages"] == 2 and start["owners"] == 4, start
assert sum(e["event"] == "round_end" for e in ev) == 2
assert sorted(e["rank"] for e in ev if e["event"] == "rank_summary") == [0, 1, 2, 3]
assert ev[-1]["event"] == "run_end" and ev[-1]["exit"] == "ok", ev[-1]
t = json.load(open(d + "/trace.json"))["traceEvents"]
assert sorted({e["pid"] for e in t if e["ph"] == "X"}) == [0, 1, 2, 3]
print("metrics (2 rounds, 4 rank summaries, run_end ok) and a trace of 4 ranks")
PY
); then
  pass "$out"
else
  fail "outputs: $out"
fi

# The same NAME, one more round, --resume latest: round 3 only.
job ws ROUNDS=3 -- --resume latest
rc=$?
if [ "$rc" = 0 ] && grep -q '"event": *"resume"' "$dir/metrics.jsonl" &&
  [ "$(grep -c '"event": *"round_end"' "$dir/metrics.jsonl")" = 3 ]; then
  pass "again with ROUNDS=3 and --resume latest: continued from the checkpoint (round 3 only)"
else
  fail "resume: exit $rc, $(grep -c round_end "$dir/metrics.jsonl") round_end events; $(tail -5 "$T/ws.out")"
fi

# RETIME_PROFILE: a profile retimed into the run folder, the run predicted from it.
"$MPSL" profile --model fmnist-cnn --batch 32 --repeats 3 --min-time 0 --concurrency 0 \
  --threads 1 --quiet --output "$T/prof.json"
job rt RETIME_PROFILE="$T/prof.json" --
rc=$?
if [ "$rc" = 0 ] && grep -q -- "--profile $T/runs/rt/profile.json" "$T/runs/rt/job.txt" &&
  out=$($PY - "$T/runs/rt" "$T/prof.json" << 'PY'
import json, sys
d, src = sys.argv[1], json.load(open(sys.argv[2]))
now = json.load(open(d + "/profile.json"))
assert [u["activation_bytes"] for u in now["units"]] == [u["activation_bytes"] for u in src["units"]]
assert now["repeats"] >= 5 and src["repeats"] == 3, (now["repeats"], src["repeats"])
ev = [json.loads(l) for l in open(d + "/metrics.jsonl")]
pred = [e["predicted_round_seconds"] for e in ev if e["event"] == "round_end"]
assert len(pred) == 2 and all(p > 0 for p in pred), pred
print(f"retimed ({now['repeats']} steps, bytes kept), predicted round {pred[-1]:.3f} s")
PY
); then
  pass "RETIME_PROFILE: $out"
else
  fail "RETIME_PROFILE: exit $rc ${out:-}; $(tail -5 "$T/rt.out")"
fi

job nofile RETIME_PROFILE="$T/missing.json" --
rc=$?
if [ "$rc" = 2 ] && [ "$(cat "$T/runs/nofile/exit_code" 2>/dev/null)" = 2 ] &&
  grep -q "RETIME_PROFILE=$T/missing.json: no such file" "$T/nofile.out" &&
  [ ! -e "$T/runs/nofile/metrics.jsonl" ]; then
  pass "a missing RETIME_PROFILE: exit 2 (and in exit_code), named, no training"
else
  fail "missing RETIME_PROFILE: exit $rc: $(cat "$T/nofile.out")"
fi

job bad -- --owners 0
rc=$?
if [ "$rc" = 2 ] && [ "$(cat "$T/runs/bad/exit_code" 2>/dev/null)" = 2 ] &&
  grep -q "mpsl: error: .*owners" "$T/bad.out"; then
  pass "a bad option: exit 2 (and in exit_code), mpsl's message in the output"
else
  fail "bad option: exit $rc: $(cat "$T/bad.out")"
fi
summary
