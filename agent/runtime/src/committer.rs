//! The committer: one thread that owns every write to the log.
//!
//! It takes all queued requests at once (a *commit group*), checks each append against the
//! streams' versions, the idempotency window and the outbox caps, lays the accepted events into
//! records, and writes the whole group as one atomic sled batch. In sync mode it then flushes and
//! fdatasyncs once for the group (group commit) before any append in it is acknowledged.
//! If the write fails, every request of the group fails and the in-memory state is reloaded from
//! disk, which the atomic batch left as it was before the group.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use outrider_proto::Event;
use prost::Message;

use crate::codec::{self, ClassEntry, RecordWriter, EVENT_HEADER_LEN};
use crate::config::{Durability, FullPolicy};
use crate::error::{Error, Result};
use crate::log::{AppendResult, Shared};
use crate::metrics::Metrics;
use crate::outbox::{entries_from, MaintainReport, OutboxState};
use crate::read::{self, PositionReader};
use crate::validate::validate_event;
use crate::ExpectedVersion;

/// Records are cut at about this size so that sled pages stay inline in its segments.
const RECORD_TARGET_BYTES: usize = 12 * 1024;
/// Most log records reclaimed by one maintenance pass.
const RECLAIM_RECORDS_PER_PASS: usize = 4096;
/// Streams whose versions are cached in memory (backed by sled; evicted wholesale when full).
const STREAM_CACHE: usize = 65_536;

pub(crate) enum Request {
    Append {
        stream: String,
        expected: ExpectedVersion,
        events: Vec<Event>,
        class: usize,
        reply: flume::Sender<Result<AppendResult>>,
    },
    Ack {
        dest: usize,
        class: usize,
        through: u64,
        reply: flume::Sender<Result<()>>,
    },
    Maintain {
        reply: flume::Sender<Result<MaintainReport>>,
    },
    Flush {
        reply: flume::Sender<Result<()>>,
    },
    Close {
        reply: flume::Sender<Result<()>>,
    },
}

enum Reply {
    Append(flume::Sender<Result<AppendResult>>, Result<AppendResult>),
    Ack(flume::Sender<Result<()>>, Result<()>),
}

#[derive(Debug, Clone, Copy)]
struct StreamSt {
    sid: u64,
    next_version: u64,
}

/// Recent (stream, event id) → (position, version), bounded, oldest evicted first.
struct Dedupe {
    map: HashMap<u64, (u64, u64)>,
    order: VecDeque<u64>,
    cap: usize,
}

impl Dedupe {
    fn insert(&mut self, h: u64, pos: u64, version: u64) {
        if self.cap == 0 {
            return;
        }
        if self.map.insert(h, (pos, version)).is_none() {
            self.order.push_back(h);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

/// One commit group being assembled.
struct Group {
    batch: sled::Batch,
    writes: usize,
    bytes: usize,
    commit_ms: i64,
    record: Option<(u64, RecordWriter, [ClassEntry; 32], u32)>,
    /// Stream id → (first version in this group, positions).
    chunks: HashMap<u64, (u64, Vec<u64>)>,
    /// Position → event id of events staged in this group (for idempotency checks).
    staged: HashMap<u64, String>,
    replies: Vec<Reply>,
}

impl Group {
    fn new(commit_ms: i64) -> Self {
        Self {
            batch: sled::Batch::default(),
            writes: 0,
            bytes: 0,
            commit_ms,
            record: None,
            chunks: HashMap::new(),
            staged: HashMap::new(),
            replies: Vec::new(),
        }
    }

    fn insert(&mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
        self.batch.insert(k.as_ref(), v.as_ref());
        self.writes += 1;
    }

    fn push_event(&mut self, class: u8, pos: u64, payload: &[u8]) {
        let full = matches!(&self.record, Some((_, w, _, _))
            if w.count() > 0 && w.len() + EVENT_HEADER_LEN + payload.len() > RECORD_TARGET_BYTES);
        if full {
            self.finish_record();
        }
        let commit_ms = self.commit_ms;
        let (_, w, entries, mask) = self.record.get_or_insert_with(|| {
            (
                pos,
                RecordWriter::new(commit_ms),
                [ClassEntry::default(); 32],
                0,
            )
        });
        w.push(class, payload);
        let e = &mut entries[usize::from(class)];
        e.count += 1;
        e.bytes += payload.len() as u64;
        e.commit_ms = commit_ms;
        *mask |= 1 << class;
        self.bytes += payload.len();
    }

    fn finish_record(&mut self) {
        let Some((first, w, mut entries, mask)) = self.record.take() else {
            return;
        };
        let end = first + u64::from(w.count());
        self.insert(codec::log_key(first), w.finish());
        for (class, e) in entries.iter_mut().enumerate() {
            if mask & (1 << class) != 0 {
                e.end = end;
                self.insert(codec::class_entry_key(class as u8, first), e.encode());
            }
        }
    }
}

pub(crate) struct Committer {
    sh: Arc<Shared>,
    next_pos: u64,
    next_sid: u64,
    streams: HashMap<String, StreamSt>,
    dedupe: Dedupe,
    hasher: std::collections::hash_map::RandomState,
}

impl Committer {
    pub(crate) fn new(sh: Arc<Shared>, next_sid: u64) -> Result<Self> {
        let mut c = Self {
            next_pos: sh.head.load(Ordering::Acquire),
            next_sid,
            streams: HashMap::new(),
            dedupe: Dedupe {
                map: HashMap::new(),
                order: VecDeque::new(),
                cap: sh.cfg.dedupe_window,
            },
            hasher: Default::default(),
            sh,
        };
        c.preload_dedupe()?;
        Ok(c)
    }

    /// Fills the idempotency window from the log's tail, so retries across restarts are caught.
    fn preload_dedupe(&mut self) -> Result<()> {
        let head = self.next_pos;
        let from = head
            .saturating_sub(self.dedupe.cap as u64)
            .max(self.sh.start.load(Ordering::Acquire));
        let mut sids: HashMap<String, u64> = HashMap::new();
        let sh = self.sh.clone();
        let mut found = Vec::new();
        let scanned = read::scan_log(&sh, from, |_, payload, pos| {
            let e = read::decode_event(pos, payload)?;
            found.push((e.stream, e.id, pos, e.version));
            Ok(true)
        });
        // A damaged record behind the verified tail must not stop the log from opening: the
        // window then covers what could be read, and reads of the damage report its position.
        if let Err(e) = scanned {
            tracing::warn!(error = %e, "idempotency window only partly rebuilt");
        }
        for (stream, id, pos, version) in found {
            let sid = match sids.get(&stream) {
                Some(s) => *s,
                None => match read::stream_info(&sh, &stream)? {
                    Some((sid, _)) => {
                        sids.insert(stream, sid);
                        sid
                    }
                    None => continue,
                },
            };
            let h = self.hasher.hash_one((sid, id.as_str()));
            self.dedupe.insert(h, pos, version);
        }
        Ok(())
    }

    pub(crate) fn run(mut self, rx: flume::Receiver<Request>) {
        let max_bytes = self.sh.cfg.max_group_bytes;
        loop {
            let Ok(first) = rx.recv() else {
                if let Err(e) = self.sh.sync() {
                    tracing::error!(error = %e, "final flush failed");
                }
                return;
            };
            let mut g = Group::new(self.sh.clock.now_unix_millis());
            let mut control = self.handle(first, &mut g);
            while control.is_none() && g.bytes < max_bytes {
                match rx.try_recv() {
                    Ok(req) => control = self.handle(req, &mut g),
                    Err(_) => break,
                }
            }
            self.commit(g);
            match control {
                None => {}
                Some(Request::Flush { reply }) => {
                    let r = self.sh.sync();
                    if r.is_ok() {
                        self.sh.mark_durable(self.next_pos);
                    }
                    let _ = reply.send(r);
                }
                Some(Request::Maintain { reply }) => {
                    let r = self.maintain();
                    if r.is_err() {
                        self.reload();
                    }
                    let _ = reply.send(r);
                }
                Some(Request::Close { reply }) => {
                    let r = self.sh.sync();
                    if r.is_ok() {
                        self.sh.mark_durable(self.next_pos);
                    }
                    let _ = reply.send(r);
                    return;
                }
                Some(_) => {}
            }
        }
    }

    /// Stages one request into the group; returns control requests that need the group committed.
    fn handle(&mut self, req: Request, g: &mut Group) -> Option<Request> {
        match req {
            Request::Append {
                stream,
                expected,
                events,
                class,
                reply,
            } => {
                let r = self.stage_append(g, &stream, expected, events, class);
                g.replies.push(Reply::Append(reply, r));
                None
            }
            Request::Ack {
                dest,
                class,
                through,
                reply,
            } => {
                let r = self.stage_ack(g, dest, class, through);
                g.replies.push(Reply::Ack(reply, r));
                None
            }
            other => Some(other),
        }
    }

    fn commit(&mut self, mut g: Group) {
        g.finish_record();
        let chunks = std::mem::take(&mut g.chunks);
        for (sid, (first, positions)) in chunks {
            g.insert(
                codec::chunk_key(sid, first),
                codec::encode_chunk(&positions),
            );
        }
        let mut result = Ok(());
        if g.writes > 0 {
            let events = g.staged.len() as u64;
            result = self.sh.db.apply_batch(g.batch).map_err(Error::from);
            if result.is_ok() && self.sh.cfg.durability == Durability::Sync && events > 0 {
                result = self.sh.sync();
            }
            if result.is_ok() {
                let durable = match self.sh.cfg.durability {
                    Durability::Sync => self.next_pos,
                    Durability::Periodic { .. } => 0,
                };
                self.sh.publish(self.next_pos, durable);
                Metrics::inc(&self.sh.metrics.commit_groups, 1);
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "commit failed; reloading state from disk");
            self.reload();
        }
        for reply in g.replies {
            match reply {
                Reply::Append(tx, r) => {
                    let r = match (&result, r) {
                        (Err(e), Ok(_)) => Err(Error::Storage(e.to_string())),
                        (_, r) => r,
                    };
                    if let Ok(ok) = &r {
                        if !ok.duplicate {
                            Metrics::inc(&self.sh.metrics.appends, 1);
                        }
                    }
                    let _ = tx.send(r);
                }
                Reply::Ack(tx, r) => {
                    let r = match (&result, r) {
                        (Err(e), Ok(())) => Err(Error::Storage(e.to_string())),
                        (_, r) => r,
                    };
                    let _ = tx.send(r);
                }
            }
        }
    }

    /// Drops all cached state and reads it again from disk.
    fn reload(&mut self) {
        self.streams.clear();
        self.dedupe.clear();
        self.next_pos = self.sh.head.load(Ordering::Acquire);
        match self.sh.db.get(codec::META_NEXT_SID) {
            Ok(Some(v)) => self.next_sid = codec::be_u64(&v).unwrap_or(self.next_sid),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reload: cannot read next stream id"),
        }
        match OutboxState::load(&self.sh) {
            Ok(ob) => *self.sh.outbox.lock() = ob,
            Err(e) => tracing::error!(error = %e, "reload: cannot read outbox state"),
        }
        if let Err(e) = self.preload_dedupe() {
            tracing::error!(error = %e, "reload: cannot rebuild the idempotency window");
        }
    }

    fn stream_state(&mut self, name: &str) -> Result<Option<StreamSt>> {
        if let Some(s) = self.streams.get(name) {
            return Ok(Some(*s));
        }
        let Some(sid) = self.sh.db.get(codec::stream_key(name))? else {
            return Ok(None);
        };
        let sid = codec::be_u64(&sid)
            .ok_or_else(|| Error::Storage(format!("stream {name:?}: bad id")))?;
        let next_version =
            read::last_chunk(&self.sh, sid)?.map_or(0, |(first, ps)| first + ps.len() as u64);
        let st = StreamSt { sid, next_version };
        self.cache_stream(name, st);
        Ok(Some(st))
    }

    fn cache_stream(&mut self, name: &str, st: StreamSt) {
        if self.streams.len() >= STREAM_CACHE && !self.streams.contains_key(name) {
            self.streams.clear();
        }
        self.streams.insert(name.to_string(), st);
    }

    /// The original (position, version) of `id` in stream `sid`, if the window remembers it.
    fn lookup_dup(
        &self,
        g: &Group,
        sid: u64,
        stream: &str,
        id: &str,
    ) -> Result<Option<(u64, u64)>> {
        let h = self.hasher.hash_one((sid, id));
        let Some(&(pos, version)) = self.dedupe.map.get(&h) else {
            return Ok(None);
        };
        // The window keys on a hash: confirm against the event itself.
        if let Some(staged) = g.staged.get(&pos) {
            return Ok((staged == id).then_some((pos, version)));
        }
        let e = PositionReader::new(&self.sh).get(pos)?;
        Ok(e.filter(|e| e.id == id && e.stream == stream)
            .map(|_| (pos, version)))
    }

    fn stage_append(
        &mut self,
        g: &mut Group,
        stream: &str,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
        class: usize,
    ) -> Result<AppendResult> {
        let now = self.sh.clock.now_unix_nanos();
        let mut ids = HashSet::with_capacity(events.len());
        for e in &mut events {
            if e.id.is_empty() {
                e.id = uuid::Uuid::now_v7().to_string();
            }
            validate_event(e)?;
            if !ids.insert(e.id.clone()) {
                return Err(Error::DuplicateIdInRequest { id: e.id.clone() });
            }
        }
        let st = self.stream_state(stream)?;
        let actual = st.and_then(|s| s.next_version.checked_sub(1));

        // Idempotent retry?
        if let Some(st) = st {
            let mut found = Vec::with_capacity(events.len());
            for e in &events {
                found.push(self.lookup_dup(g, st.sid, stream, &e.id)?);
            }
            let hits = found.iter().filter(|f| f.is_some()).count();
            if hits == events.len() {
                Metrics::inc(&self.sh.metrics.duplicate_appends, 1);
                return Ok(duplicate_result(found.into_iter().flatten(), st));
            }
            if hits > 0 {
                let i = found.iter().position(Option::is_some).unwrap_or(0);
                return Err(Error::PartialDuplicate {
                    stream: stream.into(),
                    id: events[i].id.clone(),
                });
            }
            if let ExpectedVersion::Exact(v) = expected {
                if let Some(r) = self.exact_retry(stream, st, v, &events)? {
                    Metrics::inc(&self.sh.metrics.duplicate_appends, 1);
                    return Ok(r);
                }
            }
        }
        if !expected.admits(actual) {
            return Err(Error::WrongExpectedVersion {
                stream: stream.into(),
                expected,
                actual,
            });
        }

        // Place and encode.
        let first_version = st.map_or(0, |s| s.next_version);
        let node = &self.sh.cfg.node_id;
        let mut payloads = Vec::with_capacity(events.len());
        let mut bytes = 0u64;
        for (i, e) in events.iter_mut().enumerate() {
            let pos = self.next_pos + i as u64;
            e.stream = stream.to_string();
            e.version = first_version + i as u64;
            e.position = pos;
            if e.origin_node.is_empty() {
                e.origin_node.clone_from(node);
                e.origin_seq = pos;
            }
            if e.time_seconds == 0 && e.time_nanos == 0 {
                e.time_seconds = now.div_euclid(1_000_000_000);
                e.time_nanos = now.rem_euclid(1_000_000_000) as u32;
            }
            let buf = e.encode_to_vec();
            if buf.len() > self.sh.cfg.max_event_bytes {
                return Err(Error::EventTooLarge {
                    id: e.id.clone(),
                    size: buf.len(),
                    limit: self.sh.cfg.max_event_bytes,
                });
            }
            bytes += buf.len() as u64;
            payloads.push(buf);
        }
        self.admit(g, class, payloads.len() as u64, bytes)?;

        // Commit to the in-memory state (undone by `reload` if the write fails).
        let st = match st {
            Some(s) => s,
            None => {
                let sid = self.next_sid;
                self.next_sid += 1;
                self.sh.streams.store(self.next_sid, Ordering::Release);
                g.insert(codec::stream_key(stream), sid.to_be_bytes());
                g.insert(codec::META_NEXT_SID, self.next_sid.to_be_bytes());
                StreamSt {
                    sid,
                    next_version: 0,
                }
            }
        };
        let class_id = self.sh.classes[class].id;
        let mut positions = Vec::with_capacity(events.len());
        let mut versions = Vec::with_capacity(events.len());
        for (e, payload) in events.iter().zip(&payloads) {
            g.push_event(class_id, e.position, payload);
            let chunk = g
                .chunks
                .entry(st.sid)
                .or_insert_with(|| (e.version, Vec::new()));
            chunk.1.push(e.position);
            let h = self.hasher.hash_one((st.sid, e.id.as_str()));
            self.dedupe.insert(h, e.position, e.version);
            g.staged.insert(e.position, e.id.clone());
            positions.push(e.position);
            versions.push(e.version);
        }
        let n = events.len() as u64;
        self.next_pos += n;
        let next_version = first_version + n;
        self.cache_stream(
            stream,
            StreamSt {
                sid: st.sid,
                next_version,
            },
        );
        if !self.sh.cfg.destinations.is_empty() {
            let mut ob = self.sh.outbox.lock();
            let rt = &mut ob.classes[class];
            rt.pending_events += n;
            rt.pending_bytes += bytes;
        }
        Metrics::inc(&self.sh.metrics.events_appended, n);
        Metrics::inc(&self.sh.metrics.bytes_appended, bytes);
        Ok(AppendResult {
            positions,
            versions,
            next_expected_version: next_version - 1,
            duplicate: false,
        })
    }

    /// An `Exact(v)` append whose events already sit at versions v+1.. is a retry: return them.
    fn exact_retry(
        &self,
        stream: &str,
        st: StreamSt,
        v: u64,
        events: &[Event],
    ) -> Result<Option<AppendResult>> {
        let n = events.len() as u64;
        if v.checked_add(n).is_none_or(|last| last >= st.next_version) {
            return Ok(None);
        }
        let page = read::read_stream(
            &self.sh,
            stream,
            crate::StreamFrom::Version(v + 1),
            crate::Direction::Forwards,
            events.len(),
        )?
        .events;
        if page.len() != events.len() || page.iter().zip(events).any(|(a, b)| a.id != b.id) {
            return Ok(None);
        }
        Ok(Some(duplicate_result(
            page.iter().map(|e| (e.position, e.version)),
            st,
        )))
    }

    /// Checks the class caps for `n` events of `bytes`; drops oldest or rejects per policy.
    fn admit(&mut self, g: &mut Group, class: usize, n: u64, bytes: u64) -> Result<()> {
        if self.sh.cfg.destinations.is_empty() {
            return Ok(());
        }
        let meta = &self.sh.classes[class];
        let cfg = &meta.cfg;
        let mut ob = self.sh.outbox.lock();
        let rt = &mut ob.classes[class];
        let fits = |e: u64, b: u64| {
            e.saturating_add(n) <= cfg.max_events && b.saturating_add(bytes) <= cfg.max_bytes
        };
        if fits(rt.pending_events, rt.pending_bytes) {
            return Ok(());
        }
        let full = |rt: &crate::outbox::ClassRt| Error::OutboxFull {
            class: cfg.name.clone(),
            pending_events: rt.pending_events,
            pending_bytes: rt.pending_bytes,
            max_events: cfg.max_events,
            max_bytes: cfg.max_bytes,
        };
        if cfg.full_policy == FullPolicy::RejectNew || n > cfg.max_events || bytes > cfg.max_bytes {
            rt.rejected_events += n;
            return Err(full(rt));
        }
        // Drop the oldest pending records of the class until the append fits.
        let mut state = rt.state;
        let (mut pe, mut pb) = (rt.pending_events, rt.pending_bytes);
        for entry in entries_from(&self.sh, meta.id, rt.release_point()) {
            if fits(pe, pb) {
                break;
            }
            let (_, e) = entry?;
            state.floor = state.floor.max(e.end);
            state.dropped_events += e.count;
            state.dropped_bytes += e.bytes;
            pe = pe.saturating_sub(e.count);
            pb = pb.saturating_sub(e.bytes);
        }
        if !fits(pe, pb) {
            rt.rejected_events += n;
            return Err(full(rt));
        }
        rt.state = state;
        rt.pending_events = pe;
        rt.pending_bytes = pb;
        g.insert(codec::class_state_key(meta.id), state.encode());
        Ok(())
    }

    fn stage_ack(&mut self, g: &mut Group, dest: usize, class: usize, through: u64) -> Result<()> {
        let head = self.sh.head.load(Ordering::Acquire);
        if through >= head {
            return Err(Error::AckBeyondHead {
                position: through,
                head,
            });
        }
        let id = self.sh.classes[class].id;
        let mut ob = self.sh.outbox.lock();
        let rt = &mut ob.classes[class];
        let new = through + 1;
        if new <= rt.cursors[dest] {
            return Ok(());
        }
        let old_rp = rt.release_point();
        rt.cursors[dest] = new;
        let new_rp = rt.release_point();
        g.insert(
            codec::cursor_key(id, &self.sh.cfg.destinations[dest]),
            new.to_be_bytes(),
        );
        if new_rp > old_rp {
            for entry in entries_from(&self.sh, id, old_rp) {
                let (_, e) = entry?;
                if e.end > new_rp {
                    break;
                }
                rt.pending_events = rt.pending_events.saturating_sub(e.count);
                rt.pending_bytes = rt.pending_bytes.saturating_sub(e.bytes);
            }
        }
        Ok(())
    }

    fn maintain(&mut self) -> Result<MaintainReport> {
        let mut report = MaintainReport {
            start: self.sh.start.load(Ordering::Acquire),
            ..Default::default()
        };
        if self.sh.cfg.destinations.is_empty() {
            return Ok(report);
        }
        let now_ms = self.sh.clock.now_unix_millis();
        let mut batch = sled::Batch::default();
        let mut release = [u64::MAX; 32];
        {
            let mut ob = self.sh.outbox.lock();
            for (meta, rt) in self.sh.classes.iter().zip(ob.classes.iter_mut()) {
                if let Some(ttl) = meta.cfg.ttl {
                    let cutoff =
                        now_ms.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
                    let mut state = rt.state;
                    for entry in entries_from(&self.sh, meta.id, rt.release_point()) {
                        let (_, e) = entry?;
                        if e.commit_ms >= cutoff {
                            break;
                        }
                        state.floor = state.floor.max(e.end);
                        state.expired_events += e.count;
                        state.expired_bytes += e.bytes;
                        rt.pending_events = rt.pending_events.saturating_sub(e.count);
                        rt.pending_bytes = rt.pending_bytes.saturating_sub(e.bytes);
                        report.expired_events += e.count;
                    }
                    if state != rt.state {
                        rt.state = state;
                        batch.insert(&codec::class_state_key(meta.id), &state.encode()[..]);
                    }
                }
                release[usize::from(meta.id)] = rt.release_point();
            }
        }

        // Reclaim the prefix every class has released.
        let limit = self
            .sh
            .durable
            .load(Ordering::Acquire)
            .min(self.sh.head.load(Ordering::Acquire));
        let mut new_start = report.start;
        let mut touched: HashMap<String, ()> = HashMap::new();
        for kv in self
            .sh
            .db
            .range(codec::log_key(0)..codec::log_key(limit))
            .take(RECLAIM_RECORDS_PER_PASS)
        {
            let (k, v) = kv?;
            let first = codec::be_u64(&k[1..]).unwrap_or(0);
            let (h, it) = codec::RecordIter::new(first, &v)?;
            let end = first + u64::from(h.count);
            let releasable = (0..32)
                .filter(|c| h.class_mask & (1 << c) != 0)
                .all(|c| end <= release[c]);
            if end > limit || !releasable {
                break;
            }
            for raw in it {
                let raw = raw?;
                let e = read::decode_event(raw.position, raw.payload)?;
                touched.insert(e.stream, ());
            }
            batch.remove(k);
            for c in 0..32u8 {
                if h.class_mask & (1 << c) != 0 {
                    batch.remove(&codec::class_entry_key(c, first));
                }
            }
            report.reclaimed_records += 1;
            report.reclaimed_events += u64::from(h.count);
            new_start = end;
        }
        if new_start > report.start {
            for stream in touched.keys() {
                let Some((sid, _)) = read::stream_info(&self.sh, stream)? else {
                    continue;
                };
                let mut chunks = self.sh.db.scan_prefix(codec::chunk_prefix(sid)).peekable();
                while let Some(kv) = chunks.next() {
                    let (k, v) = kv?;
                    let first = codec::be_u64(&k[9..]).unwrap_or(0);
                    let ps = codec::decode_chunk(first, &v)?;
                    // Keep the stream's last chunk: it carries the stream's version.
                    let is_last = chunks.peek().is_none();
                    if is_last || ps.last().is_some_and(|p| *p >= new_start) {
                        break;
                    }
                    batch.remove(k);
                }
            }
            batch.insert(codec::META_RECLAIMED, &new_start.to_be_bytes());
        }
        self.sh.db.apply_batch(batch)?;
        self.sh.start.store(new_start, Ordering::Release);
        Metrics::inc(&self.sh.metrics.reclaimed_events, report.reclaimed_events);
        report.start = new_start;
        Ok(report)
    }
}

fn duplicate_result(found: impl Iterator<Item = (u64, u64)>, st: StreamSt) -> AppendResult {
    let (positions, versions) = found.unzip();
    AppendResult {
        positions,
        versions,
        next_expected_version: st.next_version.saturating_sub(1),
        duplicate: true,
    }
}
