#!/usr/bin/env bash
# Stop the single-node SLURM started by start.sh, by the PIDs it recorded,
# and remove the /etc/slurm symlinks into the state directory. The state
# directory (logs) is kept.
#
#   .ci/slurm/stop.sh [STATE_DIR]      default STATE_DIR: /tmp/tumormap-slurm
set -euo pipefail

STATE=$(realpath -m "${1:-/tmp/tumormap-slurm}")
say() { echo "slurm/stop: $*" >&2; }

stop_pid_file() {  # name, pid file
    local name=$1 pid_file=$2 pid
    [ -s "$pid_file" ] || { say "$name: no pid file"; return 0; }
    pid=$(cat "$pid_file")
    if ! kill -0 "$pid" 2>/dev/null; then
        say "$name: pid $pid not running"
    else
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name: pid $pid ignored SIGTERM for 10 s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "$name: stopped pid $pid"
    fi
    rm -f "$pid_file"
}

# Jobs first, so that no slurmstepd outlives its slurmd.
if [ -s "$STATE/slurmctld.pid" ] && scancel --user="$(id -un)" 2>/dev/null; then
    for _ in $(seq 20); do
        [ -z "$(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
        sleep 0.5
    done
fi
stop_pid_file slurmd "$STATE/slurmd.pid"
stop_pid_file slurmctld "$STATE/slurmctld.pid"
stop_pid_file munged "$STATE/munged.pid"   # only present if start.sh started it

for c in slurm.conf gres.conf cgroup.conf; do
    link=/etc/slurm/$c
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$STATE/$c" ]; then
        rm -f "$link"
    fi
done
