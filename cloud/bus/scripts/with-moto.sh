#!/usr/bin/env bash
# with-moto.sh CMD [ARGS...]: runs CMD with OUTRIDER_TEST_MOTO pointing at a moto server (an AWS
# emulator: Kinesis here) and OUTRIDER_TEST_AWS_CLI at an AWS CLI (pip's awscli when missing) — the one OUTRIDER_TEST_MOTO already names, or a throwaway one started
# for CMD (`moto_server -H 127.0.0.1 -p <free port>`; moto installed with pip when missing) and
# stopped when CMD ends. Exits with CMD's status. moto keeps everything in memory: nothing to
# delete afterwards.
#
#   bash cloud/bus/scripts/with-moto.sh cargo test -p outrider-bus --test kinesis
#
# The server's log is $OUTRIDER_MOTO_LOG (default: a temporary file, removed on success).
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi
if [[ -n ${OUTRIDER_TEST_MOTO:-} && -n ${OUTRIDER_TEST_AWS_CLI:-} ]]; then
    exec "$@"
fi

die() {
    echo "with-moto.sh: $*" >&2
    exit 1
}

PYTHON=$(command -v python3 || command -v python || true)
# The server command: `moto_server` when on PATH, else `python3 -m moto.server` (pip's console
# script may land outside PATH, e.g. behind pyenv shims that were not rehashed).
MOTO=()
if command -v moto_server >/dev/null 2>&1; then
    MOTO=(moto_server)
elif [[ -n $PYTHON ]] && "$PYTHON" -c 'import moto.server' >/dev/null 2>&1; then
    MOTO=("$PYTHON" -m moto.server)
else
    [[ -n $PYTHON ]] || die "moto_server not found and no python3 to install it with"
    echo "with-moto.sh: moto not found; installing moto[server] with pip" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check 'moto[server]' >&2 \
        || die "pip install 'moto[server]' failed"
    "$PYTHON" -c 'import moto.server' >/dev/null 2>&1 || die "moto installed but python cannot import moto.server"
    MOTO=("$PYTHON" -m moto.server)
fi

# A free port: bind port 0 and read what the kernel chose (a tiny race with other processes,
# as with any free-port pick; moto failing to bind shows up as a start failure below).
if [[ -n $PYTHON ]]; then
    PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
else
    PORT=$((20000 + RANDOM % 20000))
fi

LOG=${OUTRIDER_MOTO_LOG:-$(mktemp -t outrider-moto-XXXXXX.log)}
"${MOTO[@]}" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
MOTO_PID=$!
WRAP_DIR=""
stop() {
    local status=$?
    [[ -n $WRAP_DIR ]] && rm -rf -- "$WRAP_DIR"
    if kill -0 "$MOTO_PID" 2>/dev/null; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    if [[ $status -eq 0 && -z ${OUTRIDER_MOTO_LOG:-} ]]; then
        rm -f "$LOG"
    elif [[ $status -ne 0 ]]; then
        echo "with-moto.sh: moto's log: $LOG" >&2
    fi
}
trap stop EXIT

URL=http://127.0.0.1:$PORT
answers() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null --max-time 1 "$URL/moto-api/"
    else
        "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$URL/moto-api/" 2>/dev/null
    fi
}
for _ in $(seq 1 100); do
    if answers; then
        break
    fi
    kill -0 "$MOTO_PID" 2>/dev/null || die "moto_server exited at start: $(tail -n 5 "$LOG")"
    sleep 0.1
done
answers || die "moto_server did not answer on $URL within 10 s"

export OUTRIDER_TEST_MOTO=$URL
echo "with-moto.sh: moto for the tests: OUTRIDER_TEST_MOTO=$OUTRIDER_TEST_MOTO" >&2

# The AWS CLI, for the bus's test that drives its EventBridge HTTP API with `aws events ...
# --endpoint-url` (OUTRIDER_TEST_AWS_CLI): `aws` when on PATH, else `python3 -m awscli`
# (installed with pip when missing) behind a small wrapper.
if [[ -z ${OUTRIDER_TEST_AWS_CLI:-} ]]; then
    if command -v aws >/dev/null 2>&1; then
        OUTRIDER_TEST_AWS_CLI=$(command -v aws)
    else
        [[ -n $PYTHON ]] || die "aws CLI not found and no python3 to install it with"
        if ! "$PYTHON" -c 'import awscli' >/dev/null 2>&1; then
            echo "with-moto.sh: aws CLI not found; installing awscli with pip" >&2
            "$PYTHON" -m pip install --quiet --disable-pip-version-check awscli >&2 \
                || die "pip install awscli failed"
        fi
        WRAP_DIR=$(mktemp -d -t outrider-awscli-XXXXXX)
        printf '#!/bin/sh\nexec "%s" -m awscli "$@"\n' "$PYTHON" >"$WRAP_DIR/aws"
        chmod +x "$WRAP_DIR/aws"
        OUTRIDER_TEST_AWS_CLI=$WRAP_DIR/aws
    fi
    export OUTRIDER_TEST_AWS_CLI
fi
echo "with-moto.sh: AWS CLI for the tests: OUTRIDER_TEST_AWS_CLI=$OUTRIDER_TEST_AWS_CLI" >&2
"$@"
