//! Deterministic simulation of the sync protocol: an agent session over an in-memory outbox, cloud
//! sessions over an in-memory store, and a network between them that loses, duplicates, delays and
//! reorders frames, all on a simulated clock and driven by one seed.
//!
//! Every run asserts the protocol's promises: every event the agent produced ends up in the store
//! exactly once, each lane in seq order, and the agent never acks its outbox beyond what the store
//! committed.

use std::collections::{BTreeMap, HashMap, HashSet};

use outrider_proto::v1::{AgentFrame, CloudFrame};
use outrider_proto::Event;
use outrider_runtime::sync::rng::SplitMix64;
use outrider_runtime::sync::{
    AgentAction, AgentConfig, AgentSession, CloudAction, CloudConfig, CloudSession, CloudStats,
    CommitOutcome, CommitRequest, LaneSpec,
};

const NODE: &str = "node-1";
const EPOCH: &str = "log-a";
const LANES: [&str; 3] = ["critical", "normal", "bulk"];

#[derive(Debug, Clone)]
struct Params {
    events: usize,
    /// Production is spread over this long (0: everything at t=0).
    produce_over_ms: u64,
    /// Weights of the lanes for produced events.
    lane_weights: [u32; 3],
    loss: f64,
    dup: f64,
    delay_min: u64,
    delay_jitter: u64,
    store_delay_min: u64,
    store_delay_max: u64,
    store_fail: f64,
    /// Connection cuts (both sides lose it; the agent is told or finds out by idle timeout).
    cuts: usize,
    /// Cloud restarts: sessions and in-progress commits lost (each applied or not), store kept,
    /// cloud down for a while.
    cloud_restarts: usize,
    /// Agent restarts: session lost, outbox (events and cursors) kept.
    agent_restarts: usize,
    /// Scripted extra: one critical event appended at this time.
    late_critical_at: Option<u64>,
    /// Assert in flight <= window at every step.
    check_window: bool,
    agent: AgentConfig,
    cloud: CloudConfig,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            events: 300,
            produce_over_ms: 5_000,
            lane_weights: [1, 3, 6],
            loss: 0.0,
            dup: 0.0,
            delay_min: 5,
            delay_jitter: 0,
            store_delay_min: 1,
            store_delay_max: 5,
            store_fail: 0.0,
            cuts: 0,
            cloud_restarts: 0,
            agent_restarts: 0,
            late_critical_at: None,
            check_window: true,
            agent: AgentConfig {
                max_batch_events: 16,
                max_batch_bytes: 2_048,
                fetch_max_events: 32,
                max_window: 1_000,
                keepalive_ms: 1_000,
                idle_timeout_ms: 4_000,
                handshake_timeout_ms: 3_000,
                response_timeout_ms: 10_000,
                fetch_poll_ms: 500,
                backoff_min_ms: 100,
                backoff_max_ms: 5_000,
                retry_min_ms: 50,
                retry_max_ms: 2_000,
                // Events of ~60 to ~370 bytes: a good share of the batches, even single events,
                // are compressed, so every scenario exercises both kinds.
                compression: true,
                compress_min_bytes: 200,
                compress_level: 1,
                max_kbps: 0,
            },
            cloud: CloudConfig {
                initial_credit: 32,
                min_credit: 8,
                max_credit: 128,
                max_batch_events: 64,
                max_lanes: 8,
                max_name_len: 64,
                handshake_timeout_ms: 5_000,
                idle_timeout_ms: 4_000,
                max_batch_bytes: 64 * 1024,
                compression: true,
                // Merged commits under loss, duplication and reordering (batches are ≤ 64).
                max_commit_events: 160,
            },
        }
    }
}

/// The agent's outbox: per lane, its events and the cursor (next unacknowledged seq).
#[derive(Default)]
struct Outbox {
    lanes: Vec<(Vec<Event>, u64)>,
    head: u64,
}

impl Outbox {
    fn read(&self, lane: usize, after: Option<u64>, max: usize) -> Vec<Event> {
        let (events, cursor) = &self.lanes[lane];
        let from = after.map_or(*cursor, |a| (a + 1).max(*cursor));
        events
            .iter()
            .filter(|e| e.position >= from)
            .take(max)
            .cloned()
            .collect()
    }
}

#[derive(Default)]
struct LaneStore {
    watermark: Option<u64>,
    seqs: Vec<u64>,
}

/// The cloud store: events by (epoch, lane, seq) and a watermark per (epoch, lane).
#[derive(Default)]
struct Store {
    lanes: HashMap<(String, String), LaneStore>,
    keys: HashSet<(String, String, u64)>,
    /// (time, lane, seq) in commit order.
    log: Vec<(u64, String, u64)>,
}

impl Store {
    fn commit(&mut self, now: u64, req: &CommitRequest) -> CommitOutcome {
        assert_eq!(req.node, NODE);
        let ls = self
            .lanes
            .entry((req.epoch.clone(), req.lane.clone()))
            .or_default();
        if ls.watermark != req.prev_watermark {
            return CommitOutcome::Conflict {
                current: ls.watermark,
            };
        }
        assert!(!req.events.is_empty());
        for e in &req.events {
            assert!(
                ls.watermark.is_none_or(|w| e.position > w),
                "commit of {} at or below watermark {:?}",
                e.position,
                ls.watermark
            );
            let key = (req.epoch.clone(), req.lane.clone(), e.position);
            assert!(
                self.keys.insert(key),
                "event {} committed twice",
                e.position
            );
            ls.seqs.push(e.position);
            self.log.push((now, req.lane.clone(), e.position));
        }
        assert_eq!(
            req.events.last().map(|e| e.position),
            Some(req.new_watermark)
        );
        ls.watermark = Some(req.new_watermark);
        CommitOutcome::Committed
    }

    fn watermark(&self, lane: &str) -> Option<u64> {
        self.lanes
            .get(&(EPOCH.to_owned(), lane.to_owned()))
            .and_then(|l| l.watermark)
    }
}

enum Msg {
    ToCloud(u64, AgentFrame),
    ToAgent(u64, CloudFrame),
}

enum Scheduled {
    Net(Msg),
    /// The connection attempt `conn` of agent generation `gen` completes.
    Connect {
        gen: u64,
        conn: u64,
    },
    /// The agent learns that its connection `conn` is gone.
    Disconnect {
        gen: u64,
        conn: u64,
    },
    Fetch {
        gen: u64,
        id: u64,
        lane: usize,
        after: Option<u64>,
        max: usize,
    },
    Watermarks {
        conn: u64,
    },
    Commit {
        conn: u64,
        req: CommitRequest,
    },
    Produce {
        lane: usize,
        notify: bool,
    },
    Cut,
    CloudRestart {
        down_ms: u64,
    },
    AgentRestart,
}

struct Sim {
    p: Params,
    rng: SplitMix64,
    now: u64,
    tie: u64,
    queue: BTreeMap<(u64, u64), Scheduled>,
    outbox: Outbox,
    produced: Vec<Vec<u64>>,
    store: Store,
    agent: AgentSession,
    agent_gen: u64,
    agent_conn: Option<u64>,
    next_conn: u64,
    clouds: BTreeMap<u64, CloudSession>,
    cloud_up_at: u64,
    produce_left: usize,
    late_critical: Option<(u64, u64)>,
    /// (time, lane, seq) of every event the agent put in a batch frame, in send order.
    sent: Vec<(u64, String, u64)>,
    /// (time, lane, encoded frame size) of every batch frame the agent sent.
    sent_batches: Vec<(u64, String, usize)>,
    /// The stats of the cloud sessions that ended, summed.
    cloud_totals: CloudStats,
    credit_exceeded: u64,
    steps: u64,
}

impl Sim {
    fn new(p: Params, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let agent = new_agent(&p, &Outbox::default(), rng.next_u64());
        let mut sim = Sim {
            rng,
            now: 0,
            tie: 0,
            queue: BTreeMap::new(),
            outbox: Outbox {
                lanes: vec![(Vec::new(), 0); LANES.len()],
                head: 0,
            },
            produced: vec![Vec::new(); LANES.len()],
            store: Store::default(),
            agent,
            agent_gen: 0,
            agent_conn: None,
            next_conn: 1,
            clouds: BTreeMap::new(),
            cloud_up_at: 0,
            produce_left: p.events,
            late_critical: None,
            sent: Vec::new(),
            sent_batches: Vec::new(),
            cloud_totals: CloudStats::default(),
            credit_exceeded: 0,
            steps: 0,
            p,
        };
        let total: u32 = sim.p.lane_weights.iter().sum();
        for _ in 0..sim.p.events {
            let t = sim.rng.below_inclusive(sim.p.produce_over_ms);
            let mut pick = sim.rng.below_inclusive(u64::from(total) - 1) as u32;
            let mut lane = 0;
            while pick >= sim.p.lane_weights[lane] {
                pick -= sim.p.lane_weights[lane];
                lane += 1;
            }
            let notify = sim.rng.chance(0.8);
            sim.at(t, Scheduled::Produce { lane, notify });
        }
        if let Some(t) = sim.p.late_critical_at {
            sim.produce_left += 1;
            sim.at(
                t,
                Scheduled::Produce {
                    lane: 0,
                    notify: true,
                },
            );
        }
        let span = sim.p.produce_over_ms.max(2_000) * 2;
        for _ in 0..sim.p.cuts {
            let t = sim.rng.below_inclusive(span);
            sim.at(t, Scheduled::Cut);
        }
        for _ in 0..sim.p.cloud_restarts {
            let t = sim.rng.below_inclusive(span);
            let down_ms = sim.rng.below_inclusive(3_000);
            sim.at(t, Scheduled::CloudRestart { down_ms });
        }
        for _ in 0..sim.p.agent_restarts {
            let t = sim.rng.below_inclusive(span);
            sim.at(t, Scheduled::AgentRestart);
        }
        sim
    }

    fn at(&mut self, t: u64, s: Scheduled) {
        self.tie += 1;
        self.queue.insert((t, self.tie), s);
    }

    fn net(&mut self, msg: Msg) {
        if self.rng.chance(self.p.loss) {
            return;
        }
        let copies = if self.rng.chance(self.p.dup) { 2 } else { 1 };
        let mut msg = Some(msg);
        for i in 0..copies {
            let delay = self.p.delay_min + self.rng.below_inclusive(self.p.delay_jitter);
            let m = if i + 1 == copies {
                msg.take()
            } else {
                msg.as_ref().map(|m| match m {
                    Msg::ToCloud(c, f) => Msg::ToCloud(*c, f.clone()),
                    Msg::ToAgent(c, f) => Msg::ToAgent(*c, f.clone()),
                })
            };
            if let Some(m) = m {
                self.at(self.now + delay, Scheduled::Net(m));
            }
        }
    }

    fn store_delay(&mut self) -> u64 {
        self.p.store_delay_min
            + self
                .rng
                .below_inclusive(self.p.store_delay_max - self.p.store_delay_min)
    }

    fn done(&self) -> bool {
        self.produce_left == 0
            && (0..LANES.len()).all(|l| {
                let st = self
                    .store
                    .lanes
                    .get(&(EPOCH.to_owned(), LANES[l].to_owned()));
                let seqs = st.map_or(&[][..], |s| &s.seqs[..]);
                seqs.len() == self.produced[l].len()
                    && self.produced[l]
                        .last()
                        .is_none_or(|last| self.outbox.lanes[l].1 > *last)
            })
    }

    fn run(mut self) -> Sim {
        let deadline = 4 * 3_600_000;
        loop {
            self.drain();
            self.check_step();
            if self.done() {
                break;
            }
            self.steps += 1;
            assert!(self.steps < 2_000_000, "no progress: {}", self.describe());
            let mut next = self.queue.keys().next().map(|k| k.0);
            let timers = std::iter::once(self.agent.poll_timeout())
                .chain(self.clouds.values().map(|c| c.poll_timeout()));
            for t in timers.flatten() {
                next = Some(next.map_or(t, |n: u64| n.min(t)));
            }
            let Some(next) = next else {
                panic!("nothing scheduled: {}", self.describe());
            };
            self.now = self.now.max(next);
            assert!(self.now < deadline, "deadline passed: {}", self.describe());
            if self.agent.poll_timeout().is_some_and(|t| t <= self.now) {
                self.agent.handle_timeout(self.now);
            }
            let conns: Vec<u64> = self.clouds.keys().copied().collect();
            for c in conns {
                if let Some(s) = self.clouds.get_mut(&c) {
                    if s.poll_timeout().is_some_and(|t| t <= self.now) {
                        s.handle_timeout(self.now);
                    }
                }
            }
            if let Some(entry) = self.queue.first_entry() {
                if entry.key().0 <= self.now {
                    let s = entry.remove();
                    self.deliver(s);
                }
            }
        }
        self.check_end();
        self
    }

    fn describe(&self) -> String {
        let stored: Vec<usize> = LANES
            .iter()
            .map(|l| {
                self.store
                    .lanes
                    .get(&(EPOCH.to_owned(), (*l).to_owned()))
                    .map_or(0, |s| s.seqs.len())
            })
            .collect();
        let produced: Vec<usize> = self.produced.iter().map(Vec::len).collect();
        format!(
            "now={} produced={produced:?} stored={stored:?} cursors={:?} streaming={} stats={:?}",
            self.now,
            self.outbox.lanes.iter().map(|l| l.1).collect::<Vec<_>>(),
            self.agent.is_streaming(),
            self.agent.stats()
        )
    }

    fn deliver(&mut self, s: Scheduled) {
        match s {
            Scheduled::Net(Msg::ToCloud(conn, f)) => {
                if let Some(c) = self.clouds.get_mut(&conn) {
                    c.on_frame(self.now, f);
                }
            }
            Scheduled::Net(Msg::ToAgent(conn, f)) => {
                if self.agent_conn == Some(conn) {
                    self.agent.on_frame(self.now, f);
                }
            }
            Scheduled::Connect { gen, conn } => {
                if gen != self.agent_gen || self.agent_conn != Some(conn) {
                    return;
                }
                if self.now < self.cloud_up_at {
                    self.agent_conn = None;
                    self.agent.on_disconnected(self.now);
                } else {
                    let cfg = self.p.cloud.clone();
                    self.clouds
                        .insert(conn, CloudSession::new(NODE, cfg, self.now));
                    self.agent.on_connected(self.now);
                }
            }
            Scheduled::Disconnect { gen, conn } => {
                if gen == self.agent_gen && self.agent_conn == Some(conn) {
                    self.agent_conn = None;
                    self.agent.on_disconnected(self.now);
                }
            }
            Scheduled::Fetch {
                gen,
                id,
                lane,
                after,
                max,
            } => {
                if gen == self.agent_gen {
                    let events = self.outbox.read(lane, after, max);
                    self.agent.on_fetched(self.now, id, events);
                }
            }
            Scheduled::Watermarks { conn } => {
                let fail = self.rng.chance(self.p.store_fail);
                if let Some(c) = self.clouds.get_mut(&conn) {
                    let res = if fail {
                        Err("store down".to_owned())
                    } else {
                        Ok(LANES
                            .iter()
                            .filter_map(|l| self.store.watermark(l).map(|w| ((*l).to_owned(), w)))
                            .collect())
                    };
                    c.on_watermarks(self.now, res);
                }
            }
            Scheduled::Commit { conn, req } => {
                let outcome = if self.rng.chance(self.p.store_fail) {
                    CommitOutcome::Unavailable("store down".to_owned())
                } else {
                    self.store.commit(self.now, &req)
                };
                if let Some(c) = self.clouds.get_mut(&conn) {
                    c.on_committed(self.now, req.batch_seq, outcome);
                }
            }
            Scheduled::Produce { lane, notify } => {
                let pos = self.outbox.head;
                self.outbox.head += 1;
                let size = self.rng.below_inclusive(300) as usize;
                let e = Event {
                    id: format!("e{pos}"),
                    source: "sim".into(),
                    detail_type: "Tick".into(),
                    detail: format!("{{\"pad\":\"{}\"}}", "x".repeat(size)),
                    stream: format!("s{lane}"),
                    position: pos,
                    origin_node: NODE.into(),
                    origin_seq: pos,
                    ..Default::default()
                };
                self.outbox.lanes[lane].0.push(e);
                self.produced[lane].push(pos);
                self.produce_left -= 1;
                if self.p.late_critical_at == Some(self.now) && lane == 0 {
                    self.late_critical = Some((self.now, pos));
                }
                if notify {
                    self.agent.on_outbox_changed(self.now, Some(LANES[lane]));
                }
            }
            Scheduled::Cut => {
                if let Some(conn) = self.agent_conn {
                    self.retire(conn);
                    if self.rng.chance(0.5) {
                        let gen = self.agent_gen;
                        let t = self.now + self.p.delay_min;
                        self.at(t, Scheduled::Disconnect { gen, conn });
                    }
                    // Otherwise the agent finds out by its idle timeout; frames to the dead
                    // connection are dropped meanwhile.
                }
            }
            Scheduled::CloudRestart { down_ms } => {
                let conns: Vec<u64> = self.clouds.keys().copied().collect();
                for c in conns {
                    self.retire(c);
                }
                self.cloud_up_at = self.now + down_ms;
                // In-progress commits are either durable before the crash or lost.
                let keys: Vec<(u64, u64)> = self
                    .queue
                    .iter()
                    .filter(|(_, s)| {
                        matches!(s, Scheduled::Commit { .. } | Scheduled::Watermarks { .. })
                    })
                    .map(|(k, _)| *k)
                    .collect();
                for k in keys {
                    if let Some(Scheduled::Commit { req, .. }) = self.queue.remove(&k) {
                        if self.rng.chance(0.5) {
                            let _ = self.store.commit(self.now, &req);
                        }
                    }
                }
                if let Some(conn) = self.agent_conn {
                    if self.rng.chance(0.5) {
                        let gen = self.agent_gen;
                        let t = self.now + self.p.delay_min;
                        self.at(t, Scheduled::Disconnect { gen, conn });
                    }
                }
            }
            Scheduled::AgentRestart => {
                self.agent_gen += 1;
                self.agent_conn = None;
                let seed = self.rng.next_u64();
                self.agent = new_agent(&self.p, &self.outbox, seed);
                // The cloud sessions of the old agent linger until their idle timeout.
            }
        }
    }

    /// Runs every action both sides have queued until neither has any.
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(a) = self.agent.poll_action() {
                progressed = true;
                self.agent_action(a);
            }
            let conns: Vec<u64> = self.clouds.keys().copied().collect();
            for conn in conns {
                let mut actions = Vec::new();
                if let Some(c) = self.clouds.get_mut(&conn) {
                    while let Some(a) = c.poll_action() {
                        actions.push(a);
                    }
                }
                for a in actions {
                    progressed = true;
                    self.cloud_action(conn, a);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn agent_action(&mut self, a: AgentAction) {
        match a {
            AgentAction::Connect => {
                let conn = self.next_conn;
                self.next_conn += 1;
                self.agent_conn = Some(conn);
                let gen = self.agent_gen;
                let t = self.now + self.p.delay_min + self.rng.below_inclusive(self.p.delay_jitter);
                self.at(t, Scheduled::Connect { gen, conn });
            }
            AgentAction::Send(f) => {
                if let Some(outrider_proto::v1::agent_frame::Frame::Batch(b)) = &f.frame {
                    for seq in batch_seqs(b) {
                        self.sent.push((self.now, b.priority.clone(), seq));
                    }
                    let size = prost::Message::encoded_len(&f);
                    self.sent_batches.push((self.now, b.priority.clone(), size));
                }
                if let Some(conn) = self.agent_conn {
                    self.net(Msg::ToCloud(conn, f));
                }
            }
            AgentAction::Close => {
                if let Some(conn) = self.agent_conn.take() {
                    self.retire(conn);
                }
            }
            AgentAction::Fetch {
                id,
                lane,
                after,
                max_events,
            } => {
                let lane = LANES.iter().position(|l| *l == lane).expect("known lane");
                let gen = self.agent_gen;
                let t = self.now + self.rng.below_inclusive(2);
                self.at(
                    t,
                    Scheduled::Fetch {
                        gen,
                        id,
                        lane,
                        after,
                        max: max_events,
                    },
                );
            }
            AgentAction::AckOutbox { lane, through } => {
                let committed = self.store.watermark(&lane);
                assert!(
                    committed.is_some_and(|w| through <= w),
                    "outbox acked {lane} through {through}, store has {committed:?}"
                );
                let li = LANES.iter().position(|l| *l == lane).expect("known lane");
                let cursor = &mut self.outbox.lanes[li].1;
                *cursor = (*cursor).max(through + 1);
            }
            AgentAction::Error(_) => {}
            AgentAction::LaneStopped { lane, error } => {
                panic!("lane {lane} stopped: {error}")
            }
        }
    }

    fn cloud_action(&mut self, conn: u64, a: CloudAction) {
        match a {
            CloudAction::Send(f) => {
                if let Some(outrider_proto::v1::cloud_frame::Frame::Nack(n)) = &f.frame {
                    if n.reason == outrider_proto::v1::NackReason::CreditExceeded as i32 {
                        self.credit_exceeded += 1;
                    }
                }
                if self.clouds.contains_key(&conn) {
                    self.net(Msg::ToAgent(conn, f));
                }
            }
            CloudAction::LoadWatermarks { node, epoch, .. } => {
                assert_eq!((node.as_str(), epoch.as_str()), (NODE, EPOCH));
                let t = self.now + self.store_delay();
                self.at(t, Scheduled::Watermarks { conn });
            }
            CloudAction::Commit(req) => {
                let t = self.now + self.store_delay();
                self.at(t, Scheduled::Commit { conn, req });
            }
            CloudAction::Close { .. } => {
                self.retire(conn);
                if self.agent_conn == Some(conn) {
                    let gen = self.agent_gen;
                    let t = self.now + self.p.delay_min;
                    self.at(t, Scheduled::Disconnect { gen, conn });
                }
            }
        }
    }

    /// Ends cloud session `conn`, keeping its stats.
    fn retire(&mut self, conn: u64) {
        if let Some(c) = self.clouds.remove(&conn) {
            add_stats(&mut self.cloud_totals, c.stats());
        }
    }

    /// The stats of every cloud session, ended or not, summed.
    fn cloud_stats(&self) -> CloudStats {
        let mut total = self.cloud_totals.clone();
        for c in self.clouds.values() {
            add_stats(&mut total, c.stats());
        }
        total
    }

    fn check_step(&self) {
        if self.p.check_window {
            assert!(
                self.agent.in_flight() <= u64::from(self.agent.window()),
                "in flight {} > window {}",
                self.agent.in_flight(),
                self.agent.window()
            );
        }
        for c in self.clouds.values() {
            assert!(c.events_held() <= u64::from(self.p.cloud.max_credit));
        }
    }

    fn check_end(&self) {
        for (l, name) in LANES.iter().enumerate() {
            let st = self
                .store
                .lanes
                .get(&(EPOCH.to_owned(), (*name).to_owned()));
            let seqs = st.map_or(&[][..], |s| &s.seqs[..]);
            assert_eq!(
                seqs,
                &self.produced[l][..],
                "lane {name}: store != produced"
            );
            if let Some(last) = self.produced[l].last() {
                assert_eq!(self.store.watermark(name), Some(*last));
            }
        }
    }
}

fn add_stats(total: &mut CloudStats, s: &CloudStats) {
    total.batches_received += s.batches_received;
    total.events_committed += s.events_committed;
    total.duplicates_dropped += s.duplicates_dropped;
    total.nacks_invalid += s.nacks_invalid;
    total.bytes_wire += s.bytes_wire;
    total.bytes_raw += s.bytes_raw;
    total.batches_compressed += s.batches_compressed;
    total.commits += s.commits;
    total.merged_batches += s.merged_batches;
}

/// The seqs of a batch frame's events, decompressing it if need be.
fn batch_seqs(b: &outrider_proto::v1::Batch) -> Vec<u64> {
    if b.compressed.is_empty() {
        return b.events.iter().map(|e| e.position).collect();
    }
    let (events, _) = outrider_runtime::sync::compress::decompress_events(&b.compressed, 1 << 20)
        .expect("the agent's compressed batches decode");
    events.iter().map(|e| e.position).collect()
}

fn new_agent(p: &Params, outbox: &Outbox, seed: u64) -> AgentSession {
    let lanes = LANES
        .iter()
        .enumerate()
        .map(|(i, l)| LaneSpec::new(*l, outbox.lanes.get(i).map_or(0, |x| x.1)))
        .collect();
    AgentSession::new(p.agent.clone(), NODE, EPOCH, lanes, seed, 0)
}

fn run(p: &Params, seed: u64) -> Sim {
    Sim::new(p.clone(), seed).run()
}

fn seeds(n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
}

#[test]
fn plain_transfer() {
    let p = Params::default();
    for seed in seeds(200) {
        let sim = run(&p, seed);
        let a = sim.agent.stats();
        assert_eq!(a.rewinds, 0, "seed {seed}");
        assert_eq!(sim.credit_exceeded, 0);
        assert_eq!(a.handshakes, 1);
        assert_eq!(
            (a.reconnects, a.retransmitted_events, a.duplicates),
            (0, 0, 0)
        );
        // Nothing lost: both ends saw the same batches, byte for byte, most of them compressed.
        let c = sim.cloud_stats();
        assert!(a.batches_compressed > 0, "seed {seed}: nothing compressed");
        assert!(
            a.batches_compressed < a.batches_sent,
            "seed {seed}: all compressed"
        );
        assert_eq!(c.batches_received, a.batches_sent, "seed {seed}");
        assert_eq!(c.batches_compressed, a.batches_compressed, "seed {seed}");
        assert_eq!(c.bytes_wire, a.bytes_wire, "seed {seed}");
        assert_eq!(c.bytes_raw, a.bytes_raw, "seed {seed}");
        assert_eq!(c.events_committed, p.events as u64, "seed {seed}");
        assert_eq!(c.nacks_invalid, 0);
        assert_eq!(a.ack_latency_samples, a.batches_sent, "seed {seed}");
        // Every lane fully acked: nothing is lagging.
        for lag in sim.agent.lane_lag() {
            assert_eq!(
                (
                    lag.in_flight_events,
                    lag.pending_events,
                    lag.oldest_unacked_age_ms
                ),
                (0, 0, None),
                "seed {seed}: {lag:?}"
            );
        }
    }
}

/// A backlog behind a slow store: the batches that queue while a commit is outstanding go into
/// the next commit together, and everything still arrives exactly once, in order.
#[test]
fn a_backlog_behind_a_slow_store_is_committed_in_merged_commits() {
    let p = Params {
        events: 2_000,
        produce_over_ms: 0,
        store_delay_min: 20,
        store_delay_max: 40,
        ..Params::default()
    };
    for seed in seeds(20) {
        let sim = run(&p, seed);
        let c = sim.cloud_stats();
        assert_eq!(c.events_committed, p.events as u64, "seed {seed}");
        assert!(c.merged_batches > 0, "seed {seed}: nothing merged: {c:?}");
        assert!(
            c.commits < c.batches_received,
            "seed {seed}: fewer commits than batches: {c:?}"
        );
    }
}

#[test]
fn plain_transfer_without_compression() {
    let mut p = Params::default();
    p.cloud.compression = false;
    for seed in seeds(50) {
        let sim = run(&p, seed);
        let (a, c) = (sim.agent.stats(), sim.cloud_stats());
        assert_eq!((a.batches_compressed, c.batches_compressed), (0, 0));
        assert_eq!(a.bytes_raw, c.bytes_raw);
        assert!(a.bytes_wire > a.bytes_raw, "frame overhead: {a:?}");
    }
}

#[test]
fn loss_5_percent() {
    let p = Params {
        loss: 0.05,
        check_window: false,
        ..Params::default()
    };
    for seed in seeds(200) {
        run(&p, seed);
    }
}

#[test]
fn loss_20_percent() {
    let p = Params {
        loss: 0.20,
        check_window: false,
        ..Params::default()
    };
    for seed in seeds(200) {
        let sim = run(&p, seed);
        assert!(sim.cloud_stats().batches_compressed > 0, "seed {seed}");
    }
}

#[test]
fn duplication() {
    let p = Params {
        dup: 0.2,
        check_window: false,
        ..Params::default()
    };
    for seed in seeds(200) {
        let sim = run(&p, seed);
        assert!(sim.cloud_stats().batches_compressed > 0, "seed {seed}");
    }
}

#[test]
fn reordering() {
    let p = Params {
        delay_jitter: 80,
        check_window: false,
        ..Params::default()
    };
    for seed in seeds(200) {
        let sim = run(&p, seed);
        assert!(sim.cloud_stats().batches_compressed > 0, "seed {seed}");
    }
}

#[test]
fn cloud_restarts() {
    let p = Params {
        cloud_restarts: 3,
        store_fail: 0.02,
        check_window: false,
        ..Params::default()
    };
    for seed in seeds(200) {
        run(&p, seed);
    }
}

#[test]
fn agent_restarts() {
    let p = Params {
        agent_restarts: 3,
        ..Params::default()
    };
    for seed in seeds(200) {
        run(&p, seed);
    }
}

#[test]
fn connection_cuts_mid_batch() {
    let p = Params {
        cuts: 5,
        ..Params::default()
    };
    for seed in seeds(200) {
        run(&p, seed);
    }
}

#[test]
fn slow_store_keeps_in_flight_within_credit() {
    let p = Params {
        store_delay_min: 100,
        store_delay_max: 400,
        produce_over_ms: 0,
        ..Params::default()
    };
    for seed in seeds(200) {
        let sim = run(&p, seed);
        // check_window asserted in flight <= window at every step, and the cloud held at most
        // max_credit; no batch was ever refused for credit.
        assert_eq!(sim.credit_exceeded, 0, "seed {seed}");
        assert!(sim.agent.stats().max_in_flight <= u64::from(p.cloud.max_credit));
    }
}

#[test]
fn priority_critical_overtakes_bulk_backlog() {
    let p = Params {
        events: 600,
        produce_over_ms: 0,
        lane_weights: [0, 0, 1],
        late_critical_at: Some(300),
        // Commits of 20-40 ms: the 600 bulk events take over a second to drain.
        store_delay_min: 20,
        store_delay_max: 40,
        ..Params::default()
    };
    for seed in seeds(200) {
        let sim = run(&p, seed);
        let (appended_at, crit) = sim.late_critical.expect("critical produced");
        let log = &sim.store.log;
        let idx = log
            .iter()
            .position(|(_, l, s)| l == "critical" && *s == crit)
            .expect("critical committed");
        let bulk_after = log[idx..].iter().filter(|(_, l, _)| l == "bulk").count();
        assert!(
            bulk_after > 0,
            "seed {seed}: critical came after all the bulk"
        );
        // Overtaking: at most the window in flight when it was appended went before it.
        let bulk_between = log[..idx]
            .iter()
            .filter(|(t, l, _)| l == "bulk" && *t >= appended_at)
            .count();
        assert!(
            bulk_between <= p.cloud.max_credit as usize + p.agent.max_batch_events,
            "seed {seed}: {bulk_between} bulk events committed between"
        );
    }
}

/// The agent's bandwidth cap in a whole simulated transfer: all events there at once, so the
/// transfer is paced from the first batch to the last.
#[test]
fn bandwidth_cap_paces_the_transfer() {
    let mut p = Params {
        produce_over_ms: 0,
        ..Params::default()
    };
    p.agent.max_kbps = 64; // 8 bytes per ms: a 2 KiB batch every ~250 ms
    for seed in seeds(20) {
        let sim = run(&p, seed);
        let a = sim.agent.stats();
        let rate = p.agent.max_kbps; // bits per ms
        let burst = (rate * 100).max(p.agent.max_batch_bytes as u64 * 8);
        let charged = (a.bytes_wire + a.bytes_control) * 8;
        let last_bits = a.last_batch_bytes * 8;
        let (t_last, _, last_size) = sim.sent_batches.last().cloned().expect("batches sent");
        assert_eq!(last_size as u64 * 8, last_bits);
        // The bucket was never in debt when a batch went: everything charged before the last
        // batch, less the burst, was earned at the rate by then.
        let lower = (charged - last_bits).saturating_sub(burst) / rate;
        // And it went as soon as it could, but for the handshake (connect, Hello, watermarks,
        // Welcome: the bucket is full meanwhile, so that time earns nothing), the first outbox
        // read (at most 2 ms) and rounding up to the ms.
        let slack = 4 * p.delay_min + p.store_delay_max + 2 + 1;
        let upper = lower + slack;
        assert!(
            (lower..=upper).contains(&t_last),
            "seed {seed}: last batch at {t_last} ms, expected {lower}..={upper} ({a:?})"
        );
        // Nearly all of that time the cap was holding batches back.
        assert!(a.throttle_holds > 0 && a.throttled_ms <= t_last);
        assert!(a.throttled_ms * 10 >= t_last * 9, "seed {seed}: {a:?}");
        assert!(a.batches_compressed > 0);
    }
}

/// Under the cap, a critical event appended behind a bulk backlog goes with the next batch the
/// bucket allows: at most one bulk batch (the one whose debt it waits for) goes in between.
#[test]
fn priority_critical_overtakes_bulk_backlog_under_bandwidth_cap() {
    let mut p = Params {
        events: 600,
        produce_over_ms: 0,
        lane_weights: [0, 0, 1],
        late_critical_at: Some(1_500),
        ..Params::default()
    };
    p.agent.max_kbps = 64;
    for seed in seeds(50) {
        let sim = run(&p, seed);
        let (appended_at, crit) = sim.late_critical.expect("critical produced");
        let &(sent_at, _, _) = sim
            .sent
            .iter()
            .find(|(_, l, s)| l == "critical" && *s == crit)
            .expect("critical sent");
        let max_batch_bits = sim.sent_batches.iter().map(|b| b.2).max().unwrap_or(0) as u64 * 8;
        let fetch_latency = 2; // the simulated outbox answers within 2 ms
        let bound = appended_at + fetch_latency + max_batch_bits.div_ceil(p.agent.max_kbps);
        assert!(
            sent_at <= bound,
            "seed {seed}: critical appended at {appended_at} sent at {sent_at} (bound {bound})"
        );
        let bulk_between = sim
            .sent_batches
            .iter()
            .filter(|(t, l, _)| l == "bulk" && *t >= appended_at && *t <= sent_at)
            .count();
        assert!(
            bulk_between <= 1,
            "seed {seed}: {bulk_between} bulk batches between"
        );
        let bulk_after = sim
            .sent
            .iter()
            .filter(|(t, l, _)| l == "bulk" && *t > sent_at)
            .count();
        assert!(
            bulk_after > 0,
            "seed {seed}: the backlog was gone before the critical event"
        );
    }
}

#[test]
fn everything_at_once() {
    let p = Params {
        loss: 0.05,
        dup: 0.05,
        delay_jitter: 40,
        store_fail: 0.05,
        cuts: 2,
        cloud_restarts: 1,
        agent_restarts: 1,
        check_window: false,
        ..Params::default()
    };
    for seed in seeds(200) {
        let sim = run(&p, seed);
        assert!(sim.cloud_stats().batches_compressed > 0, "seed {seed}");
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn exactly_once_under_any_conditions(
            seed in any::<u64>(),
            events in 1usize..400,
            loss in 0.0f64..0.3,
            dup in 0.0f64..0.3,
            jitter in 0u64..100,
            store_fail in 0.0f64..0.2,
            cuts in 0usize..4,
            cloud_restarts in 0usize..3,
            agent_restarts in 0usize..3,
            batch in 1usize..40,
            batch_bytes in 1usize..4_000,
            credit in 1u32..100,
            compress_min in 0usize..2_000,
            agent_zstd in any::<bool>(),
            cloud_zstd in any::<bool>(),
            kbps in prop_oneof![Just(0u64), 16u64..2_000],
        ) {
            let mut p = Params {
                events, loss, dup, delay_jitter: jitter, store_fail, cuts, cloud_restarts,
                agent_restarts, check_window: false, ..Params::default()
            };
            p.agent.max_batch_events = batch;
            p.agent.max_batch_bytes = batch_bytes;
            p.cloud.initial_credit = credit;
            p.cloud.min_credit = 1;
            p.agent.compress_min_bytes = compress_min;
            p.agent.compression = agent_zstd;
            p.cloud.compression = cloud_zstd;
            p.agent.max_kbps = kbps;
            let sim = run(&p, seed);
            let compressed = sim.cloud_stats().batches_compressed;
            prop_assert!(agent_zstd && cloud_zstd || compressed == 0);
            prop_assert_eq!(sim.cloud_stats().nacks_invalid, 0);
        }
    }
}
