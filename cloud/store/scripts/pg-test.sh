#!/usr/bin/env bash
# A throwaway PostgreSQL server for outrider-store's tests and benchmarks.
#
#   cloud/store/scripts/pg-test.sh start   # initdb + pg_ctl start; prints the export line
#   cloud/store/scripts/pg-test.sh env     # prints: export OUTRIDER_TEST_PG=...
#   cloud/store/scripts/pg-test.sh stop    # stops the server and deletes its data
#
#   eval "$(cloud/store/scripts/pg-test.sh start)"
#   cargo test -p outrider-store
#
# Everything lives in $OUTRIDER_PG_HOME (default /tmp/outrider-pg-<uid>): data directory, socket,
# log and the chosen port. The server listens on 127.0.0.1 only, on a free port, with trust
# authentication for the superuser `outrider` (a test server: never expose it), fsync on.
# initdb and pg_ctl refuse to run as root: as root the server runs as the `postgres` user
# (created by Debian's package), or as `outrider-pg` (created here) if that user is missing.
# Binaries: the newest /usr/lib/postgresql/*/bin, else initdb/pg_ctl on PATH, else (as root on
# Debian) `apt-get install -y postgresql`.
set -euo pipefail

HOME_DIR=${OUTRIDER_PG_HOME:-/tmp/outrider-pg-$(id -u)}
DATA=$HOME_DIR/data
LOGFILE=$HOME_DIR/server.log
PORT_FILE=$HOME_DIR/port
SOCK=$HOME_DIR/sock

die() {
    echo "pg-test.sh: $*" >&2
    exit 1
}

find_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    if [[ -n $d && -x $d/initdb ]]; then
        echo "$d"
        return 0
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

ensure_bin() {
    if BIN=$(find_bin); then
        return 0
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "pg-test.sh: PostgreSQL not found; installing Debian's postgresql" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
        BIN=$(find_bin) || die "postgresql installed but initdb not found"
        return 0
    fi
    die "PostgreSQL binaries not found: install them (Debian: apt-get install -y postgresql)"
}

# as_pg CMD...: runs CMD as the user that owns the server.
RUN_USER=""
pick_user() {
    if [[ $(id -u) -ne 0 ]]; then
        RUN_USER=$(id -un)
        return
    fi
    if id postgres >/dev/null 2>&1; then
        RUN_USER=postgres
    else
        if ! id outrider-pg >/dev/null 2>&1; then
            useradd --system --no-create-home --shell /usr/sbin/nologin outrider-pg
        fi
        RUN_USER=outrider-pg
    fi
}

as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u "$RUN_USER" -- "$@"
    else
        "$@"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

running() {
    [[ -f $DATA/postmaster.pid ]] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

print_env() {
    [[ -f $PORT_FILE ]] || die "no server in $HOME_DIR (run: $0 start)"
    echo "export OUTRIDER_TEST_PG='host=127.0.0.1 port=$(cat "$PORT_FILE") user=outrider dbname=postgres'"
}

start() {
    ensure_bin
    pick_user
    if running; then
        print_env
        return 0
    fi
    mkdir -p "$HOME_DIR"
    chmod 0755 "$HOME_DIR"
    if [[ $(id -u) -eq 0 ]]; then
        chown "$RUN_USER" "$HOME_DIR"
    fi
    if [[ ! -f $DATA/PG_VERSION ]]; then
        rm -rf "$DATA"
        as_pg "$BIN/initdb" -D "$DATA" -U outrider -A trust -E UTF8 --locale=C.UTF-8 >"$HOME_DIR/initdb.log" 2>&1 ||
            { cat "$HOME_DIR/initdb.log" >&2; die "initdb failed"; }
    fi
    as_pg mkdir -p "$SOCK"
    local try port
    for try in 1 2 3 4 5 6 7 8; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        port_in_use "$port" && continue
        if as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$SOCK -c fsync=on -c max_connections=300 -c idle_in_transaction_session_timeout=600s" \
            start >/dev/null; then
            echo "$port" >"$PORT_FILE"
            print_env
            return 0
        fi
        echo "pg-test.sh: start on port $port failed (try $try); last log lines:" >&2
        tail -n 5 "$LOGFILE" >&2 || true
    done
    die "could not start PostgreSQL (see $LOGFILE)"
}

stop() {
    if ! BIN=$(find_bin); then
        rm -rf "$HOME_DIR"
        return 0
    fi
    pick_user
    if [[ -f $DATA/postmaster.pid ]]; then
        as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            echo "pg-test.sh: pg_ctl stop failed (server already gone?)" >&2
    fi
    rm -rf "$HOME_DIR"
}

case ${1:-} in
start) start ;;
stop) stop ;;
env) print_env ;;
*)
    echo "usage: $0 start|stop|env   (state in \$OUTRIDER_PG_HOME, default /tmp/outrider-pg-<uid>)" >&2
    exit 2
    ;;
esac
