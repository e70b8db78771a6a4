#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the SLURM profile test.
#
#   .ci/slurm/setup.sh STATE_DIR
#
# Installs Debian's slurm-wlm and munge when missing (needs root), then starts munged,
# slurmctld and slurmd with every socket, pid, log and spool file under STATE_DIR, and
# writes STATE_DIR/slurm.conf and STATE_DIR/env.sh. Client commands find the cluster after
#   . STATE_DIR/env.sh
# which sets SLURM_CONF and puts STATE_DIR/bin first on PATH: its srun restores SLURM_CONF,
# which the jobstep plugin strips before the srun it runs inside each job (a real cluster
# keeps its config in /etc/slurm, where srun looks by default).
# Stop it with .ci/slurm/teardown.sh STATE_DIR. Exit status 2: cannot run here (reason on stderr).
set -euo pipefail

state_dir=${1:?usage: setup.sh STATE_DIR}
mkdir -p "$state_dir"
state_dir=$(cd "$state_dir" && pwd)
chmod 700 "$state_dir"

cannot_run() {
    echo "slurm setup: $*" >&2
    exit 2
}

[ "$(id -u)" -eq 0 ] || cannot_run "needs root (installs packages, runs slurmd)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || cannot_run "slurm is not installed and apt-get is missing"
    echo "slurm setup: installing slurm-wlm and munge" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurm-wlm munge; } >"$state_dir/apt.log" 2>&1 \
        || cannot_run "apt-get install slurm-wlm munge failed (see $state_dir/apt.log)"
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

node=$(hostname -s)
cpus=$(nproc)
real_memory_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
mkdir -p "$state_dir/ctld" "$state_dir/slurmd" "$state_dir/log"

dd if=/dev/urandom of="$state_dir/munge.key" bs=1024 count=1 status=none
chmod 600 "$state_dir/munge.key"
munged --force \
    --key-file="$state_dir/munge.key" \
    --socket="$state_dir/munge.socket" \
    --pid-file="$state_dir/munged.pid" \
    --log-file="$state_dir/log/munged.log" \
    --seed-file="$state_dir/munge.seed" \
    || cannot_run "munged did not start (see $state_dir/log/munged.log)"

cat >"$state_dir/slurm.conf" <<CONF
ClusterName=vprflow-ci
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$state_dir/munge.socket
CredType=cred/munge
StateSaveLocation=$state_dir/ctld
SlurmdSpoolDir=$state_dir/slurmd
SlurmctldPidFile=$state_dir/slurmctld.pid
SlurmdPidFile=$state_dir/slurmd.pid
SlurmctldLogFile=$state_dir/log/slurmctld.log
SlurmdLogFile=$state_dir/log/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SchedulerType=sched/builtin
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_memory_mb Gres=gpu:1 State=UNKNOWN
PartitionName=ci Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
# One GPU that is only a count, no device: --gpus and --gres requests schedule as on a GPU node.
echo "NodeName=$node Name=gpu File=/dev/null" >"$state_dir/gres.conf"

mkdir -p "$state_dir/bin"
cat >"$state_dir/bin/srun" <<SHIM
#!/bin/sh
SLURM_CONF=$state_dir/slurm.conf exec $(command -v srun) "\$@"
SHIM
chmod +x "$state_dir/bin/srun"
cat >"$state_dir/env.sh" <<ENV
export SLURM_CONF=$state_dir/slurm.conf
export PATH=$state_dir/bin:\$PATH
ENV

export SLURM_CONF=$state_dir/slurm.conf
slurmctld -f "$SLURM_CONF" || cannot_run "slurmctld did not start (see $state_dir/log/slurmctld.log)"
slurmd -f "$SLURM_CONF" || cannot_run "slurmd did not start (see $state_dir/log/slurmd.log)"

for _ in $(seq 60); do
    if [ "$(sinfo --noheader --nodes="$node" --format=%t 2>/dev/null)" = "idle" ]; then
        echo "slurm setup: node $node idle in partition ci ($cpus CPUs, ${real_memory_mb} MB); environment: . $state_dir/env.sh" >&2
        exit 0
    fi
    sleep 1
done
cannot_run "node $node did not become idle within 60 s (see $state_dir/log/)"
