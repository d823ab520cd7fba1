#!/usr/bin/env bash
# A real single-node Slurm (munged, slurmctld, slurmd from tools/slurm-local.sh, private ports
# and folder) runs jobs/slurm-multihop.sbatch with `sbatch --wait`: a 4-rank multihop training
# (2 owner ranks + 2 stages, srun --mpi=pmix). The job's exit code is 0 and its run folder
# runs/<job name>-<job id> holds the metrics (run_end ok, 4 rank summaries), a trace with spans
# from all 4 ranks, checkpoints, the model, the log and exit_code. Submitted again into the same
# run folder with more rounds, the job continues from its checkpoint; a job with a bad option
# ends with exit code 2, recorded in its run folder; mpsl profile runs under srun (no hop
# probe: it says why) and under mpirun -n 1 (hops, placement on the job's CPUs); tools/study
# --slurm --wait runs a 2-point study as 2 jobs. The daemons are stopped on exit.
# Needs root (CI runs as root); it installs the Slurm packages when they are missing.
set -uo pipefail
MPSL=$(cd "$(dirname "${1:?usage: slurm_job.sh PATH_TO_MPSL}")" && pwd)/$(basename "$1")
source "$(dirname "$0")/lib_mpi.bash"
SRC=${MPSL_SOURCE_DIR:-$(cd "$HERE/../.." && pwd)}
if [ "$(id -u)" != 0 ]; then
  echo "SKIP: starting Slurm daemons needs root"
  exit 77
fi
if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
  bash "$SRC/tools/install-deps.sh" || { echo "FAIL - cannot install Slurm"; exit 1; }
fi
T=$(mktemp -d)
chmod 0755 "$T" # munged runs as user munge
cleanup() {
  bash "$SRC/tools/slurm-local.sh" stop "$T/slurm"
  rm -rf "$T"
}
trap cleanup EXIT
trap "exit 1" TERM INT HUP # (the EXIT trap then stops the daemons)

if ! bash "$SRC/tools/slurm-local.sh" start "$T/slurm" 8; then
  echo "FAIL - Slurm did not start"
  exit 1
fi
source "$T/slurm/env"

cat > "$T/job.ini" << 'INI'
[train]
model = fmnist-cnn
synthetic = true
synthetic-count = 1024
batch = 32
stages = 2
owners = 4
rounds = 2
batches-per-epoch = 3
quiet = true
INI

submit() { # submit NAME EXTRA_ENV... -- ARGS...: prints the job id; exit code of the job in $rc
  local name=$1
  shift
  local envs="ALL,MPSL_REPO=$SRC,MPSL=$MPSL,CONFIG=$T/job.ini,RUNS_DIR=$T/runs"
  while [ "$1" != -- ]; do
    envs+=",$1"
    shift
  done
  shift
  timeout 300 sbatch --wait --parsable --job-name="$name" --ntasks=4 --cpus-per-task=1 \
    --output="$T/%x-%j.out" --export="$envs" "$SRC/jobs/slurm-multihop.sbatch" "$@"
}

job=$(submit mpsl-ci --)
rc=$?
job=${job%%;*}
dir="$T/runs/mpsl-ci-$job"
if [ "$rc" = 0 ] && [ -n "$job" ]; then
  pass "sbatch --wait: job $job exited 0"
else
  fail "sbatch --wait: exit $rc (job '$job'); output: $(cat "$T"/mpsl-ci-*.out 2>/dev/null | tail -20)"
fi
if [ -d "$dir" ] && [ "$(cat "$dir/exit_code" 2>/dev/null)" = 0 ] && [ -s "$dir/model.h5" ] &&
  [ -f "$dir/checkpoints/latest" ] && grep -q "srun --mpi=pmix" "$dir/job.txt" &&
  grep -q "RESULT model=fmnist-cnn" "$dir/log.txt"; then
  pass "run folder runs/mpsl-ci-$job: exit_code 0, model, checkpoints, job.txt, log"
else
  fail "run folder $dir: $(ls "$dir" 2>&1 | tr '\n' ' ')"
fi
if out=$($PY - "$dir" << 'PY'
import json, sys
d = sys.argv[1]
ev = [json.loads(l) for l in open(d + "/metrics.jsonl")]
start = [e for e in ev if e["event"] == "run_start"][0]
assert start["ranks"] == 4 and start["stages"] == 2, start
assert sum(e["event"] == "round_end" for e in ev) == 2
ranks = sorted(e["rank"] for e in ev if e["event"] == "rank_summary")
assert ranks == [0, 1, 2, 3], ranks
assert ev[-1]["event"] == "run_end" and ev[-1]["exit"] == "ok", ev[-1]
t = json.load(open(d + "/trace.json"))["traceEvents"]
pids = sorted({e["pid"] for e in t if e["ph"] == "X"})
assert pids == [0, 1, 2, 3], pids
print("metrics and trace of 4 ranks")
PY
); then
  pass "$out"
else
  fail "outputs: $out"
fi

# The same run folder, one more round: the job continues from its newest checkpoint.
job2=$(submit mpsl-ci "RUN_DIR=$dir" "ROUNDS=3" --)
rc=$?
if [ "$rc" = 0 ] && grep -q '"event": *"resume"' "$dir/metrics.jsonl" &&
  [ "$(grep -c '"event": *"round_end"' "$dir/metrics.jsonl")" = 3 ]; then
  pass "resubmitted with ROUNDS=3 into the same folder: continued from the checkpoint (round 3 only)"
else
  fail "resubmission: exit $rc, $(grep -c round_end "$dir/metrics.jsonl") round_end events"
fi

# A bad option: the job fails with exit code 2, recorded in its run folder.
job3=$(submit mpsl-bad -- --owners 0)
rc=$?
job3=${job3%%;*}
if [ "$rc" = 2 ] && [ "$(cat "$T/runs/mpsl-bad-$job3/exit_code" 2>/dev/null)" = 2 ]; then
  pass "a job with a bad option exits 2 (sbatch --wait and exit_code agree)"
else
  fail "bad job: sbatch exit $rc, exit_code $(cat "$T/runs/mpsl-bad-$job3/exit_code" 2>&1)"
fi
# mpsl profile in a job: under srun the hop probe cannot spawn (Slurm's PMIx), and the profile
# says what to do instead and goes on; under mpirun -n 1 (which binds the process to one core)
# it measures hops, and placement on every CPU the job may use.
cat > "$T/profile.sbatch" << JOB
#!/bin/bash
#SBATCH -n 1
#SBATCH -c 2
#SBATCH -t 5
#SBATCH -o $T/profile-%j.out
export OMP_NUM_THREADS=1
P="profile --model lenet5 --batch 8 --repeats 2 --threads 1 --concurrency 3"
srun -n 1 "$MPSL" \$P --quiet --output "$T/srun.json" 2> "$T/srun.err" || exit 11
mpirun -n 1 "$MPSL" \$P --quiet --output "$T/mpirun.json" || exit 12
$PY -c 'import os; print(len(os.sched_getaffinity(0)))' > "$T/job_cpus"
JOB
timeout 300 sbatch --wait "$T/profile.sbatch" > /dev/null 2>&1
rc=$?
if [ "$rc" = 0 ] && grep -q "a process started by srun cannot spawn others" "$T/srun.err" &&
  $PY -c "
import json, sys
s, m = (json.load(open(f)) for f in sys.argv[1:3])
cpus = int(open(sys.argv[3]).read())
assert not s.get('hop_s') and len(s['concurrency']) == 3, s.get('hop_s')
assert len(m['hop_s']) == 3 and all(0 < h < 0.05 for h in m['hop_s'][1:]), m['hop_s']
assert m['placement_cpus'] == cpus, (m['placement_cpus'], cpus)
" "$T/srun.json" "$T/mpirun.json" "$T/job_cpus"; then
  pass "profile in a job: srun says the hop probe cannot spawn and goes on; mpirun -n 1 measures hops and placement on the job's CPUs"
else
  fail "profile in a job: sbatch exit $rc; $(cat "$T"/srun.err "$T"/profile-*.out 2>&1 | tail -5)"
fi
# tools/study --slurm --wait: one job per point through the same batch script, then the CSV;
# retime = true: each job first retimes the study's profile on its node (RETIME_PROFILE).
"$MPSL" profile --model fmnist-cnn --batch 32 --repeats 3 --min-time 0 --concurrency 0 \
  --threads 1 --quiet --output "$T/prof.json"
cat > "$T/grid.toml" << 'TOML'
[study]
synthetic = true
synthetic_count = 256
batch = 32
rounds = 1
extra = ["--quiet"]
profile = "prof.json"
retime = true
[grid]
model = "fmnist-cnn"
owners = 2
stages = [1, 2]
batches = 2
TOML
(cd "$T" && timeout 300 "$SRC/tools/study" run grid.toml --slurm --wait --mpsl "$MPSL" \
  --out "$T/study") > "$T/study.txt" 2>&1
rc=$?
if [ "$rc" = 0 ] && [ "$($PY -c 'import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); print(sum(x["status"]=="ok" and x["job"]!="" and float(x["retime_factor"])>0 and float(x["steady_predicted_round_seconds"])>0 for x in r))' "$T/study/points.csv")" = 2 ] &&
  [ -s "$T/study/points/fmnist-cnn-k2-n2-mpsl-b2/trace.json" ] &&
  grep -q -- "--profile $T/study/points/fmnist-cnn-k2-n2-mpsl-b2/profile.json" "$T/study/points/fmnist-cnn-k2-n2-mpsl-b2/job.txt"; then
  pass "tools/study --slurm --wait: 2 points as 2 Slurm jobs, both ok in points.csv, each predicted from the profile its job retimed"
else
  fail "study on Slurm: exit $rc: $(cat "$T/study.txt")"
fi
summary
