#!/usr/bin/env bash
# A private single-node Slurm cluster on this machine (as root; no systemd needed), for tests
# and for trying the jobs/ scripts on a workstation:
#
#   tools/slurm-local.sh start DIR [CPUS]   # munged, slurmctld, slurmd; waits until the node is idle
#   source DIR/env                          # SLURM_CONF for sbatch, srun, squeue, sinfo
#   sbatch --wait jobs/slurm-multihop.sbatch
#   tools/slurm-local.sh stop DIR           # stops the three daemons it started (by pid)
#
# Everything lives in DIR (configuration, state, logs, the munge socket, the jobs' temporary
# files), the ports are free ones picked at start and job ids start at a random number, so
# several such clusters (and a system Slurm) can run side by side. The node declares CPUS CPUs
# (default 8) whatever the core count (config_overrides), and its partition "local"
# oversubscribes. Needs slurmctld slurmd slurm-client munge
# (tools/install-deps.sh installs them).
set -euo pipefail

die() {
  echo "slurm-local: error: $*" >&2
  exit 2
}

usage() {
  echo "usage: $0 start DIR [CPUS] | stop DIR" >&2
  exit 2
}

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
  local dir=$1 name pid
  for name in slurmd slurmctld munged; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid" 2>/dev/null || true)
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/$name.pid"
  done
}

start() {
  local dir=$1 cpus=${2:-8}
  [ "$(id -u)" = 0 ] || die "starting Slurm daemons needs root"
  for b in munged slurmctld slurmd sbatch sinfo; do
    command -v "$b" > /dev/null || die "$b is missing: run tools/install-deps.sh"
  done
  [ -r /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing (reinstall the munge package)"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  chmod 0755 "$dir"  # munged (user munge) must reach its folder
  runuser -u munge -- test -x "$dir" ||
    die "user munge cannot reach $dir: make its parent folders searchable (chmod o+x)"
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge" "$dir/tmp"
  chown munge: "$dir/munge"
  chmod 0700 "$dir/munge"
  local host
  host=$(hostname)
  local ctld_port slurmd_port
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done

  # munged: a private socket, pid, log and seed file; the machine's key.
  runuser -u munge -- /usr/sbin/munged --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed" --force
  for _ in $(seq 50); do
    [ -S "$dir/munge/munge.socket" ] && [ -s "$dir/munge/munged.pid" ] && break
    sleep 0.1
  done
  [ -S "$dir/munge/munge.socket" ] || die "munged did not start (see $dir/munge/munged.log)"
  cp "$dir/munge/munged.pid" "$dir/munged.pid"

  cat > "$dir/slurm.conf" << EOF
ClusterName=mpsl$(date +%s%N | tail -c 7)
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
FirstJobId=$(( (RANDOM % 9000 + 1000) * 100 ))
TmpFS=$dir/tmp
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.own.pid
SlurmdPidFile=$dir/slurmd.own.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  echo "export SLURM_CONF=$dir/slurm.conf" > "$dir/env"
  export SLURM_CONF=$dir/slurm.conf
  # -D: stay in the foreground (so we hold the pids); -i: ignore state from an earlier start.
  setsid slurmctld -D -i -f "$dir/slurm.conf" > "$dir/slurmctld.out" 2>&1 < /dev/null &
  echo $! > "$dir/slurmctld.pid"
  setsid slurmd -D -f "$dir/slurm.conf" > "$dir/slurmd.out" 2>&1 < /dev/null &
  echo $! > "$dir/slurmd.pid"
  for _ in $(seq 150); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then
      echo "slurm-local: node $host idle ($cpus CPUs); source $dir/env"
      return 0
    fi
    sleep 0.2
  done
  echo "slurm-local: the node did not become idle; logs:" >&2
  tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  stop "$dir"
  exit 1
}

[ $# -ge 2 ] || usage
case $1 in
  start) start "$2" "${3:-8}" ;;
  stop) stop "$2" ;;
  *) usage ;;
esac
