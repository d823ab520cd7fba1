#!/usr/bin/env bash
# profile -> plan -> train --plan: the profile and plan files, the plan's split used by train,
# predictions in --dry-run and in the metrics (predicted_round_seconds, predicted_peak_bytes,
# tracked_peak_bytes), and infeasible plans answered with what would fit (exit 2).
set -uo pipefail
MPSL=${1:?usage: plan_profile.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# Without the oversubscription that lib_mpi.bash turns on: the hop probe spawns more processes
# than cores, as a user's plain `mpsl profile` must.
mkdir -p "$T/tmp"
if TMPDIR=$T/tmp timeout 300 env -u OMPI_MCA_rmaps_base_oversubscribe "$MPSL" profile \
  --model fmnist-cnn --batch 16 --repeats 2 --threads 1 --pipeline-ranks 3 --quiet \
  --output "$T/p.json" &&
  [ -z "$(ls "$T/tmp" | grep mpsl-calibration)" ] && $PY -c "
import json, sys
p = json.load(open(sys.argv[1]))
assert p['format'] == 'mpsl-profile' and len(p['units']) == 9, p.keys()
u = p['units'][1]
assert u['forward_s'] > 0 and u['backward_s'] > 0 and u['output_bytes'] == 16 * 32 * 28 * 28 * 4
assert u['param_bytes'] == (32 * 9 * 32 + 32) * 4 and u['optimizer_bytes'] == 2 * u['param_bytes']
# A convolution starting a part copies its plain input into its own layout in every slot.
assert u['slot_input_bytes'] >= 16 * 32 * 28 * 28 * 4, u
assert all('joined_work_saving_bytes' in x and 'joined_slot_bytes' in x for x in p['units'])
# The hop probe (MPI_Comm_spawn of cores + 2 processes): one median per process count, a 64 KiB
# message taking more than nothing and less than 50 ms.
h, n = p['hop_s'], len(p['concurrency'])
assert len(h) == n and h[0] == 0 and all(0 < x < 0.05 for x in h[1:]), (h, n)
# Two processes alone (the others asleep) on this host's 2+ cores: a wake-up and a copy, well
# below the doorbell's 1 ms timeout (0.9-1 ms while the idle children polled in a collective).
assert h[1] < 0.5e-3, h
# The pipeline calibration (spawned mpsl train runs of 2..3 ranks): measured and predicted
# rounds, the host's speed, and a factor that is their ratio at that speed.
c = p['pipeline_calibration']
assert [x['ranks'] for x in c] == [2, 3], c
for x in c:
    assert x['measured_s'] > 0 and x['predicted_s'] > 0 and 0.3 < x['speed'] < 3, x
    assert abs(x['factor'] - x['measured_s'] / (x['predicted_s'] * x['speed'])) < 1e-9, x
    assert 0.3 < x['factor'] < 4, x
print(' '.join('%d: %.2f' % (x['ranks'], x['factor']) for x in c))
" "$T/p.json" > "$T/calibration" 2>&1; then
  pass "profile writes per-unit times and bytes, hop times and its pipeline calibration ($(cat "$T/calibration"))"
else
  fail "profile: $(tail -3 "$T/calibration")"
fi

# A calibration run that fails (test hook: its profile is missing) ends the calibration with a
# warning naming the exit code; the profile is written with the rank counts measured before it,
# and a profile asked for none has none.
if MPSL_TEST_CALIBRATION_FAIL_AT=3 timeout 300 "$MPSL" profile --model fmnist-cnn --batch 16 \
  --repeats 2 --min-time 0 --concurrency 3 --pipeline-ranks 3 --threads 1 --quiet \
  --output "$T/failed.json" > /dev/null 2> "$T/err" &&
  grep -q "pipeline calibration stopped at 3 ranks (the run ended with exit code 2)" "$T/err" &&
  timeout 120 "$MPSL" profile --model fmnist-cnn --batch 16 --repeats 2 --min-time 0 \
    --concurrency 2 --pipeline-ranks 0 --threads 1 --quiet --output "$T/none.json" &&
  $PY -c "
import json, sys
a, b = (json.load(open(f))['pipeline_calibration'] for f in sys.argv[1:3])
assert [x['ranks'] for x in a] == [2] and b == [], (a, b)
" "$T/failed.json" "$T/none.json"; then
  pass "a failed calibration run leaves the rank counts before it; --pipeline-ranks 0 measures none"
else
  fail "failed calibration: $(cat "$T/err")"
fi

# A calibration run that never finishes (its stage sleeps: test hook) ends the profile at the
# deadline, exit 1 and one line saying what to do; no profile, and its temporary folder is gone
# although the process ends without destructors.
mkdir -p "$T/tmp"
MPSL_TEST_STALL=1:120 MPSL_CALIBRATION_DEADLINE_S=5 TMPDIR="$T/tmp" timeout 100 "$MPSL" profile \
  --model fmnist-cnn --batch 16 --repeats 2 --min-time 0 --concurrency 2 --pipeline-ranks 2 \
  --threads 1 --quiet --output "$T/hung.json" > /dev/null 2> "$T/err"
rc=$?
if [ $rc = 1 ] && [ "$(grep -c "error:" "$T/err")" = 1 ] &&
  grep -q "calibration run with 2 ranks (started with MPI_Comm_spawn) has not finished after 5 s" \
    "$T/err" && grep -q "MPSL_CALIBRATION_DEADLINE_S" "$T/err" && [ ! -e "$T/hung.json" ] &&
  [ -z "$(find "$T/tmp" -maxdepth 1 -name 'mpsl-calibration-*')" ]; then
  pass "a calibration run that never finishes ends the profile at its deadline, its folder removed"
else
  fail "hung calibration: exit $rc, $(ls "$T/tmp"), stderr $(cat "$T/err")"
fi

if timeout 60 "$MPSL" profile --from "$T/p.json" --device slow=20,bw=8Mbit --quiet \
  --output "$T/slow.json" && $PY -c "
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
assert abs(b['units'][3]['forward_s'] - 20 * a['units'][3]['forward_s']) < 1e-12
assert b['device']['slowdown'] == 20 and b['device']['bandwidth_bytes_per_s'] == 1e6
" "$T/p.json" "$T/slow.json"; then
  pass "profile --from --device rescales a profile"
else
  fail "profile --from --device"
fi

# A hop probe that does not finish (its first child never answers: test hook) ends the profile
# at its deadline, exit 1 and one error line saying what to do, and writes nothing; it does not
# hang. Warnings about this host's noise (placement sweeps that disagree, a drifting window) may
# come before it: a loaded CI host printed one.
start=$SECONDS
MPSL_TEST_HOP_PROBE_STALL_S=120 MPSL_HOP_PROBE_DEADLINE_S=3 timeout 100 \
  env -u OMPI_MCA_rmaps_base_oversubscribe "$MPSL" profile --model fmnist-cnn --batch 16 \
  --repeats 1 --min-time 0 --concurrency 2 --threads 1 --quiet --output "$T/stalled.json" \
  > /dev/null 2> "$T/err"
rc=$?
if [ $rc = 1 ] && [ "$(grep -vc '^warning: ' "$T/err")" = 1 ] &&
  [ "$(grep -c '^mpsl: error: ' "$T/err")" = 1 ] &&
  grep -q "hop probe (2 processes started with MPI_Comm_spawn) has not finished after 3 s" "$T/err" &&
  grep -q -- "--concurrency 0" "$T/err" && [ ! -e "$T/stalled.json" ]; then
  pass "a hop probe that never finishes ends the profile at its deadline ($((SECONDS - start)) s)"
else
  fail "stalled hop probe: exit $rc, stderr $(cat "$T/err")"
fi

# --retime measures the times again and keeps the rest: a profile whose times say 100 s per
# unit comes back with this host's milliseconds, its bytes, placement and hops as they were.
$PY -c "
import json, sys
p = json.load(open(sys.argv[1]))
for u in p['units']:
    u['forward_s'] = u['backward_s'] = 100.0
json.dump(p, open(sys.argv[2], 'w'))
" "$T/p.json" "$T/stale.json"
# (--min-time 0: exactly the 3 repeats, not the default 2 s of steps.)
if timeout 60 "$MPSL" profile --from "$T/stale.json" --retime --repeats 3 --min-time 0 --threads 1 --quiet \
  --output "$T/retimed.json" && $PY -c "
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
assert b['repeats'] == 3 and b['model'] == a['model'] and b['batch'] == a['batch'], b['repeats']
assert all(0 < u['forward_s'] < 1 and 0 < u['backward_s'] < 1 for u in b['units'][1:]), b['units']
keys = ('output_bytes', 'param_bytes', 'activation_bytes', 'work_bytes', 'slot_input_bytes')
assert [[u[k] for k in keys] for u in a['units']] == [[u[k] for k in keys] for u in b['units']]
assert b['concurrency'] == a['concurrency'] and b['hop_s'] == a['hop_s']
assert b['pipeline_calibration'] == a['pipeline_calibration'] != []
" "$T/stale.json" "$T/retimed.json"; then
  pass "profile --from --retime measures the times again, keeps bytes, placement, hops and calibration"
else
  fail "profile --from --retime"
fi
# A window of steps whose speed moved by more than 15% between its halves is timed again and the
# steadiest kept (MPSL_TEST_PROFILE_DRIFT=1.6: the first window's second half 1.6x as long).
if MPSL_TEST_PROFILE_DRIFT=1.6 timeout 60 "$MPSL" profile --from "$T/p.json" --retime --repeats 8 \
  --min-time 0 --threads 1 --output "$T/drift.json" > "$T/drift.out" 2>&1 && $PY -c "
import json, sys
p = json.load(open(sys.argv[1]))
assert p['timing_windows'] >= 2 and p['timing_drift'] < 0.3 and p['repeats'] == 8, \
    (p['timing_windows'], p['timing_drift'], p['repeats'])
" "$T/drift.json" && grep -q "the steadiest of [23] windows" "$T/drift.out"; then
  pass "a drifting window of steps is timed again, the steadiest kept"
else
  fail "drifting retime: $(tail -c 300 "$T/drift.out")"
fi
# expect_input_error NAME PATTERN COMMAND ARGS...: exit 2 with one error line matching PATTERN,
# and no output file.
expect_input_error() {
  local name=$1 pattern=$2
  shift 2
  timeout 60 "$MPSL" "$@" --output "$T/bad.json" > /dev/null 2> "$T/err"
  local rc=$?
  if [ $rc = 2 ] && grep -q -- "$pattern" "$T/err" && [ ! -e "$T/bad.json" ]; then
    pass "$name: $(cat "$T/err")"
  else
    fail "$name: exit $rc, stderr $(cat "$T/err")"
  fi
}
expect_input_error "--retime without --from" "needs --from" profile --retime
expect_input_error "--retime of a rescaled profile" "describes another device" profile \
  --from "$T/slow.json" --retime
expect_input_error "--from with --model" "not both" profile --from "$T/p.json" --model vgg19 --retime

# The placement slowdown forks copies of the profiling process: their first step after fork()
# copies every page it writes (copy-on-write). vgg11 at batch 1 writes 1.5 GB of weights,
# gradients and momentum per step, so counting that step reads several times too slow. Two
# processes on a host with two cores or more slow each other by far less than 2x.
if [ "$(getconf _NPROCESSORS_ONLN)" -ge 2 ]; then  # nproc follows OMP_NUM_THREADS
  if timeout 300 "$MPSL" profile --model vgg11 --batch 1 --repeats 1 --concurrency 2 --threads 1 \
    --quiet --output "$T/vgg11.json" && $PY -c "
import json, sys
c = json.load(open(sys.argv[1]))['concurrency']
assert len(c) == 2 and c[0] == 1.0 and 0.8 < c[1] < 2.0, c
print(f'{c[1]:.2f}')
" "$T/vgg11.json" > "$T/slowdown" 2>&1; then
    pass "placement slowdown of 2 processes on 2+ cores, large state: $(cat "$T/slowdown")"
  else
    fail "placement slowdown with a large state: $(tail -3 "$T/slowdown")"
  fi
fi

OUT=$(timeout 60 "$MPSL" plan --profile "$T/p.json" --owners 4 --stages 2 --cores 2 \
  --batches-per-round 2 --output "$T/plan.json" 2>&1)
SPLIT=$($PY -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['split'])))" "$T/plan.json" 2> /dev/null)
if [ -n "$SPLIT" ] && echo "$OUT" | grep -q "predicted round"; then
  pass "plan chooses --split $SPLIT"
else
  fail "plan: $OUT"
fi

# expect_plan_error NAME PATTERN ARGS...: plan from the profile above refuses ARGS.
expect_plan_error() {
  local name=$1 pattern=$2
  shift 2
  expect_input_error "$name" "$pattern" plan --profile "$T/p.json" "$@"
}
expect_plan_error "memory too small" "smallest memory that fits is" --owners 4 --stages 2 --node-memory 1M
# The smallest memory for one stage and for two (from the answers to a far too small memory):
# between the two, one stage does not fit but two do, and the answer says so.
need() {
  "$MPSL" plan --profile "$T/p.json" --output "$T/bad.json" --owners 16 --stages "$1" \
    --node-memory 1M 2>&1 | sed -n 's/.*that fits is .* (\([0-9]*\) bytes).*/\1/p'
}
N1=$(need 1) N2=$(need 2)
if [ -n "$N1" ] && [ -n "$N2" ] && [ "$N2" -lt "$N1" ]; then
  expect_plan_error "memory too small for one stage, enough for two" "or 2 stages of the given memory" \
    --owners 16 --stages 1 --node-memory $(((N1 + N2) / 2))
else
  fail "smallest memories: one stage '$N1', two stages '$N2'"
fi
expect_plan_error "more stages than units" "at most 7 compute stages" --owners 4 --stages 9
expect_plan_error "no stage count fits" "needs at least" --owners 4 --stages 0 --node-memory 1M
if [ -e "$T/bad.json" ]; then fail "an infeasible plan left a plan file"; else pass "no plan file when infeasible"; fi

B="--model fmnist-cnn --synthetic --synthetic-count 256 --batch 16 --owners 4 --batches-per-epoch 2 --threads 1"
DRY=$(mpsl_run 3 train $B --plan "$T/plan.json" --dry-run 2>&1)
if [ "$(echo "$DRY" | grep -c "predicted peak")" = 3 ] && echo "$DRY" | grep -q "predicted round time" &&
  echo "$DRY" | grep -q "compute stage 2/2"; then
  pass "--dry-run prints role, units, owners, predicted peak and busy time per rank"
else
  fail "--dry-run: $DRY"
fi

# The cores ranks share are the CPUs they may run on: two ranks bound to one CPU share one.
DRY=$(timeout 120 mpirun -n 2 --cpu-set 0 --bind-to core "$MPSL" train $B --stages 1 \
  --profile "$T/p.json" --dry-run 2>&1)
if echo "$DRY" | grep -q "with the ranks sharing 1 core$"; then
  pass "--dry-run: ranks bound to one CPU share 1 core"
else
  fail "--dry-run with both ranks on CPU 0: $DRY"
fi

# A profile run bound to one CPU (as mpirun binds one rank) still measures placement on every
# CPU it may use: its forked processes would otherwise share that one CPU.
if timeout 120 taskset -c 0 "$MPSL" profile --model lenet5 --batch 8 --repeats 2 --threads 1 \
  --concurrency 2 --quiet --output "$T/bound.json" && $PY -c "
import json, os, sys
p = json.load(open(sys.argv[1]))
assert p['placement_cpus'] == len(os.sched_getaffinity(0)), (p['placement_cpus'], os.sched_getaffinity(0))
assert len(p['concurrency']) == 2, p['concurrency']
" "$T/bound.json"; then
  pass "profile under taskset -c 0 measures placement on all the CPUs it may use"
else
  fail "profile bound to one CPU"
fi

if mpsl_run 3 train $B --plan "$T/plan.json" --rounds 2 --quiet --metrics "$T/m.jsonl" > /dev/null &&
  $PY -c "
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
start = next(e for e in ev if e['event'] == 'run_start')
assert ','.join(map(str, start['split'])) == sys.argv[2], (start['split'], sys.argv[2])
rounds = [e for e in ev if e['event'] == 'round_end']
assert len(rounds) == 2 and all(r['predicted_round_seconds'] > 0 for r in rounds), rounds
ranks = [e for e in ev if e['event'] == 'rank_summary']
assert len(ranks) == 3
for r in ranks:
    assert r['predicted_peak_bytes'] > 0 and r['peak_rss_bytes'] > 0, r
    assert 0 < r['tracked_peak_bytes'] <= 2 * r['peak_rss_bytes'], r
    # The cost model posts the same receive buffers as the runtime.
    assert r['predicted_receive_buffer_bytes'] == r['receive_buffer_bytes'] > 0, r
    assert r['max_in_flight'] >= 1 and r['predicted_max_in_flight'] >= 1, r
    # --max-in-flight auto: every rank created the slots predicted for it up front, and a
    # stage never held more.
    assert r['in_flight_slots'] == r['predicted_max_in_flight'], r
    assert r['role'] == 'owner' or r['max_in_flight'] <= r['predicted_max_in_flight'], r
    # CPU seconds of the rank while it trained: it computed, and it cannot have used more
    # than its one thread for the whole run.
    assert 0 < r['cpu_s'] <= next(e for e in ev if e['event'] == 'run_end')['seconds'] + 0.5, r
    assert r['role'] == 'owner' or r['cpu_s'] >= 0.5 * r['busy_s'] / len(ranks), r
" "$T/m.jsonl" "$SPLIT"; then
  pass "train --plan uses the plan's split; metrics carry predictions next to measurements; slots reserved as predicted"
else
  fail "train --plan metrics"
fi

# A host that cannot hold what its ranks are predicted to peak at is named in a warning before
# training (a profile whose process baseline claims a petabyte; the run itself is small).
$PY -c "
import json, sys
p = json.load(open(sys.argv[1])); p['base_rss_bytes'] = 10**15
json.dump(p, open(sys.argv[2], 'w'))" "$T/p.json" "$T/huge.json"
if out=$(mpsl_run 3 train $B --stages 2 --profile "$T/huge.json" --rounds 1 --quiet 2>&1) &&
  grep -q "predicted to peak at .* the host has .* available: the run may be killed" <<< "$out"; then
  pass "a host short of the predicted peak memory gets a warning, and the run goes on"
else
  fail "no warning for a host short of memory: $out"
fi

# The receive buffers of other layouts: one stage (the owner rank is both neighbours), and
# 1F1B with 3 owners on 2 owner ranks (depth per owner rank), each as the runtime posts them.
timeout 120 "$MPSL" profile --model fmnist-cnn --batch 16 --micro-batches 2 --repeats 1 --threads 1 \
  --quiet --output "$T/p2.json" || fail "profile with 2 micro-batches"
check_receive() {
  local name=$1 ranks=$2
  shift 2
  if mpsl_run "$ranks" train --model fmnist-cnn --synthetic --synthetic-count 256 --batch 16 \
    --batches-per-epoch 2 --threads 1 --rounds 1 --quiet --metrics "$T/r.jsonl" "$@" > /dev/null &&
    $PY -c "
import json, sys
ranks = [json.loads(l) for l in open(sys.argv[1]) if '\"rank_summary\"' in l]
assert len(ranks) == int(sys.argv[2]), ranks
for r in ranks:
    assert r['predicted_receive_buffer_bytes'] == r['receive_buffer_bytes'] > 0, r
" "$T/r.jsonl" "$ranks"; then
    pass "predicted receive buffers == the runtime's: $name"
  else
    fail "receive buffers: $name"
  fi
}
check_receive "1 stage, 4 owners" 2 --owners 4 --stages 1 --profile "$T/p.json"
check_receive "1F1B M=2, 3 owners on 2 owner ranks, 2 stages" 4 --owners 3 --stages 2 \
  --schedule 1f1b --micro-batches 2 --profile "$T/p2.json"

mpsl_run 3 train --model lenet5 --synthetic --synthetic-count 256 --batch 16 --threads 1 \
  --plan "$T/plan.json" --max-steps 1 > /dev/null 2> "$T/err"
rc=$?
if [ $rc = 2 ] && grep -q "plan for model 'fmnist-cnn'" "$T/err"; then
  pass "a plan of another model is refused"
else
  fail "plan of another model: exit $rc, $(cat "$T/err")"
fi
summary
