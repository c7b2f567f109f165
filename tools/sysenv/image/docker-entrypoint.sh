#!/bin/sh
# A small stand-in for the official postgres image's entrypoint, keeping its contract:
#   - started as root: make PGDATA and the socket dir the postgres user's, re-exec as postgres;
#   - command `postgres ...` on an empty PGDATA: initdb with POSTGRES_USER (default postgres)
#     and POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), scram-sha-256
#     for TCP from anywhere and trust on the local socket, a database POSTGRES_DB (default:
#     the user's name), then run the command;
#   - any other command is run as given.
# It is plain POSIX sh so it needs nothing beyond the Debian essential set (setpriv is in
# util-linux), which keeps the image a pure mmdebstrap + this file.
set -eu

if [ "${1:-}" = "postgres" ]; then
    PGDATA=${PGDATA:-/var/lib/postgresql/data}
    export PGDATA
    if [ "$(id -u)" = 0 ]; then
        mkdir -p "$PGDATA"
        chown postgres:postgres "$PGDATA"
        chmod 0700 "$PGDATA"
        exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        user=${POSTGRES_USER:-postgres}
        method=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
        if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$method" != trust ]; then
            echo "error: database is uninitialized and superuser password is not specified." >&2
            echo "  Set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust)." >&2
            exit 1
        fi
        pwfile=$(mktemp)
        printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
        # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a word list, as in the official image
        initdb --username="$user" --pwfile="$pwfile" --auth-local=trust \
            --auth-host="$method" ${POSTGRES_INITDB_ARGS:-} >&2
        rm -f "$pwfile"
        printf '\nhost all all all %s\n' "$method" >>"$PGDATA/pg_hba.conf"
        # Like the official image: a database named POSTGRES_DB (default: the user's name).
        # Single-user mode runs as the bootstrap superuser whatever the OS user is called.
        db=${POSTGRES_DB:-$user}
        if [ "$db" != postgres ]; then
            echo "CREATE DATABASE \"$db\";" | postgres --single -D "$PGDATA" postgres >/dev/null
        fi
        echo "PostgreSQL init process complete; ready for start up." >&2
    fi
fi
exec "$@"
