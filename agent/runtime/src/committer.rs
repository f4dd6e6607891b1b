//! The committer: one thread that owns every write to the log.
//!
//! It takes all queued requests at once (a *commit group*), checks each append against the
//! streams' versions, the idempotency window and the outbox caps, lays the accepted events into
//! records, and writes the whole group as one atomic sled batch. Callers have already validated
//! and encoded their events (`Log::prepare_append`), so per event the committer only places it:
//! it appends the version, position and origin seq fields to the encoding.
//!
//! In sync mode the group then goes to the [`Syncer`] thread, which flushes and fdatasyncs once
//! for every group that reached it (group commit), publishes the new head and only then
//! acknowledges the appends; meanwhile the committer already stages the next group.
//! If a write fails, every request of that group fails and the in-memory state is reloaded from
//! disk, which the atomic batch left as it was before the group. If an fsync fails, the log is
//! marked failed and refuses appends until reopened.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::codec::{self, ClassEntry, RecordWriter, EVENT_HEADER_LEN};
use crate::config::{Durability, FullPolicy};
use crate::error::{Error, Result};
use crate::log::{AppendResult, Checkpoint, Prepared, Shared};
use crate::metrics::Metrics;
use crate::outbox::{entries_from, MaintainReport, OutboxState};
use crate::read::{self, PositionReader};
use crate::ExpectedVersion;

/// Records are cut at about this size so that sled pages stay inline in its segments.
const RECORD_TARGET_BYTES: usize = 12 * 1024;
/// Most log records reclaimed by one maintenance pass.
const RECLAIM_RECORDS_PER_PASS: usize = 256;
/// Streams whose versions are cached in memory (backed by sled; evicted wholesale when full).
const STREAM_CACHE: usize = 65_536;
/// Applied groups waiting for the syncer; a full queue makes the committer wait.
const SYNC_QUEUE: usize = 64;

pub(crate) enum Request {
    Append {
        appends: Vec<(String, ExpectedVersion, Prepared)>,
        class: usize,
        checkpoint: Option<Checkpoint>,
        reply: flume::Sender<Result<Vec<AppendResult>>>,
    },
    Checkpoints {
        prefix: String,
        reply: flume::Sender<Result<Vec<(String, u64)>>>,
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
    Append(
        flume::Sender<Result<Vec<AppendResult>>>,
        Result<Vec<AppendResult>>,
    ),
    Ack(flume::Sender<Result<()>>, Result<()>),
    Checkpoints(
        flume::Sender<Result<Vec<(String, u64)>>>,
        Result<Vec<(String, u64)>>,
    ),
}

impl Reply {
    /// Sends the reply; a staged success becomes `failure` when its group did not commit.
    fn send(self, failure: Option<&Error>) {
        let fail = |e: &Error| Error::Storage(e.to_string());
        match self {
            Reply::Append(tx, r) => {
                let r = match (failure, r) {
                    (Some(e), Ok(_)) => Err(fail(e)),
                    (_, r) => r,
                };
                let _ = tx.send(r);
            }
            Reply::Ack(tx, r) => {
                let r = match (failure, r) {
                    (Some(e), Ok(())) => Err(fail(e)),
                    (_, r) => r,
                };
                let _ = tx.send(r);
            }
            Reply::Checkpoints(tx, r) => {
                let r = match (failure, r) {
                    (Some(e), Ok(_)) => Err(fail(e)),
                    (_, r) => r,
                };
                let _ = tx.send(r);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct StreamSt {
    sid: u64,
    next_version: u64,
}

/// A hasher for keys that already are hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type HashIndex = HashMap<u64, (u64, u64), BuildHasherDefault<Prehashed>>;

/// Recent (stream, event id) hashes → (position, version), in two generations: when the current
/// one holds a full window it becomes the old one and the previous old one is dropped, so at
/// least the last `window` events (and at most twice that) are remembered. Hits
/// are confirmed against the stored event, so a hash collision can never drop an event.
struct Dedupe {
    cur: HashIndex,
    old: HashIndex,
    half: usize,
}

impl Dedupe {
    fn new(window: usize) -> Self {
        Self {
            cur: HashIndex::default(),
            old: HashIndex::default(),
            half: window,
        }
    }

    fn get(&self, h: u64) -> Option<(u64, u64)> {
        self.cur.get(&h).or_else(|| self.old.get(&h)).copied()
    }

    fn insert(&mut self, h: u64, pos: u64, version: u64) {
        if self.half == 0 {
            return;
        }
        if self.cur.len() >= self.half {
            self.old = std::mem::take(&mut self.cur);
        }
        self.cur.insert(h, (pos, version));
    }

    fn clear(&mut self) {
        self.cur.clear();
        self.old.clear();
    }
}

/// One commit group being assembled.
struct Group {
    batch: sled::Batch,
    writes: usize,
    bytes: usize,
    commit_ms: i64,
    /// First position of the group.
    first: u64,
    record: Option<(u64, RecordWriter, [ClassEntry; 32], u32)>,
    /// Stream id → (first version in this group, positions).
    chunks: HashMap<u64, (u64, Vec<u64>)>,
    /// Ids of the events staged in this group, by position − `first`.
    staged: Vec<String>,
    replies: Vec<Reply>,
}

impl Group {
    fn new(commit_ms: i64, first: u64) -> Self {
        Self {
            batch: sled::Batch::default(),
            writes: 0,
            bytes: 0,
            commit_ms,
            first,
            record: None,
            chunks: HashMap::new(),
            staged: Vec::new(),
            replies: Vec::new(),
        }
    }

    fn insert(&mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
        self.batch.insert(k.as_ref(), v.as_ref());
        self.writes += 1;
    }

    fn push_event(&mut self, class: u8, pos: u64, payload: &[u8], suffix: &[u8]) {
        let len = payload.len() + suffix.len();
        let full = matches!(&self.record, Some((_, w, _, _))
            if w.count() > 0 && w.len() + EVENT_HEADER_LEN + len > RECORD_TARGET_BYTES);
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
        w.push(class, &[payload, suffix]);
        let e = &mut entries[usize::from(class)];
        e.count += 1;
        e.bytes += len as u64;
        e.commit_ms = commit_ms;
        e.end = pos + 1;
        *mask |= 1 << class;
        self.bytes += len;
    }

    fn finish_record(&mut self) {
        let Some((first, w, entries, mask)) = self.record.take() else {
            return;
        };
        self.insert(codec::log_key(first), w.finish());
        for (class, e) in entries.iter().enumerate() {
            if mask & (1 << class) != 0 {
                self.insert(codec::class_entry_key(class as u8, first), e.encode());
            }
        }
    }
}

/// What the committer hands the syncer.
enum SyncMsg {
    /// A group applied to sled: make it durable, publish `end`, then send the replies.
    Group { end: u64, replies: Vec<Reply> },
    /// Make everything so far durable, then reply.
    Barrier { reply: flume::Sender<Result<()>> },
}

/// The sync-mode thread that makes applied groups durable, one fsync for all waiting groups.
struct Syncer {
    tx: flume::Sender<SyncMsg>,
    handle: JoinHandle<()>,
}

impl Syncer {
    fn spawn(sh: Arc<Shared>) -> Result<Self> {
        let (tx, rx) = flume::bounded::<SyncMsg>(SYNC_QUEUE);
        let handle = std::thread::Builder::new()
            .name("outrider-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut msgs = vec![first];
                    msgs.extend(rx.try_iter());
                    let end = msgs
                        .iter()
                        .filter_map(|m| match m {
                            SyncMsg::Group { end, .. } => Some(*end),
                            SyncMsg::Barrier { .. } => None,
                        })
                        .max();
                    let r = if sh.failed.load(Ordering::Acquire) {
                        Err(Error::Storage("the log failed an earlier fsync; reopen it".into()))
                    } else {
                        sh.sync()
                    };
                    match &r {
                        Ok(()) => {
                            if let Some(end) = end {
                                sh.publish(end, end);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "fsync failed; the log refuses appends until reopened");
                            sh.failed.store(true, Ordering::Release);
                        }
                    }
                    for m in msgs {
                        match m {
                            SyncMsg::Group { replies, .. } => {
                                for reply in replies {
                                    reply.send(r.as_ref().err());
                                }
                            }
                            SyncMsg::Barrier { reply } => {
                                let _ = reply.send(match &r {
                                    Ok(()) => Ok(()),
                                    Err(e) => Err(Error::Storage(e.to_string())),
                                });
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::Storage(format!("cannot start the syncer thread: {e}")))?;
        Ok(Self { tx, handle })
    }

    /// Waits until everything handed over so far is durable.
    fn barrier(&self) -> Result<()> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send(SyncMsg::Barrier { reply })
            .map_err(|_| Error::Closed)?;
        rx.recv().map_err(|_| Error::Closed)?
    }
}

pub(crate) struct Committer {
    sh: Arc<Shared>,
    /// Next position to assign (staged, not yet applied).
    next_pos: u64,
    /// Positions below this are applied to sled (maybe not yet durable or published).
    applied: u64,
    next_sid: u64,
    streams: HashMap<String, StreamSt>,
    /// Checkpoint values as staged (backed by sled; evicted wholesale when full).
    checkpoints: HashMap<String, Option<u64>>,
    dedupe: Dedupe,
    syncer: Option<Syncer>,
}

/// What checking one stream's append found.
enum Checked {
    /// Every event is already in the stream: nothing to write.
    Duplicate(AppendResult),
    /// Place the events; `None` means the stream is created.
    Place(Option<StreamSt>),
}

impl Committer {
    pub(crate) fn new(sh: Arc<Shared>, next_sid: u64) -> Result<Self> {
        let head = sh.head.load(Ordering::Acquire);
        let syncer = match sh.cfg.durability {
            Durability::Sync => Some(Syncer::spawn(sh.clone())?),
            Durability::Periodic { .. } => None,
        };
        let mut c = Self {
            next_pos: head,
            applied: head,
            next_sid,
            streams: HashMap::new(),
            checkpoints: HashMap::new(),
            dedupe: Dedupe::new(sh.cfg.dedupe_window),
            syncer,
            sh,
        };
        c.preload_dedupe();
        Ok(c)
    }

    /// Fills the idempotency window from the log's tail, so retries across restarts are caught.
    fn preload_dedupe(&mut self) {
        let head = self.applied;
        let from = head
            .saturating_sub(self.sh.cfg.dedupe_window as u64)
            .max(self.sh.start.load(Ordering::Acquire));
        let sh = self.sh.clone();
        let dedupe = &mut self.dedupe;
        let scanned = read::scan_log(&sh, from, |_, payload, pos| {
            let e = read::decode_event(pos, payload)?;
            let h = sh.id_hasher.hash_one((e.stream.as_str(), e.id.as_str()));
            dedupe.insert(h, pos, e.version);
            Ok(true)
        });
        // A damaged record behind the verified tail must not stop the log from opening: the
        // window then covers what could be read, and reads of the damage report its position.
        if let Err(e) = scanned {
            tracing::warn!(error = %e, "idempotency window only partly rebuilt");
        }
    }

    pub(crate) fn run(mut self, rx: flume::Receiver<Request>) {
        let max_bytes = self.sh.cfg.max_group_bytes;
        loop {
            let Ok(first) = rx.recv() else {
                if let Err(e) = self.close() {
                    tracing::error!(error = %e, "final flush failed");
                }
                return;
            };
            let mut g = Group::new(self.sh.clock.now_unix_millis(), self.next_pos);
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
                    let _ = reply.send(self.make_durable());
                }
                Some(Request::Maintain { reply }) => {
                    let r = self.maintain();
                    if r.is_err() {
                        self.reload();
                    }
                    let _ = reply.send(r);
                }
                Some(Request::Checkpoints { prefix, reply }) => {
                    let r = self.read_checkpoints(&prefix);
                    self.reply_when_durable(Reply::Checkpoints(reply, r));
                }
                Some(Request::Close { reply }) => {
                    let _ = reply.send(self.close());
                    return;
                }
                Some(_) => {}
            }
        }
    }

    /// Makes everything applied so far durable.
    fn make_durable(&self) -> Result<()> {
        match &self.syncer {
            Some(s) => s.barrier(),
            None => {
                self.sh.sync()?;
                self.sh.mark_durable(self.applied);
                Ok(())
            }
        }
    }

    /// Checkpoints as applied so far.
    fn read_checkpoints(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for kv in self.sh.db.scan_prefix(codec::checkpoint_key(prefix)) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            let v = codec::be_u64(&v)
                .ok_or_else(|| Error::Storage(format!("checkpoint {name:?} is corrupt")))?;
            out.push((name, v));
        }
        Ok(out)
    }

    /// Sends a reply once everything applied so far is durable (sync mode), or now.
    fn reply_when_durable(&self, reply: Reply) {
        match &self.syncer {
            Some(s) => {
                let msg = SyncMsg::Group {
                    end: self.applied,
                    replies: vec![reply],
                };
                if let Err(flume::SendError(SyncMsg::Group { replies, .. })) = s.tx.send(msg) {
                    for reply in replies {
                        reply.send(Some(&Error::Closed));
                    }
                }
            }
            None => reply.send(None),
        }
    }

    fn close(&mut self) -> Result<()> {
        let r = self.make_durable();
        if let Some(s) = self.syncer.take() {
            drop(s.tx);
            let _ = s.handle.join();
        }
        r
    }

    /// Stages one request into the group; returns control requests that need the group committed.
    fn handle(&mut self, req: Request, g: &mut Group) -> Option<Request> {
        match req {
            Request::Append {
                appends,
                class,
                checkpoint,
                reply,
            } => {
                let r = self.stage_batch(g, appends, class, checkpoint);
                if r.is_err() {
                    // Nothing of a refused append is in the group: answer at once.
                    Reply::Append(reply, r).send(None);
                } else {
                    g.replies.push(Reply::Append(reply, r));
                }
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
        if g.writes == 0 {
            for reply in g.replies {
                reply.send(None);
            }
            return;
        }
        if let Err(e) = self.sh.db.apply_batch(g.batch) {
            let e = Error::from(e);
            tracing::error!(error = %e, "commit failed; reloading state from disk");
            self.reload();
            for reply in g.replies {
                reply.send(Some(&e));
            }
            return;
        }
        self.applied = self.next_pos;
        Metrics::inc(&self.sh.metrics.commit_groups, 1);
        let appended: usize = g
            .replies
            .iter()
            .map(|r| match r {
                Reply::Append(_, Ok(rs)) => rs.iter().filter(|a| !a.duplicate).count(),
                _ => 0,
            })
            .sum();
        Metrics::inc(&self.sh.metrics.appends, appended as u64);
        match &self.syncer {
            Some(s) => {
                let msg = SyncMsg::Group {
                    end: self.applied,
                    replies: g.replies,
                };
                if let Err(flume::SendError(SyncMsg::Group { replies, .. })) = s.tx.send(msg) {
                    for reply in replies {
                        reply.send(Some(&Error::Closed));
                    }
                }
            }
            None => {
                self.sh.publish(self.applied, 0);
                for reply in g.replies {
                    reply.send(None);
                }
            }
        }
    }

    /// Drops all cached state and reads it again from disk.
    fn reload(&mut self) {
        self.streams.clear();
        self.checkpoints.clear();
        self.dedupe.clear();
        self.next_pos = self.applied;
        match self.sh.db.get(codec::META_NEXT_SID) {
            Ok(Some(v)) => self.next_sid = codec::be_u64(&v).unwrap_or(self.next_sid),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reload: cannot read next stream id"),
        }
        match OutboxState::load(&self.sh) {
            Ok(ob) => *self.sh.outbox.lock() = ob,
            Err(e) => tracing::error!(error = %e, "reload: cannot read outbox state"),
        }
        self.preload_dedupe();
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
        let Some((first, ps)) = read::last_chunk(&self.sh, sid)? else {
            // Every event of the stream was cut away by a repair: it starts afresh.
            return Ok(None);
        };
        let st = StreamSt {
            sid,
            next_version: first + ps.len() as u64,
        };
        self.cache_stream(name, st);
        Ok(Some(st))
    }

    fn cache_stream(&mut self, name: &str, st: StreamSt) {
        if let Some(s) = self.streams.get_mut(name) {
            *s = st;
            return;
        }
        if self.streams.len() >= STREAM_CACHE {
            self.streams.clear();
        }
        self.streams.insert(name.to_string(), st);
    }

    /// The original (position, version) of `id` in `stream`, if the window remembers it.
    fn lookup_dup(&self, g: &Group, h: u64, stream: &str, id: &str) -> Result<Option<(u64, u64)>> {
        let Some((pos, version)) = self.dedupe.get(h) else {
            return Ok(None);
        };
        // The window keys on a hash: confirm against the event itself.
        if pos >= g.first {
            let staged = usize::try_from(pos - g.first)
                .ok()
                .and_then(|i| g.staged.get(i));
            return Ok(staged.filter(|s| *s == id).map(|_| (pos, version)));
        }
        let e = PositionReader::with_limit(&self.sh, self.applied).get(pos)?;
        Ok(e.filter(|e| e.id == id && e.stream == stream)
            .map(|_| (pos, version)))
    }

    /// Stages an atomic batch: every stream's append is checked first, then all are placed, so a
    /// refusal of any leaves the group untouched.
    fn stage_batch(
        &mut self,
        g: &mut Group,
        appends: Vec<(String, ExpectedVersion, Prepared)>,
        class: usize,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Vec<AppendResult>> {
        if self.sh.failed.load(Ordering::Acquire) {
            return Err(Error::Storage(
                "the log failed an earlier fsync and refuses appends; reopen it".into(),
            ));
        }
        let mut checked = Vec::with_capacity(appends.len());
        let (mut n, mut bytes) = (0u64, 0u64);
        for (stream, expected, p) in &appends {
            let c = self.check_one(g, stream, *expected, p)?;
            if matches!(c, Checked::Place(_)) {
                n += p.ids.len() as u64;
                bytes += p.buf.len() as u64;
            }
            checked.push(c);
        }
        if let Some(cp) = &checkpoint {
            let actual = self.checkpoint_value(&cp.name)?;
            if actual != cp.expected {
                return Err(Error::CheckpointConflict {
                    name: cp.name.clone(),
                    expected: cp.expected,
                    actual,
                });
            }
        }
        if n > 0 {
            self.admit(g, class, n, bytes)?;
        }
        let mut results = Vec::with_capacity(appends.len());
        for ((stream, _, p), c) in appends.into_iter().zip(checked) {
            results.push(match c {
                Checked::Duplicate(r) => r,
                Checked::Place(st) => self.place_one(g, &stream, st, p, class),
            });
        }
        if let Some(cp) = checkpoint {
            g.insert(codec::checkpoint_key(&cp.name), cp.new.to_be_bytes());
            if self.checkpoints.len() >= STREAM_CACHE {
                self.checkpoints.clear();
            }
            self.checkpoints.insert(cp.name, Some(cp.new));
        }
        Ok(results)
    }

    fn checkpoint_value(&mut self, name: &str) -> Result<Option<u64>> {
        if let Some(v) = self.checkpoints.get(name) {
            return Ok(*v);
        }
        let v = match self.sh.db.get(codec::checkpoint_key(name))? {
            Some(v) => Some(
                codec::be_u64(&v)
                    .ok_or_else(|| Error::Storage(format!("checkpoint {name:?} is corrupt")))?,
            ),
            None => None,
        };
        Ok(v)
    }

    /// Checks one stream's append: an idempotent retry, or the expected version.
    fn check_one(
        &mut self,
        g: &Group,
        stream: &str,
        expected: ExpectedVersion,
        p: &Prepared,
    ) -> Result<Checked> {
        let st = self.stream_state(stream)?;
        let actual = st.and_then(|s| s.next_version.checked_sub(1));
        let n = p.ids.len();
        if let Some(st) = st {
            let mut found = Vec::with_capacity(n);
            for (h, id) in p.hashes.iter().zip(&p.ids) {
                found.push(self.lookup_dup(g, *h, stream, id)?);
            }
            let hits = found.iter().filter(|f| f.is_some()).count();
            if hits == n {
                Metrics::inc(&self.sh.metrics.duplicate_appends, 1);
                return Ok(Checked::Duplicate(duplicate_result(
                    found.into_iter().flatten(),
                    st,
                )));
            }
            if hits > 0 {
                let i = found.iter().position(Option::is_some).unwrap_or(0);
                return Err(Error::PartialDuplicate {
                    stream: stream.into(),
                    id: p.ids[i].clone(),
                });
            }
            if let ExpectedVersion::Exact(v) = expected {
                if let Some(r) = self.exact_retry(stream, st, v, &p.ids)? {
                    Metrics::inc(&self.sh.metrics.duplicate_appends, 1);
                    return Ok(Checked::Duplicate(r));
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
        Ok(Checked::Place(st))
    }

    /// Places a checked append's events (undone by `reload` if the write fails).
    fn place_one(
        &mut self,
        g: &mut Group,
        stream: &str,
        st: Option<StreamSt>,
        p: Prepared,
        class: usize,
    ) -> AppendResult {
        let n = p.ids.len();
        let bytes = p.buf.len() as u64;
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
        let first_pos = self.next_pos;
        let first_version = st.next_version;
        let chunk = g
            .chunks
            .entry(st.sid)
            .or_insert_with(|| (first_version, Vec::new()));
        chunk.1.extend((0..n as u64).map(|i| first_pos + i));
        for i in 0..n {
            let pos = first_pos + i as u64;
            let version = first_version + i as u64;
            let (suffix, len) = codec::place_suffix(version, pos, p.local[i].then_some(pos));
            g.push_event(class_id, pos, p.payload(i), &suffix[..len]);
            self.dedupe.insert(p.hashes[i], pos, version);
        }
        g.staged.extend(p.ids);
        self.next_pos += n as u64;
        let next_version = first_version + n as u64;
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
            rt.pending_events += n as u64;
            rt.pending_bytes += bytes;
        }
        Metrics::inc(&self.sh.metrics.events_appended, n as u64);
        Metrics::inc(&self.sh.metrics.bytes_appended, bytes);
        AppendResult {
            positions: (first_pos..first_pos + n as u64).collect(),
            versions: (first_version..next_version).collect(),
            next_expected_version: next_version - 1,
            duplicate: false,
        }
    }

    /// An `Exact(v)` append whose events already sit at versions v+1.. is a retry: return them.
    fn exact_retry(
        &self,
        stream: &str,
        st: StreamSt,
        v: u64,
        ids: &[String],
    ) -> Result<Option<AppendResult>> {
        let n = ids.len() as u64;
        if v.checked_add(n).is_none_or(|last| last >= st.next_version) {
            return Ok(None);
        }
        let page = read::read_stream(
            &self.sh,
            PositionReader::with_limit(&self.sh, self.applied),
            stream,
            crate::StreamFrom::Version(v + 1),
            crate::Direction::Forwards,
            ids.len(),
        )?
        .events;
        if page.len() != ids.len() || page.iter().zip(ids).any(|(a, b)| a.id != *b) {
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
        let mut touched: HashSet<String> = HashSet::new();
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
            if end > limit {
                break;
            }
            // Each class's events in the record must be released: its last one below the
            // class's release point (a record can hold events of several classes).
            let mut releasable = true;
            for raw in it {
                let raw = raw?;
                if raw.position >= release[usize::from(raw.class)] {
                    releasable = false;
                    break;
                }
            }
            if !releasable {
                break;
            }
            let (_, it) = codec::RecordIter::new(first, &v)?;
            for raw in it {
                let raw = raw?;
                let e = read::decode_event(raw.position, raw.payload)?;
                touched.insert(e.stream);
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
        report.more = report.reclaimed_records == RECLAIM_RECORDS_PER_PASS as u64;
        if new_start > report.start {
            for stream in &touched {
                let Some((sid, _)) = read::stream_info_below(&self.sh, stream, self.applied)?
                else {
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
