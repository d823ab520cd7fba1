#!/usr/bin/env bash
# A failing rank ends the whole job within seconds, with a non-zero exit code and messages that
# name the failed rank and its role; no rank is left waiting.
#  - SIGKILL of a compute-stage rank and of an owner rank in the middle of a round (4 ranks:
#    2 owner ranks + 2 stages): the job ends within 10 s of the kill, exit code != 0, mpirun names
#    the dead rank and the survivors name it with its role ("rank 2 (stage 1/2, ...) is gone").
#  - An exception (RuntimeFailure), an out-of-memory (std::bad_alloc) and an exception escaping
#    a noexcept function (std::terminate) on one rank (MPSL_TEST_FAIL hook): MPI_Abort, exit
#    code != 0 within 10 s, a message naming the rank and its role.
set -uo pipefail
MPSL=${1:?usage: rank_failure.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# A run long enough to be killed in its middle; MARK makes its processes findable.
run_args() {
  echo train --model fmnist-cnn --synthetic --synthetic-count 8192 --batch 32 --stages 2 \
    --owners 4 --threads 1 --rounds 20 --quiet --metrics "$T/$1.jsonl"
}

# pid_of_rank MARK RANK: the mpsl process whose command line holds MARK and whose rank is RANK.
pid_of_rank() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' < "$p/cmdline" 2> /dev/null | grep -q -- "$1" || continue
    tr '\0' '\n' < "$p/environ" 2> /dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" \
      && { basename "$p"; return 0; }
  done
  return 1
}

kill_case() {  # kill_case NAME RANK ROLE_TEXT
  local name=$1 victim=$2 role=$3 mark="kill-$2"
  rm -f "$T/err"
  # shellcheck disable=SC2046
  timeout 120 mpirun -n 4 "$MPSL" $(run_args "$mark") > /dev/null 2> "$T/err" &
  local job=$!
  # Mid-round: rank 0 has written run_start and training has run for a while.
  local i pid=""
  for i in $(seq 1 100); do
    grep -q run_start "$T/$mark.jsonl" 2> /dev/null && break
    sleep 0.1
  done
  sleep 1.5
  pid=$(pid_of_rank "$mark.jsonl" "$victim")
  if [ -z "$pid" ]; then
    fail "$name: rank $victim not found"
    kill "$job" 2> /dev/null
    wait "$job"
    return
  fi
  kill -9 "$pid"
  local t0
  t0=$(date +%s%N)
  wait "$job"
  local rc=$? ms=$((($(date +%s%N) - t0) / 1000000))
  local problems=""
  [ "$rc" -ne 0 ] || problems+=" exit code 0;"
  [ "$ms" -le 10000 ] || problems+=" ended ${ms} ms after the kill (> 10 s);"
  grep -q "process rank $victim .*signal 9" "$T/err" || problems+=" mpirun does not name rank $victim;"
  local said="rank $victim ($role[^)]*) is gone"
  grep -q "$said" "$T/err" || problems+=" no survivor says '$said';"
  if [ -z "$problems" ]; then
    pass "$name: exit $rc, ended $ms ms after the kill; $(grep -m1 "$said" "$T/err" | cut -c1-200)"
  else
    fail "$name:$problems stderr: $(head -c 1500 "$T/err")"
  fi
}

kill_case "SIGKILL of compute-stage rank 2" 2 "stage 1/2"
kill_case "SIGKILL of owner rank 1" 1 "owner rank"

fail_case() {  # fail_case NAME SPEC NEEDLE
  local name=$1 spec=$2 needle=$3
  local t0 rc ms
  t0=$(date +%s%N)
  # shellcheck disable=SC2046
  MPSL_TEST_FAIL=$spec timeout 60 mpirun -x MPSL_TEST_FAIL -n 4 "$MPSL" $(run_args fail) \
    > /dev/null 2> "$T/err"
  rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$ms" -le 10000 ] && grep -qF -- "$needle" "$T/err"; then
    pass "$name: exit $rc in $ms ms; $(grep -m1 -F -- "$needle" "$T/err" | cut -c1-160)"
  else
    fail "$name: exit $rc in $ms ms, wanted '$needle'; stderr: $(head -c 1500 "$T/err")"
  fi
}

fail_case "exception on stage rank 3" 3:6:throw "mpsl: [rank 3 (stage 2/2, units 3-7)] MPSL_TEST_FAIL"
fail_case "out of memory (std::bad_alloc) on stage rank 2" 2:6:oom "mpsl: [rank 2 (stage 1/2, units 1-2)] std::bad_alloc"
fail_case "exception escaping noexcept on owner rank 1" 1:4:terminate \
  "mpsl: [rank 1 (owner rank, owners {1,3})] uncaught exception: MPSL_TEST_FAIL"
summary
