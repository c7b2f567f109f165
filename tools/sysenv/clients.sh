#!/usr/bin/env bash
# Provision the drivers the seed's users connect with, for the client system tests:
# pgjdbc (what DBeaver uses), node-postgres (what TypeORM uses) with pg-copy-streams (how
# node-postgres users run COPY), and Prisma ORM 7 with its client generated for the test model.
# Also Debian's pgbouncer, which `python -m tools.bench --only proxy` compares Prism against.
#
# Why system-wide: pgjdbc comes from Debian (libpostgresql-jdbc-java, /usr/share/java/
# postgresql.jar) and needs a JDK to compile the test program; node-postgres comes from npm into
# a cache directory the tests read, so a test run never touches the network.
#
# Idempotent: installs only missing packages, runs npm only when `pg` is not in the cache yet, and
# says what it did or skipped. Paths match tests/sysenv.py (CLIENTS_DIR, PGJDBC_JAR).
set -euo pipefail

CLIENTS_DIR=/var/lib/prism-test/clients
NODE_DIR=$CLIENTS_DIR/node
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PGJDBC_JAR=/usr/share/java/postgresql.jar

say() { printf 'clients: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "clients: must run as root (it installs packages)" >&2
    exit 1
fi

missing=()
[[ -e $PGJDBC_JAR ]] || missing+=(libpostgresql-jdbc-java)
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
if ((${#missing[@]} == 0)); then
    say "pgjdbc, a JDK, node and pgbouncer already installed"
else
    say "installing ${missing[*]}"
    # setup.sh refreshes the package lists; run alone on a fresh box, refresh them here.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

# Prisma 7 is Rust-free: its client runs on node-postgres through @prisma/adapter-pg.
NODE_PACKAGES=(pg pg-copy-streams prisma@7 @prisma/client@7 @prisma/adapter-pg@7)
missing_node=()
for pkg in "${NODE_PACKAGES[@]}"; do
    name=${pkg%@7}
    [[ -f $NODE_DIR/node_modules/$name/package.json ]] || missing_node+=("$pkg")
done
if ((${#missing_node[@]} == 0)); then
    say "node-postgres and Prisma already in $NODE_DIR"
else
    say "installing ${missing_node[*]} into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    [[ -f $NODE_DIR/package.json ]] || printf '{"name": "prism-client-tests", "private": true}\n' \
        >"$NODE_DIR/package.json"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error "${NODE_PACKAGES[@]}" >/dev/null
fi

# Prisma Client is generated from the test's schema; again only when the schema changed.
schema=$REPO/tests/system/clients/prisma/schema.prisma
if cmp -s "$schema" "$NODE_DIR/prisma/schema.prisma"; then
    say "Prisma Client already generated from $schema"
else
    say "generating Prisma Client from $schema"
    mkdir -p "$NODE_DIR/prisma"
    cp "$schema" "$NODE_DIR/prisma/schema.prisma"
    # Generating needs no schema engine (that is for migrations), but the CLI fetches one from
    # binaries.prisma.sh first, which test machines cannot reach; point it at a stand-in.
    (cd "$NODE_DIR" && PRISMA_SCHEMA_ENGINE_BINARY=/bin/false \
        ./node_modules/.bin/prisma generate --schema prisma/schema.prisma >/dev/null) ||
        { rm -f "$NODE_DIR/prisma/schema.prisma"; exit 1; }
fi
# The tests run node as whoever runs pytest; let them read the cache.
chmod -R a+rX "$CLIENTS_DIR"
