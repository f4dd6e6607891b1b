//! [`AgentSession`]: the agent's end of the sync protocol.
//!
//! One session lives as long as the agent's sync task and spans many connections. The shell (a
//! transport) opens a connection when asked ([`AgentAction::Connect`]) and reports the outcome
//! ([`AgentSession::on_connected`], [`AgentSession::on_disconnected`]), sends the frames the session
//! emits ([`AgentAction::Send`]) and feeds it the cloud's frames ([`AgentSession::on_frame`]). It
//! reads the outbox when asked ([`AgentAction::Fetch`] → [`AgentSession::on_fetched`]) and
//! acknowledges it when told ([`AgentAction::AckOutbox`]), which the session only does for a
//! watermark the cloud reported as committed.
//!
//! Batches are compressed when the cloud picked zstd and they are large enough, and paced by the
//! bandwidth cap when one is set (see the [module docs](super#compression-and-pacing));
//! [`AgentStats`] and [`AgentSession::lane_lag`] report what the session did and how far behind
//! each lane is.
//!
//! Connection states: `Disconnected` (backing off until a time) → `Connecting` (Connect emitted) →
//! `Handshaking` (Hello sent) → `Streaming` (Welcome received) → back to `Disconnected` on any
//! error, timeout or loss of the transport. Everything a connection had in flight is forgotten
//! when it ends; the next Welcome says where to resume.

use std::collections::{BTreeMap, VecDeque};

use outrider_proto::v1::{
    agent_frame, cloud_frame, Ack, AgentFrame, Batch, CloudFrame, Hello, LaneResume, Nack,
    NackReason, Ping, Pong, Welcome,
};
use outrider_proto::Event;
use prost::Message;

use super::backoff::Backoff;
use super::compress::{self, Compressor, ZSTD};
use super::pace::TokenBucket;
use super::rng::SplitMix64;
use super::{SyncError, PROTOCOL_VERSION};

/// At most this many first-seen records per lane for [`LaneLag::oldest_unacked_age_ms`] (one per
/// outbox read that brought new events). Beyond it, newer reads are attributed to the last
/// record's (earlier) time, which can only overstate an age.
const MAX_SEEN_RECORDS: usize = 4096;

/// Batching, timers and backoff of an agent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// At most this many events per batch.
    pub max_batch_events: usize,
    /// About this many encoded bytes per batch (a single larger event still goes alone).
    pub max_batch_bytes: usize,
    /// At most this many events asked of the outbox at once; also the read-ahead bound per lane.
    pub fetch_max_events: usize,
    /// The agent never uses a larger credit window than this, whatever the cloud grants.
    pub max_window: u32,
    /// Send a Ping when nothing was sent for this long.
    pub keepalive_ms: u64,
    /// Declare the connection dead when nothing was received for this long.
    pub idle_timeout_ms: u64,
    /// Give up a connection attempt whose handshake has not completed after this long.
    pub handshake_timeout_ms: u64,
    /// A batch unanswered for this long is presumed lost: its credit is freed and its lane resent
    /// from the cloud's watermark.
    pub response_timeout_ms: u64,
    /// Ask the outbox again this long after it returned nothing (unless
    /// [`AgentSession::on_outbox_changed`] comes first).
    pub fetch_poll_ms: u64,
    /// Reconnect backoff: the first delay's ceiling and the largest ceiling.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Lane retry backoff after STORE_UNAVAILABLE or CREDIT_EXCEEDED.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Offer zstd batch compression in the Hello (`Hello.codecs = ["zstd"]`). Batches are
    /// compressed only if the cloud picks it in the Welcome.
    pub compression: bool,
    /// Compress a batch only if the encoding of its events (as an `EventList`) is at least this
    /// many bytes; smaller batches gain little and cost a compression call. A compressed batch is
    /// sent only if it is smaller than the plain encoding.
    pub compress_min_bytes: usize,
    /// The zstd level (clamped to zstd's range; see [`compress::DEFAULT_LEVEL`]).
    pub compress_level: i32,
    /// Bandwidth cap in kilobits (1000 bits) per second of frame bytes sent; 0: unlimited. See
    /// [`super::pace`] for the token bucket and its burst.
    pub max_kbps: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 512,
            max_batch_bytes: 1 << 20,
            fetch_max_events: 2048,
            max_window: 1 << 16,
            keepalive_ms: 5_000,
            idle_timeout_ms: 20_000,
            handshake_timeout_ms: 10_000,
            response_timeout_ms: 30_000,
            fetch_poll_ms: 1_000,
            backoff_min_ms: 200,
            backoff_max_ms: 30_000,
            retry_min_ms: 100,
            retry_max_ms: 10_000,
            compression: true,
            compress_min_bytes: 4 * 1024,
            compress_level: compress::DEFAULT_LEVEL,
            max_kbps: 0,
        }
    }
}

/// A lane (priority class) as the agent's outbox sees it at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneSpec {
    /// The class name.
    pub name: String,
    /// The lowest seq still unacknowledged (the outbox cursor), sent in the Hello for information.
    pub resume_seq: u64,
}

impl LaneSpec {
    pub fn new(name: impl Into<String>, resume_seq: u64) -> Self {
        Self {
            name: name.into(),
            resume_seq,
        }
    }
}

/// What the shell must do for an agent session.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentAction {
    /// Open a connection, then call [`AgentSession::on_connected`] (or
    /// [`AgentSession::on_disconnected`] if it fails).
    Connect,
    /// Send this frame on the current connection.
    Send(AgentFrame),
    /// Close the current connection (or abandon the attempt); feed nothing more from it.
    Close,
    /// Read up to `max_events` events of `lane` after `after` (`None`: from the outbox cursor),
    /// i.e. `Log::outbox_read(dest, lane, after, max_events, ..)`, and call
    /// [`AgentSession::on_fetched`] with `id`.
    Fetch {
        id: u64,
        lane: String,
        after: Option<u64>,
        max_events: usize,
    },
    /// The cloud committed every event of `lane` at or below `through`: acknowledge the outbox
    /// (`Log::ack(dest, lane, through)`).
    AckOutbox { lane: String, through: u64 },
    /// The connection failed for this reason; the session backs off and reconnects.
    Error(SyncError),
    /// The lane is stopped (the cloud rejected a batch as invalid): nothing more is sent on it
    /// until the session is recreated, and nothing of it is skipped.
    LaneStopped { lane: String, error: SyncError },
}

/// Counters and gauges of an agent session, over its whole life (all connections).
///
/// Byte counts are protobuf encodings: transport framing (gRPC, HTTP/2, TLS) is not included.
/// Mean batch sizes are `events_sent / batches_sent` and `bytes_wire / batches_sent`; the
/// compression ratio is `bytes_raw / bytes_wire` (about 1 when nothing is compressed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Connection attempts ([`AgentAction::Connect`]).
    pub connects: u64,
    /// Handshakes completed (Welcomes accepted).
    pub handshakes: u64,
    /// Connections lost after a completed handshake (transport loss, timeout, protocol error or
    /// refusal); each is followed by a reconnect after a backoff.
    pub reconnects: u64,
    pub batches_sent: u64,
    /// Events sent in batches, retransmissions included.
    pub events_sent: u64,
    /// Events sent that this session had sent before: resent after a rewind (nack, response
    /// timeout) or a reconnect. An agent restart starts a new session, which counts from zero.
    pub retransmitted_events: u64,
    /// Acks received.
    pub acks: u64,
    /// Sum of `Ack.duplicates` over the acks received for known lanes: events the cloud already
    /// had (resent events whose earlier copy was committed after all). A duplicated Ack frame
    /// counts twice.
    pub duplicates: u64,
    pub nacks: u64,
    /// Lanes resent from the cloud's watermark (after a nack or a response timeout).
    pub rewinds: u64,
    pub response_timeouts: u64,
    pub pings_sent: u64,
    /// The largest number of events in flight at once.
    pub max_in_flight: u64,
    /// Encoded size of the events of every batch sent, before compression (the `EventList`
    /// encoding, which is also what an uncompressed batch's `events` take on the wire).
    pub bytes_raw: u64,
    /// Encoded size of every Batch frame sent (`AgentFrame` encoding, compressed or not).
    pub bytes_wire: u64,
    /// Encoded size of every other frame sent (Hello, Ping). `bytes_wire + bytes_control` is
    /// what the bandwidth cap charges.
    pub bytes_control: u64,
    /// Batches sent compressed (zstd).
    pub batches_compressed: u64,
    /// Events in the last batch sent.
    pub last_batch_events: u64,
    /// Wire size (as in `bytes_wire`) of the last batch sent.
    pub last_batch_bytes: u64,
    /// Round-trip time of the last Ping answered by its Pong, in ms: the transport and the
    /// cloud session, no store work. Pings go out only after `keepalive_ms` without sending, so
    /// a busy session samples this rarely (see `ack_latency_*`). 0 until `rtt_samples > 0`.
    pub rtt_last_ms: u64,
    /// Exponentially weighted mean of the Ping round trips (weight 1/8 per sample, as TCP's
    /// SRTT), in ms.
    pub rtt_smoothed_ms: u64,
    /// Ping round trips measured.
    pub rtt_samples: u64,
    /// Time from sending a batch to its Ack, in ms, for the last batch acked as such (not one
    /// abandoned by a rewind, nor one only covered by a later batch's watermark): round trip plus
    /// queueing and the store commit. 0 until `ack_latency_samples > 0`.
    pub ack_latency_last_ms: u64,
    /// Exponentially weighted mean of the batch ack latencies (weight 1/8), in ms.
    pub ack_latency_smoothed_ms: u64,
    /// Batch ack latencies measured.
    pub ack_latency_samples: u64,
    /// Total time batches were ready to go (events read ahead, credit available) but held by
    /// the bandwidth cap (`max_kbps`), in ms. A hold in progress is added when it ends.
    pub throttled_ms: u64,
    /// Times the bandwidth cap started holding batches.
    pub throttle_holds: u64,
}

/// How far behind a lane is, as the session sees it ([`AgentSession::lane_lag`]).
///
/// The session knows only what it read from the outbox: events the outbox holds but the session
/// has not read yet are not counted here (the outbox status has the full backlog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneLag {
    pub lane: String,
    /// The outbox is acknowledged through this seq (a cloud-committed watermark).
    pub acked: Option<u64>,
    /// Events of the lane sent on this connection and not yet answered (including batches
    /// abandoned by a rewind, which still hold credit until answered or timed out).
    pub in_flight_events: u64,
    /// Events read from the outbox and waiting to be sent (read-ahead).
    pub pending_events: u64,
    /// Milliseconds (of the session's `now`) since the session first read the oldest event of
    /// the lane it has read and the cloud has not yet committed; `None` if there is none. The
    /// session's monotonic clock is used rather than `Event.time`, which is wall time set by the
    /// producer and may be skewed; a new session (agent restart) starts counting again.
    pub oldest_unacked_age_ms: Option<u64>,
    /// The lane is stopped ([`AgentAction::LaneStopped`]).
    pub stopped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Disconnected { until: u64 },
    Connecting { since: u64 },
    Handshaking { since: u64 },
    Streaming,
}

#[derive(Debug)]
struct Lane {
    name: String,
    /// Outbox acknowledged through this (only ever a cloud-committed watermark); never decreases.
    acked: Option<u64>,
    resume_seq: u64,
    /// The cloud's watermark as this connection knows it (Welcome, then acks and nacks).
    confirmed: Option<u64>,
    /// The highest seq this connection sent (or the Welcome's watermark): no honest watermark
    /// exceeds it.
    sent_max: Option<u64>,
    /// The seq of the last event put in a batch: the next batch's `prev_seq`.
    prev: Option<u64>,
    /// The seq of the last event fetched (or the rewind point): the next fetch starts after it.
    next_after: Option<u64>,
    pending: VecDeque<Event>,
    /// The outstanding fetch: (id, after).
    fetch: Option<(u64, Option<u64>)>,
    /// The outbox was empty: do not ask again before this time (or an outbox change).
    idle_until: Option<u64>,
    /// Paused (after STORE_UNAVAILABLE or CREDIT_EXCEEDED) until this time.
    retry_at: u64,
    retry: Backoff,
    stopped: bool,
    /// The highest seq this session ever sent in the lane (any connection): events at or below it
    /// are retransmissions.
    sent_ever: Option<u64>,
    /// The highest seq this session ever read in the lane.
    seen_max: Option<u64>,
    /// (first seq, time): the events from this seq up to the next record's were first read at
    /// this time. Pruned as the outbox is acked.
    seen: VecDeque<(u64, u64)>,
}

impl Lane {
    fn reset_connection(&mut self) {
        self.confirmed = None;
        self.sent_max = None;
        self.prev = None;
        self.next_after = None;
        self.pending.clear();
        self.fetch = None;
        self.idle_until = None;
        self.retry_at = 0;
    }
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    lane: usize,
    first: u64,
    last: u64,
    events: u64,
    sent_at: u64,
    /// Its lane was rewound after it was sent: its answer only frees credit and reports a
    /// watermark.
    abandoned: bool,
}

/// The agent side of the sync protocol. See the [module docs](super) for the protocol.
#[derive(Debug)]
pub struct AgentSession {
    cfg: AgentConfig,
    node_id: String,
    epoch: String,
    lanes: Vec<Lane>,
    conn: Conn,
    rng: SplitMix64,
    backoff: Backoff,
    /// After a refusal retrying soon cannot fix, the next backoff is the longest.
    refused: bool,
    now: u64,
    last_send: u64,
    last_recv: u64,
    window: u32,
    in_flight: BTreeMap<u64, InFlight>,
    in_flight_events: u64,
    next_batch_seq: u64,
    next_fetch_id: u64,
    next_nonce: u64,
    actions: VecDeque<AgentAction>,
    stats: AgentStats,
    /// The bandwidth cap (`None`: unlimited).
    pacer: Option<TokenBucket>,
    /// Since when the cap holds a batch that could otherwise go.
    throttled_since: Option<u64>,
    /// The cloud picked zstd for this connection.
    zstd: bool,
    /// Created at the first batch compressed; `None` also if zstd could not create one.
    compressor: Option<Compressor>,
    /// The last Ping sent on this connection and not yet answered: (nonce, sent at).
    ping_out: Option<(u64, u64)>,
    /// Smoothed ping RTT and batch ack latency, times 8 (so the 1/8 weighting keeps precision).
    rtt8: u64,
    ack8: u64,
}

impl AgentSession {
    /// A session for `node_id`'s log incarnation `epoch` (its `log_id`), with its lanes highest
    /// priority first. It asks to connect at the first [`AgentSession::handle_timeout`].
    pub fn new(
        mut cfg: AgentConfig,
        node_id: impl Into<String>,
        epoch: impl Into<String>,
        lanes: Vec<LaneSpec>,
        seed: u64,
        now: u64,
    ) -> Self {
        cfg.max_batch_events = cfg.max_batch_events.max(1);
        cfg.max_batch_bytes = cfg.max_batch_bytes.max(1);
        cfg.fetch_max_events = cfg.fetch_max_events.max(cfg.max_batch_events);
        cfg.max_window = cfg.max_window.max(1);
        cfg.keepalive_ms = cfg.keepalive_ms.max(1);
        cfg.fetch_poll_ms = cfg.fetch_poll_ms.max(1);
        let lanes = lanes
            .into_iter()
            .map(|l| Lane {
                name: l.name,
                acked: None,
                resume_seq: l.resume_seq,
                confirmed: None,
                sent_max: None,
                prev: None,
                next_after: None,
                pending: VecDeque::new(),
                fetch: None,
                idle_until: None,
                retry_at: 0,
                retry: Backoff::new(cfg.retry_min_ms, cfg.retry_max_ms),
                stopped: false,
                sent_ever: None,
                seen_max: None,
                seen: VecDeque::new(),
            })
            .collect();
        Self {
            backoff: Backoff::new(cfg.backoff_min_ms, cfg.backoff_max_ms),
            pacer: TokenBucket::new(cfg.max_kbps, cfg.max_batch_bytes, now),
            throttled_since: None,
            zstd: false,
            compressor: None,
            ping_out: None,
            rtt8: 0,
            ack8: 0,
            cfg,
            node_id: node_id.into(),
            epoch: epoch.into(),
            lanes,
            conn: Conn::Disconnected { until: now },
            rng: SplitMix64::new(seed),
            refused: false,
            now,
            last_send: now,
            last_recv: now,
            window: 0,
            in_flight: BTreeMap::new(),
            in_flight_events: 0,
            next_batch_seq: 1,
            next_fetch_id: 1,
            next_nonce: 1,
            actions: VecDeque::new(),
            stats: AgentStats::default(),
        }
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<AgentAction> {
        self.actions.pop_front()
    }

    /// Whether the handshake completed on the current connection.
    pub fn is_streaming(&self) -> bool {
        self.conn == Conn::Streaming
    }

    /// Events sent on this connection and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight_events
    }

    /// The credit window: at most this many events in flight (0 when not streaming).
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The outbox of `lane` is acknowledged through this seq.
    pub fn acked(&self, lane: &str) -> Option<u64> {
        self.lanes.iter().find(|l| l.name == lane)?.acked
    }

    /// Whether `lane` is stopped (see [`AgentAction::LaneStopped`]).
    pub fn is_lane_stopped(&self, lane: &str) -> bool {
        self.lanes.iter().any(|l| l.name == lane && l.stopped)
    }

    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    /// The codec the cloud picked for this connection: [`compress::ZSTD`] or empty (none; also
    /// when not streaming).
    pub fn codec(&self) -> &str {
        if self.zstd {
            ZSTD
        } else {
            ""
        }
    }

    /// Per lane (highest priority first), how far behind it is, with ages as of the last `now`
    /// the session was given. See [`LaneLag`].
    pub fn lane_lag(&self) -> Vec<LaneLag> {
        self.lane_lag_at(self.now)
    }

    /// [`AgentSession::lane_lag`] with ages as of `now` (an earlier `now` than the session's
    /// counts as the session's).
    pub fn lane_lag_at(&self, now: u64) -> Vec<LaneLag> {
        let now = now.max(self.now);
        self.lanes
            .iter()
            .enumerate()
            .map(|(li, l)| {
                let unacked = match (l.seen_max, l.acked) {
                    (Some(m), Some(a)) => m > a,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                LaneLag {
                    lane: l.name.clone(),
                    acked: l.acked,
                    in_flight_events: self
                        .in_flight
                        .values()
                        .filter(|b| b.lane == li)
                        .map(|b| b.events)
                        .sum(),
                    pending_events: l.pending.len() as u64,
                    oldest_unacked_age_ms: l
                        .seen
                        .front()
                        .filter(|_| unacked)
                        .map(|(_, t)| now.saturating_sub(*t)),
                    stopped: l.stopped,
                }
            })
            .collect()
    }

    /// When [`AgentSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let t = match self.conn {
            Conn::Disconnected { until } => until,
            Conn::Connecting { since } | Conn::Handshaking { since } => {
                since.saturating_add(self.cfg.handshake_timeout_ms)
            }
            Conn::Streaming => {
                let mut t = self
                    .last_recv
                    .saturating_add(self.cfg.idle_timeout_ms)
                    .min(self.last_send.saturating_add(self.cfg.keepalive_ms));
                // Batch seqs grow with time, so the first in flight is the oldest.
                if let Some(b) = self.in_flight.values().next() {
                    t = t.min(b.sent_at.saturating_add(self.cfg.response_timeout_ms));
                }
                for l in self.lanes.iter().filter(|l| !l.stopped) {
                    if let Some(i) = l.idle_until {
                        t = t.min(i);
                    }
                    if l.retry_at > self.now && !l.pending.is_empty() {
                        t = t.min(l.retry_at);
                    }
                }
                // The cap holds a batch: wake when the bucket has paid its debt.
                if self.throttled_since.is_some() {
                    if let Some(r) = self.pacer.as_ref().and_then(TokenBucket::ready_at) {
                        t = t.min(r);
                    }
                }
                t
            }
        };
        Some(t)
    }

    /// Runs the timers due at `now`: reconnecting, handshake and idle timeouts, keepalive,
    /// response timeouts, outbox polls and lane retries.
    pub fn handle_timeout(&mut self, now: u64) {
        self.tick(now);
        match self.conn {
            Conn::Disconnected { until } => {
                if now >= until {
                    self.conn = Conn::Connecting { since: now };
                    self.stats.connects += 1;
                    self.actions.push_back(AgentAction::Connect);
                }
            }
            Conn::Connecting { since } | Conn::Handshaking { since } => {
                if now >= since.saturating_add(self.cfg.handshake_timeout_ms) {
                    let e = SyncError::HandshakeTimeout(self.cfg.handshake_timeout_ms);
                    self.fail(Some(e), true);
                }
            }
            Conn::Streaming => {
                if now >= self.last_recv.saturating_add(self.cfg.idle_timeout_ms) {
                    self.fail(Some(SyncError::IdleTimeout(self.cfg.idle_timeout_ms)), true);
                    return;
                }
                let expired: Vec<u64> = self
                    .in_flight
                    .iter()
                    .filter(|(_, b)| now >= b.sent_at.saturating_add(self.cfg.response_timeout_ms))
                    .map(|(s, _)| *s)
                    .collect();
                for seq in expired {
                    if let Some(b) = self.remove_in_flight(seq) {
                        self.stats.response_timeouts += 1;
                        if !b.abandoned {
                            self.rewind(b.lane);
                        }
                    }
                }
                for l in &mut self.lanes {
                    if l.idle_until.is_some_and(|i| now >= i) {
                        l.idle_until = None;
                    }
                }
                if now >= self.last_send.saturating_add(self.cfg.keepalive_ms) {
                    let nonce = self.next_nonce;
                    self.next_nonce += 1;
                    self.stats.pings_sent += 1;
                    self.ping_out = Some((nonce, now));
                    self.send(agent_frame::Frame::Ping(Ping {
                        nonce,
                        sent_unix_nanos: i64::try_from(now.saturating_mul(1_000_000))
                            .unwrap_or(i64::MAX),
                    }));
                }
                self.pump();
            }
        }
    }

    /// The connection asked for by [`AgentAction::Connect`] is open: the Hello goes out.
    pub fn on_connected(&mut self, now: u64) {
        self.tick(now);
        if !matches!(self.conn, Conn::Connecting { .. }) {
            return;
        }
        self.conn = Conn::Handshaking { since: now };
        self.last_recv = now;
        let lanes: Vec<LaneResume> = self
            .lanes
            .iter()
            .map(|l| LaneResume {
                lane: l.name.clone(),
                resume_seq: l.resume_seq,
            })
            .collect();
        let resume_seq = lanes.iter().map(|l| l.resume_seq).min().unwrap_or(0);
        self.send(agent_frame::Frame::Hello(Hello {
            node_id: self.node_id.clone(),
            protocol_version: PROTOCOL_VERSION,
            resume_seq,
            codecs: if self.cfg.compression {
                vec![ZSTD.to_owned()]
            } else {
                Vec::new()
            },
            epoch: self.epoch.clone(),
            lanes,
        }));
    }

    /// The connection failed to open or was lost: back off and reconnect.
    pub fn on_disconnected(&mut self, now: u64) {
        self.tick(now);
        if !matches!(self.conn, Conn::Disconnected { .. }) {
            self.fail(None, false);
        }
    }

    /// The outbox of `lane` (or of every lane, with `None`) may hold new events.
    pub fn on_outbox_changed(&mut self, now: u64, lane: Option<&str>) {
        self.tick(now);
        for l in &mut self.lanes {
            if lane.is_none_or(|n| n == l.name) {
                l.idle_until = None;
            }
        }
        self.pump();
    }

    /// The answer to [`AgentAction::Fetch`] `id`. Answers to fetches the session no longer waits
    /// for (a rewind or reconnect came in between) are ignored.
    pub fn on_fetched(&mut self, now: u64, id: u64, events: Vec<Event>) {
        self.tick(now);
        let Some(li) = self
            .lanes
            .iter()
            .position(|l| l.fetch.is_some_and(|(f, _)| f == id))
        else {
            return;
        };
        let lane = &mut self.lanes[li];
        let after = lane.fetch.and_then(|(_, a)| a);
        lane.fetch = None;
        if events.is_empty() {
            lane.idle_until = Some(now.saturating_add(self.cfg.fetch_poll_ms));
            self.pump();
            return;
        }
        let mut last = after;
        for e in &events {
            if last.is_some_and(|l| e.position <= l) {
                let error = SyncError::FetchOutOfOrder {
                    lane: lane.name.clone(),
                    after,
                    got: e.position,
                };
                self.stop_lane(li, error);
                return;
            }
            last = Some(e.position);
        }
        let mut recorded = false;
        for e in events {
            // Events at or below `next_after` are committed already (the watermark passed them
            // while the fetch was out); the rest continue the lane without a gap.
            if lane.next_after.is_none_or(|n| e.position > n) {
                lane.next_after = Some(e.position);
                if lane.seen_max.is_none_or(|m| e.position > m) {
                    lane.seen_max = Some(e.position);
                    if !recorded && lane.seen.len() < MAX_SEEN_RECORDS {
                        lane.seen.push_back((e.position, now));
                    }
                    recorded = true;
                }
                lane.pending.push_back(e);
            }
        }
        self.pump();
    }

    /// A frame from the cloud on the current connection.
    pub fn on_frame(&mut self, now: u64, frame: CloudFrame) {
        self.tick(now);
        let Some(frame) = frame.frame else {
            // Empty or a newer cloud's frame kind: still proof of life.
            self.last_recv = now;
            return;
        };
        match self.conn {
            Conn::Disconnected { .. } | Conn::Connecting { .. } => {} // stale
            Conn::Handshaking { .. } => {
                self.last_recv = now;
                match frame {
                    cloud_frame::Frame::Welcome(w) => self.on_welcome(w),
                    cloud_frame::Frame::Nack(n) if n.batch_seq == 0 && n.lane.is_empty() => {
                        self.on_session_nack(&n)
                    }
                    // Credit may overtake the Welcome on a reordering network; other frames
                    // cannot belong to this connection.
                    cloud_frame::Frame::Credit(c) => self.on_credit(c.grant, c.window),
                    _ => {}
                }
            }
            Conn::Streaming => {
                self.last_recv = now;
                match frame {
                    cloud_frame::Frame::Welcome(_) => {} // a duplicate
                    cloud_frame::Frame::Ack(a) => self.on_ack(a),
                    cloud_frame::Frame::Nack(n) => self.on_nack(n),
                    cloud_frame::Frame::Credit(c) => {
                        self.on_credit(c.grant, c.window);
                        self.pump();
                    }
                    cloud_frame::Frame::Pong(p) => self.on_pong(&p),
                }
            }
        }
    }

    fn on_welcome(&mut self, w: Welcome) {
        if w.protocol_version != PROTOCOL_VERSION {
            let e = SyncError::UnsupportedVersion {
                got: w.protocol_version,
                supported: PROTOCOL_VERSION,
            };
            self.refused = true;
            self.fail(Some(e), true);
            return;
        }
        for li in 0..self.lanes.len() {
            let wm = w
                .lanes
                .iter()
                .find(|m| m.lane == self.lanes[li].name)
                .and_then(|m| m.has_watermark.then_some(m.watermark));
            let lane = &mut self.lanes[li];
            lane.reset_connection();
            lane.confirmed = wm;
            lane.sent_max = wm;
            lane.prev = wm;
            lane.next_after = wm;
            lane.retry.reset();
            if let Some(wm) = wm {
                self.ack_outbox(li, wm);
            }
        }
        self.window = w.credit.min(self.cfg.max_window);
        // Only what we offered: a codec the cloud should not have picked is ignored (plain
        // batches are always valid).
        self.zstd = self.cfg.compression && w.codec == ZSTD;
        self.backoff.reset();
        self.refused = false;
        self.conn = Conn::Streaming;
        self.stats.handshakes += 1;
        self.pump();
    }

    fn on_session_nack(&mut self, n: &Nack) {
        let reason = NackReason::try_from(n.reason).unwrap_or(NackReason::NackUnspecified);
        if matches!(
            reason,
            NackReason::Unauthorized | NackReason::UnsupportedProtocol
        ) {
            self.refused = true;
        }
        let e = SyncError::SessionRefused {
            reason: reason.as_str_name().to_owned(),
            message: n.message.clone(),
        };
        self.fail(Some(e), true);
    }

    fn on_credit(&mut self, grant: u32, window: u32) {
        self.window = if window > 0 {
            window
        } else {
            self.window.saturating_add(grant)
        }
        .min(self.cfg.max_window);
    }

    fn on_pong(&mut self, p: &Pong) {
        if let Some((nonce, sent_at)) = self.ping_out {
            if p.nonce == nonce {
                self.ping_out = None;
                let sample = self.now.saturating_sub(sent_at);
                self.stats.rtt_samples += 1;
                self.stats.rtt_last_ms = sample;
                self.stats.rtt_smoothed_ms = ewma(&mut self.rtt8, self.stats.rtt_samples, sample);
            }
        }
    }

    fn on_ack(&mut self, a: Ack) {
        self.stats.acks += 1;
        let Some(li) = self.lane_index(&a.lane) else {
            return;
        };
        self.stats.duplicates += u64::from(a.duplicates);
        // Taken before `confirm`, which frees every batch the watermark covers.
        let latency = self
            .in_flight
            .get(&a.batch_seq)
            .filter(|b| b.lane == li && !b.abandoned)
            .map(|b| self.now.saturating_sub(b.sent_at));
        if !self.confirm(li, a.watermark) {
            return;
        }
        if let Some(sample) = latency {
            self.stats.ack_latency_samples += 1;
            self.stats.ack_latency_last_ms = sample;
            self.stats.ack_latency_smoothed_ms =
                ewma(&mut self.ack8, self.stats.ack_latency_samples, sample);
        }
        if self
            .in_flight
            .get(&a.batch_seq)
            .is_some_and(|b| b.lane == li)
        {
            self.remove_in_flight(a.batch_seq);
        }
        self.lanes[li].retry.reset();
        self.pump();
    }

    fn on_nack(&mut self, n: Nack) {
        self.stats.nacks += 1;
        let reason = NackReason::try_from(n.reason).unwrap_or(NackReason::NackUnspecified);
        if n.batch_seq == 0 && n.lane.is_empty() {
            self.on_session_nack(&n);
            return;
        }
        let Some(li) = self.lane_index(&n.lane) else {
            return;
        };
        if n.has_watermark && !self.confirm(li, n.watermark) {
            return;
        }
        let batch = match self.in_flight.get(&n.batch_seq) {
            Some(b) if b.lane == li => self.remove_in_flight(n.batch_seq),
            _ => None,
        };
        // A nack of a batch already abandoned (or unknown) only freed credit.
        let Some(batch) = batch.filter(|b| !b.abandoned) else {
            self.pump();
            return;
        };
        match reason {
            NackReason::OutOfOrder => self.rewind(li),
            NackReason::StoreUnavailable | NackReason::CreditExceeded => {
                let lane = &mut self.lanes[li];
                lane.retry_at = self
                    .now
                    .saturating_add(lane.retry.next_delay(&mut self.rng));
                self.rewind(li);
            }
            NackReason::InvalidBatch => {
                let error = SyncError::BatchRejected {
                    lane: n.lane.clone(),
                    batch_seq: n.batch_seq,
                    first: batch.first,
                    last: batch.last,
                    message: n.message,
                };
                self.stop_lane(li, error);
            }
            NackReason::Unauthorized
            | NackReason::UnsupportedProtocol
            | NackReason::NackUnspecified => {
                self.on_session_nack(&n);
                return;
            }
        }
        self.pump();
    }

    fn lane_index(&mut self, name: &str) -> Option<usize> {
        let li = self.lanes.iter().position(|l| l.name == name);
        if li.is_none() {
            self.fail(Some(SyncError::UnknownLane(name.to_owned())), true);
        }
        li
    }

    /// Takes a watermark the cloud reported for lane `li`: acks the outbox through it, frees the
    /// batches it covers and skips read-ahead it covers. Returns false (and fails the
    /// connection) if the watermark is beyond anything sent: acking it could lose events.
    fn confirm(&mut self, li: usize, wm: u64) -> bool {
        let lane = &mut self.lanes[li];
        if lane.sent_max.is_none_or(|s| wm > s) {
            let e = SyncError::WatermarkBeyondSent {
                lane: lane.name.clone(),
                watermark: wm,
                sent: lane.sent_max,
            };
            self.fail(Some(e), true);
            return false;
        }
        if lane.confirmed.is_some_and(|c| wm <= c) {
            return true;
        }
        lane.confirmed = Some(wm);
        // Everything at or below `wm` is committed: no need to send it (again).
        while lane.pending.front().is_some_and(|e| e.position <= wm) {
            lane.pending.pop_front();
        }
        if lane.prev.is_none_or(|p| p < wm) {
            lane.prev = Some(wm);
        }
        if lane.next_after.is_none_or(|n| n < wm) {
            lane.next_after = Some(wm);
        }
        let covered: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, b)| b.lane == li && b.last <= wm)
            .map(|(s, _)| *s)
            .collect();
        for s in covered {
            self.remove_in_flight(s);
        }
        self.ack_outbox(li, wm);
        true
    }

    fn ack_outbox(&mut self, li: usize, wm: u64) {
        let lane = &mut self.lanes[li];
        if lane.acked.is_none_or(|a| wm > a) {
            lane.acked = Some(wm);
            // Records whose events are all at or below `wm` are done with.
            while lane
                .seen
                .get(1)
                .is_some_and(|r| r.0 <= wm.saturating_add(1))
            {
                lane.seen.pop_front();
            }
            if lane.seen_max.is_some_and(|m| m <= wm) {
                lane.seen.clear();
            }
            lane.resume_seq = lane.resume_seq.max(wm.saturating_add(1));
            self.actions.push_back(AgentAction::AckOutbox {
                lane: lane.name.clone(),
                through: wm,
            });
        }
    }

    /// Resends lane `li` from the cloud's watermark: read-ahead dropped, batches in flight
    /// abandoned (they keep their credit until answered or timed out).
    fn rewind(&mut self, li: usize) {
        self.stats.rewinds += 1;
        let lane = &mut self.lanes[li];
        lane.prev = lane.confirmed;
        lane.next_after = lane.confirmed;
        lane.pending.clear();
        lane.fetch = None;
        lane.idle_until = None;
        for b in self.in_flight.values_mut().filter(|b| b.lane == li) {
            b.abandoned = true;
        }
    }

    fn stop_lane(&mut self, li: usize, error: SyncError) {
        self.rewind(li);
        let lane = &mut self.lanes[li];
        lane.stopped = true;
        let name = lane.name.clone();
        self.actions
            .push_back(AgentAction::LaneStopped { lane: name, error });
    }

    fn remove_in_flight(&mut self, batch_seq: u64) -> Option<InFlight> {
        let b = self.in_flight.remove(&batch_seq)?;
        self.in_flight_events = self.in_flight_events.saturating_sub(b.events);
        Some(b)
    }

    /// Ends the connection: forgets what it had in flight and backs off.
    fn fail(&mut self, error: Option<SyncError>, close: bool) {
        if close {
            self.actions.push_back(AgentAction::Close);
        }
        if let Some(e) = error {
            self.actions.push_back(AgentAction::Error(e));
        }
        if self.conn == Conn::Streaming {
            self.stats.reconnects += 1;
        }
        self.end_throttle();
        self.in_flight.clear();
        self.in_flight_events = 0;
        self.window = 0;
        self.zstd = false;
        self.ping_out = None;
        for l in &mut self.lanes {
            l.reset_connection();
        }
        let delay = if self.refused {
            self.backoff.max_delay(&mut self.rng)
        } else {
            self.backoff.next_delay(&mut self.rng)
        };
        self.conn = Conn::Disconnected {
            until: self.now.saturating_add(delay),
        };
    }

    /// Asks for outbox reads where read-ahead runs low and sends what the credit allows, highest
    /// priority lane first.
    fn pump(&mut self) {
        if self.conn != Conn::Streaming {
            return;
        }
        let now = self.now;
        for lane in &mut self.lanes {
            if lane.stopped
                || lane.fetch.is_some()
                || lane.idle_until.is_some()
                || lane.pending.len() >= self.cfg.max_batch_events
            {
                continue;
            }
            let id = self.next_fetch_id;
            self.next_fetch_id += 1;
            lane.fetch = Some((id, lane.next_after));
            self.actions.push_back(AgentAction::Fetch {
                id,
                lane: lane.name.clone(),
                after: lane.next_after,
                max_events: self.cfg.fetch_max_events - lane.pending.len(),
            });
        }
        if self.send_ready(now) {
            if self.throttled_since.is_none() {
                self.throttled_since = Some(now);
                self.stats.throttle_holds += 1;
            }
        } else {
            self.end_throttle();
        }
    }

    /// Sends what the credit and the bandwidth cap allow, highest priority lane first. Returns
    /// whether the cap held a batch that could otherwise have gone.
    fn send_ready(&mut self, now: u64) -> bool {
        if let Some(p) = &mut self.pacer {
            p.refill(now);
        }
        for li in 0..self.lanes.len() {
            if self.lanes[li].stopped || self.lanes[li].retry_at > now {
                continue;
            }
            while !self.lanes[li].pending.is_empty() {
                let avail = u64::from(self.window).saturating_sub(self.in_flight_events);
                if avail == 0 {
                    return false; // lower lanes wait too: the window is the highest lanes' first
                }
                if self.pacer.as_ref().is_some_and(|p| !p.ready()) {
                    // Lower lanes wait too: when the bucket refills, the highest lane with
                    // events goes first, so an urgent event waits for at most one batch's debt.
                    return true;
                }
                self.send_batch(li, avail);
            }
        }
        false
    }

    /// Ends a hold of the bandwidth cap (if one is in progress), counting its time.
    fn end_throttle(&mut self) {
        if let Some(since) = self.throttled_since.take() {
            self.stats.throttled_ms += self.now.saturating_sub(since);
        }
    }

    fn send_batch(&mut self, li: usize, avail: u64) {
        let max = usize::try_from(avail)
            .unwrap_or(usize::MAX)
            .min(self.cfg.max_batch_events);
        let lane = &mut self.lanes[li];
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while events.len() < max {
            let Some(e) = lane.pending.front() else { break };
            let len = e.encoded_len();
            if !events.is_empty() && bytes.saturating_add(len) > self.cfg.max_batch_bytes {
                break;
            }
            bytes = bytes.saturating_add(len);
            if let Some(e) = lane.pending.pop_front() {
                events.push(e);
            }
        }
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let (first, last) = (first.position, last.position);
        let batch_seq = self.next_batch_seq;
        self.next_batch_seq += 1;
        let prev_seq = lane.prev;
        lane.prev = Some(last);
        lane.sent_max = Some(lane.sent_max.map_or(last, |s| s.max(last)));
        let resent = match lane.sent_ever {
            Some(m) => events.partition_point(|e| e.position <= m) as u64,
            None => 0,
        };
        lane.sent_ever = Some(lane.sent_ever.map_or(last, |s| s.max(last)));
        let n = events.len() as u64;
        self.in_flight.insert(
            batch_seq,
            InFlight {
                lane: li,
                first,
                last,
                events: n,
                sent_at: self.now,
                abandoned: false,
            },
        );
        self.in_flight_events += n;
        self.stats.batches_sent += 1;
        self.stats.events_sent += n;
        self.stats.retransmitted_events += resent;
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight_events);
        let priority = lane.name.clone();
        let raw = compress::raw_len(&events);
        let (events, compressed) = self.maybe_compress(events, raw);
        let codec = if compressed.is_empty() {
            String::new()
        } else {
            self.stats.batches_compressed += 1;
            ZSTD.to_owned()
        };
        self.stats.bytes_raw += raw as u64;
        self.stats.last_batch_events = n;
        let wire = self.send(agent_frame::Frame::Batch(Batch {
            batch_seq,
            events,
            compressed,
            codec,
            priority,
            prev_seq,
        }));
        self.stats.last_batch_bytes = wire as u64;
    }

    /// The batch's (events, compressed bytes): compressed (and `events` empty) if the cloud
    /// picked zstd, the encoding is at least `compress_min_bytes` and compression makes it
    /// smaller; otherwise the events unchanged and no compressed bytes.
    fn maybe_compress(&mut self, events: Vec<Event>, raw: usize) -> (Vec<Event>, Vec<u8>) {
        if !self.zstd || raw < self.cfg.compress_min_bytes {
            return (events, Vec::new());
        }
        if self.compressor.is_none() {
            self.compressor = Compressor::new(self.cfg.compress_level).ok();
        }
        let Some(c) = self.compressor.as_mut() else {
            return (events, Vec::new());
        };
        let (bytes, list) = compress::encode_events(events);
        match c.compress(&bytes) {
            Ok(z) if z.len() < bytes.len() => (Vec::new(), z),
            _ => (list.events, Vec::new()),
        }
    }

    /// Emits a frame and returns its encoded size, charged to the bandwidth cap and counted.
    fn send(&mut self, frame: agent_frame::Frame) -> usize {
        self.last_send = self.now;
        let frame = AgentFrame { frame: Some(frame) };
        let len = frame.encoded_len();
        if let Some(p) = &mut self.pacer {
            p.refill(self.now);
            p.charge(len);
        }
        if matches!(frame.frame, Some(agent_frame::Frame::Batch(_))) {
            self.stats.bytes_wire += len as u64;
        } else {
            self.stats.bytes_control += len as u64;
        }
        self.actions.push_back(AgentAction::Send(frame));
        len
    }

    fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
    }
}

/// One step of an exponentially weighted mean with weight 1/8 kept as `8 * mean` in `state8`
/// (the first sample sets it); returns the mean.
fn ewma(state8: &mut u64, samples: u64, sample: u64) -> u64 {
    *state8 = if samples <= 1 {
        sample.saturating_mul(8)
    } else {
        (*state8 - *state8 / 8).saturating_add(sample)
    };
    *state8 / 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_proto::v1::{Credit, LaneWatermark};

    fn cfg() -> AgentConfig {
        AgentConfig {
            max_batch_events: 2,
            ..AgentConfig::default()
        }
    }

    fn drain(s: &mut AgentSession) -> Vec<AgentAction> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn cloud(f: cloud_frame::Frame) -> CloudFrame {
        CloudFrame { frame: Some(f) }
    }

    fn ev(pos: u64) -> Event {
        Event {
            position: pos,
            ..Default::default()
        }
    }

    fn batches(actions: &[AgentAction]) -> Vec<(u64, Option<u64>, Vec<u64>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                AgentAction::Send(AgentFrame {
                    frame: Some(agent_frame::Frame::Batch(b)),
                }) => Some((
                    b.batch_seq,
                    b.prev_seq,
                    b.events.iter().map(|e| e.position).collect(),
                )),
                _ => None,
            })
            .collect()
    }

    /// A session streaming with lanes hi (watermark 10) and lo (none), credit `credit`.
    fn streaming(credit: u32) -> AgentSession {
        let lanes = vec![LaneSpec::new("hi", 3), LaneSpec::new("lo", 0)];
        let mut s = AgentSession::new(cfg(), "n1", "e1", lanes, 1, 0);
        assert_eq!(s.poll_timeout(), Some(0));
        s.handle_timeout(0);
        assert_eq!(drain(&mut s), [AgentAction::Connect]);
        s.on_connected(1);
        let a = drain(&mut s);
        let [AgentAction::Send(AgentFrame {
            frame: Some(agent_frame::Frame::Hello(h)),
        })] = &a[..]
        else {
            panic!("{a:?}")
        };
        assert_eq!(
            (h.epoch.as_str(), h.lanes.len(), h.resume_seq),
            ("e1", 2, 0)
        );
        s.on_frame(
            2,
            cloud(cloud_frame::Frame::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                credit,
                lanes: vec![LaneWatermark {
                    lane: "hi".into(),
                    watermark: 10,
                    has_watermark: true,
                }],
                ..Default::default()
            })),
        );
        let a = drain(&mut s);
        assert_eq!(
            a[0],
            AgentAction::AckOutbox {
                lane: "hi".into(),
                through: 10
            }
        );
        assert!(
            matches!(&a[1], AgentAction::Fetch { id: 1, lane, after: Some(10), .. } if lane == "hi")
        );
        assert!(
            matches!(&a[2], AgentAction::Fetch { id: 2, lane, after: None, .. } if lane == "lo")
        );
        assert!(s.is_streaming());
        s
    }

    #[test]
    fn batches_chain_prev_seq_within_credit_highest_lane_first() {
        let mut s = streaming(5);
        s.on_fetched(3, 2, vec![ev(1), ev(2), ev(4)]);
        s.on_fetched(3, 1, vec![ev(11), ev(12), ev(13)]);
        let a = drain(&mut s);
        // "lo" came first and took 3 of the 5 credits; then "hi" gets the other 2.
        assert_eq!(
            batches(&a),
            [
                (1, None, vec![1, 2]),
                (2, Some(2), vec![4]),
                (3, Some(10), vec![11, 12])
            ]
        );
        assert_eq!(s.in_flight(), 5);
        // The ack of "hi" frees its credit: "hi" goes first.
        s.on_frame(
            4,
            cloud(cloud_frame::Frame::Ack(Ack {
                batch_seq: 3,
                watermark: 12,
                duplicates: 0,
                lane: "hi".into(),
            })),
        );
        let a = drain(&mut s);
        assert_eq!(
            a[0],
            AgentAction::AckOutbox {
                lane: "hi".into(),
                through: 12
            }
        );
        assert_eq!(batches(&a), [(4, Some(12), vec![13])]);
        assert_eq!(s.in_flight(), 4);
    }

    #[test]
    fn a_watermark_beyond_what_was_sent_is_refused() {
        let mut s = streaming(5);
        s.on_fetched(3, 1, vec![ev(11)]);
        drain(&mut s);
        s.on_frame(
            4,
            cloud(cloud_frame::Frame::Ack(Ack {
                batch_seq: 1,
                watermark: 50,
                duplicates: 0,
                lane: "hi".into(),
            })),
        );
        let a = drain(&mut s);
        assert_eq!(a[0], AgentAction::Close);
        assert!(matches!(
            a[1],
            AgentAction::Error(SyncError::WatermarkBeyondSent { .. })
        ));
        assert!(!a.iter().any(|a| matches!(a, AgentAction::AckOutbox { .. })));
        assert_eq!(s.acked("hi"), Some(10));
        assert!(!s.is_streaming());
    }

    #[test]
    fn nacks_rewind_pause_or_stop_the_lane() {
        let mut s = streaming(10);
        s.on_fetched(3, 1, vec![ev(11), ev(12), ev(13), ev(14)]);
        drain(&mut s);
        let nack = |seq, reason: NackReason, wm| {
            cloud(cloud_frame::Frame::Nack(Nack {
                batch_seq: seq,
                reason: reason as i32,
                watermark: wm,
                has_watermark: true,
                lane: "hi".into(),
                message: "m".into(),
            }))
        };
        // Out of order: resend from the watermark (read again after it).
        s.on_frame(4, nack(1, NackReason::OutOfOrder, 10));
        let a = drain(&mut s);
        assert!(matches!(
            &a[..],
            [AgentAction::Fetch {
                after: Some(10),
                ..
            }]
        ));
        let AgentAction::Fetch { id, .. } = a[0] else {
            unreachable!()
        };
        // Batch 2 was abandoned: its nack only frees its credit.
        s.on_frame(5, nack(2, NackReason::OutOfOrder, 10));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.in_flight(), 0);
        s.on_fetched(6, id, vec![ev(11), ev(12)]);
        assert_eq!(batches(&drain(&mut s)), [(3, Some(10), vec![11, 12])]);
        // Store unavailable: the lane pauses, then resends.
        s.on_frame(7, nack(3, NackReason::StoreUnavailable, 10));
        let a = drain(&mut s);
        let AgentAction::Fetch { id, .. } = a[0] else {
            panic!("{a:?}")
        };
        s.on_fetched(8, id, vec![ev(11)]);
        assert!(batches(&drain(&mut s)).is_empty());
        let t = s.poll_timeout().unwrap();
        s.handle_timeout(t);
        assert_eq!(batches(&drain(&mut s)), [(4, Some(10), vec![11])]);
        // Invalid batch: the lane stops, reported, nothing skipped.
        s.on_frame(t + 1, nack(4, NackReason::InvalidBatch, 10));
        let a = drain(&mut s);
        assert!(
            matches!(&a[..], [AgentAction::LaneStopped { lane, error: SyncError::BatchRejected { first: 11, last: 11, .. } }] if lane == "hi")
        );
        assert!(s.is_lane_stopped("hi"));
        assert_eq!(s.acked("hi"), Some(10));
    }

    #[test]
    fn keepalive_idle_timeout_and_backoff() {
        let mut s = streaming(10);
        s.on_fetched(3, 1, vec![]);
        s.on_fetched(3, 2, vec![]);
        drain(&mut s);
        // Credit frames set the window.
        s.on_frame(
            3,
            cloud(cloud_frame::Frame::Credit(Credit {
                grant: 0,
                window: 20,
            })),
        );
        assert_eq!(s.window(), 20);
        let keepalive = AgentConfig::default().keepalive_ms;
        let mut now = 3;
        let mut pings = 0;
        while s.is_streaming() {
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            for a in drain(&mut s) {
                if matches!(
                    a,
                    AgentAction::Send(AgentFrame {
                        frame: Some(agent_frame::Frame::Ping(_))
                    })
                ) {
                    pings += 1;
                }
            }
        }
        assert_eq!(now, 3 + AgentConfig::default().idle_timeout_ms);
        assert!(pings >= (AgentConfig::default().idle_timeout_ms / keepalive) - 1);
        let until = s.poll_timeout().unwrap();
        assert!(until > now && until <= now + AgentConfig::default().backoff_min_ms);
        s.handle_timeout(until);
        assert_eq!(drain(&mut s), [AgentAction::Connect]);
        // A failed attempt backs off further; frames of no connection are ignored.
        s.on_disconnected(until + 1);
        s.on_frame(
            until + 2,
            cloud(cloud_frame::Frame::Pong(Default::default())),
        );
        assert!(drain(&mut s).is_empty());
        assert!(s.poll_timeout().unwrap() > until + 1);
    }

    #[test]
    fn refusal_backs_off_longest() {
        let mut s = AgentSession::new(cfg(), "n1", "e1", vec![LaneSpec::new("hi", 0)], 9, 0);
        s.handle_timeout(0);
        s.on_connected(1);
        drain(&mut s);
        s.on_frame(
            2,
            cloud(cloud_frame::Frame::Nack(Nack {
                reason: NackReason::Unauthorized as i32,
                message: "no".into(),
                ..Default::default()
            })),
        );
        let a = drain(&mut s);
        assert_eq!(a[0], AgentAction::Close);
        assert!(
            matches!(&a[1], AgentAction::Error(SyncError::SessionRefused { reason, .. }) if reason == "UNAUTHORIZED")
        );
        assert!(s.poll_timeout().unwrap() <= 2 + AgentConfig::default().backoff_max_ms);
    }
}
