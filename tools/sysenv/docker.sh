#!/usr/bin/env bash
# Provision the Docker engine and the local Postgres test image the docker system tests use.
#
# Why by hand: there is no systemd to start dockerd and no image registry to pull postgres:*
# from, so the engine is started in the background and the image is built from Debian packages
# (mmdebstrap) with a thin layer that keeps the official image's contract (tools/sysenv/image/).
#
# Idempotent and cached: installs only missing packages, starts dockerd only if no engine
# answers, builds the base image only if it is absent and the top layer only if its inputs
# changed (their hash is an image label). Names match tests/sysenv.py.
# Undo with tools/sysenv/teardown-docker-zfs.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE=prism-test/postgres:15
BASE_IMAGE=prism-test/postgres-base:15
SUITE=bookworm
MIRROR=${PRISM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD_LOG=/var/log/prism-dockerd.log
ENGINE_WAIT_S=60

say() { printf 'docker: %s\n' "$*"; }
die() {
    printf 'docker: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts dockerd)"

install_missing() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
    # A source of the image's major for the docker runtime's --source tests (HOST_PG_BIN in
    # tests/sysenv.py); its packaged cluster is not used (no systemd here to start it anyway).
    [[ -x /usr/lib/postgresql/15/bin/postgres ]] || missing+=(postgresql-15)
    if ((${#missing[@]} == 0)); then
        say "docker.io, mmdebstrap, postgresql-client and postgresql-15 already installed"
        return
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

engine_answers() { docker info >/dev/null 2>&1; }

start_engine() {
    if engine_answers; then
        say "engine already answering (skipped start)"
        return
    fi
    # A dockerd that is still starting (or wedged) holds the pid file: wait for it rather than
    # starting a second one that would fail on the same socket.
    if [[ -s /var/run/docker.pid ]] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        say "dockerd (pid $(cat /var/run/docker.pid)) is running but not answering yet; waiting"
    else
        say "starting dockerd in the background (log: $DOCKERD_LOG)"
        # setsid + nohup: the engine must outlive this script and the shell that ran it.
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local waited=0
    until engine_answers; do
        if ((waited >= ENGINE_WAIT_S * 10)); then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within ${ENGINE_WAIT_S}s (log above, full: $DOCKERD_LOG)"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    say "engine ready after $((waited / 10)).$((waited % 10))s"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

build_base() {
    if image_exists "$BASE_IMAGE"; then
        say "$BASE_IMAGE present (cached)"
        return
    fi
    say "building $BASE_IMAGE from Debian $SUITE packages (mmdebstrap | docker import)"
    local start=$SECONDS
    # Docs, man pages and locales other than C are dead weight in a test image. The cluster
    # that postgresql-common creates on install is removed: PGDATA is the image's only cluster.
    mmdebstrap --quiet --variant=essential --include=postgresql-15 \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='rm -rf "$1"/var/lib/postgresql/15 "$1"/etc/postgresql/15' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        "$SUITE" - "$MIRROR" |
        docker import --message "mmdebstrap $SUITE postgresql-15" - "$BASE_IMAGE" >/dev/null
    say "built $BASE_IMAGE in $((SECONDS - start))s"
}

build_top() {
    # The hash of the layer's inputs is stored as a label, so an edit to the entrypoint or the
    # Dockerfile rebuilds the (seconds-long) top layer without redoing the base.
    local inputs_hash current
    inputs_hash=$(cd "$HERE/image" && sha256sum Dockerfile docker-entrypoint.sh | sha256sum | cut -c1-16)
    current=$(docker image inspect -f '{{ index .Config.Labels "prism.inputs" }}' "$IMAGE" 2>/dev/null || true)
    if [[ $current == "$inputs_hash" ]]; then
        say "$IMAGE present and up to date (cached)"
        return
    fi
    say "building $IMAGE (top layer, inputs $inputs_hash)"
    local start=$SECONDS
    # The classic builder needs no buildx plugin; its deprecation notice is noise, so the
    # output is shown only when the build fails.
    local out
    if ! out=$(DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE=$BASE_IMAGE" \
        --label "prism.inputs=$inputs_hash" -t "$IMAGE" "$HERE/image" 2>&1); then
        printf '%s\n' "$out" >&2
        die "building $IMAGE failed"
    fi
    say "built $IMAGE in $((SECONDS - start))s"
}

check_image() {
    local uid
    uid=$(docker run --rm --entrypoint id "$IMAGE" -u postgres)
    say "ready: $IMAGE ($(docker run --rm --entrypoint postgres "$IMAGE" --version), postgres uid $uid)"
}

install_missing
start_engine
build_base
build_top
check_image
