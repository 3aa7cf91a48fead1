#!/usr/bin/env bash
# Start a single-node SLURM (munged, slurmctld, slurmd) on this machine for CI
# and local tests. Run as root. Idempotent: a second call leaves a running
# cluster alone. Prints the state directory on stdout.
#
#   .ci/slurm/start.sh [STATE_DIR]     default STATE_DIR: /tmp/tumormap-slurm
#   .ci/slurm/stop.sh  [STATE_DIR]
#
# Configs, logs, PID files and SLURM state live in STATE_DIR; /etc/slurm/*.conf
# become symlinks into it so that sbatch, squeue, sinfo and srun find them.
set -euo pipefail

STATE=$(realpath -m "${1:-/tmp/tumormap-slurm}")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PACKAGES=(slurmctld slurmd slurm-client munge)
CONFS=(slurm.conf gres.conf cgroup.conf)
WAIT_S=${SLURM_START_WAIT_S:-60}

say() { echo "slurm/start: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (installs packages, writes /etc/slurm)"

# --- packages ---------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

HOST=$(hostname -s)
mkdir -p "$STATE"/{ctld,spool,log}

# --- munge ------------------------------------------------------------------
# munged runs as the munge user with the package's default socket, key and
# log, so that every SLURM command authenticates without extra settings.
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 755 /run/munge /var/lib/munge /var/log/munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already answering"
else
    runuser -u munge -- munged
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$STATE/munged.pid"
    munge -n | unmunge >/dev/null || die "munged does not answer; see /var/log/munge/munged.log"
fi

# --- configs ----------------------------------------------------------------
# Node line from the hardware slurmd sees (CPUs, sockets, cores, memory).
NODE=$(slurmd -C | head -n 1 | sed 's/^NodeName=//')
case "$NODE" in "$HOST "*) ;; *) die "slurmd -C names another node: $NODE";; esac
CPUS=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$NODE")
REAL_MEM=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE")
DEF_MEM=$(( REAL_MEM / CPUS / 2 ))        # MB per CPU when a job asks for none

for c in "${CONFS[@]}"; do
    sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$HOST|g" -e "s|@NODE@|$NODE|g" \
        -e "s|@DEF_MEM@|$DEF_MEM|g" "$HERE/$c.in" > "$STATE/$c.new"
    mv "$STATE/$c.new" "$STATE/$c"
done

mkdir -p /etc/slurm
for c in "${CONFS[@]}"; do
    target=/etc/slurm/$c
    if [ -e "$target" ] && [ ! -L "$target" ]; then
        die "$target exists and is not ours: refusing to replace a real SLURM config"
    fi
    ln -sfn "$STATE/$c" "$target"
done

# --- daemons ----------------------------------------------------------------
if alive "$STATE/slurmctld.pid"; then
    say "slurmctld already running (pid $(cat "$STATE/slurmctld.pid"))"
else
    slurmctld -i          # daemonizes, writes $STATE/slurmctld.pid
fi
if alive "$STATE/slurmd.pid"; then
    say "slurmd already running (pid $(cat "$STATE/slurmd.pid"))"
else
    slurmd                # daemonizes, writes $STATE/slurmd.pid
fi

# --- wait for the node ------------------------------------------------------
state=""
for _ in $(seq $(( WAIT_S * 2 ))); do
    state=$(sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | head -n 1 || true)
    case "$state" in idle|mix|alloc) break;; esac
    sleep 0.5
done
case "$state" in
    idle|mix|alloc) ;;
    *)  tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
        die "node $HOST is '${state:-unreachable}' after ${WAIT_S}s; logs above";;
esac
say "node $HOST is $state; partitions: $(sinfo -h -o '%P' | tr '\n' ' ')"
echo "$STATE"
