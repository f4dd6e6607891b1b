//! [`SledStore`]: the embedded backend, the runtime's [`Log`] behind [`EventStore`].
//!
//! * Appends go to the log's committer (group commit; in [`Durability::Sync`], flush + fdatasync
//!   before the append is acknowledged). The store checks input first with the same rules as the
//!   PostgreSQL backend, so both refuse the same events with the same errors.
//! * The global order is the log's position order (dense from 0).
//! * Watermarks are the log's checkpoints, moved atomically with an `append_batch`.
//! * Consumer checkpoints are one small JSON file, `checkpoints.json`, replaced atomically
//!   (write, fdatasync, rename, fsync of the directory) on every save.
//! * Leases are a table in memory on the store's clock: a sled directory is locked by one
//!   process, so every consumer of this store runs in this process.
//! * Reads are sled reads; they run on tokio's blocking pool.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outrider_runtime::{Clock, Durability, Error as LogError, Log, LogConfig, SystemClock};
use parking_lot::Mutex;

use crate::error::{Result, StoreError};
use crate::lease::{Lease, MemoryLeases};
use crate::validate::{self, MAX_EVENTS_PER_APPEND, MAX_EVENT_BYTES};
use crate::{
    AppendResult, Direction, Event, EventStore, ExpectedVersion, ReadStream, Snapshot,
    StreamAppend, StreamFrom, Watermark,
};

/// Configuration of a [`SledStore`].
#[derive(Debug, Clone)]
pub struct SledConfig {
    /// Data directory: the log lives in `DIR/log`, consumer checkpoints in
    /// `DIR/checkpoints.json`.
    pub dir: PathBuf,
    /// Stamped as `origin_node` on events appended here without an origin.
    pub node_id: String,
    pub durability: Durability,
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
}

impl SledConfig {
    /// Durable (sync) defaults in `dir`, node id `cloud`, a 64 MiB cache.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            node_id: "cloud".into(),
            durability: Durability::Sync,
            cache_capacity_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The embedded event store. Cheap to clone; clones share the log.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    log: Log,
    node_id: String,
    clock: Arc<dyn Clock>,
    leases: MemoryLeases,
    checkpoints: CheckpointFile,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("log", &self.inner.log)
            .finish()
    }
}

/// Maps the runtime's errors to the store's.
fn map(e: LogError) -> StoreError {
    match e {
        LogError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => StoreError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        },
        LogError::PartialDuplicate { stream, id } => StoreError::PartialDuplicate { stream, id },
        LogError::DuplicateIdInRequest { id } => StoreError::DuplicateIdInRequest { id },
        LogError::EventTooLarge { id, size, limit } => {
            StoreError::EventTooLarge { id, size, limit }
        }
        LogError::InvalidStreamName { name, reason } => {
            StoreError::InvalidStreamName { name, reason }
        }
        LogError::InvalidDetail { id, reason } => StoreError::InvalidDetail { id, reason },
        LogError::InvalidEvent { id, field, reason } => {
            StoreError::InvalidEvent { id, field, reason }
        }
        LogError::EmptyAppend => StoreError::EmptyAppend,
        LogError::TooManyEvents { count, limit } => StoreError::TooManyEvents { count, limit },
        LogError::CheckpointConflict {
            name,
            expected,
            actual,
        } => StoreError::WatermarkConflict {
            name,
            expected,
            actual,
        },
        LogError::Corrupt { position, reason } => StoreError::Corrupt { position, reason },
        LogError::Closed => StoreError::Closed,
        other => StoreError::Log(other),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Log(LogError::Storage(format!("blocking read failed: {e}"))))?
}

impl SledStore {
    /// Opens (or creates) the store in `cfg.dir`. A torn or corrupt log tail is cut and logged
    /// (see the runtime's recovery); it never stops the store from opening.
    pub fn open(cfg: SledConfig) -> Result<Self> {
        Self::open_with_clock(cfg, Arc::new(SystemClock))
    }

    /// [`SledStore::open`] with an injected clock (event times and lease expiry).
    pub fn open_with_clock(cfg: SledConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let mut log_cfg = LogConfig::new(cfg.dir.join("log"));
        log_cfg.node_id.clone_from(&cfg.node_id);
        log_cfg.durability = cfg.durability;
        log_cfg.cache_capacity_bytes = cfg.cache_capacity_bytes;
        // The store checks sizes itself (validate.rs); the log's own check, which also counts
        // the placing fields, must never refuse what the store accepted.
        log_cfg.max_event_bytes = MAX_EVENT_BYTES + 64;
        log_cfg.max_events_per_append = MAX_EVENTS_PER_APPEND;
        let (log, report) = Log::open_with_clock(log_cfg, clock.clone()).map_err(map)?;
        if let Some(c) = &report.corrupt {
            tracing::warn!(corrupt = ?c, "sled store: a damaged log tail was cut at open");
        }
        let checkpoints = CheckpointFile::open(&cfg.dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                log,
                node_id: cfg.node_id,
                leases: MemoryLeases::new(clock.clone()),
                clock,
                checkpoints,
            }),
        })
    }

    /// Wraps a log that is already open, so two users share it (the cloud server's ingest
    /// commits through the log while the bus uses this store). `node_id` must be the log's;
    /// consumer checkpoints are kept in `checkpoints_dir/checkpoints.json`.
    pub fn from_log(
        log: Log,
        checkpoints_dir: &std::path::Path,
        node_id: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let checkpoints = CheckpointFile::open(checkpoints_dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                log,
                node_id: node_id.to_string(),
                leases: MemoryLeases::new(clock.clone()),
                clock,
                checkpoints,
            }),
        })
    }

    /// The underlying log (e.g. for the ingest's `LogStore`, which shares it).
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// Flushes and closes the log; later calls fail with [`StoreError::Closed`].
    pub fn close(&self) -> Result<()> {
        self.inner.log.close().map_err(map)
    }

    fn check(&self, stream: &str, events: Vec<Event>) -> Result<Vec<Event>> {
        let now = self.inner.clock.now_unix_nanos();
        // Local events keep an empty origin: the log stamps its node id and origin seq.
        Ok(validate::check_append(stream, events, &self.inner.node_id, now)?.events)
    }
}

#[async_trait]
impl EventStore for SledStore {
    fn backend(&self) -> &'static str {
        "sled"
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult> {
        let events = self.check(stream, events)?;
        self.inner
            .log
            .append_async(stream, expected, events, None)
            .await
            .map_err(map)
    }

    async fn append_batch(
        &self,
        appends: Vec<StreamAppend>,
        watermark: Option<Watermark>,
    ) -> Result<Vec<AppendResult>> {
        validate::check_batch_streams(appends.iter().map(|a| a.stream.as_str()))?;
        if let Some(w) = &watermark {
            validate::validate_name("watermark", &w.name)?;
        }
        let mut checked = Vec::with_capacity(appends.len());
        for a in appends {
            let events = self.check(&a.stream, a.events)?;
            checked.push(outrider_runtime::StreamAppend {
                stream: a.stream,
                expected: a.expected,
                events,
            });
        }
        let cp = watermark.map(|w| outrider_runtime::Checkpoint {
            name: w.name,
            expected: w.expected,
            new: w.new,
        });
        self.inner
            .log
            .append_batch_async(checked, None, cp)
            .await
            .map_err(map)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: StreamFrom,
        direction: Direction,
        max: usize,
    ) -> Result<ReadStream> {
        validate::validate_stream(stream)?;
        let log = self.inner.log.clone();
        let stream = stream.to_string();
        blocking(move || log.read_stream(&stream, from, direction, max).map_err(map)).await
    }

    async fn read_all(&self, after: Option<u64>, max: usize) -> Result<Vec<Event>> {
        let log = self.inner.log.clone();
        if let Some(p) = after {
            if p >= log.head() {
                return Err(StoreError::UnknownPosition(p));
            }
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let from = after.map_or(0, |p| p + 1);
        blocking(move || log.read_all(from, max).map_err(map)).await
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        validate::validate_stream(stream)?;
        let log = self.inner.log.clone();
        let stream = stream.to_string();
        blocking(move || log.stream_version(&stream).map_err(map)).await
    }

    async fn save_snapshot(&self, stream: &str, version: u64, payload: &[u8]) -> Result<()> {
        validate::validate_stream(stream)?;
        let log = self.inner.log.clone();
        let stream = stream.to_string();
        let payload = payload.to_vec();
        blocking(
            move || match log.save_snapshot(&stream, version, &payload) {
                Ok(()) => Ok(()),
                Err(LogError::WrongExpectedVersion { actual, .. }) => {
                    Err(StoreError::SnapshotBeyondStream {
                        stream,
                        version,
                        actual,
                    })
                }
                Err(e) => Err(map(e)),
            },
        )
        .await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        validate::validate_stream(stream)?;
        let log = self.inner.log.clone();
        let stream = stream.to_string();
        blocking(move || {
            Ok(log.snapshot(&stream).map_err(map)?.map(|s| Snapshot {
                version: s.version,
                payload: s.payload,
            }))
        })
        .await
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        position: u64,
        fence: Option<&Lease>,
    ) -> Result<()> {
        validate::validate_name("checkpoint", name)?;
        let inner = self.inner.clone();
        let name = name.to_string();
        let fence = fence.cloned();
        blocking(move || match &fence {
            Some(lease) => inner
                .leases
                .while_held(lease, || inner.checkpoints.save(&name, position)),
            None => inner.checkpoints.save(&name, position),
        })
        .await
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>> {
        validate::validate_name("checkpoint", name)?;
        Ok(self.inner.checkpoints.load(name))
    }

    async fn watermarks(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.inner.log.checkpoints_async(prefix).await.map_err(map)
    }

    async fn acquire_lease(
        &self,
        consumer: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        validate::validate_name("consumer", consumer)?;
        validate::validate_name("holder", holder)?;
        validate::check_ttl(ttl)?;
        Ok(self.inner.leases.acquire(consumer, holder, ttl))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease> {
        self.inner.leases.renew(lease)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.inner.leases.release(lease);
        Ok(())
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.log.watch_head()
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}

/// Consumer checkpoints of a sled store: `checkpoints.json`, replaced atomically on every save.
struct CheckpointFile {
    dir: PathBuf,
    path: PathBuf,
    map: Mutex<BTreeMap<String, u64>>,
}

impl CheckpointFile {
    fn open(dir: &Path) -> Result<Self> {
        let file_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::File { path, source }
        };
        std::fs::create_dir_all(dir).map_err(file_err(dir))?;
        let path = dir.join("checkpoints.json");
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::File {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(file_err(&path)(e)),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            path,
            map: Mutex::new(map),
        })
    }

    fn load(&self, name: &str) -> Option<u64> {
        self.map.lock().get(name).copied()
    }

    fn save(&self, name: &str, position: u64) -> Result<()> {
        let mut map = self.map.lock();
        if map.get(name) == Some(&position) {
            return Ok(());
        }
        let mut next = map.clone();
        next.insert(name.to_string(), position);
        let bytes = serde_json::to_vec(&next).map_err(|e| StoreError::File {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let tmp = self.dir.join("checkpoints.json.tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::File { path, source }
        };
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        *map = next;
        Ok(())
    }
}
