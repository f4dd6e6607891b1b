//! The public handle: [`Log`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use outrider_proto::Event;
use parking_lot::{Condvar, Mutex};
use prost::Message;
use std::hash::BuildHasher;

use crate::clock::{Clock, SystemClock};
use crate::codec;
use crate::committer::{self, Request};
use crate::config::{ClassConfig, Durability, LogConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::outbox::OutboxState;
use crate::recover::{self, OpenReport};
use crate::subscription::Subscription;
use crate::validate::{validate_event, validate_stream_name};
use crate::ExpectedVersion;

/// The outcome of a successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// Global position of each event, in request order.
    pub positions: Vec<u64>,
    /// Stream version of each event, in request order.
    pub versions: Vec<u64>,
    /// The stream's version after the append (the version of its last event).
    pub next_expected_version: u64,
    /// Every event was already in the stream: nothing was written, the original places are returned.
    pub duplicate: bool,
}

/// One stream's part of [`Log::append_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<Event>,
}

/// A compare-and-set of a named durable checkpoint, committed atomically with an append
/// (e.g. a sync watermark, or a consumer's position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub name: String,
    /// The value the checkpoint must have now (`None`: it must not exist).
    pub expected: Option<u64>,
    pub new: u64,
}

/// Checkpoint names are 1..=512 bytes without control characters.
fn validate_checkpoint_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 512 || name.chars().any(char::is_control) {
        return Err(Error::InvalidEvent {
            id: String::new(),
            field: "checkpoint name",
            reason: "must be 1..=512 bytes without control characters".into(),
        });
    }
    Ok(())
}

fn first(r: Result<Vec<AppendResult>>) -> Result<AppendResult> {
    r?.into_iter().next().ok_or(Error::EmptyAppend)
}

/// A stream's latest snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The version of the last event folded into the snapshot.
    pub version: u64,
    pub payload: Vec<u8>,
}

/// An append checked and encoded by the caller: the events' encodings (without the fields that
/// place them, which the committer appends) and what the committer needs to check them.
pub(crate) struct Prepared {
    /// The encodings, back to back; event i ends at `ends[i]`.
    pub(crate) buf: Vec<u8>,
    pub(crate) ends: Vec<usize>,
    pub(crate) ids: Vec<String>,
    /// `id_hasher` of (stream, id), for the idempotency window.
    pub(crate) hashes: Vec<u64>,
    /// Whether each event originates here (its origin seq is then its position).
    pub(crate) local: Vec<bool>,
}

impl Prepared {
    pub(crate) fn payload(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }
}

/// A configured class with the id persisted for it in this log.
#[derive(Debug, Clone)]
pub(crate) struct ClassMeta {
    pub(crate) id: u8,
    pub(crate) cfg: ClassConfig,
}

/// State shared by the handle, the committer, the flusher and readers.
pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    pub(crate) cfg: LogConfig,
    /// In configuration order: highest priority first.
    pub(crate) classes: Vec<ClassMeta>,
    /// Positions below this are committed and visible.
    pub(crate) head: AtomicU64,
    /// Positions below this are on stable storage.
    pub(crate) durable: AtomicU64,
    /// The first retained position (earlier ones were reclaimed).
    pub(crate) start: AtomicU64,
    /// Streams ever created in this log.
    pub(crate) streams: AtomicU64,
    pub(crate) head_tx: tokio::sync::watch::Sender<u64>,
    pub(crate) head_lock: Mutex<()>,
    pub(crate) head_cv: Condvar,
    pub(crate) metrics: Metrics,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) outbox: Mutex<OutboxState>,
    pub(crate) log_id: String,
    pub(crate) db_file: std::fs::File,
    /// Hashes (stream, event id) for the idempotency window; keyed per process.
    pub(crate) id_hasher: std::collections::hash_map::RandomState,
    /// Set when an fsync failed: what was acknowledged can no longer be vouched for, so the log
    /// refuses further appends until it is reopened (as PostgreSQL does after a failed fsync).
    pub(crate) failed: std::sync::atomic::AtomicBool,
    /// Highest sled blob file already fdatasync'ed.
    pub(crate) synced_blob: Mutex<u64>,
}

impl Shared {
    pub(crate) fn class_index(&self, name: Option<&str>) -> Result<usize> {
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.cfg.default_class);
        self.classes
            .iter()
            .position(|c| c.cfg.name == name)
            .ok_or_else(|| Error::UnknownClass(name.to_string()))
    }

    pub(crate) fn dest_index(&self, name: &str) -> Result<usize> {
        self.cfg
            .destinations
            .iter()
            .position(|d| d == name)
            .ok_or_else(|| Error::UnknownDestination(name.to_string()))
    }

    /// Publishes new visible and durable heads and wakes subscribers.
    pub(crate) fn publish(&self, head: u64, durable: u64) {
        self.head.store(head, Ordering::Release);
        self.durable.fetch_max(durable, Ordering::AcqRel);
        let _guard = self.head_lock.lock();
        self.head_cv.notify_all();
        self.head_tx.send_replace(head);
    }

    pub(crate) fn mark_durable(&self, durable: u64) {
        self.durable.fetch_max(durable, Ordering::AcqRel);
        let _guard = self.head_lock.lock();
        self.head_cv.notify_all();
        self.head_tx.send_replace(self.head.load(Ordering::Acquire));
    }

    /// Flushes sled and fdatasyncs its files: sled's own flush uses sync_file_range on Linux, which
    /// flushes neither the disk cache nor metadata.
    pub(crate) fn sync(&self) -> Result<()> {
        let t = std::time::Instant::now();
        self.db.flush()?;
        self.db_file.sync_data()?;
        self.sync_blobs()?;
        self.metrics.fsync_seconds.observe(t.elapsed());
        Metrics::inc(&self.metrics.fsyncs, 1);
        Ok(())
    }

    /// sled writes pages too large for its segments to `blobs/`, one file per page named by its
    /// log sequence number, without fsync. Sync the ones written since the last call.
    fn sync_blobs(&self) -> Result<()> {
        let blobs = self.cfg.dir.join("blobs");
        let rd = match std::fs::read_dir(&blobs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut synced = self.synced_blob.lock();
        let mut newest = *synced;
        for entry in rd {
            let entry = entry?;
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if lsn <= *synced {
                continue;
            }
            match std::fs::File::open(entry.path()) {
                Ok(f) => f.sync_data()?,
                // sled may remove a blob between listing and opening it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            newest = newest.max(lsn);
        }
        if newest > *synced {
            std::fs::File::open(&blobs)?.sync_all()?;
            *synced = newest;
        }
        Ok(())
    }
}

struct Inner {
    shared: Arc<Shared>,
    tx: flume::Sender<Request>,
    committer: Mutex<Option<JoinHandle<()>>>,
    flusher: Mutex<Option<(JoinHandle<()>, flume::Sender<()>)>>,
}

impl Inner {
    fn shutdown(&self) -> Result<()> {
        if let Some((handle, stop)) = self.flusher.lock().take() {
            drop(stop);
            let _ = handle.join();
        }
        let handle = self.committer.lock().take();
        if let Some(handle) = handle {
            let (reply, rx) = flume::bounded(1);
            let sent = self.tx.send(Request::Close { reply }).is_ok();
            let res = if sent {
                rx.recv().unwrap_or(Ok(()))
            } else {
                Ok(())
            };
            let _ = handle.join();
            return res;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "closing the log failed");
        }
    }
}

/// An event-sourced log with a store-and-forward outbox. Cheap to clone; all clones share it.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.inner.shared.cfg.dir)
            .field("head", &self.head())
            .finish()
    }
}

impl Log {
    /// Opens (or creates) the log in `cfg.dir`, verifying checksums as configured. A torn or
    /// corrupt tail is cut (and kept aside) and reported; it never stops the log from opening.
    pub fn open(cfg: LogConfig) -> Result<(Log, OpenReport)> {
        Self::open_with_clock(cfg, Arc::new(SystemClock))
    }

    /// [`Log::open`] with an injected clock.
    pub fn open_with_clock(cfg: LogConfig, clock: Arc<dyn Clock>) -> Result<(Log, OpenReport)> {
        Self::open_mode(cfg, clock, recover::Mode::Repair)
    }

    pub(crate) fn open_mode(
        cfg: LogConfig,
        clock: Arc<dyn Clock>,
        mode: recover::Mode,
    ) -> Result<(Log, OpenReport)> {
        cfg.validate()?;
        let opened = recover::open(&cfg, mode)?;
        let (head_tx, _) = tokio::sync::watch::channel(opened.head);
        let shared = Arc::new(Shared {
            db: opened.db,
            classes: opened.classes,
            head: AtomicU64::new(opened.head),
            durable: AtomicU64::new(opened.head),
            start: AtomicU64::new(opened.start),
            streams: AtomicU64::new(opened.next_sid),
            head_tx,
            head_lock: Mutex::new(()),
            head_cv: Condvar::new(),
            metrics: Metrics::default(),
            clock,
            outbox: Mutex::new(OutboxState::default()),
            log_id: opened.log_id,
            db_file: opened.db_file,
            id_hasher: Default::default(),
            failed: Default::default(),
            synced_blob: Mutex::new(0),
            cfg,
        });
        *shared.outbox.lock() = OutboxState::load(&shared)?;
        let state = committer::Committer::new(shared.clone(), opened.next_sid)?;
        let (tx, rx) = flume::bounded(shared.cfg.queue_depth);
        let committer = std::thread::Builder::new()
            .name("outrider-commit".into())
            .spawn(move || state.run(rx))
            .map_err(|e| Error::Storage(format!("cannot start the committer thread: {e}")))?;
        let flusher = match shared.cfg.durability {
            Durability::Sync => None,
            Durability::Periodic { interval } => Some(spawn_flusher(shared.clone(), interval)?),
        };
        let log = Log {
            inner: Arc::new(Inner {
                shared,
                tx,
                committer: Mutex::new(Some(committer)),
                flusher: Mutex::new(flusher),
            }),
        };
        Ok((log, opened.report))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.shared.cfg
    }

    /// A random id given to this log when it was created (its incarnation).
    pub fn log_id(&self) -> &str {
        &self.inner.shared.log_id
    }

    /// One past the last committed position: the next append's first position.
    pub fn head(&self) -> u64 {
        self.inner.shared.head.load(Ordering::Acquire)
    }

    /// Positions below this survive a power cut.
    pub fn durable_head(&self) -> u64 {
        self.inner.shared.durable.load(Ordering::Acquire)
    }

    /// A watch that changes whenever the visible head moves or more of the log becomes durable:
    /// a cheap way to learn that the outbox may have more to hand out, without reading events.
    pub fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.shared.head_tx.subscribe()
    }

    /// The first retained position; earlier positions were reclaimed after delivery.
    pub fn start(&self) -> u64 {
        self.inner.shared.start.load(Ordering::Acquire)
    }

    /// How many streams were ever created in this log.
    pub fn stream_count(&self) -> u64 {
        self.inner.shared.streams.load(Ordering::Acquire)
    }

    /// The log's clock (the one given to [`Log::open_with_clock`]).
    pub fn clock(&self) -> &dyn Clock {
        self.inner.shared.clock.as_ref()
    }

    /// The log's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// The names of the configured priority classes, highest first.
    pub fn class_names(&self) -> Vec<String> {
        self.inner
            .shared
            .classes
            .iter()
            .map(|c| c.cfg.name.clone())
            .collect()
    }

    /// Checks and encodes an append on the caller's thread, so the committer only places it.
    fn prepare_append(&self, stream: &str, mut events: Vec<Event>) -> Result<Prepared> {
        let sh = &self.inner.shared;
        validate_stream_name(stream)?;
        if events.is_empty() {
            return Err(Error::EmptyAppend);
        }
        let limit = sh.cfg.max_events_per_append;
        if events.len() > limit {
            return Err(Error::TooManyEvents {
                count: events.len(),
                limit,
            });
        }
        let now = sh.clock.now_unix_nanos();
        let mut p = Prepared {
            buf: Vec::new(),
            ends: Vec::with_capacity(events.len()),
            ids: Vec::with_capacity(events.len()),
            hashes: Vec::with_capacity(events.len()),
            local: Vec::with_capacity(events.len()),
        };
        for e in &mut events {
            if e.id.is_empty() {
                e.id = uuid::Uuid::now_v7().to_string();
            }
            validate_event(e)?;
            e.stream.clear();
            e.stream.push_str(stream);
            // The committer appends these (see codec::place_suffix).
            e.version = 0;
            e.position = 0;
            let local = e.origin_node.is_empty();
            if local {
                e.origin_node.clone_from(&sh.cfg.node_id);
                e.origin_seq = 0;
            }
            if e.time_seconds == 0 && e.time_nanos == 0 {
                e.time_seconds = now.div_euclid(1_000_000_000);
                e.time_nanos = now.rem_euclid(1_000_000_000) as u32;
            }
            let size = e.encoded_len() + codec::MAX_PLACE_SUFFIX;
            if size > sh.cfg.max_event_bytes {
                return Err(Error::EventTooLarge {
                    id: std::mem::take(&mut e.id),
                    size,
                    limit: sh.cfg.max_event_bytes,
                });
            }
            p.local.push(local);
        }
        let total: usize = events.iter().map(|e| e.encoded_len()).sum();
        p.buf.reserve(total);
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        for e in events {
            if !seen.insert(sh.id_hasher.hash_one(e.id.as_str())) && p.ids.contains(&e.id) {
                return Err(Error::DuplicateIdInRequest { id: e.id });
            }
            // Encoding into a Vec cannot fail: it grows as needed.
            let _ = e.encode(&mut p.buf);
            p.ends.push(p.buf.len());
            p.hashes
                .push(sh.id_hasher.hash_one((stream, e.id.as_str())));
            p.ids.push(e.id);
        }
        Ok(p)
    }

    fn count_error<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            Metrics::inc(&self.inner.shared.metrics.append_errors, 1);
            if matches!(e, Error::WrongExpectedVersion { .. }) {
                Metrics::inc(&self.inner.shared.metrics.version_conflicts, 1);
            }
        }
        r
    }

    /// Appends `events` to `stream` atomically if the stream's version admits `expected`.
    /// Blocks until the append is committed (durable, in [`Durability::Sync`] mode).
    /// `class` names the outbox priority class (`None`: the default class).
    pub fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
        class: Option<&str>,
    ) -> Result<AppendResult> {
        let one = StreamAppend {
            stream: stream.to_string(),
            expected,
            events,
        };
        first(self.append_batch(vec![one], class, None))
    }

    /// [`Log::append`] for async callers: waits without blocking the executor.
    pub async fn append_async(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
        class: Option<&str>,
    ) -> Result<AppendResult> {
        let one = StreamAppend {
            stream: stream.to_string(),
            expected,
            events,
        };
        first(self.append_batch_async(vec![one], class, None).await)
    }

    /// Appends to several distinct streams and, optionally, moves a checkpoint, in one atomic
    /// commit: either every append and the checkpoint are written, or nothing is. Each stream is
    /// checked against its expected version and for idempotent retries as in [`Log::append`];
    /// the checkpoint is a compare-and-set ([`Error::CheckpointConflict`] when it differs).
    pub fn append_batch(
        &self,
        appends: Vec<StreamAppend>,
        class: Option<&str>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Vec<AppendResult>> {
        let r = (|| {
            let (reply, rx) = flume::bounded(1);
            let req = self.prepare_batch(appends, class, checkpoint, reply)?;
            self.inner.tx.send(req).map_err(|_| Error::Closed)?;
            rx.recv().map_err(|_| Error::Closed)?
        })();
        self.count_error(r)
    }

    /// [`Log::append_batch`] for async callers.
    pub async fn append_batch_async(
        &self,
        appends: Vec<StreamAppend>,
        class: Option<&str>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Vec<AppendResult>> {
        let (reply, rx) = flume::bounded(1);
        let req = match self.prepare_batch(appends, class, checkpoint, reply) {
            Ok(req) => req,
            Err(e) => return self.count_error(Err(e)),
        };
        let r = match self.inner.tx.send_async(req).await {
            Ok(()) => rx.recv_async().await.unwrap_or(Err(Error::Closed)),
            Err(_) => Err(Error::Closed),
        };
        self.count_error(r)
    }

    fn prepare_batch(
        &self,
        appends: Vec<StreamAppend>,
        class: Option<&str>,
        checkpoint: Option<Checkpoint>,
        reply: flume::Sender<Result<Vec<AppendResult>>>,
    ) -> Result<Request> {
        if appends.is_empty() {
            return Err(Error::EmptyAppend);
        }
        if let Some(cp) = &checkpoint {
            validate_checkpoint_name(&cp.name)?;
        }
        let class = self.inner.shared.class_index(class)?;
        let mut prepared = Vec::with_capacity(appends.len());
        for a in appends {
            if prepared.iter().any(|(s, _, _)| *s == a.stream) {
                return Err(Error::InvalidStreamName {
                    name: a.stream,
                    reason: "appears twice in one batch",
                });
            }
            let p = self.prepare_append(&a.stream, a.events)?;
            prepared.push((a.stream, a.expected, p));
        }
        Ok(Request::Append {
            appends: prepared,
            class,
            checkpoint,
            reply,
        })
    }

    /// The committed value of a checkpoint (see [`Log::append_batch`]).
    pub fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        Ok(self
            .checkpoints(name)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v))
    }

    /// Committed checkpoints whose names start with `prefix`. In sync mode the answer waits until
    /// everything committed before it is durable, so a checkpoint is never reported ahead of the
    /// events committed with it.
    pub fn checkpoints(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = prefix.to_string();
        self.call(|reply| Request::Checkpoints { prefix, reply })
    }

    /// [`Log::checkpoints`] for async callers.
    pub async fn checkpoints_async(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = prefix.to_string();
        self.call_async(|reply| Request::Checkpoints { prefix, reply })
            .await
    }

    fn call<T>(&self, make: impl FnOnce(flume::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, rx) = flume::bounded(1);
        self.inner.tx.send(make(reply)).map_err(|_| Error::Closed)?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    async fn call_async<T>(
        &self,
        make: impl FnOnce(flume::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, rx) = flume::bounded(1);
        self.inner
            .tx
            .send_async(make(reply))
            .await
            .map_err(|_| Error::Closed)?;
        rx.recv_async().await.map_err(|_| Error::Closed)?
    }

    /// Acknowledges delivery to `dest` of every `class` event at or below `through`.
    /// Idempotent; acknowledging below the current cursor is a no-op.
    pub fn ack(&self, dest: &str, class: &str, through: u64) -> Result<()> {
        let (d, c) = (
            self.inner.shared.dest_index(dest)?,
            self.inner.shared.class_index(Some(class))?,
        );
        self.call(|reply| Request::Ack {
            dest: d,
            class: c,
            through,
            reply,
        })
    }

    /// [`Log::ack`] for async callers.
    pub async fn ack_async(&self, dest: &str, class: &str, through: u64) -> Result<()> {
        let (d, c) = (
            self.inner.shared.dest_index(dest)?,
            self.inner.shared.class_index(Some(class))?,
        );
        self.call_async(|reply| Request::Ack {
            dest: d,
            class: c,
            through,
            reply,
        })
        .await
    }

    /// Expires pending events past their class TTL and reclaims the acknowledged prefix of the log.
    /// Call it periodically (the agent does, every few seconds).
    pub fn maintain(&self) -> Result<crate::outbox::MaintainReport> {
        self.call(|reply| Request::Maintain { reply })
    }

    /// [`Log::maintain`] for async callers.
    pub async fn maintain_async(&self) -> Result<crate::outbox::MaintainReport> {
        self.call_async(|reply| Request::Maintain { reply }).await
    }

    /// Makes everything committed so far durable (flush + fdatasync), whatever the mode.
    pub fn flush(&self) -> Result<()> {
        self.call(|reply| Request::Flush { reply })
    }

    /// [`Log::flush`] for async callers.
    pub async fn flush_async(&self) -> Result<()> {
        self.call_async(|reply| Request::Flush { reply }).await
    }

    /// Flushes, stops the committer and closes the log. Later calls on any clone fail with
    /// [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        self.inner.shutdown()
    }

    /// Saves `payload` as the snapshot of `stream` at `version` (the last event it folds in),
    /// replacing an older one. Snapshots are derived data: they are flushed with the next commit.
    pub fn save_snapshot(&self, stream: &str, version: u64, payload: &[u8]) -> Result<()> {
        validate_stream_name(stream)?;
        let sh = &self.inner.shared;
        let Some((sid, next_version)) = crate::read::stream_info(sh, stream)? else {
            return Err(Error::WrongExpectedVersion {
                stream: stream.into(),
                expected: ExpectedVersion::Exact(version),
                actual: None,
            });
        };
        if version >= next_version {
            return Err(Error::WrongExpectedVersion {
                stream: stream.into(),
                expected: ExpectedVersion::Exact(version),
                actual: Some(next_version - 1),
            });
        }
        if let Some(old) = self.snapshot(stream)? {
            if old.version > version {
                return Ok(());
            }
        }
        sh.db.insert(
            codec::snapshot_key(sid),
            codec::encode_snapshot(version, payload),
        )?;
        Ok(())
    }

    /// The latest snapshot of `stream`, if any.
    pub fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let sh = &self.inner.shared;
        let Some((sid, _)) = crate::read::stream_info(sh, stream)? else {
            return Ok(None);
        };
        match sh.db.get(codec::snapshot_key(sid))? {
            None => Ok(None),
            Some(v) => {
                let (version, payload) = codec::decode_snapshot(&v)?;
                Ok(Some(Snapshot { version, payload }))
            }
        }
    }

    /// Loads a stream for rebuilding state: its latest snapshot and every event after it.
    pub fn load(&self, stream: &str) -> Result<(Option<Snapshot>, Vec<Event>)> {
        let snap = self.snapshot(stream)?;
        let from = snap.as_ref().map_or(0, |s| s.version + 1);
        let mut events = Vec::new();
        let mut next = from;
        loop {
            let page = self.read_stream(
                stream,
                crate::StreamFrom::Version(next),
                crate::Direction::Forwards,
                4096,
            )?;
            if let Some(last) = page.events.last() {
                next = last.version + 1;
            }
            let end = page.end;
            events.extend(page.events);
            if end {
                break;
            }
        }
        Ok((snap, events))
    }

    /// Subscribes to the whole log (or one stream) from `from_position`: the subscription catches
    /// up on committed events, then follows new ones, with no gap and no duplicate between the two.
    pub fn subscribe(&self, from_position: u64, stream: Option<String>) -> Subscription {
        Subscription::new(self.clone(), from_position, stream)
    }

    /// The version of the stream's last event (`None`: no such stream).
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        Ok(crate::read::stream_info(&self.inner.shared, stream)?.map(|(_, next)| next - 1))
    }
}

fn spawn_flusher(
    shared: Arc<Shared>,
    interval: Duration,
) -> Result<(JoinHandle<()>, flume::Sender<()>)> {
    let (stop, stopped) = flume::bounded::<()>(0);
    let handle = std::thread::Builder::new()
        .name("outrider-flush".into())
        .spawn(move || loop {
            match stopped.recv_timeout(interval) {
                Err(flume::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let head = shared.head.load(Ordering::Acquire);
            if head == shared.durable.load(Ordering::Acquire) {
                continue;
            }
            match shared.sync() {
                Ok(()) => shared.mark_durable(head),
                Err(e) => tracing::error!(error = %e, "periodic flush failed"),
            }
        })
        .map_err(|e| Error::Storage(format!("cannot start the flusher thread: {e}")))?;
    Ok((handle, stop))
}
