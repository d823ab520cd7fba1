#!/usr/bin/env bash
# tools/study: malformed grids are refused with exit code 2 and a message naming the grid and
# the problem (unknown key, emulation key, bad type, bad schedule, missing section, bad TOML);
# a small local study (synthetic data, 4 points, 2 of them failing on purpose) records the
# failed points as failed in points.csv without stopping, writes the CSV files and every plot
# (PNG and SVG), and a second `run` skips every point that has a result; a point whose result
# is removed runs again, alone.
set -uo pipefail
MPSL=$(cd "$(dirname "${1:?usage: study.sh PATH_TO_MPSL}")" && pwd)/$(basename "$1")
source "$(dirname "$0")/lib_mpi.bash"
SRC=${MPSL_SOURCE_DIR:-$(cd "$HERE/../.." && pwd)}
STUDY="$SRC/tools/study"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"

head='[study]
synthetic = true
synthetic_count = 256
batch = 32
rounds = 2
extra = ["--quiet"]'

refuse() { # refuse NAME EXPECTED_TEXT GRID_TEXT
  printf '%s\n' "$3" > "$T/$1.toml"
  "$STUDY" run "$T/$1.toml" --mpsl "$MPSL" > "$T/out.txt" 2> "$T/err.txt"
  local rc=$?
  if [ "$rc" = 2 ] && grep -q "$1.toml" "$T/err.txt" && grep -q -- "$2" "$T/err.txt" &&
    [ ! -d "$T/runs" ]; then
    pass "grid $1 refused (exit 2): $(cat "$T/err.txt")"
  else
    fail "grid $1: exit $rc, stderr: $(cat "$T/err.txt")"
  fi
}
refuse unknown_key "unknown key 'stage'" "$head
[grid]
model = \"fmnist-cnn\"
owners = 2
stages = 1
stage = 2"
refuse emulate "emulate = 'slow.json': no such file" "$head
[grid]
model = \"fmnist-cnn\"
owners = 2
stages = 1
emulate = [\"slow.json\"]"
refuse slow_owners "slow_owners needs \[study\] emulate" "$head
[grid]
model = \"fmnist-cnn\"
owners = 2
stages = 1
slow_owners = [0, 1]"
refuse nodes "no stages x replicas equals it" "$head
nodes = 5
[grid]
model = \"fmnist-cnn\"
owners = 2
stages = [1, 2]
replicas = [1, 2]"
refuse bad_type "owners = 'four': expected int" "$head
[grid]
model = \"fmnist-cnn\"
owners = [2, \"four\"]
stages = 1"
refuse bad_schedule "schedule = 'gpipe'" "$head
[grid]
model = \"fmnist-cnn\"
owners = 2
stages = 1
schedule = [\"mpsl\", \"gpipe\"]"
refuse no_grid "no \[grid\] section" "$head"
refuse no_stages "needs stages" "$head
[grid]
model = \"fmnist-cnn\"
owners = 2"
refuse zero "must be at least 1" "$head
[grid]
model = \"fmnist-cnn\"
owners = 2
stages = [0, 1]"
refuse not_toml "not valid TOML" "$head
[grid
model = fmnist-cnn"
refuse retime_alone "retime = true needs profile" "$head
retime = true
[grid]
model = \"fmnist-cnn\"
owners = 2
stages = 1"

# 4 points: 1f1b with 3 micro-batches of a batch of 32 fails (mpsl refuses it, exit 2).
printf '%s\n' "$head" '[grid]' 'model = "fmnist-cnn"' 'owners = [2, 4]' 'stages = 2' \
  'schedule = ["mpsl", "1f1b"]' 'micro_batches = 3' 'batches = 2' > "$T/small.toml"
"$STUDY" run "$T/small.toml" --mpsl "$MPSL" --out "$T/study" > "$T/run1.txt" 2>&1
rc=$?
if [ "$rc" = 1 ] && grep -q "4 points" "$T/run1.txt" && grep -q "2 ok, 2 failed" "$T/run1.txt"; then
  pass "study of 4 points: 2 ok, 2 failed, exit 1 after all points"
else
  fail "study run: exit $rc: $(cat "$T/run1.txt")"
fi
if out=$($PY - "$T/study" << 'PY'
import csv, os, sys
d = sys.argv[1]
rows = {r["point"]: r for r in csv.DictReader(open(d + "/points.csv"))}
assert len(rows) == 4, rows.keys()
for name, r in rows.items():
    if "1f1b" in name:
        assert r["status"] == "failed" and r["exit_code"] == "2", r
        assert "micro-batches" in r["error"], r["error"]
    else:
        assert r["status"] == "ok" and float(r["images_per_s"]) > 0, r
        assert r["ranks"] == "4" and int(r["max_stage_peak_rss_bytes"]) > 0, r
rounds = list(csv.DictReader(open(d + "/rounds.csv")))
assert len(rounds) == 4, len(rounds)  # 2 ok points x 2 rounds
ranks = list(csv.DictReader(open(d + "/ranks.csv")))
assert len(ranks) == 8, len(ranks)
plots = sorted(os.listdir(d + "/plots"))
for p in ("throughput_vs_stages", "throughput_vs_owners", "memory_vs_owners",
          "predicted_vs_measured_round", "accuracy_vs_round", "timeline"):
    for ext in ("png", "svg"):
        f = f"{d}/plots/{p}.{ext}"
        assert os.path.getsize(f) > 1000, f
print(f"points.csv: 2 ok, 2 failed (exit 2, error recorded); {len(plots)} plot files")
PY
); then
  pass "$out"
else
  fail "study outputs: $out"
fi

"$STUDY" run "$T/small.toml" --mpsl "$MPSL" --out "$T/study" > "$T/run2.txt" 2>&1
if grep -q "ran 0, submitted 0, skipped 4" "$T/run2.txt"; then
  pass "second run skips the 4 points with results"
else
  fail "second run: $(cat "$T/run2.txt")"
fi
rm "$T/study/points/fmnist-cnn-k4-n2-mpsl-b2/status.json"
"$STUDY" run "$T/small.toml" --mpsl "$MPSL" --out "$T/study" > "$T/run3.txt" 2>&1
if grep -q "ran 1, submitted 0, skipped 3" "$T/run3.txt" &&
  grep -q "fmnist-cnn-k4-n2-mpsl-b2: 4 ranks ... ok" "$T/run3.txt"; then
  pass "a point without a result runs again, alone"
else
  fail "resume: $(cat "$T/run3.txt")"
fi
# Predictions (written by train with --profile/--plan) reach points.csv when the metrics carry
# them: predicted_round_seconds in round_end, predicted_peak_bytes in rank_summary.
m="$T/study/points/fmnist-cnn-k2-n2-mpsl-b2/metrics.jsonl"
$PY - "$m" << 'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
for e in ev:
    if e["event"] == "round_end":
        e["predicted_round_seconds"] = 1.5
    if e["event"] == "rank_summary":
        e["predicted_peak_bytes"] = 123456789
open(sys.argv[1], "w").write("".join(json.dumps(e) + "\n" for e in ev))
PY
"$STUDY" report "$T/study" > /dev/null 2>&1
if $PY -c "
import csv, sys
r = {x['point']: x for x in csv.DictReader(open(sys.argv[1]))}['fmnist-cnn-k2-n2-mpsl-b2']
assert float(r['predicted_round_seconds']) == 1.5 and int(r['max_predicted_peak_bytes']) == 123456789, r
assert float(r['median_train_seconds']) > 0, r
" "$T/study/points.csv"; then
  pass "report: predicted round time and peak memory reach points.csv"
else
  fail "predictions not in points.csv"
fi

# Emulated devices with slow owners and the cost model's predictions (profile = true): 2 points,
# K = 2, owner 0 and then both owners of the slow class.
cat > "$T/dev.json" << 'EOF'
{"classes": {"owner": {"compute_factor": 2, "bandwidth_bps": 1e9},
             "slow": {"class": "owner", "compute_factor": 5}},
 "owners": {"default": "owner"}}
EOF
printf '%s\n' "$head" 'emulate = "dev.json"' 'slow_class = "slow"' 'profile = true' '[grid]' \
  'model = "fmnist-cnn"' 'owners = 2' 'stages = 2' 'slow_owners = [1, 2]' 'batches = 1' \
  > "$T/emu.toml"
"$STUDY" run "$T/emu.toml" --mpsl "$MPSL" --out "$T/emu" > "$T/emu.txt" 2>&1
rc=$?
if [ "$rc" = 0 ] && out=$($PY - "$T/emu" << 'PY'
import csv, json, os, sys
d = sys.argv[1]
rows = {r["point"]: r for r in csv.DictReader(open(d + "/points.csv"))}
assert sorted(rows) == ["fmnist-cnn-k2-n2-mpsl-b1-slow1", "fmnist-cnn-k2-n2-mpsl-b1-slow2"], rows
for name, r in rows.items():
    assert r["status"] == "ok" and r["emulate"] == "dev.json", r
    assert float(r["steady_predicted_round_seconds"]) > 0 and r["round_error"], r
    # The training part compared with the training part (no evaluation on either side).
    assert 0 < float(r["steady_predicted_train_seconds"]) <= float(r["steady_predicted_round_seconds"]), r
    assert r["train_error"] and 0 < float(r["steady_train_seconds"]) <= float(r["steady_round_seconds"]), r
    em = json.load(open(f"{d}/points/{name}/emulation.json"))
    want = {"slow1": "0", "slow2": "0-1"}[name.split("-")[-1]]
    assert em["owners"] == {"default": "owner", want: "slow"}, em["owners"]
    ini = open(f"{d}/points/{name}/point.ini").read()
    assert f"emulate = {d}/points/{name}/emulation.json" in ini and "profile = " in ini, ini
assert os.path.exists(d + "/profiles/fmnist-cnn-b32-m1-t1.json")
table = open(d + "/table.md").read()
assert table.count("| fmnist-cnn-k2-n2") == 2 and "median |predicted - measured|" in table, table
assert "training s (predicted)" in table and "training part: median" in table, table
for ext in ("png", "svg"):
    assert os.path.getsize(f"{d}/plots/round_and_memory_vs_slow_owners.{ext}") > 1000
print("2 emulated points with predictions; emulation files name the slow owners; table.md: "
      + table.strip().splitlines()[-1])
PY
); then
  pass "$out"
else
  fail "emulated study (exit $rc): ${out:-} $(tail -5 "$T/emu.txt")"
fi
# retime = true: each point retimes the study's profile on this host just before it runs and is
# predicted from that copy. The study's profile has its times made 50x longer (as if measured
# on a much slower host): the retimed copy must be back at this host's speed (bytes kept), and
# the point's prediction must come from it, not from the slow profile.
"$MPSL" profile --model fmnist-cnn --batch 32 --repeats 3 --min-time 0 --concurrency 0 \
  --threads 1 --quiet --output "$T/fast.json"
$PY - "$T/fast.json" "$T/slow.json" << 'PY'
import json, sys
p = json.load(open(sys.argv[1]))
for u in p["units"]:
    for k in ("forward_s", "backward_s", "step_s", "batch_forward_s", "batch_backward_s"):
        u[k] *= 50
p["loss_s"] *= 50
json.dump(p, open(sys.argv[2], "w"))
PY
"$MPSL" profile --model fmnist-cnn --batch 32 --repeats 0 --quiet --output "$T/bytes.json"
printf '%s\n' "$head" 'profile = "slow.json"' 'retime = true' '[grid]' 'model = "fmnist-cnn"' \
  'owners = 2' 'stages = 1' 'batches = 2' > "$T/retime.toml"
"$STUDY" run "$T/retime.toml" --mpsl "$MPSL" --out "$T/retime" > "$T/retime.txt" 2>&1
rc=$?
if [ "$rc" = 0 ] && grep -q "retimed: steps 0.0[0-9]x the study profile's" "$T/retime.txt" &&
  out=$($PY - "$T/retime" "$T/slow.json" << 'PY'
import csv, json, sys
d, slow = sys.argv[1], json.load(open(sys.argv[2]))
name = "fmnist-cnn-k2-n1-mpsl-b2"
r = {x["point"]: x for x in csv.DictReader(open(d + "/points.csv"))}[name]
assert r["status"] == "ok" and 0 < float(r["retime_factor"]) < 0.2, r
now = json.load(open(f"{d}/points/{name}/profile.json"))
assert [u["activation_bytes"] for u in now["units"]] == [u["activation_bytes"] for u in slow["units"]]
assert f"profile = {d}/points/{name}/profile.json" in open(f"{d}/points/{name}/point.ini").read()
assert json.load(open(f"{d}/points/{name}/point.json"))["retimed_from"].endswith("/slow.json")
# From the slow profile the prediction would be ~50x the measured round.
pred, meas = float(r["steady_predicted_round_seconds"]), float(r["steady_round_seconds"])
assert 0 < pred < 5 * meas, (pred, meas)
# Beside it, what the slow profile itself predicts (its dry run): far longer.
slow_pred = float(r["study_profile_round_seconds"])
assert slow_pred > 10 * pred and float(r["study_profile_round_error"]) > 5, r
table = open(d + "/table.md").read()
assert "step time retimed / study profile" in table and f"{float(r['retime_factor']):.2f}x" in table, table
assert "predicted from the study's profile as it was (not retimed)" in table, table
print(f"retimed steps {float(r['retime_factor']):.3f}x the 50x-slow profile's; predicted round "
      f"{pred:.2f} s (from the slow profile {slow_pred:.2f} s), measured {meas:.2f} s")
PY
); then
  pass "retime = true: $out"
else
  fail "retime = true (exit $rc): ${out:-} $(cat "$T/retime.txt")"
fi
# A profile without times cannot be retimed: the grid is refused.
sed 's/slow.json/bytes.json/' "$T/retime.toml" > "$T/bytes_only.toml"
refuse bytes_only "bytes.json' has no times" "$(cat "$T/bytes_only.toml")"
# Nor one scaled to another device (mpsl refuses it): the point fails with mpsl's reason, no
# run, and the study ends with exit 1.
"$MPSL" profile --from "$T/fast.json" --device slow=2 --quiet --output "$T/device.json"
sed 's/slow.json/device.json/' "$T/retime.toml" > "$T/retime_bad.toml"
"$STUDY" run "$T/retime_bad.toml" --mpsl "$MPSL" --out "$T/retime_bad" > "$T/retime_bad.txt" 2>&1
rc=$?
if [ "$rc" = 1 ] && grep -q "FAILED (retiming the profile failed (exit 2): .*another device" "$T/retime_bad.txt" &&
  grep -q "retiming the profile failed" "$T/retime_bad/points.csv" &&
  [ ! -e "$T/retime_bad/points/fmnist-cnn-k2-n1-mpsl-b2/metrics.jsonl" ]; then
  pass "retime of a profile scaled to another device: the point fails naming why (exit 1), no run"
else
  fail "retime of a device profile: exit $rc: $(cat "$T/retime_bad.txt")"
fi
summary
