#!/usr/bin/env bash
# --trace: a 4-rank multihop run (2 owner ranks, 2 stages, 1f1b with 2 micro-batches) writes one
# Chrome-trace JSON that loads (traceEvents of complete "X" spans with name/ph/ts/dur/pid/tid,
# process and thread names as "M" metadata), with forward, backward, optimizer, send, receive
# and aggregation spans from every rank, copy-in spans with their bytes, owner and micro-batch
# ids on the pipeline spans, and clocks aligned across ranks (every stage-1 forward of a
# micro-batch starts after the owner rank began sending it), and the CPU time of the compute
# spans. A single process traces its
# steps; a bad --trace path is refused. With --dry-run and a profile, --trace writes the cost
# model's round 1 in the same layout (the same processes, every stage's forwards of the round,
# spans of a rank one after another, CPU time never above a span's length), and
# tools/compare_traces.py lays it beside the real run's (and refuses them the wrong way round);
# without a profile that can predict the run it is refused.
set -uo pipefail
MPSL=${1:?usage: trace.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

if mpsl_run 4 train --model fmnist-cnn --synthetic --synthetic-count 1024 --batch 32 --threads 1 \
  --quiet --rounds 2 --batches-per-epoch 4 --stages 2 --owners 4 --schedule 1f1b \
  --micro-batches 2 --trace "$T/run/trace.json" > /dev/null; then
  pass "4-rank run with --trace"
else
  fail "4-rank run with --trace failed"
fi

if out=$($PY - "$T/run/trace.json" <<'PY'
import json, sys, collections
d = json.load(open(sys.argv[1]))
ev = d["traceEvents"]
assert isinstance(ev, list) and ev, "no traceEvents"
spans = [e for e in ev if e["ph"] == "X"]
meta = [e for e in ev if e["ph"] == "M"]
for e in spans:
    for k in ("name", "ph", "ts", "dur", "pid", "tid", "args"):
        assert k in e, f"span without {k}: {e}"
    assert e["dur"] >= 0 and e["ts"] >= 0, e
names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
assert sorted(names) == [0, 1, 2, 3], names
assert "owner" in names[0] and "stage 2" in names[3], names
by_rank = collections.defaultdict(collections.Counter)
for e in spans:
    by_rank[e["pid"]][e["name"]] += 1
for r in range(4):
    for kind in ("forward", "backward", "optimizer", "send", "receive", "aggregation"):
        assert by_rank[r][kind] > 0, f"rank {r} has no {kind} span: {dict(by_rank[r])}"
# The receiving side's MPI calls that completed receives (their copies), with what they took in.
for r in range(4):
    cp = [e for e in spans if e["pid"] == r and e["name"] == "copy in"]
    assert cp and all(e["args"]["bytes"] > 0 and "peer" in e["args"] for e in cp), (r, cp[:2])
# 2 rounds x 4 batches x 4 owners x 2 micro-batches forwards on each stage
for r in (2, 3):
    assert by_rank[r]["forward"] == 64, (r, by_rank[r]["forward"])
pipe = [e for e in spans if e["name"] in ("forward", "backward", "send", "receive")]
assert all("owner" in e["args"] and "micro" in e["args"] for e in pipe)
assert {e["args"]["micro"] for e in pipe} == {0, 1}
assert {e["args"]["owner"] for e in pipe} == {0, 1, 2, 3}
assert {e["args"]["round"] for e in spans} >= {1, 2}
# Causality across ranks: stage 1 (rank 2) forwards (round, owner, micro) after its owner rank
# (owner % 2) began sending it to rank 2.
sends = {}
for e in spans:
    if e["name"] == "send" and e["pid"] in (0, 1) and e["args"]["peer"] == 2:
        a = e["args"]
        sends.setdefault((a["round"], a["owner"], a["micro"]), []).append(e["ts"])
fw = collections.defaultdict(list)
for e in spans:
    if e["name"] == "forward" and e["pid"] == 2:
        a = e["args"]
        fw[(a["round"], a["owner"], a["micro"])].append(e["ts"])
bad = 0
for key, starts in fw.items():
    for s0, f0 in zip(sorted(sends[key]), sorted(starts)):
        bad += f0 < s0
assert bad == 0, f"{bad} stage forwards start before their send: clocks not aligned"
# Compute spans carry the process's CPU time: measured (not all zero), never negative, and with
# one thread per rank not above the span's length (ms; a little slack for clock granularity).
comp = [e for e in spans if e["name"] in ("forward", "backward", "optimizer")]
assert all("cpu_ms" in e["args"] for e in comp), "a compute span without cpu_ms"
assert all(0 <= e["args"]["cpu_ms"] <= e["dur"] / 1e3 * 1.1 + 0.5 for e in comp), \
    [e for e in comp if not 0 <= e["args"]["cpu_ms"] <= e["dur"] / 1e3 * 1.1 + 0.5][:3]
assert sum(e["args"]["cpu_ms"] for e in comp) > 0.2 * sum(e["dur"] for e in comp) / 1e3, \
    "compute spans' cpu_ms far below their length"
print(f"{len(spans)} spans, {len(meta)} metadata records, ranks {sorted(by_rank)}")
PY
); then
  pass "trace loads as Chrome trace JSON with spans from every rank ($out)"
else
  fail "trace check: $out"
fi

if mpsl_run 1 train --model fmnist-cnn --synthetic --synthetic-count 256 --batch 32 --threads 1 \
  --quiet --max-steps 3 --owners 2 --trace "$T/single.json" > /dev/null &&
  $PY -c "import json,sys; e=json.load(open(sys.argv[1]))['traceEvents']; assert sum(x['name']=='step' for x in e)==6" "$T/single.json"; then
  pass "single process: one step span per owner step"
else
  fail "single-process trace"
fi

TOOLS=$(cd "$(dirname "$0")/../../tools" && pwd)
PREDICT=(train --model fmnist-cnn --synthetic --synthetic-count 1024 --batch 32 --threads 1
  --batches-per-epoch 4 --stages 2 --owners 4 --schedule 1f1b --micro-batches 2 --dry-run)
if "$MPSL" profile --model fmnist-cnn --batch 32 --micro-batches 2 --repeats 2 --concurrency 0 \
  --quiet --output "$T/profile.json" > /dev/null &&
  mpsl_run 4 "${PREDICT[@]}" --profile "$T/profile.json" --trace "$T/predicted.json" > "$T/dry" &&
  grep -q "predicted trace of round 1: $T/predicted.json" "$T/dry"; then
  pass "--dry-run --trace writes the predicted round"
else
  fail "--dry-run --trace: $(tail -c 300 "$T/dry")"
fi
if out=$($PY - "$T/predicted.json" "$T/run/trace.json" <<'PY'
import json, sys, collections
d = json.load(open(sys.argv[1]))
real = json.load(open(sys.argv[2]))
assert d["otherData"].get("predicted") is True, d["otherData"]
names = lambda t: {e["pid"]: e["args"]["name"] for e in t["traceEvents"] if e.get("name") == "process_name"}
assert names(d) == names(real), (names(d), names(real))
spans = [e for e in d["traceEvents"] if e["ph"] == "X"]
count = collections.Counter((e["pid"], e["name"]) for e in spans)
# Round 1: 4 batches x 4 owners x 2 micro-batches through each stage, one step per batch.
for r in (2, 3):
    assert count[(r, "forward")] == 32 and count[(r, "backward")] == 32, dict(count)
    assert count[(r, "optimizer")] == 16, dict(count)
assert count[(0, "forward")] + count[(1, "forward")] == 2 * 32, dict(count)
assert all(e["args"]["round"] == 1 for e in spans)
for r in range(4):
    mine = sorted((e for e in spans if e["pid"] == r and e["name"] != "aggregation"),
                  key=lambda e: e["ts"])
    assert mine, f"rank {r} has no spans"
    for a, b in zip(mine, mine[1:]):
        assert b["ts"] >= a["ts"] + a["dur"] - 0.01, f"rank {r}: {a} overlaps {b}"
comp = [e for e in spans if e["name"] in ("forward", "backward", "optimizer")]
assert all(0 < e["args"]["cpu_ms"] <= e["dur"] / 1e3 + 1e-3 for e in comp), \
    [e for e in comp if not 0 < e["args"]["cpu_ms"] <= e["dur"] / 1e3 + 1e-3][:2]
print(f"{len(spans)} predicted spans")
PY
); then
  pass "the predicted trace has the run's processes and round 1's spans ($out)"
else
  fail "predicted trace check: $out"
fi
if $PY "$TOOLS/compare_traces.py" "$T/run/trace.json" "$T/predicted.json" --plot "$T/rounds.png" \
  > "$T/cmp" 2>&1 && grep -q "measured / predicted" "$T/cmp" && grep -q "rank 3: stage 2" "$T/cmp" &&
  [ -s "$T/rounds.png" ]; then
  pass "compare_traces.py: measured beside predicted, per rank, and the plot"
else
  fail "compare_traces.py: $(tail -c 400 "$T/cmp")"
fi
$PY "$TOOLS/compare_traces.py" "$T/predicted.json" "$T/run/trace.json" > /dev/null 2> "$T/err"
rc=$?
if [ "$rc" = 2 ] && grep -q "is a predicted trace" "$T/err"; then
  pass "compare_traces.py refuses the traces the wrong way round (exit 2)"
else
  fail "compare_traces.py, swapped traces: exit $rc, $(head -c 300 "$T/err")"
fi
mpsl_run 4 "${PREDICT[@]}" --trace "$T/none.json" > /dev/null 2> "$T/err"
rc=$?
if [ "$rc" = 2 ] && grep -q -- "--dry-run --trace needs the cost model" "$T/err" &&
  [ ! -e "$T/none.json" ]; then
  pass "--dry-run --trace without a profile is refused (exit 2), no file"
else
  fail "--dry-run --trace without a profile: exit $rc, $(head -c 300 "$T/err")"
fi
mpsl_run 4 train --model fmnist-cnn --synthetic --synthetic-count 1024 --batch 32 --threads 1 \
  --batches-per-epoch 4 --stages 2 --owners 4 --schedule 1f1b --micro-batches 4 --dry-run \
  --profile "$T/profile.json" --trace "$T/none.json" > /dev/null 2> "$T/err"
rc=$?
if [ "$rc" = 2 ] && grep -q "no predictions: the profile was taken at batch 32 with 2" "$T/err" &&
  [ ! -e "$T/none.json" ]; then
  pass "--dry-run --trace with a profile of other micro-batches is refused (exit 2), no file"
else
  fail "--dry-run --trace, mismatched profile: exit $rc, $(head -c 300 "$T/err")"
fi

mkdir -p "$T/dir.json"
mpsl_run 4 train --model fmnist-cnn --synthetic --synthetic-count 256 --batch 32 --threads 1 \
  --quiet --max-steps 1 --stages 2 --owners 2 --trace "$T/dir.json" > /dev/null 2> "$T/err"
rc=$?
if [ "$rc" = 2 ] && grep -q -- "--trace" "$T/err"; then
  pass "a folder as --trace is refused (exit 2)"
else
  fail "bad --trace: exit $rc, $(head -c 300 "$T/err")"
fi
summary
