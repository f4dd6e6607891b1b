//! [`CloudSession`]: the cloud's end of one agent connection.
//!
//! The shell (the ingest server) creates one per connection with the node identity proven by the
//! client certificate, feeds it every frame the agent sends ([`CloudSession::on_frame`]), performs
//! the store work it asks for ([`CloudAction::LoadWatermarks`], [`CloudAction::Commit`]) and
//! reports the results ([`CloudSession::on_watermarks`], [`CloudSession::on_committed`]), and
//! sends the frames it emits ([`CloudAction::Send`]).
//!
//! Batches are processed one at a time in arrival order: at most one commit is outstanding, and
//! batches received meanwhile wait in a queue bounded by the credit window (a batch beyond it is
//! refused with CREDIT_EXCEEDED, never buffered). Each batch is checked against the lane's
//! committed watermark *when its turn comes*, so the checks always see the result of the previous
//! commit. When its turn comes, the batches of the same lane queued right behind it that chain
//! exactly onto it (each one's `prev_seq` is the last seq before it) go into the same commit, up
//! to `max_commit_events`: one store write and one fsync for everything that arrived while the
//! store was busy. Each merged batch is acked (or nacked) on its own when that commit completes.

use std::collections::VecDeque;

use outrider_proto::v1::{
    agent_frame, cloud_frame, Ack, AgentFrame, Batch, CloudFrame, Credit, Hello, LaneWatermark,
    Nack, NackReason, Pong, Welcome,
};
use outrider_proto::Event;
use prost::Message;

use super::compress::{self, CodecError, ZSTD};
use super::{SyncError, PROTOCOL_VERSION};

/// Limits and credit policy of a cloud session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// The credit window granted in the Welcome (events in flight).
    pub initial_credit: u32,
    /// The window never shrinks below this (at least 1).
    pub min_credit: u32,
    /// The window never grows above this; it also bounds the events a session buffers.
    pub max_credit: u32,
    /// A batch with more events is invalid.
    pub max_batch_events: usize,
    /// A Hello with more lanes is refused.
    pub max_lanes: usize,
    /// Lane names and epochs longer than this (bytes) are refused.
    pub max_name_len: usize,
    /// Close a connection that has not completed its handshake after this long.
    pub handshake_timeout_ms: u64,
    /// Close a connection the agent has not sent anything on for this long.
    pub idle_timeout_ms: u64,
    /// A batch whose events encode (as an `EventList`, after decompression) to more bytes is
    /// invalid. Also the hard cap on decompressing a batch, so a zstd bomb costs at most this.
    pub max_batch_bytes: usize,
    /// Pick zstd in the Welcome when the agent offers it (`Welcome.codec`); otherwise no codec
    /// is picked and every compressed batch is invalid.
    pub compression: bool,
    /// Consecutive batches of one lane waiting behind a commit are merged into the next commit
    /// (one store write, one fsync) up to this many events: the store's per-write cost is shared
    /// by everything that queued while it was busy. 1 (or 0) disables merging.
    pub max_commit_events: usize,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            initial_credit: 1024,
            min_credit: 64,
            max_credit: 16_384,
            max_batch_events: 4096,
            max_lanes: 32,
            max_name_len: 256,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_batch_bytes: 4 << 20,
            compression: true,
            max_commit_events: 8192,
        }
    }
}

/// One atomic store write: `events` and the lane's new watermark, applied only if the lane's
/// watermark is still `prev_watermark` (a compare-and-set: another session of the same node, e.g.
/// an older connection still finishing a commit, may have moved it).
#[derive(Debug, Clone, PartialEq)]
pub struct CommitRequest {
    pub node: String,
    pub epoch: String,
    pub lane: String,
    pub batch_seq: u64,
    /// The watermark the batch was checked against (`None`: nothing committed yet).
    pub prev_watermark: Option<u64>,
    /// The seq of the last event of `events`.
    pub new_watermark: u64,
    /// New events only (the duplicate prefix is already dropped), in seq order, all above
    /// `prev_watermark`.
    pub events: Vec<Event>,
    /// How many events of the batch were dropped as duplicates.
    pub duplicates: u32,
}

/// What the store did with a [`CommitRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Events and watermark are durably written.
    Committed,
    /// Nothing written: the lane's watermark was `current`, not the request's `prev_watermark`.
    Conflict { current: Option<u64> },
    /// Nothing written: the store failed.
    Unavailable(String),
}

/// What the shell must do for a cloud session.
#[derive(Debug, Clone, PartialEq)]
pub enum CloudAction {
    /// Send this frame to the agent.
    Send(CloudFrame),
    /// Load the committed watermarks of (node, epoch) and call [`CloudSession::on_watermarks`].
    LoadWatermarks {
        node: String,
        epoch: String,
        lanes: Vec<String>,
    },
    /// Write atomically, then call [`CloudSession::on_committed`].
    Commit(CommitRequest),
    /// Close the connection (after sending the frames emitted before this); `error` says why.
    /// The session ignores every later input.
    Close { error: Option<SyncError> },
}

/// Counters of one cloud session.
///
/// Byte counts are protobuf encodings (transport framing not included); the compression ratio is
/// `bytes_raw / bytes_wire`, the mean commit latency `commit_ms_total / commits`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudStats {
    /// Batch frames received while streaming (valid or not).
    pub batches_received: u64,
    pub events_committed: u64,
    pub duplicates_dropped: u64,
    pub nacks_out_of_order: u64,
    pub nacks_credit_exceeded: u64,
    pub nacks_invalid: u64,
    pub nacks_store_unavailable: u64,
    /// The largest number of events held (queued or committing) at once.
    pub max_events_held: u64,
    /// Encoded size of every Batch frame received while streaming (`AgentFrame` encoding, as
    /// received: compressed or not).
    pub bytes_wire: u64,
    /// Encoded size of the events of every batch that decoded (the `EventList` encoding: after
    /// decompression for compressed batches).
    pub bytes_raw: u64,
    /// Batches received compressed that decompressed and decoded.
    pub batches_compressed: u64,
    /// Commits the store reported durable ([`CommitOutcome::Committed`]).
    pub commits: u64,
    /// Time from [`CloudAction::Commit`] to its `Committed` outcome, summed over `commits`, in
    /// ms of the `now` given to the session.
    pub commit_ms_total: u64,
    /// That time for the last commit.
    pub commit_ms_last: u64,
    /// The longest such time.
    pub commit_ms_max: u64,
    /// Batches that went into the commit of an earlier batch (merged behind a busy store).
    pub merged_batches: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    Loading,
    Streaming,
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::AwaitHello => "awaiting hello",
            State::Loading => "loading watermarks",
            State::Streaming => "streaming",
            State::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone)]
struct Lane {
    name: String,
    watermark: Option<u64>,
}

#[derive(Debug, Clone)]
struct Queued {
    lane: usize,
    batch: Batch,
}

#[derive(Debug, Clone)]
struct Outstanding {
    /// The commit's id: its first batch's seq (`CommitRequest::batch_seq`).
    batch_seq: u64,
    lane: usize,
    /// Every batch the commit carries, in order: (batch_seq, duplicates, its last seq). Each is
    /// acked with its own last seq as the watermark, as if committed alone.
    parts: Vec<(u64, u32, u64)>,
    events: u64,
    duplicates: u32,
    new_watermark: u64,
    /// When the Commit was asked for.
    started: u64,
}

/// The cloud side of one connection. See the [module docs](super) for the protocol.
#[derive(Debug)]
pub struct CloudSession {
    node: String,
    cfg: CloudConfig,
    state: State,
    epoch: String,
    lanes: Vec<Lane>,
    window: u32,
    /// The largest window advertised in this session: what the agent may legitimately have sent.
    max_advertised: u32,
    /// Events in `queue` plus the outstanding commit's batch.
    held: u64,
    queue: VecDeque<Queued>,
    outstanding: Option<Outstanding>,
    started: u64,
    last_recv: u64,
    /// The latest `now` given.
    now: u64,
    /// The codec picked in the Welcome (empty: none).
    codec: String,
    actions: VecDeque<CloudAction>,
    stats: CloudStats,
}

impl CloudSession {
    /// A session for a connection authenticated as `node` (from the client certificate).
    pub fn new(node: impl Into<String>, mut cfg: CloudConfig, now: u64) -> Self {
        cfg.min_credit = cfg.min_credit.max(1);
        cfg.max_credit = cfg.max_credit.max(cfg.min_credit);
        cfg.initial_credit = cfg.initial_credit.clamp(cfg.min_credit, cfg.max_credit);
        cfg.max_batch_events = cfg.max_batch_events.max(1);
        let window = cfg.initial_credit;
        Self {
            node: node.into(),
            cfg,
            state: State::AwaitHello,
            epoch: String::new(),
            lanes: Vec::new(),
            window,
            max_advertised: window,
            held: 0,
            queue: VecDeque::new(),
            outstanding: None,
            started: now,
            last_recv: now,
            now,
            codec: String::new(),
            actions: VecDeque::new(),
            stats: CloudStats::default(),
        }
    }

    /// The authenticated node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The agent's epoch (empty before the Hello).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The current credit window.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Events held in memory: queued batches plus the batch being committed.
    pub fn events_held(&self) -> u64 {
        self.held
    }

    /// The watermark of `lane` as this session knows it.
    pub fn watermark(&self, lane: &str) -> Option<u64> {
        self.lanes
            .iter()
            .find(|l| l.name == lane)
            .and_then(|l| l.watermark)
    }

    /// Whether the session has closed (it then ignores every input).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the handshake completed and batches are accepted.
    pub fn is_streaming(&self) -> bool {
        self.state == State::Streaming
    }

    pub fn stats(&self) -> &CloudStats {
        &self.stats
    }

    /// The codec picked for this connection ([`compress::ZSTD`] or empty: none). Set when the
    /// Hello is accepted, announced in the Welcome.
    pub fn codec(&self) -> &str {
        &self.codec
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<CloudAction> {
        self.actions.pop_front()
    }

    /// When [`CloudSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::AwaitHello | State::Loading => {
                Some(self.started.saturating_add(self.cfg.handshake_timeout_ms))
            }
            State::Streaming => Some(self.last_recv.saturating_add(self.cfg.idle_timeout_ms)),
            State::Closed => None,
        }
    }

    /// Closes the session if the handshake or the agent took too long.
    pub fn handle_timeout(&mut self, now: u64) {
        self.now = self.now.max(now);
        match self.state {
            State::AwaitHello | State::Loading
                if now >= self.started.saturating_add(self.cfg.handshake_timeout_ms) =>
            {
                self.close(Some(SyncError::HandshakeTimeout(
                    self.cfg.handshake_timeout_ms,
                )));
            }
            State::Streaming if now >= self.last_recv.saturating_add(self.cfg.idle_timeout_ms) => {
                self.close(Some(SyncError::IdleTimeout(self.cfg.idle_timeout_ms)));
            }
            _ => {}
        }
    }

    /// A frame from the agent.
    pub fn on_frame(&mut self, now: u64, frame: AgentFrame) {
        if self.state == State::Closed {
            return;
        }
        self.last_recv = self.last_recv.max(now);
        self.now = self.now.max(now);
        let wire = match &frame.frame {
            Some(agent_frame::Frame::Batch(_)) => frame.encoded_len(),
            _ => 0,
        };
        match frame.frame {
            None => {} // an empty frame or a newer agent's frame kind: ignored
            Some(agent_frame::Frame::Ping(p)) => self.send(cloud_frame::Frame::Pong(Pong {
                nonce: p.nonce,
                sent_unix_nanos: p.sent_unix_nanos,
            })),
            Some(agent_frame::Frame::Hello(h)) => self.on_hello(h),
            Some(agent_frame::Frame::Batch(b)) => self.on_batch(b, wire),
        }
    }

    /// The answer to [`CloudAction::LoadWatermarks`]: (lane, watermark) of every lane that has one.
    pub fn on_watermarks(&mut self, now: u64, result: Result<Vec<(String, u64)>, String>) {
        self.now = self.now.max(now);
        match self.state {
            State::Loading => {}
            State::Closed => return,
            _ => {
                self.close(Some(SyncError::UnexpectedWatermarks));
                return;
            }
        }
        let marks = match result {
            Ok(m) => m,
            Err(e) => {
                self.nack_session(NackReason::StoreUnavailable, &e);
                self.close(Some(SyncError::StoreUnavailable(e)));
                return;
            }
        };
        for (name, wm) in marks {
            if let Some(l) = self.lanes.iter_mut().find(|l| l.name == name) {
                l.watermark = Some(wm);
            }
        }
        let lanes = self
            .lanes
            .iter()
            .map(|l| LaneWatermark {
                lane: l.name.clone(),
                watermark: l.watermark.unwrap_or(0),
                has_watermark: l.watermark.is_some(),
            })
            .collect();
        self.state = State::Streaming;
        self.send(cloud_frame::Frame::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            watermark: 0,
            has_watermark: false,
            credit: self.window,
            codec: self.codec.clone(),
            lanes,
        }));
    }

    /// The answer to [`CloudAction::Commit`].
    pub fn on_committed(&mut self, now: u64, batch_seq: u64, outcome: CommitOutcome) {
        if self.state == State::Closed {
            return;
        }
        self.now = self.now.max(now);
        let out = match self.outstanding.take() {
            Some(o) if o.batch_seq == batch_seq => o,
            other => {
                self.outstanding = other;
                self.close(Some(SyncError::UnexpectedCommit(batch_seq)));
                return;
            }
        };
        self.held = self.held.saturating_sub(out.events);
        match outcome {
            CommitOutcome::Committed => {
                let ms = self.now.saturating_sub(out.started);
                self.stats.commits += 1;
                self.stats.commit_ms_total = self.stats.commit_ms_total.saturating_add(ms);
                self.stats.commit_ms_last = ms;
                self.stats.commit_ms_max = self.stats.commit_ms_max.max(ms);
                self.lanes[out.lane].watermark = Some(out.new_watermark);
                self.stats.events_committed += out.events - u64::from(out.duplicates);
                self.stats.duplicates_dropped += u64::from(out.duplicates);
                for &(seq, duplicates, last) in &out.parts {
                    self.ack_at(seq, out.lane, duplicates, Some(last));
                }
                // The store kept up (nothing waited behind this commit): grow the window.
                if self.queue.is_empty() {
                    let grown = self
                        .window
                        .saturating_add(u32::try_from(out.events).unwrap_or(u32::MAX))
                        .min(self.cfg.max_credit);
                    self.set_window(grown);
                }
            }
            CommitOutcome::Conflict { current } => {
                self.lanes[out.lane].watermark = current;
                for &(seq, _, _) in &out.parts {
                    self.nack(
                        seq,
                        out.lane,
                        NackReason::OutOfOrder,
                        "watermark moved meanwhile",
                    );
                }
            }
            CommitOutcome::Unavailable(e) => {
                for &(seq, _, _) in &out.parts {
                    self.nack(seq, out.lane, NackReason::StoreUnavailable, &e);
                }
                let shrunk = (self.window / 2).max(self.cfg.min_credit);
                self.set_window(shrunk);
            }
        }
        self.process_queue();
    }

    fn on_hello(&mut self, h: Hello) {
        if self.state != State::AwaitHello {
            if h.epoch == self.epoch {
                return; // a duplicate
            }
            self.close(Some(SyncError::UnexpectedFrame {
                frame: "hello",
                state: self.state.name(),
            }));
            return;
        }
        if h.protocol_version != PROTOCOL_VERSION {
            let e = SyncError::UnsupportedVersion {
                got: h.protocol_version,
                supported: PROTOCOL_VERSION,
            };
            self.nack_session(NackReason::UnsupportedProtocol, &e.to_string());
            self.close(Some(e));
            return;
        }
        if !h.node_id.is_empty() && h.node_id != self.node {
            let e = SyncError::Unauthorized {
                claimed: h.node_id,
                actual: self.node.clone(),
            };
            self.nack_session(NackReason::Unauthorized, &e.to_string());
            self.close(Some(e));
            return;
        }
        if let Err(reason) = self.check_hello(&h) {
            let e = SyncError::InvalidHello(reason);
            self.nack_session(NackReason::UnsupportedProtocol, &e.to_string());
            self.close(Some(e));
            return;
        }
        self.epoch = h.epoch;
        // The agent lists what it accepts in preference order; zstd is the only codec here.
        if self.cfg.compression && h.codecs.iter().any(|c| c == ZSTD) {
            ZSTD.clone_into(&mut self.codec);
        }
        self.lanes = h
            .lanes
            .into_iter()
            .map(|l| Lane {
                name: l.lane,
                watermark: None,
            })
            .collect();
        self.state = State::Loading;
        self.actions.push_back(CloudAction::LoadWatermarks {
            node: self.node.clone(),
            epoch: self.epoch.clone(),
            lanes: self.lanes.iter().map(|l| l.name.clone()).collect(),
        });
    }

    fn check_hello(&self, h: &Hello) -> Result<(), String> {
        if h.epoch.is_empty() || h.epoch.len() > self.cfg.max_name_len {
            return Err(format!("epoch must be 1..={} bytes", self.cfg.max_name_len));
        }
        if h.lanes.is_empty() || h.lanes.len() > self.cfg.max_lanes {
            return Err(format!("must name 1..={} lanes", self.cfg.max_lanes));
        }
        for (i, l) in h.lanes.iter().enumerate() {
            if l.lane.is_empty() || l.lane.len() > self.cfg.max_name_len {
                return Err(format!(
                    "lane names must be 1..={} bytes",
                    self.cfg.max_name_len
                ));
            }
            if h.lanes[..i].iter().any(|o| o.lane == l.lane) {
                return Err(format!("lane {:?} named twice", l.lane));
            }
        }
        Ok(())
    }

    fn on_batch(&mut self, mut b: Batch, wire: usize) {
        if self.state != State::Streaming {
            self.close(Some(SyncError::UnexpectedFrame {
                frame: "batch",
                state: self.state.name(),
            }));
            return;
        }
        self.stats.batches_received += 1;
        self.stats.bytes_wire += wire as u64;
        let Some(lane) = self.lanes.iter().position(|l| l.name == b.priority) else {
            let msg = format!("lane {:?} was not named in the hello", b.priority);
            self.nack_raw(
                b.batch_seq,
                &b.priority,
                None,
                NackReason::InvalidBatch,
                &msg,
            );
            return;
        };
        let compressed = !b.compressed.is_empty() || !b.codec.is_empty();
        let raw = if compressed {
            match self.decompress(&mut b) {
                Ok(raw) => raw,
                Err(e) => {
                    let msg = e.to_string();
                    return self.nack(b.batch_seq, lane, NackReason::InvalidBatch, &msg);
                }
            }
        } else {
            compress::raw_len(&b.events)
        };
        if raw > self.cfg.max_batch_bytes {
            let msg = format!(
                "events encode to {raw} bytes, over the limit of {}",
                self.cfg.max_batch_bytes
            );
            return self.nack(b.batch_seq, lane, NackReason::InvalidBatch, &msg);
        }
        self.stats.bytes_raw += raw as u64;
        if compressed {
            self.stats.batches_compressed += 1;
        }
        let n = b.events.len();
        if n == 0 || n > self.cfg.max_batch_events {
            let msg = format!("must hold 1..={} events", self.cfg.max_batch_events);
            return self.nack(b.batch_seq, lane, NackReason::InvalidBatch, &msg);
        }
        let n = n as u64;
        if self.held + n > u64::from(self.max_advertised) {
            self.set_window(self.window); // re-advertise, so the agent resynchronises
            return self.nack(
                b.batch_seq,
                lane,
                NackReason::CreditExceeded,
                "batch beyond the credit window",
            );
        }
        self.held += n;
        self.stats.max_events_held = self.stats.max_events_held.max(self.held);
        self.queue.push_back(Queued { lane, batch: b });
        self.process_queue();
    }

    /// Replaces a compressed batch's payload by its events; returns their encoded size. Nothing
    /// larger than `max_batch_bytes` is ever decompressed.
    fn decompress(&self, b: &mut Batch) -> Result<usize, CodecError> {
        if b.codec.is_empty() {
            return Err(CodecError::Malformed("compressed bytes without a codec"));
        }
        if self.codec.is_empty() || b.codec != self.codec {
            return Err(CodecError::NotNegotiated {
                got: b.codec.clone(),
                negotiated: self.codec.clone(),
            });
        }
        if !b.events.is_empty() {
            return Err(CodecError::Malformed("plain events beside compressed ones"));
        }
        let (events, raw) = compress::decompress_events(&b.compressed, self.cfg.max_batch_bytes)?;
        b.events = events;
        b.compressed = Vec::new();
        b.codec.clear();
        Ok(raw)
    }

    /// Checks and commits (or answers) queued batches until one commit is outstanding.
    fn process_queue(&mut self) {
        while self.outstanding.is_none() && self.state == State::Streaming {
            let Some(Queued { lane, batch }) = self.queue.pop_front() else {
                return;
            };
            let n = batch.events.len() as u64;
            let watermark = self.lanes[lane].watermark;
            if let Err(msg) = self.check_batch(&batch) {
                self.held = self.held.saturating_sub(n);
                self.nack(batch.batch_seq, lane, NackReason::InvalidBatch, &msg);
                continue;
            }
            let in_order = match (batch.prev_seq, watermark) {
                (None, _) => true,
                (Some(p), Some(w)) => p <= w,
                (Some(_), None) => false,
            };
            if !in_order {
                self.held = self.held.saturating_sub(n);
                self.nack(
                    batch.batch_seq,
                    lane,
                    NackReason::OutOfOrder,
                    "prev_seq is above the watermark: events in between are missing",
                );
                continue;
            }
            let mut events = batch.events;
            let dup = events.partition_point(|e| watermark.is_some_and(|w| e.position <= w));
            let duplicates = u32::try_from(dup).unwrap_or(u32::MAX);
            if dup == events.len() {
                self.held = self.held.saturating_sub(n);
                self.stats.duplicates_dropped += dup as u64;
                self.ack(batch.batch_seq, lane, duplicates);
                continue;
            }
            let mut fresh = events.split_off(dup);
            let mut new_watermark = fresh.last().map_or(0, |e| e.position);
            let mut parts = vec![(batch.batch_seq, duplicates, new_watermark)];
            let mut total = n;
            // Merge the batches of this lane that queued behind, each chained exactly to the one
            // before it (its prev_seq is the last seq merged), into the same commit: all of
            // their events are above the watermark and in order, so the checks above hold for
            // the merged commit as for each batch.
            while let Some(next) = self.queue.front() {
                let k = next.batch.events.len();
                if next.lane != lane
                    || next.batch.prev_seq != Some(new_watermark)
                    || k == 0
                    || fresh.len() + k > self.cfg.max_commit_events
                    || self.check_batch(&next.batch).is_err()
                {
                    break;
                }
                let Some(Queued { batch: b, .. }) = self.queue.pop_front() else {
                    break;
                };
                new_watermark = b.events.last().map_or(new_watermark, |e| e.position);
                parts.push((b.batch_seq, 0, new_watermark));
                total += k as u64;
                fresh.extend(b.events);
            }
            if parts.len() > 1 {
                self.stats.merged_batches += parts.len() as u64 - 1;
            }
            self.outstanding = Some(Outstanding {
                batch_seq: batch.batch_seq,
                lane,
                parts,
                events: total,
                duplicates,
                new_watermark,
                started: self.now,
            });
            self.actions.push_back(CloudAction::Commit(CommitRequest {
                node: self.node.clone(),
                epoch: self.epoch.clone(),
                lane: self.lanes[lane].name.clone(),
                batch_seq: batch.batch_seq,
                prev_watermark: watermark,
                new_watermark,
                events: fresh,
                duplicates,
            }));
        }
    }

    /// Shape checks that do not depend on the watermark.
    fn check_batch(&self, b: &Batch) -> Result<(), String> {
        let mut last = b.prev_seq;
        for e in &b.events {
            if e.origin_node != self.node {
                return Err(format!(
                    "event {:?} has origin node {:?}, not the connection's node {:?}",
                    e.id, e.origin_node, self.node
                ));
            }
            if last.is_some_and(|l| e.position <= l) {
                return Err(format!(
                    "seqs must increase strictly after prev_seq: {} after {last:?}",
                    e.position
                ));
            }
            last = Some(e.position);
        }
        Ok(())
    }

    fn set_window(&mut self, window: u32) {
        let grant = window.saturating_sub(self.window);
        self.window = window;
        self.max_advertised = self.max_advertised.max(window);
        self.send(cloud_frame::Frame::Credit(Credit { grant, window }));
    }

    fn ack(&mut self, batch_seq: u64, lane: usize, duplicates: u32) {
        self.ack_at(batch_seq, lane, duplicates, None);
    }

    /// An Ack reporting `watermark` (default: the lane's), which is committed.
    fn ack_at(&mut self, batch_seq: u64, lane: usize, duplicates: u32, watermark: Option<u64>) {
        let l = &self.lanes[lane];
        let frame = cloud_frame::Frame::Ack(Ack {
            batch_seq,
            watermark: watermark.or(l.watermark).unwrap_or(0),
            duplicates,
            lane: l.name.clone(),
        });
        self.send(frame);
    }

    fn nack(&mut self, batch_seq: u64, lane: usize, reason: NackReason, message: &str) {
        let l = &self.lanes[lane];
        let (name, wm) = (l.name.clone(), l.watermark);
        self.nack_raw(batch_seq, &name, wm, reason, message);
    }

    fn nack_session(&mut self, reason: NackReason, message: &str) {
        self.nack_raw(0, "", None, reason, message);
    }

    fn nack_raw(
        &mut self,
        batch_seq: u64,
        lane: &str,
        watermark: Option<u64>,
        reason: NackReason,
        message: &str,
    ) {
        match reason {
            NackReason::OutOfOrder => self.stats.nacks_out_of_order += 1,
            NackReason::CreditExceeded => self.stats.nacks_credit_exceeded += 1,
            NackReason::InvalidBatch => self.stats.nacks_invalid += 1,
            NackReason::StoreUnavailable => self.stats.nacks_store_unavailable += 1,
            _ => {}
        }
        self.send(cloud_frame::Frame::Nack(Nack {
            batch_seq,
            reason: reason as i32,
            message: message.to_owned(),
            watermark: watermark.unwrap_or(0),
            lane: lane.to_owned(),
            has_watermark: watermark.is_some(),
        }));
    }

    fn send(&mut self, frame: cloud_frame::Frame) {
        self.actions
            .push_back(CloudAction::Send(CloudFrame { frame: Some(frame) }));
    }

    fn close(&mut self, error: Option<SyncError>) {
        self.state = State::Closed;
        self.queue.clear();
        self.held = 0;
        self.actions.push_back(CloudAction::Close { error });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_proto::v1::{LaneResume, Ping};

    fn hello(node: &str) -> AgentFrame {
        AgentFrame {
            frame: Some(agent_frame::Frame::Hello(Hello {
                node_id: node.into(),
                protocol_version: PROTOCOL_VERSION,
                epoch: "e1".into(),
                lanes: vec![LaneResume {
                    lane: "hi".into(),
                    resume_seq: 0,
                }],
                ..Default::default()
            })),
        }
    }

    fn ev(node: &str, pos: u64) -> Event {
        Event {
            origin_node: node.into(),
            position: pos,
            origin_seq: pos,
            ..Default::default()
        }
    }

    fn batch(seq: u64, prev: Option<u64>, positions: &[u64]) -> AgentFrame {
        AgentFrame {
            frame: Some(agent_frame::Frame::Batch(Batch {
                batch_seq: seq,
                events: positions.iter().map(|p| ev("n1", *p)).collect(),
                priority: "hi".into(),
                prev_seq: prev,
                ..Default::default()
            })),
        }
    }

    fn drain(s: &mut CloudSession) -> Vec<CloudAction> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn nack_reason(a: &CloudAction) -> Option<NackReason> {
        match a {
            CloudAction::Send(CloudFrame {
                frame: Some(cloud_frame::Frame::Nack(n)),
            }) => NackReason::try_from(n.reason).ok(),
            _ => None,
        }
    }

    /// A streaming session whose lane "hi" has watermark `wm`.
    fn streaming(wm: Option<u64>) -> CloudSession {
        let mut s = CloudSession::new("n1", CloudConfig::default(), 0);
        s.on_frame(0, hello("n1"));
        let a = drain(&mut s);
        assert!(
            matches!(&a[..], [CloudAction::LoadWatermarks { node, epoch, .. }]
            if node == "n1" && epoch == "e1")
        );
        s.on_watermarks(
            0,
            Ok(wm.map(|w| ("hi".to_owned(), w)).into_iter().collect()),
        );
        let a = drain(&mut s);
        let [CloudAction::Send(CloudFrame {
            frame: Some(cloud_frame::Frame::Welcome(w)),
        })] = &a[..]
        else {
            panic!("{a:?}")
        };
        assert_eq!(w.lanes[0].has_watermark, wm.is_some());
        assert_eq!(w.lanes[0].watermark, wm.unwrap_or(0));
        s
    }

    #[test]
    fn identity_comes_from_the_certificate() {
        let mut s = CloudSession::new("n1", CloudConfig::default(), 0);
        s.on_frame(0, hello("n2"));
        let a = drain(&mut s);
        assert_eq!(nack_reason(&a[0]), Some(NackReason::Unauthorized));
        assert!(matches!(
            a[1],
            CloudAction::Close {
                error: Some(SyncError::Unauthorized { .. })
            }
        ));
        assert!(s.is_closed());
        // An empty node_id is fine: the certificate says who it is.
        let mut s = CloudSession::new("n1", CloudConfig::default(), 0);
        s.on_frame(0, hello(""));
        assert!(matches!(
            drain(&mut s)[..],
            [CloudAction::LoadWatermarks { .. }]
        ));
    }

    #[test]
    fn bad_hellos_and_early_batches_are_refused() {
        let mut s = CloudSession::new("n1", CloudConfig::default(), 0);
        let mut h = hello("n1");
        if let Some(agent_frame::Frame::Hello(h)) = &mut h.frame {
            h.protocol_version = 9;
        }
        s.on_frame(0, h);
        assert_eq!(
            nack_reason(&drain(&mut s)[0]),
            Some(NackReason::UnsupportedProtocol)
        );
        let mut s = CloudSession::new("n1", CloudConfig::default(), 0);
        s.on_frame(0, batch(1, None, &[1]));
        assert!(matches!(drain(&mut s)[..], [CloudAction::Close { .. }]));
        // Empty frames are ignored; pings are answered in any state.
        let mut s = CloudSession::new("n1", CloudConfig::default(), 0);
        s.on_frame(0, AgentFrame { frame: None });
        s.on_frame(
            0,
            AgentFrame {
                frame: Some(agent_frame::Frame::Ping(Ping {
                    nonce: 7,
                    sent_unix_nanos: 1,
                })),
            },
        );
        assert!(matches!(
            &drain(&mut s)[..],
            [CloudAction::Send(CloudFrame {
                frame: Some(cloud_frame::Frame::Pong(Pong { nonce: 7, .. }))
            })]
        ));
    }

    /// Ack frames among `actions`: (batch_seq, watermark, duplicates).
    fn acks(actions: &[CloudAction]) -> Vec<(u64, u64, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                CloudAction::Send(CloudFrame {
                    frame: Some(cloud_frame::Frame::Ack(a)),
                }) => Some((a.batch_seq, a.watermark, a.duplicates)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn chained_batches_queued_behind_a_commit_share_the_next_one() {
        let mut s = streaming(Some(10));
        s.on_frame(1, batch(1, Some(10), &[11, 12]));
        let a = drain(&mut s);
        assert!(matches!(&a[..], [CloudAction::Commit(r)] if r.batch_seq == 1));
        // Three chained batches and one that does not chain (a gap) queue behind it.
        s.on_frame(2, batch(2, Some(12), &[13, 14]));
        s.on_frame(2, batch(3, Some(14), &[15]));
        s.on_frame(2, batch(4, Some(15), &[16, 17]));
        s.on_frame(2, batch(5, Some(20), &[21]));
        assert!(drain(&mut s).is_empty());
        s.on_committed(3, 1, CommitOutcome::Committed);
        let a = drain(&mut s);
        assert_eq!(acks(&a), [(1, 12, 0)]);
        let Some(CloudAction::Commit(req)) = a.last() else {
            panic!("{a:?}")
        };
        assert_eq!(
            (req.batch_seq, req.prev_watermark, req.new_watermark),
            (2, Some(12), 17)
        );
        assert_eq!(
            req.events.iter().map(|e| e.position).collect::<Vec<_>>(),
            [13, 14, 15, 16, 17]
        );
        assert_eq!(s.stats().merged_batches, 2);
        // Each merged batch is acked on its own, with its own last seq.
        s.on_committed(4, 2, CommitOutcome::Committed);
        let a = drain(&mut s);
        assert_eq!(acks(&a), [(2, 14, 0), (3, 15, 0), (4, 17, 0)]);
        // The batch after the gap was not merged: it is refused on its own turn.
        assert_eq!(
            a.iter().filter_map(nack_reason).collect::<Vec<_>>(),
            [NackReason::OutOfOrder]
        );
        assert_eq!(s.watermark("hi"), Some(17));
        assert_eq!(s.stats().events_committed, 7);

        // A failed merged commit nacks every batch in it; merging off commits one at a time.
        let mut s = streaming(Some(0));
        s.on_frame(1, batch(1, Some(0), &[1]));
        drain(&mut s);
        s.on_frame(2, batch(2, Some(1), &[2]));
        s.on_frame(2, batch(3, Some(2), &[3]));
        s.on_committed(3, 1, CommitOutcome::Committed);
        drain(&mut s);
        s.on_committed(4, 2, CommitOutcome::Unavailable("disk full".into()));
        let reasons: Vec<_> = drain(&mut s).iter().filter_map(nack_reason).collect();
        assert_eq!(reasons, [NackReason::StoreUnavailable; 2]);
        let mut s = CloudSession::new(
            "n1",
            CloudConfig {
                max_commit_events: 1,
                ..CloudConfig::default()
            },
            0,
        );
        s.on_frame(0, hello("n1"));
        drain(&mut s);
        s.on_watermarks(0, Ok(vec![("hi".into(), 0)]));
        drain(&mut s);
        s.on_frame(1, batch(1, Some(0), &[1]));
        s.on_frame(1, batch(2, Some(1), &[2]));
        let a = drain(&mut s);
        assert!(matches!(&a[..], [CloudAction::Commit(r)] if r.events.len() == 1));
        s.on_committed(2, 1, CommitOutcome::Committed);
        let a = drain(&mut s);
        assert!(
            matches!(a.last(), Some(CloudAction::Commit(r)) if r.batch_seq == 2 && r.events.len() == 1)
        );
    }

    #[test]
    fn duplicates_are_dropped_and_commits_acked() {
        let mut s = streaming(Some(10));
        s.on_frame(1, batch(1, Some(5), &[6, 10, 12, 15]));
        let a = drain(&mut s);
        let [CloudAction::Commit(req)] = &a[..] else {
            panic!("{a:?}")
        };
        assert_eq!(req.prev_watermark, Some(10));
        assert_eq!(req.new_watermark, 15);
        assert_eq!(req.duplicates, 2);
        assert_eq!(
            req.events.iter().map(|e| e.position).collect::<Vec<_>>(),
            [12, 15]
        );
        // A second batch waits for the first commit.
        s.on_frame(2, batch(2, Some(15), &[20]));
        assert!(drain(&mut s).is_empty());
        s.on_committed(3, 1, CommitOutcome::Committed);
        let a = drain(&mut s);
        assert!(matches!(
            &a[0],
            CloudAction::Send(CloudFrame {
                frame: Some(cloud_frame::Frame::Ack(Ack {
                    batch_seq: 1,
                    watermark: 15,
                    duplicates: 2,
                    ..
                }))
            })
        ));
        assert!(matches!(&a[1], CloudAction::Commit(r) if r.batch_seq == 2));
        assert_eq!(s.watermark("hi"), Some(15));
        // A batch entirely at or below the watermark is acked without a commit.
        s.on_committed(4, 2, CommitOutcome::Committed);
        drain(&mut s);
        s.on_frame(5, batch(3, None, &[6, 20]));
        let a = drain(&mut s);
        assert!(matches!(
            &a[..],
            [CloudAction::Send(CloudFrame {
                frame: Some(cloud_frame::Frame::Ack(Ack {
                    batch_seq: 3,
                    watermark: 20,
                    duplicates: 2,
                    ..
                }))
            })]
        ));
    }

    #[test]
    fn gaps_invalid_batches_and_store_failures_are_nacked() {
        let mut s = streaming(Some(10));
        s.on_frame(1, batch(1, Some(11), &[12]));
        assert_eq!(nack_reason(&drain(&mut s)[0]), Some(NackReason::OutOfOrder));
        s.on_frame(1, batch(2, Some(10), &[12, 12]));
        assert_eq!(
            nack_reason(&drain(&mut s)[0]),
            Some(NackReason::InvalidBatch)
        );
        s.on_frame(1, batch(3, None, &[]));
        assert_eq!(
            nack_reason(&drain(&mut s)[0]),
            Some(NackReason::InvalidBatch)
        );
        let mut b = batch(4, Some(10), &[12]);
        if let Some(agent_frame::Frame::Batch(b)) = &mut b.frame {
            b.events[0].origin_node = "n2".into();
        }
        s.on_frame(1, b);
        assert_eq!(
            nack_reason(&drain(&mut s)[0]),
            Some(NackReason::InvalidBatch)
        );
        let mut b = batch(5, Some(10), &[12]);
        if let Some(agent_frame::Frame::Batch(b)) = &mut b.frame {
            b.priority = "other".into();
        }
        s.on_frame(1, b);
        assert_eq!(
            nack_reason(&drain(&mut s)[0]),
            Some(NackReason::InvalidBatch)
        );
        // Store failure: nack and a smaller window; conflict: nack with the store's watermark.
        let w = s.window();
        s.on_frame(2, batch(6, Some(10), &[12]));
        drain(&mut s);
        s.on_committed(3, 6, CommitOutcome::Unavailable("down".into()));
        let a = drain(&mut s);
        assert_eq!(nack_reason(&a[0]), Some(NackReason::StoreUnavailable));
        assert!(s.window() < w);
        s.on_frame(4, batch(7, Some(10), &[12]));
        drain(&mut s);
        s.on_committed(5, 7, CommitOutcome::Conflict { current: Some(30) });
        assert_eq!(nack_reason(&drain(&mut s)[0]), Some(NackReason::OutOfOrder));
        assert_eq!(s.watermark("hi"), Some(30));
        // A commit result nobody asked for closes the session.
        s.on_committed(6, 99, CommitOutcome::Committed);
        assert!(s.is_closed());
    }

    #[test]
    fn credit_bounds_what_is_held() {
        let cfg = CloudConfig {
            initial_credit: 4,
            min_credit: 1,
            max_credit: 4,
            ..CloudConfig::default()
        };
        let mut s = CloudSession::new("n1", cfg, 0);
        s.on_frame(0, hello("n1"));
        s.on_watermarks(0, Ok(vec![]));
        drain(&mut s);
        s.on_frame(1, batch(1, None, &[1, 2, 3]));
        s.on_frame(1, batch(2, Some(3), &[4, 5]));
        let a = drain(&mut s);
        assert!(matches!(&a[0], CloudAction::Commit(_)));
        assert!(a
            .iter()
            .any(|a| nack_reason(a) == Some(NackReason::CreditExceeded)));
        assert_eq!(s.events_held(), 3);
    }

    #[test]
    fn timeouts_close() {
        let mut s = CloudSession::new("n1", CloudConfig::default(), 0);
        let t = s.poll_timeout().unwrap();
        s.handle_timeout(t - 1);
        assert!(!s.is_closed());
        s.handle_timeout(t);
        assert!(s.is_closed());
        assert_eq!(s.poll_timeout(), None);
    }
}
