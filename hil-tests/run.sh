#!/usr/bin/env bash
# hil-tests/run.sh: the real outrider-agent and outrider-cloud binaries in two network
# namespaces joined by a veth pair, with nftables dropping a share of the packets in each
# direction of the link. For every sync transport and loss level: events are appended while the agent
# syncs, the agent's outbox must drain, and the cloud's store must then hold every event exactly
# once. Then the sync benchmark runs across the same link at 5 % loss (quick mode). Last,
# hil-tests/failover.sh (two links, failover and fail-back, its benchmark) for each transport.
#
# Run as root from anywhere: `bash hil-tests/run.sh` (CI runs it from .ci/run). Environment:
#   BIN_DIR      directory of outrider-agent, outrider-cloud, outrider and sync-bench
#                (default target/debug, built with `cargo build` first; when set, nothing is built)
#   TRANSPORTS   space-separated transports (default: grpc quic)
#   LOSSES       space-separated loss percentages per direction (default "5 20")
#   EVENTS       events appended per case at up to 5 % loss (default 20000)
#   EVENTS_HIGH_LOSS  events appended per case above 5 % loss (default 10000: over gRPC, TCP
#                can stall for tens of seconds at 20 % loss each way)
#   DRAIN_TIMEOUT  seconds a case may take to drain (default 120)
#   BENCH        1 (default) runs the benchmark at 5 % loss; 0 skips it
#   BENCH_EVENTS events per benchmark drain run (default 20000)
#   BENCH_RATE   events/s of the benchmark's latency phase (default 1000)
#   KEEP         1 keeps the scratch directory (logs, data) for a look afterwards
#   FAILOVER     1 (default) runs hil-tests/failover.sh at the end (two links, failover and back,
#                for each transport); 0 skips it
#   FAILOVER_BENCH  1 (default) runs failover.sh's benchmark (20 blackholes) with the first
#                transport; 0 skips it
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS=${EVENTS:-20000}
EVENTS_HIGH_LOSS=${EVENTS_HIGH_LOSS:-10000}
LOSSES=${LOSSES:-"5 20"}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
BENCH=${BENCH:-1}
BENCH_EVENTS=${BENCH_EVENTS:-20000}
BENCH_RATE=${BENCH_RATE:-1000}
BENCH_LOSS=5
KEEP=${KEEP:-0}
FAILOVER=${FAILOVER:-1}
FAILOVER_BENCH=${FAILOVER_BENCH:-1}
NODE=hil-node

# Unique names, so parallel or aborted runs do not collide. Interface names: at most 15 bytes.
TAG=$$
NS_AGENT="outrider-hil-$TAG-agent"
NS_CLOUD="outrider-hil-$TAG-cloud"
VETH_AGENT="orh${TAG}a"
VETH_CLOUD="orh${TAG}c"
NFT_TABLE="outrider_hil"
# Addresses exist only inside the two namespaces.
CLOUD_IP=10.199.0.1
AGENT_IP=10.199.0.2
CLOUD_PORT=7443

WORK=""
CHILD=""
RC=0
PASSED=0
FAILED=0
RESULTS=()

log() { printf '[hil %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# shellcheck source=hil-tests/lib.sh
source hil-tests/lib.sh # the script runs from the repository root (cd above)

# --- cleanup: always, on every exit path ----------------------------------------
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # The running case's subshell and every process in our namespaces (all ours), the nft
    # tables, the namespaces, veth ends left by a half-built setup.
    teardown_namespaces "$NFT_TABLE" "$NS_AGENT" "$NS_CLOUD" -- "$VETH_AGENT" "$VETH_CLOUD"
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 ]]; then
            echo "scratch kept in $WORK"
        else
            rm -rf -- "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- prerequisites --------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root (network namespaces, veth, nftables)"
command -v ip >/dev/null || die "ip (iproute2) is missing"
if ! command -v nft >/dev/null; then
    command -v apt-get >/dev/null || die "nft is missing and apt-get is not available to install nftables"
    log "nft missing: installing Debian package nftables"
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -qq ||
        die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends nftables >/dev/null ||
        die "apt-get install nftables failed"
    command -v nft >/dev/null || die "nft still missing after installing nftables"
fi

find_binaries

WORK=$(mktemp -d /tmp/outrider-hil.XXXXXX)
log "scratch $WORK, binaries $BIN_DIR"

# Transports: as given, else both. The agent must accept each one: a configuration it refuses
# fails the run (nothing is skipped silently).
TRANSPORTS=${TRANSPORTS:-grpc quic}
for t in $TRANSPORTS; do
    cat >"$WORK/check-$t.toml" <<EOF
[sync]
cloud_url = "https://$CLOUD_IP:$CLOUD_PORT"
transport = "$t"
[sync.tls]
ca = "ca.pem"
cert = "node.pem"
key = "node-key.pem"
EOF
    if ! out=$("$AGENT_BIN" --config "$WORK/check-$t.toml" --print-config 2>&1); then
        printf '%s\n' "$out" >&2
        die "the agent refuses sync.transport = \"$t\" (see above)"
    fi
done
log "transports: $TRANSPORTS; loss levels (each way): $LOSSES %"

# --- topology -------------------------------------------------------------------
ip netns add "$NS_AGENT"
ip netns add "$NS_CLOUD"
ip link add "$VETH_AGENT" type veth peer name "$VETH_CLOUD"
ip link set "$VETH_AGENT" netns "$NS_AGENT"
ip link set "$VETH_CLOUD" netns "$NS_CLOUD"
ip -n "$NS_AGENT" addr add "$AGENT_IP/30" dev "$VETH_AGENT"
ip -n "$NS_CLOUD" addr add "$CLOUD_IP/30" dev "$VETH_CLOUD"
for ns in "$NS_AGENT" "$NS_CLOUD"; do
    ip -n "$ns" link set lo up
done
# No GSO aggregates on the link: a sender's TCP segments and UDP datagrams cross the veth one
# by one, so the loss rules (on the receiving side, see set_loss) drop packets as a lossy link
# would, not 64 KiB aggregates.
ip -n "$NS_AGENT" link set "$VETH_AGENT" gso_max_segs 1 gso_max_size 1500
ip -n "$NS_CLOUD" link set "$VETH_CLOUD" gso_max_segs 1 gso_max_size 1500
ip -n "$NS_AGENT" link set "$VETH_AGENT" up
ip -n "$NS_CLOUD" link set "$VETH_CLOUD" up
log "namespaces $NS_AGENT ($AGENT_IP) and $NS_CLOUD ($CLOUD_IP) joined by $VETH_AGENT/$VETH_CLOUD"

# set_loss N: drop N % of the packets in each direction (0: none). Each namespace drops on the
# way in from its veth: the receiving side sees the packets after the sender's GSO segmentation,
# so every packet counted is a wire-sized one (a TCP segment, a QUIC datagram).
set_loss() {
    local pct=$1 ns veth
    for ns in "$NS_AGENT" "$NS_CLOUD"; do
        ip netns exec "$ns" nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    done
    ((pct > 0)) || return 0
    for ns in "$NS_AGENT" "$NS_CLOUD"; do
        veth=$VETH_AGENT
        [[ $ns == "$NS_CLOUD" ]] && veth=$VETH_CLOUD
        ip netns exec "$ns" nft -f - <<EOF
table inet $NFT_TABLE {
    chain input {
        type filter hook input priority -10; policy accept;
        iifname "$veth" counter numgen random mod 100 < $pct counter drop
    }
}
EOF
    done
}

# loss_report: the packets the loss rules saw and dropped (proof that the loss applied).
loss_report() {
    local ns dir line counts
    for ns in "$NS_CLOUD" "$NS_AGENT"; do
        dir="agent -> cloud"
        [[ $ns == "$NS_AGENT" ]] && dir="cloud -> agent"
        # "iifname V counter packets P bytes B numgen ... counter packets D bytes E drop"
        line=$(ip netns exec "$ns" nft list table inet "$NFT_TABLE" 2>/dev/null | grep iifname) || continue
        counts=$(sed -E 's/.*counter packets ([0-9]+) bytes ([0-9]+) .*counter packets ([0-9]+) bytes ([0-9]+).*/\3 of \1 packets (\4 of \2 bytes)/' <<<"$line")
        log "  link $dir: dropped $counts"
    done
}

# --- certificates ---------------------------------------------------------------
"$CLI_BIN" certs init --dir "$WORK/certs" --ip "$CLOUD_IP" >/dev/null
"$CLI_BIN" certs issue "$NODE" --dir "$WORK/certs" >/dev/null

# wait_for_line FILE PATTERN PID WHAT SECONDS: polls FILE for PATTERN until the deadline; fails
# early if PID exits.
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 what=$4 secs=$5
    local deadline=$((SECONDS + secs))
    until grep -q -- "$pattern" "$file" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "--- last lines of $file:" >&2
            tail -n 20 "$file" >&2 || true
            die "$what exited before it was ready"
        fi
        if ((SECONDS >= deadline)); then
            echo "--- last lines of $file:" >&2
            tail -n 20 "$file" >&2 || true
            die "$what not ready within $secs s"
        fi
        sleep 0.1
    done
}

# stop_proc PID SIGNAL WHAT LOGFILE: sends SIGNAL, then waits up to 20 s; fails unless the
# process exits with 0.
stop_proc() {
    local pid=$1 sig=$2 what=$3 logfile=$4 rc=0
    kill -s "$sig" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            die "$what did not stop within 20 s of SIG$sig (killed)"
        fi
        sleep 0.1
    done
    wait "$pid" || rc=$?
    if ((rc != 0)); then
        echo "--- last lines of $logfile:" >&2
        tail -n 20 "$logfile" >&2 || true
        die "$what exited with status $rc"
    fi
}

# run_case TRANSPORT LOSS: one scenario; runs in a subshell with `set -e`, so any failing step
# fails the case. Its processes are stopped by its own EXIT trap (and by the global cleanup).
run_case() {
    local transport=$1 loss=$2 events=$3
    local dir=$WORK/case-$transport-$loss
    mkdir -p "$dir"
    # Not local: the subshell's EXIT trap runs after this function has returned.
    CASE_PIDS=()
    # shellcheck disable=SC2317 # invoked by the trap
    case_cleanup() {
        local p
        for p in "${CASE_PIDS[@]}"; do
            kill -KILL "$p" 2>/dev/null || true
        done
    }
    trap case_cleanup EXIT
    local cloud_pid agent_pid

    cat >"$dir/cloud.toml" <<EOF
listen = "$CLOUD_IP:$CLOUD_PORT"
data_dir = "$dir/cloud-data"
[tls]
ca = "$WORK/certs/ca.pem"
cert = "$WORK/certs/server.pem"
key = "$WORK/certs/server-key.pem"
EOF
    cat >"$dir/agent.toml" <<EOF
node_id = "$NODE"
data_dir = "$dir/agent-data"
[api]
listen = "127.0.0.1:7400"
metrics_listen = "127.0.0.1:9464"
[sync]
cloud_url = "https://$CLOUD_IP:$CLOUD_PORT"
transport = "$transport"
[sync.tls]
ca = "$WORK/certs/ca.pem"
cert = "$WORK/certs/$NODE.pem"
key = "$WORK/certs/$NODE-key.pem"
EOF

    set_loss "$loss"
    ip netns exec "$NS_CLOUD" "$CLOUD_BIN" --config "$dir/cloud.toml" >"$dir/cloud.log" 2>&1 &
    cloud_pid=$!
    CASE_PIDS+=("$cloud_pid")
    wait_for_line "$dir/cloud.log" "ingest server listening" "$cloud_pid" "outrider-cloud" 30
    ip netns exec "$NS_AGENT" "$AGENT_BIN" --config "$dir/agent.toml" >"$dir/agent.log" 2>&1 &
    agent_pid=$!
    CASE_PIDS+=("$agent_pid")
    wait_for_line "$dir/agent.log" "agent listening" "$agent_pid" "outrider-agent" 30

    log "  appending $events events (256 B) through the agent's gRPC API while it syncs"
    ip netns exec "$NS_AGENT" timeout 120 "$BENCH_BIN" produce --agent http://127.0.0.1:7400 \
        --events "$events" --size 256 --batch 50 --streams 3 --stream-prefix hil >"$dir/produce.json" ||
        die "producing events failed"
    log "  appended: $(cat "$dir/produce.json")"
    log "  waiting for the outbox to drain (at most $DRAIN_TIMEOUT s)"
    ip netns exec "$NS_AGENT" "$BENCH_BIN" wait-drained --metrics http://127.0.0.1:9464/metrics \
        --min-head "$events" --timeout "$DRAIN_TIMEOUT" ||
        die "the agent's outbox did not drain"

    stop_proc "$agent_pid" TERM "outrider-agent" "$dir/agent.log"
    CASE_PIDS=("$cloud_pid")
    # outrider-cloud stops gracefully on SIGINT (Ctrl-C).
    stop_proc "$cloud_pid" INT "outrider-cloud" "$dir/cloud.log"
    CASE_PIDS=()
    loss_report
    set_loss 0

    "$BENCH_BIN" verify --data "$dir/cloud-data" --node "$NODE" --expect "$events" ||
        die "the cloud store does not hold every event exactly once"
    "$CLI_BIN" log inspect "$dir/cloud-data" >"$dir/inspect.txt" ||
        die "outrider log inspect found the cloud store damaged (see $dir/inspect.txt)"
}

# run_bench: the sync benchmark across the namespaces, BENCH_LOSS % loss, quick mode.
run_bench() {
    set_loss "$BENCH_LOSS"
    local transport=$TRANSPORTS
    [[ $TRANSPORTS == *grpc* && $TRANSPORTS == *quic* ]] && transport=all
    ip netns exec "$NS_CLOUD" timeout 200 "$BENCH_BIN" --quick --transport "$transport" --size 256 \
        --events "$BENCH_EVENTS" --rate "$BENCH_RATE" --cloud-listen "$CLOUD_IP:0" \
        --agent-prefix "ip netns exec $NS_AGENT" --agent-bin "$AGENT_BIN" \
        --work-dir "$WORK/bench" ||
        die "the benchmark failed"
    set_loss 0
}


for transport in $TRANSPORTS; do
    for loss in $LOSSES; do
        events=$EVENTS
        ((loss <= 5)) || events=$EVENTS_HIGH_LOSS
        name="sync $transport, $loss % loss each way: $events events exactly once, outbox drained"
        log "case: $name"
        start=$SECONDS
        isolated run_case "$transport" "$loss" "$events"
        rc=$RC
        if ((rc != 0)); then
            for f in "$WORK/case-$transport-$loss"/{agent,cloud}.log; do
                [[ -f $f ]] || continue
                echo "--- last lines of $f (KEEP=1 keeps it):"
                tail -n 15 "$f" | sed -E 's/\x1b\[[0-9;]*m//g'
            done
        fi
        record "$name ($((SECONDS - start)) s)" "$rc"
    done
done

if [[ $BENCH == 1 ]]; then
    name="sync-bench across the namespaces, $BENCH_LOSS % loss each way (quick, 256 B)"
    log "case: $name"
    [[ $BIN_DIR == */debug ]] && log "  (debug binaries: the figures are not representative; use BIN_DIR=target/release)"
    start=$SECONDS
    isolated run_bench
    rc=$RC
    record "$name ($((SECONDS - start)) s)" "$rc"
fi

# Link failover across two veth pairs (hil-tests/failover.sh: namespaces of its own), with the
# same binaries; for each transport, the benchmark with the first one only.
run_failover() {
    exec env BIN_DIR="$BIN_DIR" KEEP="$KEEP" TRANSPORT="$1" BENCH="$2" bash hil-tests/failover.sh
}
if [[ $FAILOVER == 1 ]]; then
    fo_bench=$FAILOVER_BENCH
    for transport in $TRANSPORTS; do
        name="link failover dx -> vpn -> dx over sync $transport (hil-tests/failover.sh)"
        ((fo_bench == 1)) && name="$name, with the failover benchmark"
        log "case: $name"
        start=$SECONDS
        isolated run_failover "$transport" "$fo_bench"
        record "$name ($((SECONDS - start)) s)" "$RC"
        fo_bench=0
    done
fi

echo
echo "== hil-tests summary"
for r in "${RESULTS[@]}"; do
    echo "  $r"
done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
