//! Batch compression, the bandwidth cap and the session stats, through both sync sessions.
//!
//! A small synchronous harness connects an [`AgentSession`] to a [`CloudSession`] over an
//! in-memory outbox and store: frames arrive at once, outbox reads and commits complete at once,
//! and time moves only to the agent's next timer (or a scripted instant). Everything is
//! deterministic, so sizes, times and counters are asserted exactly where the protocol fixes
//! them.

use std::collections::HashMap;

use outrider_proto::v1::{
    agent_frame, cloud_frame, Ack, AgentFrame, Batch, CloudFrame, Hello, LaneResume, LaneWatermark,
    Nack, NackReason, Pong, Welcome,
};
use outrider_proto::Event;
use outrider_runtime::sync::compress::{self, Compressor, ZSTD};
use outrider_runtime::sync::{
    AgentAction, AgentConfig, AgentSession, CloudAction, CloudConfig, CloudSession, CommitOutcome,
    LaneLag, LaneSpec, PROTOCOL_VERSION,
};
use prost::Message;

const NODE: &str = "node-1";
const EPOCH: &str = "log-a";

fn ev(pos: u64, pad: usize) -> Event {
    Event {
        id: format!("e{pos}"),
        source: "sensors.plc-7".into(),
        detail_type: "Reading".into(),
        detail: format!("{{\"pad\":\"{}\",\"n\":{pos}}}", "x".repeat(pad)),
        stream: "s".into(),
        position: pos,
        origin_node: NODE.into(),
        origin_seq: pos,
        ..Default::default()
    }
}

fn batch_of(f: &AgentFrame) -> Option<&Batch> {
    match &f.frame {
        Some(agent_frame::Frame::Batch(b)) => Some(b),
        _ => None,
    }
}

fn hello_of(f: &AgentFrame) -> Option<&Hello> {
    match &f.frame {
        Some(agent_frame::Frame::Hello(h)) => Some(h),
        _ => None,
    }
}

/// An agent and a cloud session wired together synchronously.
struct Harness {
    now: u64,
    agent: AgentSession,
    cloud: Option<CloudSession>,
    cloud_cfg: CloudConfig,
    lanes: Vec<String>,
    outbox: Vec<Vec<Event>>,
    acked: Vec<Option<u64>>,
    /// (lane, event) in commit order.
    store: Vec<(String, Event)>,
    watermarks: HashMap<String, u64>,
    /// Every frame the agent sent, with the time.
    frames: Vec<(u64, AgentFrame)>,
    cloud_frames: Vec<(u64, CloudFrame)>,
    errors: Vec<AgentAction>,
}

impl Harness {
    fn new(agent_cfg: AgentConfig, cloud_cfg: CloudConfig, lanes: &[&str]) -> Self {
        let specs = lanes.iter().map(|l| LaneSpec::new(*l, 0)).collect();
        let mut h = Harness {
            now: 0,
            agent: AgentSession::new(agent_cfg, NODE, EPOCH, specs, 7, 0),
            cloud: None,
            cloud_cfg,
            lanes: lanes.iter().map(|l| (*l).to_owned()).collect(),
            outbox: vec![Vec::new(); lanes.len()],
            acked: vec![None; lanes.len()],
            store: Vec::new(),
            watermarks: HashMap::new(),
            frames: Vec::new(),
            cloud_frames: Vec::new(),
            errors: Vec::new(),
        };
        h.agent.handle_timeout(0);
        h.drain();
        assert!(h.agent.is_streaming());
        h
    }

    fn lane(&self, name: &str) -> usize {
        self.lanes
            .iter()
            .position(|l| l == name)
            .expect("known lane")
    }

    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(a) = self.agent.poll_action() {
                progressed = true;
                self.agent_action(a);
            }
            let actions: Vec<CloudAction> = match &mut self.cloud {
                Some(c) => std::iter::from_fn(|| c.poll_action()).collect(),
                None => Vec::new(),
            };
            for a in actions {
                progressed = true;
                self.cloud_action(a);
            }
            if !progressed {
                return;
            }
        }
    }

    fn agent_action(&mut self, a: AgentAction) {
        let now = self.now;
        match a {
            AgentAction::Connect => {
                self.cloud = Some(CloudSession::new(NODE, self.cloud_cfg.clone(), now));
                self.agent.on_connected(now);
            }
            AgentAction::Send(f) => {
                self.frames.push((now, f.clone()));
                if let Some(c) = &mut self.cloud {
                    c.on_frame(now, f);
                }
            }
            AgentAction::Close => self.cloud = None,
            AgentAction::Fetch {
                id,
                lane,
                after,
                max_events,
            } => {
                let li = self.lane(&lane);
                let cursor = self.acked[li].map_or(0, |a| a + 1);
                let from = after.map_or(cursor, |a| (a + 1).max(cursor));
                let events: Vec<Event> = self.outbox[li]
                    .iter()
                    .filter(|e| e.position >= from)
                    .take(max_events)
                    .cloned()
                    .collect();
                self.agent.on_fetched(now, id, events);
            }
            AgentAction::AckOutbox { lane, through } => {
                assert!(self.watermarks.get(&lane).is_some_and(|w| through <= *w));
                let li = self.lane(&lane);
                self.acked[li] = Some(through);
            }
            other => self.errors.push(other),
        }
    }

    fn cloud_action(&mut self, a: CloudAction) {
        let now = self.now;
        match a {
            CloudAction::Send(f) => {
                self.cloud_frames.push((now, f.clone()));
                self.agent.on_frame(now, f);
            }
            CloudAction::LoadWatermarks { lanes, .. } => {
                let marks = lanes
                    .iter()
                    .filter_map(|l| self.watermarks.get(l).map(|w| (l.clone(), *w)))
                    .collect();
                if let Some(c) = &mut self.cloud {
                    c.on_watermarks(now, Ok(marks));
                }
            }
            CloudAction::Commit(req) => {
                assert_eq!(req.prev_watermark, self.watermarks.get(&req.lane).copied());
                for e in &req.events {
                    self.store.push((req.lane.clone(), e.clone()));
                }
                self.watermarks.insert(req.lane.clone(), req.new_watermark);
                if let Some(c) = &mut self.cloud {
                    c.on_committed(now, req.batch_seq, CommitOutcome::Committed);
                }
            }
            CloudAction::Close { error } => panic!("cloud closed: {error:?}"),
        }
    }

    /// Appends events to a lane's outbox and tells the agent.
    fn append(&mut self, lane: &str, events: Vec<Event>) {
        let li = self.lane(lane);
        self.outbox[li].extend(events);
        self.agent.on_outbox_changed(self.now, Some(lane));
        self.drain();
    }

    /// Moves time to the agent's next timer (but not past `limit`) and runs it.
    fn advance(&mut self, limit: u64) {
        let t = self.agent.poll_timeout().expect("a timer").min(limit);
        self.now = self.now.max(t);
        self.agent.handle_timeout(self.now);
        if let Some(c) = &mut self.cloud {
            c.handle_timeout(self.now);
        }
        self.drain();
    }

    fn all_acked(&self) -> bool {
        self.outbox
            .iter()
            .zip(&self.acked)
            .all(|(events, acked)| events.last().is_none_or(|e| *acked == Some(e.position)))
    }

    fn run_until_acked(&mut self, deadline: u64) {
        while !self.all_acked() {
            assert!(self.now < deadline, "not done by {deadline} ms");
            self.advance(u64::MAX);
        }
    }

    fn batches(&self) -> Vec<(u64, &Batch, usize)> {
        self.frames
            .iter()
            .filter_map(|(t, f)| batch_of(f).map(|b| (*t, b, f.encoded_len())))
            .collect()
    }

    fn hello(&self) -> &Hello {
        self.frames
            .iter()
            .find_map(|(_, f)| hello_of(f))
            .expect("hello sent")
    }

    fn welcome(&self) -> &Welcome {
        self.cloud_frames
            .iter()
            .find_map(|(_, f)| match &f.frame {
                Some(cloud_frame::Frame::Welcome(w)) => Some(w),
                _ => None,
            })
            .expect("welcome sent")
    }

    fn cloud_stats(&self) -> outrider_runtime::sync::CloudStats {
        self.cloud.as_ref().expect("connected").stats().clone()
    }
}

fn agent_cfg() -> AgentConfig {
    AgentConfig {
        max_batch_events: 4,
        ..AgentConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Compression

#[test]
fn compression_round_trip_respects_the_threshold() {
    let small: Vec<Event> = (0..4).map(|p| ev(p, 10)).collect();
    let big: Vec<Event> = (4..8).map(|p| ev(p, 500)).collect();
    let (small_raw, big_raw) = (compress::raw_len(&small), compress::raw_len(&big));
    assert!(small_raw < 1_000 && big_raw > 2_000);
    let cfg = AgentConfig {
        compress_min_bytes: big_raw,
        ..agent_cfg()
    };
    let mut h = Harness::new(cfg, CloudConfig::default(), &["hi"]);
    assert_eq!(h.hello().codecs, [ZSTD]);
    assert_eq!(h.welcome().codec, ZSTD);
    assert_eq!(h.agent.codec(), ZSTD);
    assert_eq!(h.cloud.as_ref().map(|c| c.codec()), Some(ZSTD));
    h.append("hi", small.clone());
    h.append("hi", big.clone());
    h.run_until_acked(10_000);

    // Below the threshold: plain. At it: compressed, events only in `compressed`.
    let batches = h.batches();
    assert_eq!(batches.len(), 2);
    let (_, plain, plain_wire) = batches[0];
    assert_eq!((plain.codec.as_str(), plain.compressed.len()), ("", 0));
    assert_eq!(plain.events, small);
    let (_, packed, packed_wire) = batches[1];
    assert_eq!(packed.codec, ZSTD);
    assert!(packed.events.is_empty());
    assert!(
        packed.compressed.len() * 4 < big_raw,
        "{}",
        packed.compressed.len()
    );
    let (unpacked, raw) = compress::decompress_events(&packed.compressed, 1 << 20).unwrap();
    assert_eq!((unpacked, raw), (big.clone(), big_raw));

    // The store holds exactly the events, in order; nothing was nacked.
    let stored: Vec<Event> = h.store.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(stored, [small, big.clone()].concat());
    assert!(h.errors.is_empty(), "{:?}", h.errors);

    let a = h.agent.stats().clone();
    assert_eq!(a.batches_sent, 2);
    assert_eq!(a.batches_compressed, 1);
    assert_eq!(a.bytes_raw, (small_raw + big_raw) as u64);
    assert_eq!(a.bytes_wire, (plain_wire + packed_wire) as u64);
    let control: usize = h
        .frames
        .iter()
        .filter(|(_, f)| batch_of(f).is_none())
        .map(|(_, f)| f.encoded_len())
        .sum();
    assert_eq!(a.bytes_control, control as u64);
    assert_eq!(
        (a.last_batch_events, a.last_batch_bytes),
        (4, packed_wire as u64)
    );
    let c = h.cloud_stats();
    assert_eq!(c.batches_received, 2);
    assert_eq!(c.batches_compressed, 1);
    assert_eq!(c.bytes_raw, a.bytes_raw);
    assert_eq!(c.bytes_wire, a.bytes_wire);
    assert_eq!(
        (c.commits, c.commit_ms_total, c.events_committed),
        (2, 0, 8)
    );

    // One byte more of threshold and the same batch goes plain.
    let cfg = AgentConfig {
        compress_min_bytes: big_raw + 1,
        ..agent_cfg()
    };
    let mut h = Harness::new(cfg, CloudConfig::default(), &["hi"]);
    h.append("hi", big.clone());
    h.run_until_acked(10_000);
    let batches = h.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].1.events, big);
    assert_eq!(h.agent.stats().batches_compressed, 0);
}

#[test]
fn a_batch_compression_does_not_shrink_goes_plain() {
    // A tiny event: the zstd frame's own overhead makes it larger than the plain encoding.
    let event = Event {
        id: "a".into(),
        position: 1,
        origin_node: NODE.into(),
        ..Default::default()
    };
    let raw = compress::encode_events(vec![event.clone()]).0;
    let packed = Compressor::new(compress::DEFAULT_LEVEL)
        .unwrap()
        .compress(&raw)
        .unwrap();
    assert!(
        packed.len() >= raw.len(),
        "{} vs {}",
        packed.len(),
        raw.len()
    );
    let cfg = AgentConfig {
        compress_min_bytes: 0,
        ..agent_cfg()
    };
    let mut h = Harness::new(cfg, CloudConfig::default(), &["hi"]);
    h.append("hi", vec![event.clone()]);
    h.run_until_acked(10_000);
    let batches = h.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(
        (batches[0].1.codec.as_str(), &batches[0].1.events),
        ("", &vec![event])
    );
    let a = h.agent.stats();
    assert_eq!((a.batches_compressed, a.bytes_raw), (0, raw.len() as u64));
}

#[test]
fn negotiation_either_side_can_decline() {
    let big: Vec<Event> = (0..8).map(|p| ev(p, 400)).collect();
    let cases = [
        (true, true, ZSTD),
        (false, true, ""),
        (true, false, ""),
        (false, false, ""),
    ];
    for (agent_zstd, cloud_zstd, picked) in cases {
        let acfg = AgentConfig {
            compression: agent_zstd,
            compress_min_bytes: 100,
            ..agent_cfg()
        };
        let ccfg = CloudConfig {
            compression: cloud_zstd,
            ..CloudConfig::default()
        };
        let mut h = Harness::new(acfg, ccfg, &["hi"]);
        let offered: &[&str] = if agent_zstd { &[ZSTD] } else { &[] };
        assert_eq!(h.hello().codecs, offered);
        assert_eq!(h.welcome().codec, picked, "{agent_zstd} {cloud_zstd}");
        assert_eq!(h.agent.codec(), picked);
        h.append("hi", big.clone());
        h.run_until_acked(10_000);
        let compressed = h.batches().iter().filter(|b| b.1.codec == ZSTD).count();
        assert_eq!(compressed, if picked.is_empty() { 0 } else { 2 });
        let stored: Vec<Event> = h.store.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(stored, big);
        assert_eq!(h.cloud_stats().nacks_invalid, 0);
    }
}

#[test]
fn an_agent_ignores_a_codec_it_did_not_offer() {
    let mut s = AgentSession::new(
        AgentConfig {
            compression: false,
            compress_min_bytes: 0,
            ..agent_cfg()
        },
        NODE,
        EPOCH,
        vec![LaneSpec::new("hi", 0)],
        1,
        0,
    );
    s.handle_timeout(0);
    s.on_connected(0);
    s.on_frame(
        1,
        CloudFrame {
            frame: Some(cloud_frame::Frame::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                credit: 10,
                codec: ZSTD.into(),
                lanes: vec![],
                ..Default::default()
            })),
        },
    );
    assert!(s.is_streaming());
    assert_eq!(s.codec(), "");
    let actions: Vec<AgentAction> = std::iter::from_fn(|| s.poll_action()).collect();
    let Some(AgentAction::Fetch { id, .. }) = actions.last().cloned() else {
        panic!("{actions:?}")
    };
    s.on_fetched(2, id, vec![ev(0, 2_000)]);
    let sent: Vec<AgentAction> = std::iter::from_fn(|| s.poll_action()).collect();
    assert!(sent.iter().any(|a| matches!(a,
        AgentAction::Send(f) if batch_of(f).is_some_and(|b| b.codec.is_empty() && b.events.len() == 1))));
}

/// A streaming cloud session (lane "hi", nothing committed) whose agent offered `codecs`.
fn cloud_streaming(cfg: CloudConfig, codecs: &[&str]) -> CloudSession {
    let mut s = CloudSession::new(NODE, cfg, 0);
    s.on_frame(
        0,
        AgentFrame {
            frame: Some(agent_frame::Frame::Hello(Hello {
                node_id: NODE.into(),
                protocol_version: PROTOCOL_VERSION,
                epoch: EPOCH.into(),
                codecs: codecs.iter().map(|c| (*c).to_owned()).collect(),
                lanes: vec![LaneResume {
                    lane: "hi".into(),
                    resume_seq: 0,
                }],
                ..Default::default()
            })),
        },
    );
    s.on_watermarks(0, Ok(vec![]));
    let a: Vec<CloudAction> = std::iter::from_fn(|| s.poll_action()).collect();
    assert!(
        matches!(
            &a[..],
            [CloudAction::LoadWatermarks { .. }, CloudAction::Send(_)]
        ),
        "{a:?}"
    );
    assert!(s.is_streaming());
    s
}

fn compressed_batch(seq: u64, codec: &str, compressed: Vec<u8>, events: Vec<Event>) -> AgentFrame {
    AgentFrame {
        frame: Some(agent_frame::Frame::Batch(Batch {
            batch_seq: seq,
            events,
            compressed,
            codec: codec.into(),
            priority: "hi".into(),
            prev_seq: None,
        })),
    }
}

/// The single Nack the session answered with (and that it asked for no commit).
fn only_nack(s: &mut CloudSession) -> Nack {
    let a: Vec<CloudAction> = std::iter::from_fn(|| s.poll_action()).collect();
    assert!(
        !a.iter().any(|a| matches!(a, CloudAction::Commit(_))),
        "{a:?}"
    );
    match &a[..] {
        [CloudAction::Send(CloudFrame {
            frame: Some(cloud_frame::Frame::Nack(n)),
        })] => n.clone(),
        _ => panic!("{a:?}"),
    }
}

#[test]
fn corrupt_and_oversized_compressed_batches_are_invalid_and_commit_nothing() {
    let limit = 10_000;
    let cfg = CloudConfig {
        max_batch_bytes: limit,
        ..CloudConfig::default()
    };
    let mut s = cloud_streaming(cfg.clone(), &[ZSTD]);
    let mut z = Compressor::new(1).unwrap();
    let events: Vec<Event> = (1..=3).map(|p| ev(p, 200)).collect();
    let good = z
        .compress(&compress::encode_events(events.clone()).0)
        .unwrap();
    // A bomb that declares its size: 64 MiB of zeros in a few KiB.
    let bomb = z.compress(&vec![0u8; 64 << 20]).unwrap();
    assert!(bomb.len() < 8 << 10);
    // A bomb that does not: streamed, no content size in the header.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    std::io::Write::write_all(&mut enc, &vec![0u8; 8 << 20]).unwrap();
    let streamed_bomb = enc.finish().unwrap();
    let not_a_list = z.compress(&[0xff; 64]).unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 5);
    let plain_too_big: Vec<Event> = (1..=3).map(|p| ev(p, limit / 3)).collect();

    let cases: Vec<(AgentFrame, &str)> = vec![
        (
            compressed_batch(1, ZSTD, b"definitely not zstd".to_vec(), vec![]),
            "corrupt zstd data",
        ),
        (
            compressed_batch(2, ZSTD, truncated, vec![]),
            "corrupt zstd data",
        ),
        (
            compressed_batch(3, ZSTD, bomb, vec![]),
            "exceeds 10000 bytes (declares 67108864)",
        ),
        (
            compressed_batch(4, ZSTD, streamed_bomb, vec![]),
            "exceeds 10000 bytes",
        ),
        (
            compressed_batch(5, ZSTD, not_a_list, vec![]),
            "not an EventList",
        ),
        (
            compressed_batch(6, "lz4", good.clone(), vec![]),
            "codec \"lz4\" was not negotiated",
        ),
        (
            compressed_batch(7, "", good.clone(), vec![]),
            "without a codec",
        ),
        (
            compressed_batch(8, ZSTD, good.clone(), events.clone()),
            "plain events beside",
        ),
        (
            compressed_batch(9, ZSTD, Vec::new(), vec![]),
            "no compressed bytes",
        ),
        (
            compressed_batch(10, "", Vec::new(), plain_too_big),
            "over the limit of 10000",
        ),
    ];
    for (i, (frame, expect)) in cases.into_iter().enumerate() {
        s.on_frame(1, frame);
        let n = only_nack(&mut s);
        assert_eq!(n.reason, NackReason::InvalidBatch as i32, "case {i}: {n:?}");
        assert!(n.message.contains(expect), "case {i}: {:?}", n.message);
        assert_eq!(n.batch_seq, i as u64 + 1);
        assert!(!n.has_watermark);
        assert_eq!(s.watermark("hi"), None);
        assert_eq!(s.events_held(), 0);
    }
    let st = s.stats().clone();
    assert_eq!((st.batches_received, st.nacks_invalid), (10, 10));
    assert_eq!((st.batches_compressed, st.bytes_raw, st.commits), (0, 0, 0));

    // The session is still good: a valid compressed batch commits exactly its events.
    s.on_frame(2, compressed_batch(11, ZSTD, good.clone(), vec![]));
    let a: Vec<CloudAction> = std::iter::from_fn(|| s.poll_action()).collect();
    let [CloudAction::Commit(req)] = &a[..] else {
        panic!("{a:?}")
    };
    assert_eq!(req.events, events);
    assert_eq!(req.new_watermark, 3);
    s.on_committed(5, 11, CommitOutcome::Committed);
    let st = s.stats();
    assert_eq!(st.batches_compressed, 1);
    assert_eq!(st.bytes_raw, compress::raw_len(&events) as u64);
    assert_eq!(
        (st.commits, st.commit_ms_last, st.commit_ms_total),
        (1, 3, 3)
    );

    // A cloud that did not pick zstd refuses even a valid compressed batch.
    let mut s = cloud_streaming(
        CloudConfig {
            compression: false,
            ..cfg.clone()
        },
        &[ZSTD],
    );
    s.on_frame(1, compressed_batch(1, ZSTD, good.clone(), vec![]));
    let n = only_nack(&mut s);
    assert_eq!(n.reason, NackReason::InvalidBatch as i32);
    assert!(n.message.contains("not negotiated"), "{}", n.message);
    // Nor does one whose agent did not offer it.
    let mut s = cloud_streaming(cfg, &["lz4"]);
    assert_eq!(s.codec(), "");
    s.on_frame(1, compressed_batch(1, ZSTD, good, vec![]));
    assert_eq!(only_nack(&mut s).reason, NackReason::InvalidBatch as i32);
}

#[test]
fn an_invalid_compressed_batch_stops_the_lane_without_skipping() {
    // The agent's side of a refusal: the lane stops, the outbox is not acked past it.
    let limit = 2_000;
    let acfg = AgentConfig {
        compress_min_bytes: 0,
        ..agent_cfg()
    };
    let ccfg = CloudConfig {
        max_batch_bytes: limit,
        ..CloudConfig::default()
    };
    let mut h = Harness::new(acfg, ccfg, &["hi"]);
    h.append("hi", vec![ev(0, 10)]);
    h.append("hi", (1..4).map(|p| ev(p, 1_000)).collect());
    assert!(h.agent.is_lane_stopped("hi"));
    assert_eq!(h.acked[0], Some(0));
    assert!(h
        .errors
        .iter()
        .any(|e| matches!(e, AgentAction::LaneStopped { .. })));
    assert_eq!(h.store.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Bandwidth cap

/// Replays the token bucket over the frames sent: no batch went while the bucket was in debt,
/// and each went at the first millisecond it could. Returns the bits charged before the last
/// batch.
fn check_paced(frames: &[(u64, AgentFrame)], kbps: u64, burst_bits: i128) -> i128 {
    let rate = i128::from(kbps);
    let mut level = burst_bits;
    let mut at = 0u64;
    let mut charged = 0i128;
    let mut before_last = 0i128;
    let mut prev = None;
    for (t, f) in frames {
        level = (level + i128::from(t - at) * rate).min(burst_bits);
        at = *t;
        let bits = f.encoded_len() as i128 * 8;
        if batch_of(f).is_some() {
            assert!(
                level >= 0,
                "a batch went at {t} ms with the bucket at {level} bits"
            );
            if prev.is_some_and(|p| *t > p) {
                assert!(
                    level - rate < 0,
                    "the batch of {t} ms could have gone a ms earlier"
                );
            }
            before_last = charged;
        }
        prev = Some(*t);
        level -= bits;
        charged += bits;
    }
    before_last
}

#[test]
fn bandwidth_cap_paces_wire_bytes() {
    let kbps = 80; // 10 bytes per ms
    let cfg = AgentConfig {
        max_batch_events: 10,
        max_batch_bytes: 2_000,
        compression: false,
        max_kbps: kbps,
        ..AgentConfig::default()
    };
    let burst_bits = i128::from((kbps * 100).max(2_000 * 8));
    let mut h = Harness::new(cfg, CloudConfig::default(), &["hi"]);
    let events: Vec<Event> = (0..200)
        .map(|p| ev(p, 60 + (p as usize % 7) * 10))
        .collect();
    h.append("hi", events.clone());
    h.run_until_acked(600_000);
    assert_eq!(h.store.len(), 200);

    let before_last = check_paced(&h.frames, kbps, burst_bits);
    let a = h.agent.stats().clone();
    let total_bits = i128::from(a.bytes_wire + a.bytes_control) * 8;
    let sent: i128 = h
        .frames
        .iter()
        .map(|(_, f)| f.encoded_len() as i128 * 8)
        .sum();
    assert_eq!(total_bits, sent);
    // N bytes at R kbit/s: the last batch goes when all but it, less the burst, is paid for.
    let t_last = h.batches().last().map(|b| b.0).unwrap();
    let expected = (before_last - burst_bits).max(0) as u64;
    assert_eq!(t_last, expected.div_ceil(kbps), "{a:?}");
    assert!(
        u128::from(t_last) * u128::from(kbps)
            >= (total_bits - burst_bits - i128::from(a.last_batch_bytes) * 8) as u128
    );
    assert!(t_last < (total_bits as u64).div_ceil(kbps));
    // The burst ran out at once: held from 0 ms to the last batch.
    assert!(h.batches()[1].0 == 0 && h.batches()[2].0 > 0);
    assert_eq!(a.throttled_ms, t_last, "{a:?}");
    assert!(a.throttle_holds >= 1);
    assert_eq!(a.batches_sent, 20);
}

#[test]
fn urgent_lane_overtakes_a_bulk_backlog_under_the_cap() {
    let kbps = 40; // 5 bytes per ms
    let cfg = AgentConfig {
        max_batch_events: 8,
        max_batch_bytes: 1_500,
        compression: false,
        max_kbps: kbps,
        ..AgentConfig::default()
    };
    let mut h = Harness::new(cfg, CloudConfig::default(), &["urgent", "bulk"]);
    h.append("bulk", (0..300).map(|p| ev(p, 120)).collect());
    // Let the backlog drain for a while, then an urgent event arrives between two batches.
    let t_urgent = 2_345;
    while h.now < t_urgent {
        h.advance(t_urgent);
    }
    let bulk_before = h.batches().len();
    h.append("urgent", vec![ev(1_000, 20)]);
    while !h.all_acked() {
        h.advance(u64::MAX);
    }
    let batches = h.batches();
    let (t_sent, first_after, _) = batches[bulk_before];
    assert_eq!(
        first_after.priority, "urgent",
        "the next batch after the urgent append"
    );
    // It waited only for the debt of the bulk batch before it.
    let (t_prev, _, prev_wire) = batches[bulk_before - 1];
    assert!(t_prev <= t_urgent);
    assert!(t_sent >= t_urgent);
    assert!(t_sent <= t_urgent + (prev_wire as u64 * 8).div_ceil(kbps));
    assert!(batches[bulk_before + 1..]
        .iter()
        .all(|b| b.1.priority == "bulk"));
    assert!(
        batches.len() > bulk_before + 5,
        "the backlog was not still there"
    );
    check_paced(&h.frames, kbps, i128::from((kbps * 100).max(1_500 * 8)));
}

// ---------------------------------------------------------------------------------------------
// Stats

fn drain(s: &mut AgentSession) -> Vec<AgentAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn cloud(f: cloud_frame::Frame) -> CloudFrame {
    CloudFrame { frame: Some(f) }
}

fn sent_batches(actions: &[AgentAction]) -> Vec<Vec<u64>> {
    actions
        .iter()
        .filter_map(|a| match a {
            AgentAction::Send(f) => {
                batch_of(f).map(|b| b.events.iter().map(|e| e.position).collect())
            }
            _ => None,
        })
        .collect()
}

fn fetch_id(actions: &[AgentAction], lane: &str) -> u64 {
    actions
        .iter()
        .find_map(|a| match a {
            AgentAction::Fetch { id, lane: l, .. } if l == lane => Some(*id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no fetch of {lane}: {actions:?}"))
}

/// A session streaming at `t` with lane "hi" at watermark 10, window `credit`.
fn streaming(t: u64, credit: u32) -> (AgentSession, u64) {
    let mut s = AgentSession::new(
        agent_cfg(),
        NODE,
        EPOCH,
        vec![LaneSpec::new("hi", 11)],
        3,
        t,
    );
    s.handle_timeout(t);
    s.on_connected(t);
    drain(&mut s);
    s.on_frame(
        t,
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
    let id = fetch_id(&a, "hi");
    (s, id)
}

fn ack(seq: u64, wm: u64, duplicates: u32) -> CloudFrame {
    cloud(cloud_frame::Frame::Ack(Ack {
        batch_seq: seq,
        watermark: wm,
        duplicates,
        lane: "hi".into(),
    }))
}

fn lag(s: &AgentSession) -> LaneLag {
    s.lane_lag().remove(0)
}

#[test]
fn stats_lag_latency_duplicates_retransmissions() {
    let (mut s, id) = streaming(100, 2);
    assert_eq!(
        lag(&s),
        LaneLag {
            lane: "hi".into(),
            acked: Some(10),
            in_flight_events: 0,
            pending_events: 0,
            oldest_unacked_age_ms: None,
            stopped: false,
        }
    );
    s.on_fetched(103, id, (11..=15).map(|p| ev(p, 5)).collect());
    let a = drain(&mut s);
    assert_eq!(sent_batches(&a), [vec![11, 12]]);
    let l = lag(&s);
    assert_eq!((l.in_flight_events, l.pending_events), (2, 3));
    assert_eq!(s.lane_lag_at(110)[0].oldest_unacked_age_ms, Some(7));

    // Batch 1 acked after 13 ms, with one duplicate: latency sampled, the next batch goes.
    s.on_frame(116, ack(1, 12, 1));
    let a = drain(&mut s);
    assert_eq!(sent_batches(&a), [vec![13, 14]]);
    let st = s.stats().clone();
    assert_eq!((st.ack_latency_samples, st.ack_latency_last_ms), (1, 13));
    assert_eq!(st.ack_latency_smoothed_ms, 13);
    assert_eq!(st.duplicates, 1);
    // 13 and 14 were read at 103 like the acked ones: the age still counts from then.
    assert_eq!(s.lane_lag_at(120)[0].oldest_unacked_age_ms, Some(17));

    // Out of order: the lane rewinds to 12 and sends 13, 14 again.
    s.on_frame(
        120,
        cloud(cloud_frame::Frame::Nack(Nack {
            batch_seq: 2,
            reason: NackReason::OutOfOrder as i32,
            watermark: 12,
            has_watermark: true,
            lane: "hi".into(),
            message: String::new(),
        })),
    );
    let a = drain(&mut s);
    let id = fetch_id(&a, "hi");
    s.on_fetched(121, id, (13..=16).map(|p| ev(p, 5)).collect());
    let a = drain(&mut s);
    assert_eq!(sent_batches(&a), [vec![13, 14]]);
    let st = s.stats().clone();
    assert_eq!(
        (st.rewinds, st.retransmitted_events, st.events_sent),
        (1, 2, 6)
    );
    // 16 was first read at 121, 13..=15 at 103: the oldest unacked still dates from 103.
    assert_eq!(s.lane_lag_at(130)[0].oldest_unacked_age_ms, Some(27));

    // Batch 3 acked 29 ms later with 2 duplicates; EWMA = (13*8 - 13 + 29) / 8 = 15.
    s.on_frame(150, ack(3, 14, 2));
    let a = drain(&mut s);
    assert_eq!(sent_batches(&a), [vec![15, 16]]);
    let st = s.stats().clone();
    assert_eq!(
        (st.ack_latency_last_ms, st.ack_latency_smoothed_ms),
        (29, 15)
    );
    assert_eq!(st.duplicates, 3);
    assert_eq!(st.retransmitted_events, 2);
    assert_eq!(st.last_batch_events, 2);
    // 15 is the oldest unacked now: read at 103 too.
    assert_eq!(s.lane_lag_at(150)[0].oldest_unacked_age_ms, Some(47));
    s.on_frame(151, ack(4, 16, 0));
    drain(&mut s);
    let l = lag(&s);
    assert_eq!(
        (l.acked, l.in_flight_events, l.pending_events),
        (Some(16), 0, 0)
    );
    assert_eq!(l.oldest_unacked_age_ms, None);
    assert_eq!(s.stats().reconnects, 0);
}

#[test]
fn ping_rtt_and_reconnects() {
    let (mut s, id) = streaming(0, 10);
    s.on_fetched(0, id, vec![]);
    drain(&mut s);
    let keepalive = AgentConfig::default().keepalive_ms;
    let mut pongs = [7u64, 15].into_iter();
    let mut t = 0;
    while s.stats().rtt_samples < 2 {
        t = s.poll_timeout().unwrap();
        s.handle_timeout(t);
        for a in drain(&mut s) {
            if let AgentAction::Send(AgentFrame {
                frame: Some(agent_frame::Frame::Ping(p)),
            }) = a
            {
                assert_eq!(t % keepalive, 0);
                let rtt = pongs.next().unwrap();
                // A stale pong (wrong nonce) is no sample.
                s.on_frame(
                    t + 1,
                    cloud(cloud_frame::Frame::Pong(Pong {
                        nonce: p.nonce + 100,
                        sent_unix_nanos: 0,
                    })),
                );
                s.on_frame(
                    t + rtt,
                    cloud(cloud_frame::Frame::Pong(Pong {
                        nonce: p.nonce,
                        sent_unix_nanos: p.sent_unix_nanos,
                    })),
                );
            }
        }
    }
    let st = s.stats().clone();
    assert_eq!((st.rtt_samples, st.rtt_last_ms), (2, 15));
    assert_eq!(st.rtt_smoothed_ms, (7 * 8 - 7 + 15) / 8);
    assert_eq!(st.pings_sent, 2);

    // A connection lost after its handshake is a reconnect; a failed attempt is not.
    s.on_disconnected(t + 20);
    assert_eq!(s.stats().reconnects, 1);
    let t = s.poll_timeout().unwrap();
    s.handle_timeout(t);
    assert_eq!(drain(&mut s), [AgentAction::Connect]);
    s.on_disconnected(t + 1);
    assert_eq!(s.stats().reconnects, 1);
    assert_eq!(s.stats().connects, 2);
    assert_eq!(s.codec(), "");
}
