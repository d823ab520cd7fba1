#!/usr/bin/env bash
# --trace: a 4-rank multihop run (2 owner ranks, 2 stages, 1f1b with 2 micro-batches) writes one
# Chrome-trace JSON that loads (traceEvents of complete "X" spans with name/ph/ts/dur/pid/tid,
# process and thread names as "M" metadata), with forward, backward, optimizer, send, receive
# and aggregation spans from every rank, owner and micro-batch ids on the pipeline spans, and
# clocks aligned across ranks (every stage-1 forward of a micro-batch starts after the owner
# rank began sending it), and the CPU time of the compute spans. A single process traces its
# steps; a bad --trace path is refused.
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
