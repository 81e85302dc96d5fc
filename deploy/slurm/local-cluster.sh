#!/usr/bin/env bash
# A real SLURM on this one machine: munged, slurmctld and two slurmd (nodes n1 and n2, one CPU each, one declared
# GPU each, both reached at 127.0.0.1), from Debian's slurmd, slurmctld, slurm-client and munge packages. For
# rehearsing deploy/slurm/hybridiff.sbatch without a cluster.
#   local-cluster.sh start [DIR]   configures and starts it in DIR (default /tmp/hybridiff-slurm), waits until both
#                                  nodes are idle, then prints the SLURM_CONF to export
#   local-cluster.sh stop [DIR]    stops the daemons (the configuration and logs stay in DIR)
# SLURM_BASE_PORT (default 16817; slurmctld) and the next two (the slurmd of n1 and n2) must be free.
# Exit 77: the packages are missing.
set -euo pipefail
command=${1:-}
dir=${2:-/tmp/hybridiff-slurm}
base_port=${SLURM_BASE_PORT:-16817}

# Stops the daemons and waits (up to 10 s each) until they are gone, so that their ports are free again.
stop() {
  local pid state
  for pid_file in "$dir"/slurmd.n1.pid "$dir"/slurmd.n2.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -f "$pid_file" ] || continue
    pid=$(cat "$pid_file")
    rm -f "$pid_file"
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do
      state=$(ps -o stat= -p "$pid" 2>/dev/null) || break
      [[ $state == Z* ]] && break  # exited, not yet reaped by its parent
      sleep 0.1
    done
  done
}

start() {
  for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" > /dev/null || { echo "local-cluster.sh: $tool is missing (apt-get install munge slurmctld slurmd slurm-client)"; exit 77; }
  done
  stop
  # A fresh controller state each time: nodes drained by an earlier run start idle.
  rm -rf "$dir/state" "$dir/spool"
  mkdir -p "$dir/state" "$dir/spool"
  dir=$(cd "$dir" && pwd)
  # Each run gets its own munge key and socket, so that a system munged (if any) is left alone.
  [ -f "$dir/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge.key"; chmod 600 "$dir/munge.key"; }
  # --force: munged refuses to run as root (or with its files under /tmp) otherwise.
  munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
  local user
  user=$(id -un)
  cat > "$dir/slurm.conf" <<EOF
ClusterName=hybridiff-local
SlurmctldHost=localhost
SlurmctldPort=$base_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.%n.log
# No cgroups: the daemons may run in a container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Two nodes on one host: distinct names and slurmd ports, one address.
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base_port + 1)) CPUs=1 Gres=gpu:1
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base_port + 2)) CPUs=1 Gres=gpu:1
PartitionName=local Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
  # The GPUs are declared, not real: jobs that ask for --gpus-per-task run, and use --device cpu.
  cat > "$dir/gres.conf" <<EOF
AutoDetect=off
NodeName=n[1-2] Name=gpu File=/dev/null
EOF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N n1
  slurmd -f "$SLURM_CONF" -N n2
  for _ in $(seq 100); do
    if [ "$(sinfo -h -o '%t %D' 2>/dev/null)" = "idle 2" ]; then
      echo "local SLURM cluster up (nodes n1, n2); use it with: export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.2
  done
  echo "local-cluster.sh: the nodes did not become idle within 20 s; sinfo says:"
  sinfo || true
  tail -n 5 "$dir"/slurmctld.log "$dir"/slurmd.n1.log || true
  stop
  exit 1
}

case "$command" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: local-cluster.sh start|stop [DIR]"; exit 2 ;;
esac
