#!/usr/bin/env bash
# hil-tests/failover.sh: link failover of the real outrider-agent and outrider-cloud across TWO
# veth pairs between two network namespaces: the primary link "dx" and the backup "vpn". The agent
# probes both links with UDP echo (100 ms) against the cloud's probe_echo_listen, each probe bound
# to its link's address, and its sync connection follows the active link (sync_local_addr).
#
# The cloud's service address (10.198.0.1 on the cloud namespace's lo) is reachable over both
# links. The agent routes by source address (one routing table per link, `ip rule from ADDR`), as
# an edge box with a Direct Connect and a VPN does, so a socket bound to a link's address leaves
# by that link or not at all (an `unreachable` route backs each table).
#
# Scenario, with a producer appending events through the agent's gRPC API all along:
#   a) dx goes down (`ip link set dx down` on the agent side): dx detected down, sync fails over
#      to vpn (the cloud sees a session from vpn's address); dx comes back (its gateway routes,
#      deleted by the kernel with the link, are re-added): sync fails back after the hold-down.
#   b) dx is blackholed silently (nftables drops everything on it in both namespaces; the
#      interfaces stay UP): the same detection, failover and fail-back.
#   c) 5 % loss on dx (cloud -> agent: the probe replies every 20th, the sync traffic
#      `numgen random mod 100 < 5`): the health config used here promises dx stays up and active
#      (no failover) while it lasts.
#   d) everything restored: the outbox drains; then the agent and the cloud stop, and the cloud's
#      store must hold every event the producers got acknowledged exactly once, and the node's
#      origin seqs 0..head-1 each once (nothing lost, nothing duplicated, link events included).
# Benchmark (BENCH=1, default): TRIALS blackholes of dx, each measured from the moment the drop
# rules go in to the first sync ack the agent receives over the vpn connection (the cloud
# committed events sent over the backup), and the restore to the first ack over dx again.
#
# Run as root from anywhere: `bash hil-tests/failover.sh` (hil-tests/run.sh runs it at its end).
# Environment:
#   BIN_DIR      directory of outrider-agent, outrider-cloud, outrider and sync-bench
#                (default target/debug, built first; when set, nothing is built)
#   TRANSPORT    sync transport, grpc (default) or quic
#   HOLD_DOWN_MS failover hold-down (default 2000)
#   LOSS_PROBES  probes of dx to watch under 5 % loss (default 100: 10 s)
#   RATE         producer events/s (default 500)
#   BENCH        1 (default) runs the benchmark after the scenario; 0 skips it; `--bench` as the
#                first argument runs only the benchmark (and the exactly-once check)
#   TRIALS       benchmark trials (default 20)
#   KEEP         1 keeps the scratch directory (logs, data, measurements)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ONLY_BENCH=0
if [[ ${1:-} == --bench ]]; then
    ONLY_BENCH=1
elif [[ -n ${1:-} ]]; then
    echo "usage: $0 [--bench]" >&2
    exit 2
fi
TRANSPORT=${TRANSPORT:-grpc}
HOLD_DOWN_MS=${HOLD_DOWN_MS:-2000}
LOSS_PROBES=${LOSS_PROBES:-100}
RATE=${RATE:-500}
BENCH=${BENCH:-1}
TRIALS=${TRIALS:-20}
KEEP=${KEEP:-0}
NODE=fo-node
# Probing: every 100 ms; down after 3 failures in a row, up after 3 successes in a row; degraded
# only from 20 % loss (cleared at 10 %), so 5 % loss is neither down nor degraded.
PROBE_INTERVAL_MS=100
PROBE_TIMEOUT_MS=${PROBE_TIMEOUT_MS:-100}
DOWN_FAILURES=3
UP_SUCCESSES=3

TAG=$$
NS_AGENT="outrider-fo-$TAG-agent"
NS_CLOUD="outrider-fo-$TAG-cloud"
# Interface names: at most 15 bytes. a/c: agent/cloud end; d/v: dx/vpn.
DX_AGENT="ofo${TAG}ad"
DX_CLOUD="ofo${TAG}cd"
VPN_AGENT="ofo${TAG}av"
VPN_CLOUD="ofo${TAG}cv"
NFT_TABLE="outrider_fo"
# Addresses exist only inside the two namespaces.
CLOUD_IP=10.198.0.1
DX_CLOUD_IP=10.198.1.1
DX_AGENT_IP=10.198.1.2
VPN_CLOUD_IP=10.198.2.1
VPN_AGENT_IP=10.198.2.2
CLOUD_PORT=7443
ECHO_PORT=7444
CLOUD_METRICS=9465
AGENT_API=7400
AGENT_METRICS=9464
READER_API=7410

WORK=""
CHILD=""
RC=0
PASSED=0
FAILED=0
RESULTS=()
CLOUD_PID=""
AGENT_PID=""

log() { printf '[failover %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# shellcheck source=hil-tests/lib.sh
source hil-tests/lib.sh # the script runs from the repository root (cd above)

# --- cleanup: always, on every exit path ----------------------------------------
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    teardown_namespaces "$NFT_TABLE" "$NS_AGENT" "$NS_CLOUD" -- "$DX_AGENT" "$DX_CLOUD" "$VPN_AGENT" "$VPN_CLOUD"
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
for tool in ip nft jq curl perl; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: iproute2, nftables, jq, curl, perl; .ci/run installs them)"
done
perl -MIO::Socket::INET -MTime::HiRes -e 1 2>/dev/null || die "perl lacks Time::HiRes (Debian: perl)"
case $TRANSPORT in
grpc | quic) ;;
*) die "TRANSPORT must be grpc or quic, not $TRANSPORT" ;;
esac

find_binaries

WORK=$(mktemp -d /tmp/outrider-fo.XXXXXX)
mkdir -p "$WORK/produced"
log "scratch $WORK, binaries $BIN_DIR, transport $TRANSPORT"

# --- topology -------------------------------------------------------------------
# Commands in a namespace. (Processes whose PID is kept, to signal and wait for them, start with a
# plain `ip netns exec ... &`: it execs them, where a function would add a subshell between.)
ina() { ip netns exec "$NS_AGENT" "$@"; }
inc() { ip netns exec "$NS_CLOUD" "$@"; }

ip netns add "$NS_AGENT"
ip netns add "$NS_CLOUD"
ip link add "$DX_AGENT" type veth peer name "$DX_CLOUD"
ip link add "$VPN_AGENT" type veth peer name "$VPN_CLOUD"
for v in "$DX_AGENT" "$VPN_AGENT"; do ip link set "$v" netns "$NS_AGENT"; done
for v in "$DX_CLOUD" "$VPN_CLOUD"; do ip link set "$v" netns "$NS_CLOUD"; done
for ns in "$NS_AGENT" "$NS_CLOUD"; do
    ip -n "$ns" link set lo up
    # A route whose link lost its carrier (the far end went down) is not used; no strict
    # reverse-path filter (it depends on the host's defaults otherwise).
    for k in all default; do
        ip netns exec "$ns" sysctl -qw "net.ipv4.conf.$k.ignore_routes_with_linkdown=1"
        ip netns exec "$ns" sysctl -qw "net.ipv4.conf.$k.rp_filter=0"
    done
done
for v in "$DX_AGENT" "$VPN_AGENT"; do
    ina sysctl -qw "net.ipv4.conf.$v.ignore_routes_with_linkdown=1" "net.ipv4.conf.$v.rp_filter=0"
done
for v in "$DX_CLOUD" "$VPN_CLOUD"; do
    inc sysctl -qw "net.ipv4.conf.$v.ignore_routes_with_linkdown=1" "net.ipv4.conf.$v.rp_filter=0"
done
ip -n "$NS_CLOUD" addr add "$CLOUD_IP/32" dev lo
ip -n "$NS_CLOUD" addr add "$DX_CLOUD_IP/30" dev "$DX_CLOUD"
ip -n "$NS_CLOUD" addr add "$VPN_CLOUD_IP/30" dev "$VPN_CLOUD"
ip -n "$NS_AGENT" addr add "$DX_AGENT_IP/30" dev "$DX_AGENT"
ip -n "$NS_AGENT" addr add "$VPN_AGENT_IP/30" dev "$VPN_AGENT"
for v in "$DX_AGENT" "$VPN_AGENT"; do ip -n "$NS_AGENT" link set "$v" up; done
for v in "$DX_CLOUD" "$VPN_CLOUD"; do ip -n "$NS_CLOUD" link set "$v" up; done

# Source routing on the agent: link L's address looks up table L only (its gateway route, else
# unreachable), so what is bound to a link's address never leaks over the other link. Unbound
# traffic prefers dx (metric 10) over vpn (20) in the main table.
ip -n "$NS_AGENT" rule add from "$DX_AGENT_IP" lookup 101 pref 101
ip -n "$NS_AGENT" rule add from "$VPN_AGENT_IP" lookup 102 pref 102
ip -n "$NS_AGENT" route add unreachable "$CLOUD_IP/32" table 101 metric 4000
ip -n "$NS_AGENT" route add unreachable "$CLOUD_IP/32" table 102 metric 4000

# link_routes LINK: (re-)adds LINK's gateway routes to the cloud. The kernel deletes a route
# through a link when the link goes down and does not bring it back with the link.
link_routes() {
    case $1 in
    dx)
        ip -n "$NS_AGENT" route replace "$CLOUD_IP/32" via "$DX_CLOUD_IP" dev "$DX_AGENT" metric 10
        ip -n "$NS_AGENT" route replace "$CLOUD_IP/32" via "$DX_CLOUD_IP" dev "$DX_AGENT" table 101 metric 10
        ;;
    vpn)
        ip -n "$NS_AGENT" route replace "$CLOUD_IP/32" via "$VPN_CLOUD_IP" dev "$VPN_AGENT" metric 20
        ip -n "$NS_AGENT" route replace "$CLOUD_IP/32" via "$VPN_CLOUD_IP" dev "$VPN_AGENT" table 102 metric 10
        ;;
    esac
}
link_routes dx
link_routes vpn
for pair in "$DX_AGENT_IP $DX_AGENT" "$VPN_AGENT_IP $VPN_AGENT"; do
    read -r src dev <<<"$pair"
    ip -n "$NS_AGENT" route get "$CLOUD_IP" from "$src" | grep -q " dev $dev " ||
        die "from $src the cloud $CLOUD_IP is not routed over $dev: $(ip -n "$NS_AGENT" route get "$CLOUD_IP" from "$src" 2>&1)"
done
log "namespaces $NS_AGENT and $NS_CLOUD: dx $DX_AGENT_IP-$DX_CLOUD_IP ($DX_AGENT), vpn $VPN_AGENT_IP-$VPN_CLOUD_IP ($VPN_AGENT), cloud $CLOUD_IP"

# nft_dx KIND: the rules on dx. blackhole: every packet in from dx dropped in both namespaces
# (the interfaces stay UP); loss: 5 % of the packets from the cloud to the agent over dx — the
# probe echo replies exactly every 20th (never two in a row, so the health verdict under this loss
# is deterministic: 3 failures in a row cannot happen, and CI cannot flake on a legitimate run of
# random drops), everything else at random; none: no rules.
nft_dx() {
    local kind=$1 ns
    for ns in "$NS_AGENT" "$NS_CLOUD"; do
        ip netns exec "$ns" nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    done
    case $kind in
    none) ;;
    blackhole)
        ina nft -f - <<EOF
table inet $NFT_TABLE {
    chain input {
        type filter hook input priority -10; policy accept;
        iifname "$DX_AGENT" counter drop
    }
}
EOF
        inc nft -f - <<EOF
table inet $NFT_TABLE {
    chain input {
        type filter hook input priority -10; policy accept;
        iifname "$DX_CLOUD" counter drop
    }
}
EOF
        ;;
    loss)
        ina nft -f - <<EOF
table inet $NFT_TABLE {
    chain input {
        type filter hook input priority -10; policy accept;
        iifname "$DX_AGENT" udp sport $ECHO_PORT counter numgen inc mod 20 0 counter drop
        iifname "$DX_AGENT" udp sport $ECHO_PORT accept
        iifname "$DX_AGENT" counter numgen random mod 100 < 5 counter drop
    }
}
EOF
        ;;
    *) die "nft_dx: unknown kind $kind" ;;
    esac
}

# --- certificates and configuration ----------------------------------------------
"$CLI_BIN" certs init --dir "$WORK/certs" --ip "$CLOUD_IP" >/dev/null
"$CLI_BIN" certs issue "$NODE" --dir "$WORK/certs" >/dev/null

cat >"$WORK/cloud.toml" <<EOF
listen = "$CLOUD_IP:$CLOUD_PORT"
data_dir = "$WORK/cloud-data"
metrics_listen = "127.0.0.1:$CLOUD_METRICS"
probe_echo_listen = "$CLOUD_IP:$ECHO_PORT"
[tls]
ca = "$WORK/certs/ca.pem"
cert = "$WORK/certs/server.pem"
key = "$WORK/certs/server-key.pem"
EOF
link_toml() {
    local name=$1 priority=$2 addr=$3
    cat <<EOF
[[links]]
name = "$name"
priority = $priority
probe = "udp_echo"
target = "$CLOUD_IP:$ECHO_PORT"
interval_ms = $PROBE_INTERVAL_MS
timeout_ms = $PROBE_TIMEOUT_MS
bind_address = "$addr"
sync_local_addr = "$addr"
down_failures = $DOWN_FAILURES
down_of = $DOWN_FAILURES
up_successes = $UP_SUCCESSES
degraded_loss_percent = 20
degraded_loss_clear_percent = 10
EOF
}
{
    cat <<EOF
node_id = "$NODE"
data_dir = "$WORK/agent-data"
[api]
listen = "127.0.0.1:$AGENT_API"
metrics_listen = "127.0.0.1:$AGENT_METRICS"
[sync]
cloud_url = "https://$CLOUD_IP:$CLOUD_PORT"
transport = "$TRANSPORT"
[sync.tls]
ca = "$WORK/certs/ca.pem"
cert = "$WORK/certs/$NODE.pem"
key = "$WORK/certs/$NODE-key.pem"
[failover]
hold_down_ms = $HOLD_DOWN_MS

EOF
    link_toml dx 10 "$DX_AGENT_IP"
    echo
    link_toml vpn 20 "$VPN_AGENT_IP"
} >"$WORK/agent.toml"
if ! out=$("$AGENT_BIN" --config "$WORK/agent.toml" --print-config 2>&1); then
    printf '%s\n' "$out" >&2
    die "the agent refuses its configuration (see above)"
fi

# --- helpers ----------------------------------------------------------------------
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

# stop_proc PID SIGNAL WHAT LOGFILE: sends SIGNAL, then waits up to 20 s; fails (returns 1, with
# a message) unless the process exits with 0. PID must be a child of this shell.
stop_proc() {
    local pid=$1 sig=$2 what=$3 logfile=$4 rc=0
    kill -s "$sig" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            echo "error: $what did not stop within 20 s of SIG$sig (killed)" >&2
            return 1
        fi
        sleep 0.1
    done
    wait "$pid" || rc=$?
    if ((rc != 0)); then
        echo "--- last lines of $logfile:" >&2
        tail -n 20 "$logfile" >&2 || true
        echo "error: $what exited with status $rc" >&2
        return 1
    fi
}

# agent_metrics: the agent's /metrics text (empty when it cannot be read).
agent_metrics() {
    ina curl -sf --max-time 2 "http://127.0.0.1:$AGENT_METRICS/metrics" 2>/dev/null || true
}

# has TEXT LINE...: every LINE (an exact sample line, e.g. 'outrider_link_active{link="dx"} 1')
# is in TEXT.
has() {
    local text=$1 l
    shift
    for l in "$@"; do
        grep -qxF -- "$l" <<<"$text" || return 1
    done
}

# metric TEXT NAME: the value of the sample NAME (name with its labels, exactly); empty if absent.
metric() {
    awk -v n="$2" '$1 == n { print $2; exit }' <<<"$1"
}

# wait_metrics WHAT SECONDS LINE...: polls the agent's /metrics until it holds every LINE.
wait_metrics() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs)) text
    while :; do
        text=$(agent_metrics)
        if has "$text" "$@"; then
            return 0
        fi
        if [[ -n $AGENT_PID ]] && ! kill -0 "$AGENT_PID" 2>/dev/null; then
            tail -n 20 "$WORK/agent.log" >&2 || true
            die "$what: outrider-agent is gone (see its last lines above)"
        fi
        if ((SECONDS >= deadline)); then
            echo "--- wanted in the agent's /metrics:" >&2
            printf '  %s\n' "$@" >&2
            echo "--- the agent's link and sync figures:" >&2
            grep -E '^outrider_(link_(state|active)|sync_(up|link_info|transport_info|acks_total|last))' <<<"$text" | grep -vE '\} 0$' >&2 || true
            die "$what: not within $secs s"
        fi
        sleep 0.05
    done
}

# cloud_sessions IP: how many sync sessions the cloud started for connections from IP.
cloud_sessions() {
    sed -E 's/\x1b\[[0-9;]*m//g' "$WORK/cloud.log" | grep -c "sync session started.*remote=Some($1:" || true
}

# wait_cloud_session IP BEFORE WHAT: waits until the cloud started more sessions from IP than
# BEFORE (it saw the sync connection come from that link).
wait_cloud_session() {
    local ip=$1 before=$2 what=$3 deadline=$((SECONDS + 15))
    until (($(cloud_sessions "$ip") > before)); do
        if ((SECONDS >= deadline)); then
            echo "--- sync sessions in the cloud's log:" >&2
            sed -E 's/\x1b\[[0-9;]*m//g' "$WORK/cloud.log" | grep "sync session" | tail -n 10 >&2 || true
            die "$what: the cloud saw no new sync session from $ip within 15 s"
        fi
        sleep 0.05
    done
}

# link_is_up IFACE: the agent-side interface is administratively and operationally up.
link_is_up() {
    ip -n "$NS_AGENT" -o link show "$1" | grep -q "state UP"
}

# start_producer NAME BLOCK EVENTS: appends EVENTS events at RATE/s in the background, with
# indices from BLOCK * 10^7 (each producer its own block); what it got acknowledged lands in
# $WORK/produced/NAME.json. Sets PRODUCER.
PRODUCER=""
start_producer() {
    local name=$1 block=$2 events=$3
    ip netns exec "$NS_AGENT" "$BENCH_BIN" produce --agent "http://127.0.0.1:$AGENT_API" --events "$events" \
        --rate "$RATE" --batch 5 --size 256 --streams 3 --stream-prefix fo \
        --first-index $((block * 10000000)) >"$WORK/produced/$name.json" 2>"$WORK/produced/$name.err" &
    PRODUCER=$!
}

# wait_producer NAME PID: waits for the producer; every append must have been acknowledged.
wait_producer() {
    local name=$1 pid=$2 rc=0
    wait "$pid" || rc=$?
    if ((rc != 0)); then
        cat "$WORK/produced/$name.err" >&2 || true
        rm -f "$WORK/produced/$name.json"
        die "the producer ($name) failed (status $rc)"
    fi
    log "  producer $name: $(jq -c '{appended, first_index}' "$WORK/produced/$name.json")"
}


# The metric lines of each steady state.
ON_DX=('outrider_link_state{link="dx",state="up"} 1' 'outrider_link_active{link="dx"} 1'
    'outrider_sync_link_info{link="dx"} 1' 'outrider_sync_up 1')
ON_VPN=('outrider_link_state{link="dx",state="down"} 1' 'outrider_link_active{link="vpn"} 1'
    'outrider_sync_link_info{link="vpn"} 1' 'outrider_sync_up 1')

# --- the processes -----------------------------------------------------------------
start_processes() {
    ip netns exec "$NS_CLOUD" "$CLOUD_BIN" --config "$WORK/cloud.toml" >"$WORK/cloud.log" 2>&1 &
    CLOUD_PID=$!
    wait_for_line "$WORK/cloud.log" "ingest server listening" "$CLOUD_PID" "outrider-cloud" 30
    ip netns exec "$NS_AGENT" "$AGENT_BIN" --config "$WORK/agent.toml" >"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    wait_for_line "$WORK/agent.log" "agent listening" "$AGENT_PID" "outrider-agent" 30
    wait_metrics "both links up, sync over dx" 30 "${ON_DX[@]}" 'outrider_link_state{link="vpn",state="up"} 1'
    wait_cloud_session "$DX_AGENT_IP" 0 "start"
    log "agent and cloud running; both links up; sync over dx"
}

# now_ms: wall-clock milliseconds.
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

# fail_back WHAT T_RESTORED DX_SESSIONS: after dx was restored at T_RESTORED (now_ms): dx detected
# up, sync back on dx no sooner than the hold-down, and the cloud saw a new session from dx (more
# than DX_SESSIONS).
fail_back() {
    local what=$1 restored=$2 dx_before=$3
    wait_metrics "$what: dx detected up again" 15 'outrider_link_state{link="dx",state="up"} 1'
    wait_metrics "$what: sync back on dx" $((HOLD_DOWN_MS / 1000 + 15)) "${ON_DX[@]}"
    local took=$(($(now_ms) - restored))
    ((took >= HOLD_DOWN_MS)) || die "$what: sync moved back to dx after $took ms, before the hold-down ($HOLD_DOWN_MS ms)"
    wait_cloud_session "$DX_AGENT_IP" "$dx_before" "$what: fail-back"
    log "  fail-back to dx $took ms after the restore (hold-down $HOLD_DOWN_MS ms); the cloud sees sync from $DX_AGENT_IP"
}

# --- the scenario steps --------------------------------------------------------------
step_link_down() {
    local vpn_before dx_before t pid
    start_producer a 1 $((RATE * 6))
    pid=$PRODUCER
    vpn_before=$(cloud_sessions "$VPN_AGENT_IP")
    dx_before=$(cloud_sessions "$DX_AGENT_IP")
    t=$(now_ms)
    ip -n "$NS_AGENT" link set "$DX_AGENT" down
    wait_metrics "a: dx detected down" 10 'outrider_link_state{link="dx",state="down"} 1'
    log "  dx detected down $(($(now_ms) - t)) ms after ip link set down"
    wait_metrics "a: failover to vpn" 10 "${ON_VPN[@]}"
    wait_cloud_session "$VPN_AGENT_IP" "$vpn_before" "a: failover"
    log "  sync on vpn $(($(now_ms) - t)) ms after the link went down; the cloud sees sync from $VPN_AGENT_IP"
    ! ina ip route get "$CLOUD_IP" from "$DX_AGENT_IP" >/dev/null 2>&1 ||
        die "a: a route from dx's address to the cloud survived the link going down"
    ip -n "$NS_AGENT" link set "$DX_AGENT" up
    link_routes dx
    t=$(now_ms)
    fail_back a "$t" "$dx_before"
    wait_producer a "$pid"
}

step_blackhole() {
    local vpn_before dx_before t pid
    start_producer b 2 $((RATE * 6))
    pid=$PRODUCER
    vpn_before=$(cloud_sessions "$VPN_AGENT_IP")
    dx_before=$(cloud_sessions "$DX_AGENT_IP")
    t=$(now_ms)
    nft_dx blackhole
    wait_metrics "b: blackholed dx detected down" 10 'outrider_link_state{link="dx",state="down"} 1'
    log "  dx detected down $(($(now_ms) - t)) ms after the blackhole"
    link_is_up "$DX_AGENT" || die "b: the blackhole changed dx's link state (it must be silent)"
    wait_metrics "b: failover to vpn" 10 "${ON_VPN[@]}"
    wait_cloud_session "$VPN_AGENT_IP" "$vpn_before" "b: failover"
    log "  sync on vpn $(($(now_ms) - t)) ms after the blackhole; the cloud sees sync from $VPN_AGENT_IP"
    local dropped
    dropped=$(ina nft list table inet "$NFT_TABLE" | sed -nE 's/.*counter packets ([0-9]+).*/\1/p')
    ((dropped > 0)) || die "b: the blackhole dropped nothing"
    log "  (the agent side dropped $dropped packets from dx; the interfaces stayed UP)"
    nft_dx none
    t=$(now_ms)
    fail_back b "$t" "$dx_before"
    wait_producer b "$pid"
}

step_loss() {
    local text probes0 probes trans0 trans vpn_before pid deadline
    start_producer c 3 $((RATE * (LOSS_PROBES * PROBE_INTERVAL_MS / 1000 + 2)))
    pid=$PRODUCER
    text=$(agent_metrics)
    has "$text" "${ON_DX[@]}" || die "c: not steady on dx at the start"
    trans0=$(metric "$text" 'outrider_link_transitions_total{link="dx"}')
    probes0=$(metric "$text" 'outrider_link_probes_total{link="dx",result="ok"}')
    vpn_before=$(cloud_sessions "$VPN_AGENT_IP")
    nft_dx loss
    # Watch dx for LOSS_PROBES probes: it must stay up and active, sync on it all along.
    deadline=$((SECONDS + LOSS_PROBES * PROBE_INTERVAL_MS / 1000 + 30))
    while :; do
        text=$(agent_metrics)
        [[ -n $text ]] || die "c: cannot read the agent's /metrics"
        trans=$(metric "$text" 'outrider_link_transitions_total{link="dx"}')
        if ((trans != trans0)) || ! has "$text" "${ON_DX[@]}"; then
            grep -E '^outrider_link_(state|loss_ratio|active)' <<<"$text" | grep -v ' 0$' >&2 || true
            die "c: under 5 % loss dx changed state or lost the sync ($((trans - trans0)) transitions); the config promises up, not degraded, no failover"
        fi
        probes=0
        for r in ok timeout refused error; do
            probes=$((probes + $(metric "$text" "outrider_link_probes_total{link=\"dx\",result=\"$r\"}")))
        done
        (((probes - probes0) >= LOSS_PROBES)) && break
        ((SECONDS < deadline)) || die "c: only $((probes - probes0)) probes of dx within the deadline"
        sleep 0.1
    done
    local counters seen dropped loss
    counters=$(ina nft list table inet "$NFT_TABLE")
    seen=$(sed -nE 's/.*iifname .* counter packets ([0-9]+) .*numgen.*/\1/p' <<<"$counters" | awk '{s += $1} END {print s + 0}')
    dropped=$(sed -nE 's/.*numgen.*counter packets ([0-9]+) .*drop.*/\1/p' <<<"$counters" | awk '{s += $1} END {print s + 0}')
    ((dropped > 0)) || die "c: the loss rule dropped nothing ($seen packets seen)"
    loss=$(metric "$text" 'outrider_link_loss_ratio{link="dx"}')
    (($(cloud_sessions "$VPN_AGENT_IP") == vpn_before)) || die "c: the cloud saw a sync session from vpn under 5 % loss"
    log "  $LOSS_PROBES probes under loss: dropped $dropped of $seen packets cloud -> agent on dx; dx loss ratio ${loss:-?}; dx stayed up and active, sync stayed on dx"
    nft_dx none
    wait_producer c "$pid"
}

step_restored() {
    nft_dx none
    link_is_up "$DX_AGENT" || die "d: dx is not up"
    link_is_up "$VPN_AGENT" || die "d: vpn is not up"
    wait_metrics "d: steady on dx" 15 "${ON_DX[@]}" 'outrider_link_state{link="vpn",state="up"} 1'
    ina "$BENCH_BIN" wait-drained --metrics "http://127.0.0.1:$AGENT_METRICS/metrics" --min-head 1 --timeout 60 ||
        die "d: the agent's outbox did not drain"
}

# --- the benchmark ------------------------------------------------------------------
# measure TO T0: times a switch of the sync connection to link TO after T0 (an EPOCHREALTIME);
# prints "detect_ms switch_ms flow_ms us_per_scrape". A watcher in the agent namespace scrapes
# the agent's /metrics in a tight loop (perl: no process per scrape, about 1 ms a scrape) until
# the sync connection runs over TO and an ack arrived on it:
#   detect: the other link's health state is no longer up (TO=vpn) / TO is up again (TO=dx);
#   switch: the sync connection's link (outrider_sync_link_info) is TO;
#   flow:   outrider_sync_acks_total grew past its value at the first scrape showing TO: that
#           ack came over the new connection (the old one is dropped before the switch), i.e.
#           the cloud committed events the agent sent over TO.
# Each time is taken when the scrape that first shows the condition returned (late by at most
# one scrape, never early).
measure() {
    local to=$1 t0=$2 from=vpn
    [[ $to == vpn ]] && from=dx
    ina perl -MIO::Socket::INET -MTime::HiRes=time - "$AGENT_METRICS" "$from" "$to" "$t0" 30 <<'PERL'
use strict;
use warnings;
my ($port, $from, $to, $t0, $timeout) = @ARGV;
my ($detect, $switch, $base, $scrapes, $text) = (undef, undef, undef, 0, "");
my $ms = sub { int((time() - $t0) * 1000) };
my $deadline = time() + $timeout;
while (1) {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 2);
    if ($s) {
        print $s "GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n";
        local $/;
        $text = <$s> // "";
        close $s;
    }
    $scrapes++;
    my ($acks) = $text =~ /^outrider_sync_acks_total (\d+)$/m;
    my ($link) = $text =~ /^outrider_sync_link_info\{link="([^"]*)"\} 1$/m;
    $link //= "";
    if (defined $acks) {
        if (!defined $detect) {
            my $from_up = $text =~ /^outrider_link_state\{link="\Q$from\E",state="up"\} 1$/m;
            my $to_up = $text =~ /^outrider_link_state\{link="\Q$to\E",state="up"\} 1$/m;
            $detect = $ms->() if ($to eq "vpn" && !$from_up) || ($to eq "dx" && $to_up);
        }
        if ($link eq $to) {
            if (!defined $switch) {
                $switch = $ms->();
                $base = $acks;
            } elsif ($acks > $base) {
                my $flow = $ms->();
                printf "%d %d %d %d\n", $detect // $switch, $switch, $flow,
                    int((time() - $t0) * 1e6 / $scrapes);
                exit 0;
            }
        }
    }
    if (time() >= $deadline) {
        printf STDERR "watch: no ack over %s within %d s (detect=%s switch=%s link=%s acks=%s)\n",
            $to, $timeout, $detect // "none", $switch // "none", $link || "none", $acks // "none";
        exit 1;
    }
}
PERL
}

bench() {
    local i t0 out pid results=$WORK/bench.txt
    : >"$results"
    for ((i = 1; i <= TRIALS; i++)); do
        wait_metrics "trial $i: steady on dx" 30 "${ON_DX[@]}" 'outrider_link_state{link="vpn",state="up"} 1'
        start_producer "bench-$i" $((100 + i)) $((RATE * 5))
        pid=$PRODUCER
        # Traffic flows on dx before the blackhole (an ack on the current connection).
        t0=$EPOCHREALTIME
        measure dx "$t0" >/dev/null || die "trial $i: no acks over dx before the blackhole"
        t0=$EPOCHREALTIME
        nft_dx blackhole
        out=$(measure vpn "$t0") || die "trial $i: no failover"
        read -r d1 s1 f1 n1 <<<"$out"
        t0=$EPOCHREALTIME
        nft_dx none
        out=$(measure dx "$t0") || die "trial $i: no fail-back"
        read -r d2 s2 f2 n2 <<<"$out"
        echo "$i $d1 $s1 $f1 $d2 $s2 $f2" >>"$results"
        log "  trial $i: blackhole -> dx down $d1 ms, sync on vpn $s1 ms, first ack over vpn $f1 ms; restore -> dx up $d2 ms, sync on dx $s2 ms, first ack over dx $f2 ms ($n1 and $n2 us a scrape)"
        wait_producer "bench-$i" "$pid"
    done
    summarize "$results"
}

# summarize FILE: median and max of each column.
summarize() {
    local file=$1 col name
    local names=(x "blackhole -> dx detected down" "blackhole -> sync connected over vpn"
        "blackhole -> first ack over vpn" "restore -> dx detected up" "restore -> sync connected over dx"
        "restore -> first ack over dx")
    echo "== failover benchmark: $TRIALS trials, probes every $PROBE_INTERVAL_MS ms (timeout $PROBE_TIMEOUT_MS ms), down after $DOWN_FAILURES failures, up after $UP_SUCCESSES successes, hold-down $HOLD_DOWN_MS ms, $TRANSPORT, $(basename "$(dirname "$BIN_DIR")")/$(basename "$BIN_DIR")"
    printf '  %-40s %8s %8s %8s\n' "" "min ms" "median" "max ms"
    for col in 2 3 4 5 6 7; do
        name=${names[col - 1]}
        cut -d' ' -f"$col" "$file" | sort -n | awk -v n="$name" '{ v[NR] = $1 }
            END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
                  printf "  %-40s %8d %8d %8d\n", n, v[1], m, v[NR] }'
    done
    local med max
    med=$(cut -d' ' -f4 "$file" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }')
    max=$(cut -d' ' -f4 "$file" | sort -n | tail -n 1)
    echo "  target: blackhole -> traffic on the backup median <= 500 ms (got $med), max <= 1000 ms (got $max): $( ((med <= 500 && max <= 1000)) && echo met || echo MISSED)"
}

# --- the exactly-once check -----------------------------------------------------------
# Stops both, then reads the cloud's store back (an outrider-agent without sync opened on the
# cloud's data directory, read with `outrider events read --all`) and checks: every event each
# producer got acknowledged is there exactly once, and nothing else of theirs; the node's origin
# seqs are exactly 0..head-1 (each event the agent logged, link events included, once).
check_exactly_once() {
    local head=$1
    cat >"$WORK/reader.toml" <<EOF
node_id = "cloud"
data_dir = "$WORK/cloud-data"
[api]
listen = "127.0.0.1:$READER_API"
metrics_listen = "127.0.0.1:$((READER_API + 1))"
EOF
    local reader
    ip netns exec "$NS_CLOUD" "$AGENT_BIN" --config "$WORK/reader.toml" >"$WORK/reader.log" 2>&1 &
    reader=$!
    wait_for_line "$WORK/reader.log" "agent listening" "$reader" "the store reader (outrider-agent)" 30
    inc "$CLI_BIN" --agent "http://127.0.0.1:$READER_API" events read --all >"$WORK/cloud-events.jsonl" ||
        die "reading the cloud's store failed"
    stop_proc "$reader" TERM "the store reader" "$WORK/reader.log" || die "the store reader did not stop cleanly"
    jq -s '.' "$WORK"/produced/*.json >"$WORK/produced.json"
    local verdict
    verdict=$(jq -rs --slurpfile prod "$WORK/produced.json" --arg node "$NODE" --argjson head "$head" '
        [.[] | select(.outrider.node == $node)] as $mine
        | ($mine | map(.outrider.seq // 0) | sort) as $seqs
        | [$mine[] | select(."detail-type" == "SensorReading") | (.detail.i | tonumber)] as $got
        | ($got | group_by(.) | map(select(length > 1) | .[0])) as $dups
        | ($prod[0] | map(.appended) | add) as $acked
        | ($got | unique) as $distinct
        | ([$prod[0][] | . as $p | range($p.first_index; $p.first_index + $p.appended)] | sort) as $want
        | (if $distinct == $want then [[], []] else
             (reduce $distinct[] as $i ({}; .[$i | tostring] = true)) as $in
             | (reduce $want[] as $i ({}; .[$i | tostring] = true)) as $wanted
             | [[$want[] | select($in[tostring] | not)], [$distinct[] | select($wanted[tostring] | not)]]
           end) as [$missing, $extra]
        | [ (if ($seqs | length) != $head then "\($seqs | length) events of \($node) in the cloud, the agent logged \($head)" else empty end),
            (if $seqs != [range(0; $seqs | length)] then "origin seqs not exactly 0..\($seqs | length - 1) (lost or duplicated)" else empty end),
            (if ($dups | length) > 0 then "\($dups | length) acknowledged events stored more than once (e.g. \($dups[0]))" else empty end),
            (if ($missing | length) > 0 then "\($missing | length) acknowledged events missing (e.g. \($missing[0]))" else empty end),
            (if ($extra | length) > 0 then "\($extra | length) events no producer reported (e.g. \($extra[0]))" else empty end)
          ] as $problems
        | if ($problems | length) == 0
          then "OK \($acked) acknowledged events each exactly once; \($head) events of \($node) with origin seqs 0..\($head - 1) each once (\($head - $acked) link events)"
          else "NOT exactly once: " + ($problems | join("; ")) end
        ' "$WORK/cloud-events.jsonl")
    log "  $verdict"
    [[ $verdict == OK* ]] || die "the cloud's store does not hold every acknowledged event exactly once"
    local failovers
    failovers=$(jq -r --arg s "$NODE/outrider.links" 'select(.outrider.stream == $s and ."detail-type" == "LinkFailover")
        | "\(.detail.from // "-")>\(.detail.to) \(.detail.held_ms // "-")"' "$WORK/cloud-events.jsonl" | tr '\n' ' ')
    log "  LinkFailover events in the cloud (from>to held_ms): $failovers"
    jq -e --arg s "$NODE/outrider.links" --argjson h "$HOLD_DOWN_MS" -s '
        [.[] | select(.outrider.stream == $s and ."detail-type" == "LinkFailover" and .detail.from == "vpn" and .detail.to == "dx")]
        | length > 0 and all(.detail.held_ms >= $h)' "$WORK/cloud-events.jsonl" >/dev/null ||
        die "the fail-backs to dx in the cloud's link events do not all respect the hold-down"
}

# --- run ------------------------------------------------------------------------------
start_processes
if [[ $ONLY_BENCH == 0 ]]; then
    steps=(
        "step_link_down|a) dx down (ip link set down): detected, failover to vpn, fail-back after the hold-down"
        "step_blackhole|b) dx blackholed (nftables, link state UP): detected, failover to vpn, fail-back after the hold-down"
        "step_loss|c) 5 % loss on dx for $LOSS_PROBES probes: dx stays up and active, no failover"
        "step_restored|d) everything restored: steady on dx, the outbox drains"
    )
    for s in "${steps[@]}"; do
        fn=${s%%|*}
        name=${s#*|}
        log "case: $name"
        start=$SECONDS
        isolated "$fn"
        record "$name ($((SECONDS - start)) s)" "$RC"
        ((RC == 0)) || break
    done
fi
if ((FAILED == 0)) && [[ $BENCH == 1 || $ONLY_BENCH == 1 ]]; then
    name="benchmark: $TRIALS blackholes of dx, time to traffic on vpn and back"
    log "case: $name"
    [[ $BIN_DIR == */debug ]] && log "  (debug binaries: use BIN_DIR=target/release for the figures)"
    start=$SECONDS
    isolated bench
    record "$name ($((SECONDS - start)) s)" "$RC"
    if [[ -n ${BENCH_OUT:-} && -f $WORK/bench.txt ]]; then
        cp "$WORK/bench.txt" "$BENCH_OUT"
    fi
fi
if ((FAILED == 0)); then
    # Everything synced (the agent's outbox drained), then both stop and must exit 0.
    name="the outbox drains; the agent (SIGTERM) and the cloud (SIGINT) exit 0"
    log "case: $name"
    rc=0
    ina "$BENCH_BIN" wait-drained --metrics "http://127.0.0.1:$AGENT_METRICS/metrics" --min-head 1 --timeout 60 || rc=1
    head=$(metric "$(agent_metrics)" 'outrider_log_head_position')
    [[ -n $head ]] || rc=1
    stop_proc "$AGENT_PID" TERM "outrider-agent" "$WORK/agent.log" || rc=1
    stop_proc "$CLOUD_PID" INT "outrider-cloud" "$WORK/cloud.log" || rc=1
    record "$name" "$rc"
    if ((rc == 0)); then
        name="every acknowledged event in the cloud exactly once (sync $TRANSPORT, across every failover)"
        log "case: $name"
        start=$SECONDS
        isolated check_exactly_once "$head"
        record "$name ($((SECONDS - start)) s)" "$RC"
    fi
fi
if ((FAILED > 0)); then
    for f in "$WORK"/{agent,cloud}.log; do
        [[ -f $f ]] || continue
        echo "--- last lines of $f (KEEP=1 keeps it):"
        tail -n 15 "$f" | sed -E 's/\x1b\[[0-9;]*m//g'
    done
fi

echo
echo "== failover summary"
for r in "${RESULTS[@]}"; do
    echo "  $r"
done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
