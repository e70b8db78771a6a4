#!/usr/bin/env bash
# Stop the one-node cluster that .ci/slurm/setup.sh STATE_DIR started: cancel its jobs,
# then end slurmd, slurmctld and munged by the pids they wrote under STATE_DIR.
#
#   .ci/slurm/teardown.sh STATE_DIR
set -uo pipefail

state_dir=${1:?usage: teardown.sh STATE_DIR}
export SLURM_CONF=$state_dir/slurm.conf

if [ -f "$SLURM_CONF" ] && [ -f "$state_dir/slurmctld.pid" ]; then
    scancel --full --user="$(id -un)" 2>/dev/null
    for _ in $(seq 30); do
        [ -z "$(squeue --noheader 2>/dev/null)" ] && break
        sleep 1
    done
fi

stop_daemon() {
    local pid_file=$1 pid
    [ -f "$pid_file" ] || return 0
    pid=$(cat "$pid_file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pid_file"
}

stop_daemon "$state_dir/slurmd.pid"
stop_daemon "$state_dir/slurmctld.pid"
stop_daemon "$state_dir/munged.pid"
