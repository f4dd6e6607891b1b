//! Projections: events in the store's global order folded into read-model documents, run once
//! across replicas under a store lease, durable and exactly-once.
//!
//! **Storage.** A read model is a set of JSON documents by key. Each document is a stream of the
//! event store, `$rm/<projection>/g<generation>/<key>`, whose last event holds its value, so read
//! models live wherever the events live (sled or PostgreSQL) with no second database. A batch of
//! events is committed as **one** [`EventStore::append_batch`]: the new value of every document
//! the batch touched, plus the projection's position as a watermark
//! (`$proj/<projection>/g<generation>`) moved by compare-and-set. Documents and position can
//! therefore never disagree: after a crash the projection resumes exactly after the last
//! committed batch, and non-idempotent updates (counters) are never applied twice.
//!
//! **One runner across replicas.** The runner takes the store lease `$proj/<projection>` and
//! renews it at a third of its ttl; only the holder runs. After each commit it also saves the
//! store checkpoint `$proj/<projection>` *fenced* by the lease, so a deposed replica's write
//! fails with `LeaseLost`; its next document commit would fail too (its compare-and-set expects a
//! watermark the successor moved), so a paused replica can never overwrite newer work.
//!
//! **Rebuild** ([`ProjectionHandle::rebuild`]): the runner replays the whole store from position
//! zero into a **new generation** while queries keep reading the old one, reporting progress
//! ([`RebuildProgress`]) as it goes; once caught up, the meta stream `$rm/<projection>/meta`
//! switches queries to the new generation in one append. The old generation stops moving during
//! the rebuild.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outrider_store::{
    Direction, Event, EventStore, ExpectedVersion, StoreError, StreamAppend, StreamFilter,
    StreamFrom, Subscription, Watermark,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::error::{CqrsError, Result};
use crate::runner::{wait_or_shutdown, LeaseKeeper, RunnerConfig};

/// A projection: folds the events its filter admits into documents.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Its name: the read model's name in queries, and the lease / checkpoint name.
    fn name(&self) -> &str;
    /// Which streams it reads (usually a category prefix such as `order-`).
    fn filter(&self) -> StreamFilter;
    /// Folds one event into the documents. An error stops the projection at this event (it is
    /// retried after a pause and reported in [`ProjectionStatus::last_error`]).
    async fn apply(&self, event: &Event, docs: &mut Docs) -> std::result::Result<(), String>;
}

/// The documents of one generation of a read model, as a projection batch sees and changes them.
pub struct Docs {
    store: Arc<dyn EventStore>,
    prefix: String,
    cache: HashMap<String, (Option<serde_json::Value>, Option<u64>)>,
    dirty: BTreeSet<String>,
    /// Every document this generation holds is in `cache` (a generation started from zero by
    /// this runner, cache never trimmed): a miss is a document that does not exist, no read.
    complete: bool,
}

/// Cached documents kept at most (beyond it the cache is dropped and misses read the store).
const MAX_CACHED_DOCS: usize = 100_000;

#[derive(Serialize, Deserialize)]
struct DocEvent {
    doc: serde_json::Value,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy)]
struct Meta {
    /// The generation queries read.
    active: u64,
    /// The highest generation ever started.
    highest: u64,
}

fn meta_stream(name: &str) -> String {
    format!("$rm/{name}/meta")
}

fn doc_prefix(name: &str, gen: u64) -> String {
    format!("$rm/{name}/g{gen}/")
}

fn watermark_name(name: &str, gen: u64) -> String {
    format!("$proj/{name}/g{gen}")
}

async fn last_event(store: &dyn EventStore, stream: &str) -> Result<Option<Event>> {
    let page = store
        .read_stream(stream, StreamFrom::End, Direction::Backwards, 1)
        .await?;
    Ok(page.events.into_iter().next())
}

async fn read_meta(store: &dyn EventStore, name: &str) -> Result<Meta> {
    let stream = meta_stream(name);
    match last_event(store, &stream).await? {
        None => Ok(Meta {
            active: 1,
            highest: 1,
        }),
        Some(e) => serde_json::from_str(&e.detail).map_err(|err| CqrsError::Corrupt {
            what: "read-model meta",
            stream,
            version: e.version,
            reason: err.to_string(),
        }),
    }
}

async fn write_meta(store: &dyn EventStore, name: &str, meta: Meta) -> Result<()> {
    let detail = serde_json::to_string(&meta)
        .map_err(|e| CqrsError::MalformedRequest(format!("meta: {e}")))?;
    store
        .append(
            &meta_stream(name),
            ExpectedVersion::Any,
            vec![Event {
                source: "outrider.cqrs.projection".into(),
                detail_type: "ReadModelGeneration".into(),
                detail,
                ..Default::default()
            }],
        )
        .await?;
    Ok(())
}

async fn read_doc(
    store: &dyn EventStore,
    stream: &str,
) -> Result<(Option<serde_json::Value>, Option<u64>)> {
    match last_event(store, stream).await? {
        None => Ok((None, None)),
        Some(e) => {
            let d: DocEvent =
                serde_json::from_str(&e.detail).map_err(|err| CqrsError::Corrupt {
                    what: "read-model document",
                    stream: stream.to_string(),
                    version: e.version,
                    reason: err.to_string(),
                })?;
            Ok((Some(d.doc), Some(e.version)))
        }
    }
}

impl Docs {
    fn new(store: Arc<dyn EventStore>, name: &str, gen: u64, complete: bool) -> Self {
        Self {
            store,
            prefix: doc_prefix(name, gen),
            cache: HashMap::new(),
            dirty: BTreeSet::new(),
            complete,
        }
    }

    fn trim(&mut self) {
        if self.cache.len() > MAX_CACHED_DOCS {
            self.cache.clear();
            self.complete = false;
        }
    }

    /// The document's current value (with this batch's changes).
    pub async fn get(&mut self, key: &str) -> Result<Option<serde_json::Value>> {
        if let Some((v, _)) = self.cache.get(key) {
            return Ok(v.clone());
        }
        if self.complete {
            self.cache.insert(key.to_string(), (None, None));
            return Ok(None);
        }
        let stream = format!("{}{key}", self.prefix);
        let (v, version) = read_doc(self.store.as_ref(), &stream).await?;
        self.cache.insert(key.to_string(), (v.clone(), version));
        Ok(v)
    }

    /// The document's value to change in place (written with the batch), `default()` when it
    /// does not exist yet. Cheaper than [`Docs::get`] + [`Docs::put`]: no copy of the document.
    pub async fn get_mut(
        &mut self,
        key: &str,
        default: impl FnOnce() -> serde_json::Value,
    ) -> Result<&mut serde_json::Value> {
        if !self.cache.contains_key(key) {
            self.get(key).await?;
        }
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_string());
        }
        let entry = self.cache.entry(key.to_string()).or_insert((None, None));
        Ok(entry.0.get_or_insert_with(default))
    }

    /// Sets the document's value (written with the batch).
    pub async fn put(&mut self, key: &str, value: serde_json::Value) -> Result<()> {
        if !self.cache.contains_key(key) {
            self.get(key).await?;
        }
        if let Some(entry) = self.cache.get_mut(key) {
            entry.0 = Some(value);
        }
        self.dirty.insert(key.to_string());
        Ok(())
    }

    /// Commits the dirty documents and moves the watermark from `from` to `to`, atomically.
    async fn commit(&mut self, wm: &str, from: Option<u64>, to: u64) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut appends = Vec::with_capacity(self.dirty.len());
        for key in &self.dirty {
            let Some((Some(value), version)) = self.cache.get(key) else {
                continue;
            };
            let detail = serde_json::to_string(&DocEvent { doc: value.clone() })
                .map_err(|e| CqrsError::MalformedRequest(format!("document {key}: {e}")))?;
            appends.push(StreamAppend {
                stream: format!("{}{key}", self.prefix),
                expected: version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
                events: vec![Event {
                    source: "outrider.cqrs.projection".into(),
                    detail_type: "DocumentUpdated".into(),
                    detail,
                    ..Default::default()
                }],
            });
        }
        let keys: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        let res = self
            .store
            .append_batch(
                appends,
                Some(Watermark {
                    name: wm.to_string(),
                    expected: from,
                    new: to,
                }),
            )
            .await;
        match res {
            Ok(results) => {
                for (key, r) in keys.iter().zip(results) {
                    if let Some(entry) = self.cache.get_mut(key) {
                        entry.1 = Some(r.next_expected_version);
                    }
                }
                Ok(())
            }
            Err(e) => {
                // Someone else moved the documents: forget everything cached.
                self.cache.clear();
                self.complete = false;
                Err(e.into())
            }
        }
    }
}

/// Reads read-model documents (any replica; the runner need not run here).
#[derive(Clone)]
pub struct ReadModels {
    store: Arc<dyn EventStore>,
}

impl ReadModels {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store }
    }

    /// The document `key` of read model `name`, from the generation queries read.
    pub async fn get(&self, name: &str, key: &str) -> Result<Option<serde_json::Value>> {
        let meta = read_meta(self.store.as_ref(), name).await?;
        let stream = format!("{}{key}", doc_prefix(name, meta.active));
        Ok(read_doc(self.store.as_ref(), &stream).await?.0)
    }
}

/// Progress of a rebuild.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RebuildProgress {
    pub generation: u64,
    /// Events read so far (all streams, the filter's and the others').
    pub events_read: u64,
    /// Events the projection applied so far.
    pub events_applied: u64,
    pub position: Option<u64>,
    /// Where the live projection was when the rebuild started.
    pub target_position: Option<u64>,
    pub events_per_sec: f64,
    pub done: bool,
}

/// What a projection runner is doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    /// This replica holds the lease and runs the projection.
    pub leader: bool,
    /// The generation queries read.
    pub generation: u64,
    /// The position of the last event committed into the read model.
    pub position: Option<u64>,
    pub events_applied: u64,
    /// The projection has read everything there was at least once.
    pub caught_up: bool,
    pub rebuild: Option<RebuildProgress>,
    pub last_error: Option<String>,
}

enum Control {
    Rebuild,
}

/// A running projection.
pub struct ProjectionHandle {
    name: String,
    status: watch::Receiver<ProjectionStatus>,
    control: mpsc::Sender<Control>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ProjectionHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// A watch of the status (progress reporting).
    pub fn watch(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.clone()
    }

    /// Asks the runner to rebuild the read model from position zero (when this replica does not
    /// lead, the request waits until it does). Asking again while one is pending is a no-op.
    pub async fn rebuild(&self) -> Result<()> {
        match self.control.try_send(Control::Rebuild) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(CqrsError::UnknownProjection(self.name.clone()))
            }
        }
    }

    /// Waits until the status satisfies `f` or `deadline` passes (returns the last status).
    pub async fn wait_for(
        &self,
        deadline: Duration,
        f: impl Fn(&ProjectionStatus) -> bool,
    ) -> std::result::Result<ProjectionStatus, ProjectionStatus> {
        let mut rx = self.status.clone();
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let s = rx.borrow_and_update().clone();
            if f(&s) {
                return Ok(s);
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(rx.borrow().clone()),
            }
        }
    }

    /// Stops the runner and releases its lease.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Starts a projection runner on the tokio runtime.
pub fn spawn_projection(
    store: Arc<dyn EventStore>,
    projection: Arc<dyn Projection>,
    cfg: RunnerConfig,
) -> ProjectionHandle {
    let name = projection.name().to_string();
    let (status_tx, status) = watch::channel(ProjectionStatus {
        name: name.clone(),
        ..Default::default()
    });
    let (control, control_rx) = mpsc::channel(4);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let runner = Runner {
        store,
        projection,
        cfg,
        status: status_tx,
        control: control_rx,
        shutdown: shutdown_rx,
    };
    let task = tokio::spawn(runner.run());
    ProjectionHandle {
        name,
        status,
        control,
        shutdown,
        task,
    }
}

struct Runner {
    store: Arc<dyn EventStore>,
    projection: Arc<dyn Projection>,
    cfg: RunnerConfig,
    status: watch::Sender<ProjectionStatus>,
    control: mpsc::Receiver<Control>,
    shutdown: watch::Receiver<bool>,
}

/// One generation being written.
struct Gen {
    gen: u64,
    docs: Docs,
    sub: Subscription<Arc<dyn EventStore>>,
    committed: Option<u64>,
    read: u64,
    applied: u64,
    started: Instant,
}

enum Exit {
    Shutdown,
}

enum Step {
    Shutdown,
    Nothing,
    Renew,
    Rebuild,
    Batch(Result<outrider_store::SubscriptionBatch, StoreError>),
}

impl Runner {
    fn lease_name(&self) -> String {
        format!("$proj/{}", self.projection.name())
    }

    async fn run(mut self) {
        let name = self.projection.name().to_string();
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let acquired = self
                .store
                .acquire_lease(&self.lease_name(), &self.cfg.holder, self.cfg.lease_ttl)
                .await;
            match acquired {
                Ok(Some(lease)) => {
                    info!(projection = %name, token = lease.token, "projection lease taken");
                    self.status.send_modify(|s| s.leader = true);
                    let mut keeper = LeaseKeeper { lease };
                    let res = self.lead(&mut keeper).await;
                    self.status.send_modify(|s| s.leader = false);
                    match res {
                        Ok(Exit::Shutdown) => {
                            let _ = self.store.release_lease(&keeper.lease).await;
                            return;
                        }
                        Err(e) => {
                            warn!(projection = %name, error = %e, "projection stopped leading");
                            self.status
                                .send_modify(|s| s.last_error = Some(e.to_string()));
                            if wait_or_shutdown(Duration::from_millis(200), &mut self.shutdown)
                                .await
                            {
                                let _ = self.store.release_lease(&keeper.lease).await;
                                return;
                            }
                        }
                    }
                }
                Ok(None) => {
                    if wait_or_shutdown(self.cfg.lease_ttl / 4, &mut self.shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    warn!(projection = %name, error = %e, "cannot take the projection lease");
                    if wait_or_shutdown(Duration::from_millis(500), &mut self.shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    async fn open_gen(&self, gen: u64) -> Result<Gen> {
        let name = self.projection.name();
        let wm = watermark_name(name, gen);
        let committed = self
            .store
            .watermarks(&wm)
            .await?
            .into_iter()
            .find(|(n, _)| *n == wm)
            .map(|(_, v)| v);
        Ok(Gen {
            gen,
            // A generation without a watermark has no documents yet (documents and watermark
            // are committed together).
            docs: Docs::new(self.store.clone(), name, gen, committed.is_none()),
            sub: Subscription::new(
                self.store.clone(),
                committed,
                Some(self.projection.filter()),
            ),
            committed,
            read: 0,
            applied: 0,
            started: Instant::now(),
        })
    }

    async fn lead(&mut self, keeper: &mut LeaseKeeper) -> Result<Exit> {
        let name = self.projection.name().to_string();
        let mut meta = read_meta(self.store.as_ref(), &name).await?;
        let mut live = self.open_gen(meta.active).await?;
        let mut building: Option<(Gen, Option<u64>)> = None;
        self.status.send_modify(|s| {
            s.generation = meta.active;
            s.position = live.committed;
            s.caught_up = false;
        });
        loop {
            let renew_at = keeper.renew_at();
            let gen = match &mut building {
                Some((g, _)) => g,
                None => &mut live,
            };
            let step = tokio::select! {
                r = self.shutdown.changed() => if r.is_err() { Step::Shutdown } else { Step::Nothing },
                Some(Control::Rebuild) = self.control.recv() => Step::Rebuild,
                _ = tokio::time::sleep_until(renew_at) => Step::Renew,
                b = gen.sub.next_batch(self.cfg.batch) => Step::Batch(b),
            };
            let batch = match step {
                Step::Shutdown => return Ok(Exit::Shutdown),
                Step::Nothing => {
                    if *self.shutdown.borrow() {
                        return Ok(Exit::Shutdown);
                    }
                    continue;
                }
                Step::Renew => {
                    keeper.renew(&self.store).await?;
                    continue;
                }
                Step::Rebuild => {
                    if building.is_none() {
                        meta.highest = meta.highest.max(meta.active) + 1;
                        write_meta(self.store.as_ref(), &name, meta).await?;
                        let g = self.open_gen(meta.highest).await?;
                        let target = live.sub.position();
                        info!(projection = %name, generation = g.gen, "rebuild started");
                        self.status.send_modify(|s| {
                            s.rebuild = Some(RebuildProgress {
                                generation: g.gen,
                                target_position: target,
                                ..Default::default()
                            })
                        });
                        building = Some((g, target));
                    }
                    continue;
                }
                Step::Batch(b) => b?,
            };
            if batch.caught_up {
                if let Some((g, _)) = building.take() {
                    // The new generation has read everything: switch queries to it.
                    meta.active = g.gen;
                    write_meta(self.store.as_ref(), &name, meta).await?;
                    info!(projection = %name, generation = g.gen, events = g.read, "rebuild done");
                    let rate = rate(g.read, g.started);
                    self.status.send_modify(|s| {
                        s.generation = g.gen;
                        s.position = g.committed;
                        s.events_applied = g.applied;
                        if let Some(r) = &mut s.rebuild {
                            r.done = true;
                            r.position = g.sub.position();
                            r.events_per_sec = rate;
                        }
                    });
                    live = g;
                } else {
                    self.status.send_modify(|s| s.caught_up = true);
                }
                continue;
            }
            let gen = match &mut building {
                Some((g, _)) => g,
                None => &mut live,
            };
            let Some(last) = batch.events.last().map(|e| e.position) else {
                continue;
            };
            for e in &batch.events {
                self.projection
                    .apply(e, &mut gen.docs)
                    .await
                    .map_err(|reason| CqrsError::Projection {
                        name: name.clone(),
                        position: e.position,
                        reason,
                    })?;
            }
            let to = gen.sub.position().unwrap_or(last);
            let wm = watermark_name(&name, gen.gen);
            match gen.docs.commit(&wm, gen.committed, to).await {
                Ok(()) => {}
                Err(CqrsError::Store(StoreError::WatermarkConflict { .. })) => {
                    return Err(CqrsError::Store(StoreError::LeaseLost {
                        consumer: self.lease_name(),
                        holder: self.cfg.holder.clone(),
                        token: keeper.lease.token,
                    }));
                }
                Err(e) => return Err(e),
            }
            gen.docs.trim();
            gen.committed = Some(to);
            gen.read += batch.events.len() as u64;
            gen.applied += batch.events.len() as u64;
            let is_building = building.is_some();
            if is_building {
                if let Some((g, _)) = &building {
                    let rate = rate(g.read, g.started);
                    let (read, applied, pos) = (g.read, g.applied, g.committed);
                    self.status.send_modify(|s| {
                        if let Some(r) = &mut s.rebuild {
                            r.events_read = read;
                            r.events_applied = applied;
                            r.position = pos;
                            r.events_per_sec = rate;
                        }
                    });
                }
            } else {
                // The fenced checkpoint: fails once another replica holds the lease.
                self.store
                    .save_checkpoint(&self.lease_name(), to, Some(&keeper.lease))
                    .await?;
                let applied = live.applied;
                self.status.send_modify(|s| {
                    s.position = Some(to);
                    s.events_applied = applied;
                });
            }
        }
    }
}

fn rate(n: u64, since: Instant) -> f64 {
    let secs = since.elapsed().as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}
