#!/usr/bin/env bash
# Provision everything the system tests use (root, Debian). Idempotent: what exists is kept.
# Each part lives in its own script beside this one so it can be run and torn down alone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

stamp=/var/lib/prism-test/apt-updated
mkdir -p /var/lib/prism-test
if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +720)" ]; then
    apt-get update -qq
    touch "$stamp"
fi
need=()
# python3: Debian's interpreter runs Prism as a normal user in the sandbox tests (the
# venv's may live under a directory only root can enter).
for pkg in postgresql-client python3; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A normal user to run Prism as in the sandbox tests (servers then share Prism's OS user).
id prism-dev >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin prism-dev

for part in filesystems docker zfs browser clients; do
    if [ -f "$here/$part.sh" ]; then
        echo "sysenv: $part"
        bash "$here/$part.sh"
    fi
done
