#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the results-store tests and print its URL (last line of stdout).
#
#   export HARNESS_TEST_PG_URL=$(bash scripts/start-postgres.sh | tail -1)
#   bash scripts/start-postgres.sh stop      # stop the cluster (its data dir is kept for the next start)
#   bash scripts/start-postgres.sh destroy   # stop it and delete its data dir
#
# Settings (env): HARNESS_PG_PORT (55432), HARNESS_PG_DIR (/tmp/harness-pg), HARNESS_PG_DB (harness_test).
# Installs the Debian `postgresql` package when no server binaries are found (needs root for apt-get).
# The cluster listens on 127.0.0.1 only, with password-less trust auth: for tests, never for real data.
# Idempotent: when the cluster is already up it only makes sure the database exists and prints the URL.
set -euo pipefail

PORT="${HARNESS_PG_PORT:-55432}"
DATA="${HARNESS_PG_DIR:-/tmp/harness-pg}"
DB="${HARNESS_PG_DB:-harness_test}"
PGUSER_NAME=postgres
URL="postgresql://${PGUSER_NAME}@127.0.0.1:${PORT}/${DB}"
ACTION="${1:-start}"

log() { echo "start-postgres: $*" >&2; }

find_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
        echo "$d"
        return
    fi
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
    fi
}

BIN=$(find_bindir)
if [ -z "$BIN" ]; then
    if [ "$ACTION" != start ]; then log "PostgreSQL is not installed"; exit 0; fi
    if [ "$(id -u)" != 0 ]; then
        log "PostgreSQL server binaries not found; install the 'postgresql' package (needs root)"
        exit 1
    fi
    log "installing PostgreSQL from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BIN=$(find_bindir)
    [ -n "$BIN" ] || { log "PostgreSQL installed but initdb/pg_ctl not found"; exit 1; }
fi

# initdb and postgres refuse to run as root: as root, run them as the `postgres` system user.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        id "$PGUSER_NAME" >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$PGUSER_NAME"
        runuser -u "$PGUSER_NAME" -- "$@"
    else
        "$@"
    fi
}

is_up() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" >/dev/null 2>&1; }

case "$ACTION" in
    stop | destroy)
        if [ -f "$DATA/PG_VERSION" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
            as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
        fi
        if [ "$ACTION" = destroy ]; then rm -rf "$DATA"; log "removed $DATA"; fi
        exit 0
        ;;
    start) ;;
    *)
        log "usage: $0 [start|stop|destroy]"
        exit 2
        ;;
esac

if ! is_up; then
    if [ ! -f "$DATA/PG_VERSION" ]; then
        log "initialising a cluster in $DATA"
        mkdir -p "$DATA"
        [ "$(id -u)" = 0 ] && chown "$PGUSER_NAME": "$DATA"
        chmod 700 "$DATA"
        as_owner "$BIN/initdb" -D "$DATA" -U "$PGUSER_NAME" --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null 2>&1 \
            || as_owner "$BIN/initdb" -D "$DATA" -U "$PGUSER_NAME" --auth=trust -E UTF8 --no-sync >&2
    fi
    log "starting PostgreSQL on 127.0.0.1:$PORT"
    # fsync off and no full-page writes: a throwaway test cluster, speed over durability
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
        -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >&2 || { tail -20 "$DATA/server.log" >&2 || true; exit 1; }
fi

PSQL=("$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U "$PGUSER_NAME" -d postgres -v ON_ERROR_STOP=1)
if [ -z "$("${PSQL[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
    "${PSQL[@]}" -c "CREATE DATABASE \"$DB\"" >&2
    log "created database $DB"
fi
echo "$URL"
