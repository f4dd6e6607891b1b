# shellcheck shell=bash
# hil-tests/lib.sh: what run.sh and failover.sh share (sourced, not run). Each script defines its
# own `log` and `cleanup`; the cleanup calls `teardown_namespaces`.

die() {
    echo "error: $*" >&2
    exit 1
}

# teardown_namespaces NFT_TABLE NS... [-- VETH...]: stops the running case ($CHILD) and every
# process in the namespaces (TERM, then KILL after 10 s), deletes the nftables table NFT_TABLE in
# each namespace, the namespaces, and the veth ends a half-built setup left in the root namespace.
# Never fails (it runs on every exit path).
teardown_namespaces() {
    local table=$1
    shift
    local nss=() veths=() ns pid v pids=()
    while (($#)) && [[ $1 != -- ]]; do
        nss+=("$1")
        shift
    done
    if (($#)); then
        shift
        veths=("$@")
    fi
    if [[ -n ${CHILD:-} ]]; then
        pids+=("$CHILD")
    fi
    for ns in "${nss[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            pids+=("$pid")
        done
    done
    if ((${#pids[@]})); then
        kill -TERM "${pids[@]}" 2>/dev/null
        local deadline=$((SECONDS + 10))
        for pid in "${pids[@]}"; do
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null
        done
    fi
    for ns in "${nss[@]}"; do
        ip netns exec "$ns" nft delete table inet "$table" 2>/dev/null
    done
    for ns in "${nss[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    for v in "${veths[@]}"; do
        ip link del "$v" 2>/dev/null
    done
    return 0
}

# find_binaries: BIN_DIR (the debug build, made now, when unset) → AGENT_BIN, CLOUD_BIN, CLI_BIN,
# BENCH_BIN.
# shellcheck disable=SC2034 # the callers use the variables it sets
find_binaries() {
    if [[ -z ${BIN_DIR:-} ]]; then
        BIN_DIR=target/debug
        log "building the binaries (debug)"
        cargo build --locked -q -p outrider-agent -p outrider-cloud -p outrider -p outrider-sync-bench --bins ||
            die "cargo build failed"
    fi
    BIN_DIR=$(cd "$BIN_DIR" && pwd)
    local b
    for b in outrider-agent outrider-cloud outrider sync-bench; do
        [[ -x $BIN_DIR/$b ]] || die "$BIN_DIR/$b is missing (build it, or unset BIN_DIR to build)"
    done
    AGENT_BIN=$BIN_DIR/outrider-agent
    CLOUD_BIN=$BIN_DIR/outrider-cloud
    CLI_BIN=$BIN_DIR/outrider
    BENCH_BIN=$BIN_DIR/sync-bench
}

# isolated FUNC ARGS...: runs FUNC in a subshell with `set -e` and sets RC to its status. Call it
# as a plain command, never in `if`, `&&` or `||` (bash would ignore `set -e` inside). The
# subshell runs in the background so that a signal to the script is handled at once (bash runs
# traps only between foreground commands); the cleanup stops it.
# shellcheck disable=SC2034 # RC is read by the callers
isolated() {
    set +e
    (
        set -e
        "$@"
    ) &
    CHILD=$!
    wait "$CHILD"
    RC=$?
    CHILD=""
    set -e
}

# record NAME RC: counts and logs a case's result (PASSED, FAILED, RESULTS).
record() {
    local name=$1 rc=$2
    if ((rc == 0)); then
        PASSED=$((PASSED + 1))
        RESULTS+=("PASS  $name")
        log "PASS  $name"
    else
        FAILED=$((FAILED + 1))
        RESULTS+=("FAIL  $name")
        log "FAIL  $name"
    fi
}
