#!/bin/sh
# The distribution packages some tests drive for real (sshd in namespace hosts,
# a single-host Slurm, systemd-analyze, ip netns, headless Chromium for the dashboard). Installed only when missing,
# and only as root with apt-get; elsewhere those tests skip (under CI=true they fail).
set -eu
need=""
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have ip || need="$need iproute2"
have sshd || need="$need openssh-server"
have ssh || need="$need openssh-client"
have slurmctld || need="$need slurmctld"
have slurmd || need="$need slurmd"
have sbatch || need="$need slurm-client"
have munged || need="$need munge"
have systemd-analyze || need="$need systemd"
have chromium || need="$need chromium"
have chromedriver || need="$need chromium-driver"
[ -n "$need" ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-packages: not installing$need (needs root and apt-get); those tests will skip" >&2
    exit 0
fi
echo "system-packages: installing$need" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $need >/dev/null
