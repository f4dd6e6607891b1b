//! The bus engine: definitions, PutEvents, and the tasks that route events.
//!
//! ```text
//! PutEvents ─append─> bus/<bus> ──dispatcher (one per bus; RuleSet match)──┬─> bus/<bus>/q/<rule>/<target> ──worker──> Target
//!  (agents, replays,                 one atomic append_batch per batch,     │      (subscriber targets: read by gRPC
//!   other buses)                     with the dispatch watermark (CAS)      │       consumer groups instead)
//!                                                                           └─> bus/<bus>/archive/<archive>
//! schedules ─(one atomic append_batch per fire, schedule watermark)──> the rule's target queues
//! worker: Tracker (retry/backoff/age) ─exhausted─> bus/<bus>/dlq/<rule>/<target>; checkpoint = finished prefix
//! replay: archive ─(window, up to its head at start)─> bus/<dest> with replay-name, progress in bus-replay/<name>
//! ```
//!
//! Guarantees: an accepted PutEvents entry is durable in `bus/<bus>` before the call returns;
//! every (event, matching rule, target) becomes exactly one queue entry (the dispatch watermark
//! moves by compare-and-set in the same commit as the queue appends); each queue entry reaches
//! its target at least once, or its dead-letter stream, and the delivery id is stable so the
//! receiver can dedupe. Replicas on one PostgreSQL store share the work safely: dispatchers
//! race on the watermark (the loser re-reads), one worker per target holds a lease.

pub mod api_support;
mod archive;
pub mod defs;
mod deliver;
mod dispatch;
mod follow;
mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outrider_proto::Event;
use outrider_runtime::pattern::{Pattern, RuleSet};
use outrider_runtime::Clock;
use outrider_store::{Direction, EventStore, ExpectedVersion, StoreError, StreamFrom};
use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;

use crate::error::{BusError, Result};
use crate::model::{validate_name, ArchiveDef, Destination, RuleDef, RuleState, TargetDef};
use crate::names;
use crate::retry::Backoff;
use crate::schema::{SchemaError, SchemaRegistry};
use crate::target::DynTarget;

pub use archive::{ReplayState, ReplayStatus};
pub use defs::{Change, Definitions, ReplayDef};
pub(crate) use deliver::dead_letter_record;
pub(crate) use dispatch::load_watermark;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Region and account in ARNs and in events that have none.
    pub region: String,
    pub account: String,
    /// Backoff between delivery retries.
    pub backoff: Backoff,
    /// Deliveries in flight per target (waiting retries included).
    pub delivery_window: usize,
    /// Events the dispatcher reads per commit.
    pub dispatch_batch: usize,
    /// How often followers look for appends by other processes when the store has no local
    /// change signal for them (PostgreSQL); `None`: the store's own interval.
    pub poll_interval: Option<Duration>,
    /// How often a waiting schedule re-reads the clock (the clock is injectable, so a schedule
    /// never sleeps through a jump of it for longer than this).
    pub schedule_tick: Duration,
    /// Discover a JSON Schema per (source, detail-type) from every put event (see
    /// [`crate::schema`]); validation on put is enabled per (source, detail-type).
    pub schema_discovery: bool,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            region: "local".into(),
            account: "000000000000".into(),
            backoff: Backoff::default(),
            delivery_window: 256,
            dispatch_batch: 1024,
            poll_interval: None,
            schedule_tick: Duration::from_secs(1),
            schema_discovery: true,
        }
    }
}

/// Builds the target of a rule's destination. `Ok(None)` for [`Destination::Subscriber`]
/// (read by gRPC consumers, not pushed). The server supplies one that knows its HTTP client,
/// Kinesis client, secrets and saga starter.
pub trait TargetFactory: Send + Sync {
    fn build(
        &self,
        engine: &BusEngine,
        bus: &str,
        rule: &RuleDef,
        target: &TargetDef,
    ) -> Result<Option<DynTarget>>;
}

/// One PutEvents entry's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Accepted and durable: the event's id.
    Accepted { event_id: String },
    /// Refused: EventBridge's per-entry `ErrorCode` and `ErrorMessage`.
    Failed { code: String, message: String },
}

/// Counters of the engine (for `/metrics`).
#[derive(Debug, Default)]
pub struct BusStats {
    pub put_accepted: AtomicU64,
    pub put_failed: AtomicU64,
    pub dispatched_events: AtomicU64,
    pub matched_deliveries: AtomicU64,
    pub archived: AtomicU64,
    pub delivered: AtomicU64,
    pub delivery_failures: AtomicU64,
    pub retries: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub schedules_fired: AtomicU64,
    pub replayed: AtomicU64,
}

/// What the dispatcher of one bus matches with: compiled from the bus's enabled rules and
/// archives.
pub(crate) struct Compiled {
    pub ruleset: RuleSet,
    /// Rules by name (pattern rules only).
    pub rules: HashMap<String, RuleDef>,
    /// Archives of the bus that take every event (no pattern).
    pub archive_all: Vec<String>,
}

const RULE_PREFIX: &str = "r/";
/// How long [`BusEngine::shutdown`] lets tasks finish before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
const ARCHIVE_PREFIX: &str = "a/";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TaskKey {
    Dispatch(String),
    Deliver {
        bus: String,
        rule: String,
        target: String,
        fingerprint: String,
    },
    Schedule {
        bus: String,
        rule: String,
        fingerprint: String,
    },
    Replay(String),
    ConfigWatch,
}

pub(crate) struct Inner {
    pub store: Arc<dyn EventStore>,
    pub cfg: BusConfig,
    pub clock: Arc<dyn Clock>,
    factory: Arc<dyn TargetFactory>,
    /// Definitions and the `bus-config` version they fold.
    defs: Mutex<(Definitions, Option<u64>)>,
    compiled: RwLock<HashMap<String, Arc<Compiled>>>,
    tasks: Mutex<HashMap<TaskKey, JoinHandle<()>>>,
    schemas: Mutex<SchemaRegistry>,
    /// This engine's lease holder name: a worker restarted or replaced inside the engine takes
    /// its target's lease again at once; another engine (replica) waits for it.
    pub holder: String,
    pub stats: BusStats,
    pub stop: tokio::sync::watch::Receiver<bool>,
    stop_tx: tokio::sync::watch::Sender<bool>,
}

/// The bus engine. Cheap to clone.
#[derive(Clone)]
pub struct BusEngine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for BusEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusEngine")
            .field("backend", &self.inner.store.backend())
            .finish()
    }
}

impl BusEngine {
    /// Loads the definitions from the store and starts the dispatchers, delivery workers,
    /// schedules and unfinished replays.
    pub async fn start(
        store: Arc<dyn EventStore>,
        cfg: BusConfig,
        factory: Arc<dyn TargetFactory>,
        clock: Arc<dyn Clock>,
    ) -> Result<BusEngine> {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let engine = BusEngine {
            inner: Arc::new(Inner {
                store,
                cfg,
                clock,
                factory,
                defs: Mutex::new((Definitions::initial(), None)),
                compiled: RwLock::new(HashMap::new()),
                tasks: Mutex::new(HashMap::new()),
                schemas: Mutex::new(SchemaRegistry::new()),
                holder: format!("bus-{}", uuid::Uuid::new_v4().simple()),
                stats: BusStats::default(),
                stop,
                stop_tx,
            }),
        };
        engine.load_schemas().await?;
        engine.reload().await?;
        let watcher = tokio::spawn(watch_definitions(engine.clone()));
        engine
            .inner
            .tasks
            .lock()
            .insert(TaskKey::ConfigWatch, watcher);
        Ok(engine)
    }

    /// The store the bus lives in.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.inner.store
    }

    pub fn stats(&self) -> &BusStats {
        &self.inner.stats
    }

    pub fn config(&self) -> &BusConfig {
        &self.inner.cfg
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.inner.clock.now_unix_millis()
    }

    /// Re-reads `bus-config` (changes by other replicas) and brings the tasks in line.
    pub async fn reload(&self) -> Result<()> {
        let (defs, version) = self.read_definitions().await?;
        *self.inner.defs.lock() = (defs, version);
        self.reconcile()
    }

    async fn read_definitions(&self) -> Result<(Definitions, Option<u64>)> {
        let mut defs = Definitions::initial();
        let mut version = None;
        let mut next = 0;
        loop {
            let page = self
                .inner
                .store
                .read_stream(
                    names::CONFIG_STREAM,
                    StreamFrom::Version(next),
                    Direction::Forwards,
                    1024,
                )
                .await?;
            for e in &page.events {
                let change: Change = serde_json::from_str(&e.detail).map_err(|err| {
                    BusError::Validation(format!(
                        "bus-config event {} (version {}) is not a definition change: {err}",
                        e.id, e.version
                    ))
                })?;
                defs.apply(&change);
                version = Some(e.version);
                next = e.version + 1;
            }
            if page.end || page.events.is_empty() {
                break;
            }
        }
        Ok((defs, version))
    }

    /// Validates `change` against the current definitions with `check`, appends it to
    /// `bus-config` at the expected version, applies it, and reconciles the tasks. A concurrent
    /// change by another replica makes it reload and check again.
    async fn change(
        &self,
        change: Change,
        check: impl Fn(&Definitions) -> Result<()>,
    ) -> Result<()> {
        for _ in 0..8 {
            let (version, ok) = {
                let g = self.inner.defs.lock();
                (g.1, check(&g.0))
            };
            ok?;
            let detail = serde_json::to_string(&change)
                .map_err(|e| BusError::Validation(format!("definition does not serialise: {e}")))?;
            let event = Event {
                source: "outrider.bus".into(),
                detail_type: change.kind().into(),
                detail,
                ..Event::default()
            };
            let expected = match version {
                None => ExpectedVersion::NoStream,
                Some(v) => ExpectedVersion::Exact(v),
            };
            match self
                .inner
                .store
                .append(names::CONFIG_STREAM, expected, vec![event])
                .await
            {
                Ok(r) => {
                    {
                        let mut g = self.inner.defs.lock();
                        g.0.apply(&change);
                        g.1 = Some(r.next_expected_version);
                    }
                    return self.reconcile();
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    let (defs, version) = self.read_definitions().await?;
                    *self.inner.defs.lock() = (defs, version);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BusError::Validation(
            "definitions kept changing under this change; try again".into(),
        ))
    }

    /// A copy of the current definitions.
    pub fn definitions(&self) -> Definitions {
        self.inner.defs.lock().0.clone()
    }

    /// `CreateEventBus`.
    pub async fn create_bus(&self, name: &str) -> Result<String> {
        validate_name("event bus", name)?;
        let n = name.to_string();
        self.change(Change::BusCreated { name: n.clone() }, |d| {
            if d.buses.contains_key(&n) {
                Err(BusError::AlreadyExists(format!(
                    "Event bus {n} already exists."
                )))
            } else {
                Ok(())
            }
        })
        .await?;
        Ok(names::bus_arn(
            &self.inner.cfg.region,
            &self.inner.cfg.account,
            name,
        ))
    }

    /// `DeleteEventBus` (not `default`; rules must be deleted first, as EventBridge asks).
    pub async fn delete_bus(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        self.change(Change::BusDeleted { name: n.clone() }, |d| {
            if n == "default" {
                return Err(BusError::Validation(
                    "Cannot delete event bus default.".into(),
                ));
            }
            match d.buses.get(&n) {
                None => Err(BusError::NotFound(format!("Event bus {n} does not exist."))),
                Some(rules) if !rules.is_empty() => Err(BusError::Validation(format!(
                    "Event bus {n} still has {} rules; delete them first",
                    rules.len()
                ))),
                Some(_) => Ok(()),
            }
        })
        .await
    }

    /// `PutRule` + `PutTargets` in one: creates or replaces the rule with its targets. Returns
    /// the rule's ARN.
    pub async fn put_rule(&self, rule: RuleDef) -> Result<String> {
        rule.validate()?;
        for t in &rule.targets {
            crate::transform::InputSpec::from_target(t)?;
            if let Destination::Bus { event_bus_name } = &t.destination {
                validate_name("event bus", event_bus_name)?;
            }
            // Refuse what this server cannot deliver to (a missing secret, no saga engine ...)
            // before the rule is stored.
            self.inner
                .factory
                .build(self, &rule.event_bus_name, &rule, t)?;
        }
        let bus = rule.event_bus_name.clone();
        let name = rule.name.clone();
        let created_ms = self.now_ms();
        let targets = rule.targets.clone();
        self.change(Change::RulePut { rule, created_ms }, |d| {
            if !d.buses.contains_key(&bus) {
                return Err(BusError::NotFound(format!(
                    "Event bus {bus} does not exist."
                )));
            }
            for t in &targets {
                if let Destination::Bus { event_bus_name } = &t.destination {
                    if !d.buses.contains_key(event_bus_name) {
                        return Err(BusError::NotFound(format!(
                            "target {} of rule {name}: event bus {event_bus_name} does not exist.",
                            t.id
                        )));
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(names::rule_arn(
            &self.inner.cfg.region,
            &self.inner.cfg.account,
            &bus,
            &name,
        ))
    }

    /// `DeleteRule`.
    pub async fn delete_rule(&self, bus: &str, name: &str) -> Result<()> {
        let (b, n) = (bus.to_string(), name.to_string());
        self.change(
            Change::RuleDeleted {
                bus: b.clone(),
                name: n.clone(),
            },
            |d| {
                if d.rule(&b, &n).is_none() {
                    Err(BusError::NotFound(format!(
                        "Rule {n} does not exist on EventBus {b}."
                    )))
                } else {
                    Ok(())
                }
            },
        )
        .await
    }

    /// `ListRules` of a bus.
    pub fn list_rules(&self, bus: &str) -> Result<Vec<RuleDef>> {
        let g = self.inner.defs.lock();
        let rules =
            g.0.buses
                .get(bus)
                .ok_or_else(|| BusError::NotFound(format!("Event bus {bus} does not exist.")))?;
        Ok(rules.values().map(|r| r.def.clone()).collect())
    }

    /// `CreateArchive`.
    pub async fn create_archive(&self, archive: ArchiveDef) -> Result<String> {
        validate_name("archive", &archive.archive_name)?;
        if let Some(p) = &archive.event_pattern {
            Pattern::parse(p)?;
        }
        let name = archive.archive_name.clone();
        let bus = archive.event_bus_name.clone();
        self.change(
            Change::ArchiveCreated {
                archive,
                created_ms: self.now_ms(),
            },
            |d| {
                if d.archives.contains_key(&name) {
                    return Err(BusError::AlreadyExists(format!(
                        "Archive {name} already exists."
                    )));
                }
                if !d.buses.contains_key(&bus) {
                    return Err(BusError::NotFound(format!(
                        "Event bus {bus} does not exist."
                    )));
                }
                Ok(())
            },
        )
        .await?;
        Ok(names::archive_arn(
            &self.inner.cfg.region,
            &self.inner.cfg.account,
            &name,
        ))
    }

    /// `DeleteArchive` (its events stay in the store's stream).
    pub async fn delete_archive(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        self.change(Change::ArchiveDeleted { name: n.clone() }, |d| {
            if d.archives.contains_key(&n) {
                Ok(())
            } else {
                Err(BusError::NotFound(format!("Archive {n} does not exist.")))
            }
        })
        .await
    }

    /// `StartReplay`: replays the archive's events with times in `[start, end)` into the
    /// destination bus, marked with the replay's name. Returns the replay's ARN.
    pub async fn start_replay(&self, replay: ReplayDef) -> Result<String> {
        validate_name("replay", &replay.replay_name)?;
        if replay.event_end_time_ms <= replay.event_start_time_ms {
            return Err(BusError::Validation(
                "Parameter EventEndTime is not valid. Reason: EventStartTime must be before EventEndTime."
                    .into(),
            ));
        }
        let archive = {
            let g = self.inner.defs.lock();
            g.0.archives
                .get(&replay.archive_name)
                .map(|a| a.def.clone())
                .ok_or_else(|| {
                    BusError::NotFound(format!("Archive {} does not exist.", replay.archive_name))
                })?
        };
        let stream = names::archive_stream(&archive.event_bus_name, &archive.archive_name);
        let head = self
            .inner
            .store
            .stream_version(&stream)
            .await?
            .map_or(0, |v| v + 1);
        let name = replay.replay_name.clone();
        let dest = replay
            .destination_bus
            .clone()
            .unwrap_or(archive.event_bus_name.clone());
        self.change(
            Change::ReplayStarted {
                replay,
                archive_head: head,
                started_ms: self.now_ms(),
            },
            |d| {
                if d.replays.contains_key(&name) {
                    return Err(BusError::AlreadyExists(format!(
                        "Replay {name} already exists."
                    )));
                }
                if !d.buses.contains_key(&dest) {
                    return Err(BusError::NotFound(format!(
                        "Event bus {dest} does not exist."
                    )));
                }
                Ok(())
            },
        )
        .await?;
        Ok(names::replay_arn(
            &self.inner.cfg.region,
            &self.inner.cfg.account,
            &name,
        ))
    }

    /// `DescribeReplay`.
    pub async fn describe_replay(&self, name: &str) -> Result<ReplayStatus> {
        archive::describe(self, name).await
    }

    /// `PutEvents`: appends each entry to its bus's stream (`EventBusName`, `default` when
    /// empty). Entries of one bus are one atomic append. Each entry gets an id (UUIDv7 unless
    /// it has one), the clock's time unless it has one, and the bus's region and account unless
    /// it has them. One outcome per entry, in order.
    pub async fn put_events(&self, entries: Vec<Event>) -> Vec<PutOutcome> {
        let mut out: Vec<Option<PutOutcome>> = vec![None; entries.len()];
        let mut by_bus: BTreeMap<String, Vec<(usize, Event)>> = BTreeMap::new();
        let now_ns = self.inner.clock.now_unix_nanos();
        let mut schemas_changed = false;
        {
            let g = self.inner.defs.lock();
            let mut schemas = self.inner.schemas.lock();
            for (i, mut e) in entries.into_iter().enumerate() {
                let bus = bus_of(&e.event_bus_name).to_string();
                if !g.0.buses.contains_key(&bus) {
                    out[i] = Some(PutOutcome::Failed {
                        code: "ResourceNotFoundException".into(),
                        message: format!("Event bus {bus} does not exist."),
                    });
                    continue;
                }
                if e.source.is_empty() || e.detail_type.is_empty() {
                    out[i] = Some(PutOutcome::Failed {
                        code: "InvalidArgument".into(),
                        message: "Parameters Source and DetailType are required.".into(),
                    });
                    continue;
                }
                if e.id.is_empty() {
                    e.id = uuid::Uuid::now_v7().to_string();
                }
                if e.time_seconds == 0 && e.time_nanos == 0 {
                    e.time_seconds = now_ns.div_euclid(1_000_000_000);
                    e.time_nanos = now_ns.rem_euclid(1_000_000_000) as u32;
                }
                if e.account.is_empty() {
                    e.account = self.inner.cfg.account.clone();
                }
                if e.region.is_empty() {
                    e.region = self.inner.cfg.region.clone();
                }
                e.event_bus_name = bus.clone();
                e.stream.clear();
                e.position = 0;
                e.version = 0;
                if let Err(v) = schemas.validate(&e) {
                    out[i] = Some(PutOutcome::Failed {
                        code: "InvalidArgument".into(),
                        message: format!(
                            "the event does not match schema version {} of ({}, {}): {v}",
                            v.version, e.source, e.detail_type
                        ),
                    });
                    continue;
                }
                if self.inner.cfg.schema_discovery {
                    if let Ok(detail) = serde_json::from_str::<serde_json::Value>(&e.detail) {
                        let now_ms = now_ns.div_euclid(1_000_000);
                        if schemas
                            .observe_detail(&e.source, &e.detail_type, &detail, now_ms)
                            .is_some()
                        {
                            schemas_changed = true;
                        }
                    }
                }
                by_bus.entry(bus).or_default().push((i, e));
            }
        }
        if schemas_changed {
            if let Err(e) = self.persist_schemas().await {
                tracing::warn!(error = %e, "discovered schemas not saved; saved with the next change");
            }
        }
        for (bus, items) in by_bus {
            let stream = names::bus_stream(&bus);
            // One atomic append per bus; a copy is kept only when a refusal of one entry
            // (too large, bad detail, a duplicate id) must not fail the others: they are then
            // appended one by one.
            let single = items.len() == 1;
            let copy = if single { None } else { Some(items.clone()) };
            let (idx, events): (Vec<usize>, Vec<Event>) = items.into_iter().unzip();
            let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
            match self
                .inner
                .store
                .append(&stream, ExpectedVersion::Any, events)
                .await
            {
                Ok(_) => {
                    for (i, id) in idx.into_iter().zip(ids) {
                        out[i] = Some(PutOutcome::Accepted { event_id: id });
                    }
                }
                Err(e) if per_entry(&e) && copy.is_some() => {
                    for (i, ev) in copy.into_iter().flatten() {
                        let id = ev.id.clone();
                        out[i] = Some(
                            match self
                                .inner
                                .store
                                .append(&stream, ExpectedVersion::Any, vec![ev])
                                .await
                            {
                                Ok(_) => PutOutcome::Accepted { event_id: id },
                                Err(e) => {
                                    let (code, message) = entry_error(&e);
                                    PutOutcome::Failed { code, message }
                                }
                            },
                        );
                    }
                }
                Err(e) => {
                    let (code, message) = entry_error(&e);
                    for i in idx {
                        out[i] = Some(PutOutcome::Failed {
                            code: code.clone(),
                            message: message.clone(),
                        });
                    }
                }
            }
        }
        let out: Vec<PutOutcome> = out
            .into_iter()
            .map(|o| {
                o.unwrap_or(PutOutcome::Failed {
                    code: "InternalFailure".into(),
                    message: "entry was not processed".into(),
                })
            })
            .collect();
        let ok = out
            .iter()
            .filter(|o| matches!(o, PutOutcome::Accepted { .. }))
            .count() as u64;
        self.inner
            .stats
            .put_accepted
            .fetch_add(ok, Ordering::Relaxed);
        self.inner
            .stats
            .put_failed
            .fetch_add(out.len() as u64 - ok, Ordering::Relaxed);
        out
    }

    /// Reads the registry saved by [`BusEngine::persist_schemas`] (the snapshot of the
    /// `bus-schemas` stream).
    async fn load_schemas(&self) -> Result<()> {
        if let Some(snap) = self
            .inner
            .store
            .load_snapshot(names::SCHEMAS_STREAM)
            .await?
        {
            let v: serde_json::Value = serde_json::from_slice(&snap.payload).map_err(|e| {
                BusError::Validation(format!("saved schema registry unreadable: {e}"))
            })?;
            *self.inner.schemas.lock() = SchemaRegistry::import(&v).map_err(schema_error)?;
        }
        Ok(())
    }

    /// Saves the schema registry: a marker event in `bus-schemas` and the registry as that
    /// stream's snapshot.
    async fn persist_schemas(&self) -> Result<()> {
        let export = self.inner.schemas.lock().export();
        let payload =
            serde_json::to_vec(&export).map_err(|e| BusError::Validation(e.to_string()))?;
        let marker = Event {
            source: "outrider.bus".into(),
            detail_type: "SchemasChanged".into(),
            detail: "{}".into(),
            ..Event::default()
        };
        let r = self
            .inner
            .store
            .append(names::SCHEMAS_STREAM, ExpectedVersion::Any, vec![marker])
            .await?;
        self.inner
            .store
            .save_snapshot(names::SCHEMAS_STREAM, r.next_expected_version, &payload)
            .await?;
        Ok(())
    }

    /// Reads the schema registry.
    pub fn with_schemas<R>(&self, f: impl FnOnce(&SchemaRegistry) -> R) -> R {
        f(&self.inner.schemas.lock())
    }

    /// Registers a user's JSON Schema for (source, detail-type) (it replaces discovery there);
    /// returns its version.
    pub async fn register_schema(
        &self,
        source: &str,
        detail_type: &str,
        schema: &serde_json::Value,
    ) -> Result<u32> {
        let v = self
            .inner
            .schemas
            .lock()
            .register(source, detail_type, schema, self.now_ms())
            .map_err(schema_error)?;
        self.persist_schemas().await?;
        Ok(v)
    }

    /// Turns validation on put on or off for (source, detail-type): events that do not match
    /// the latest schema version are refused with a per-entry error naming the field.
    pub async fn set_schema_validation(
        &self,
        source: &str,
        detail_type: &str,
        enabled: bool,
    ) -> Result<()> {
        self.inner
            .schemas
            .lock()
            .set_validation(source, detail_type, enabled);
        self.persist_schemas().await
    }

    /// Stops every task (in-flight deliveries are redelivered after a restart: at least once).
    pub async fn shutdown(&self) {
        let _ = self.inner.stop_tx.send(true);
        let handles: Vec<JoinHandle<()>> =
            self.inner.tasks.lock().drain().map(|(_, h)| h).collect();
        // The tasks see the stop at their next wait and release their leases; a task busy in a
        // slow delivery is aborted after a grace period (its deliveries are redelivered).
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for mut h in handles {
            if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
                h.abort();
                let _ = h.await;
            }
        }
    }

    pub(crate) fn compiled(&self, bus: &str) -> Option<Arc<Compiled>> {
        self.inner.compiled.read().get(bus).cloned()
    }

    pub(crate) fn rule_arn(&self, bus: &str, rule: &str) -> String {
        names::rule_arn(&self.inner.cfg.region, &self.inner.cfg.account, bus, rule)
    }

    /// Recompiles the matchers and starts/stops tasks to match the definitions.
    fn reconcile(&self) -> Result<()> {
        let defs = self.inner.defs.lock().0.clone();
        // Matchers.
        let mut compiled = HashMap::new();
        for (bus, rules) in &defs.buses {
            let mut ruleset = RuleSet::new();
            let mut by_name = HashMap::new();
            for (name, r) in rules {
                if r.def.state != RuleState::Enabled {
                    continue;
                }
                if let Some(p) = &r.def.event_pattern {
                    ruleset.add_rule(format!("{RULE_PREFIX}{name}"), Pattern::parse(p)?);
                    by_name.insert(name.clone(), r.def.clone());
                }
            }
            let mut archive_all = Vec::new();
            for (name, a) in defs
                .archives
                .iter()
                .filter(|(_, a)| &a.def.event_bus_name == bus)
            {
                match &a.def.event_pattern {
                    Some(p) => {
                        ruleset.add_rule(format!("{ARCHIVE_PREFIX}{name}"), Pattern::parse(p)?)
                    }
                    None => archive_all.push(name.clone()),
                }
            }
            compiled.insert(
                bus.clone(),
                Arc::new(Compiled {
                    ruleset,
                    rules: by_name,
                    archive_all,
                }),
            );
        }
        *self.inner.compiled.write() = compiled;

        // Tasks.
        let mut want: HashMap<TaskKey, Box<dyn FnOnce() -> JoinHandle<()>>> = HashMap::new();
        for (bus, rules) in &defs.buses {
            let e = self.clone();
            let b = bus.clone();
            want.insert(
                TaskKey::Dispatch(bus.clone()),
                Box::new(move || tokio::spawn(dispatch::run(e, b))),
            );
            for (name, r) in rules {
                if r.def.state != RuleState::Enabled {
                    continue;
                }
                for t in &r.def.targets {
                    if matches!(t.destination, Destination::Subscriber) {
                        continue;
                    }
                    let target = match self.inner.factory.build(self, bus, &r.def, t) {
                        Ok(Some(target)) => target,
                        Ok(None) => continue,
                        Err(e) => {
                            // E.g. a secret's environment variable missing after a restart:
                            // the queue keeps the deliveries until the target can be built.
                            tracing::error!(bus, rule = %name, target = %t.id, error = %e, "target cannot be built; its deliveries wait in its queue");
                            continue;
                        }
                    };
                    let key = TaskKey::Deliver {
                        bus: bus.clone(),
                        rule: name.clone(),
                        target: t.id.clone(),
                        fingerprint: serde_json::to_string(t).unwrap_or_default(),
                    };
                    let (e, b, rule, tdef) = (self.clone(), bus.clone(), r.def.clone(), t.clone());
                    want.insert(
                        key,
                        Box::new(move || tokio::spawn(deliver::run(e, b, rule, tdef, target))),
                    );
                }
                if let Some(expr) = &r.def.schedule_expression {
                    let key = TaskKey::Schedule {
                        bus: bus.clone(),
                        rule: name.clone(),
                        fingerprint: serde_json::to_string(&r.def).unwrap_or_default(),
                    };
                    let sched = crate::schedule::Schedule::parse(expr)?;
                    let (e, b, rule, created) =
                        (self.clone(), bus.clone(), r.def.clone(), r.created_ms);
                    want.insert(
                        key,
                        Box::new(move || tokio::spawn(schedule::run(e, b, rule, sched, created))),
                    );
                }
            }
        }
        for (name, r) in &defs.replays {
            let (e, r) = (self.clone(), r.clone());
            want.insert(
                TaskKey::Replay(name.clone()),
                Box::new(move || tokio::spawn(archive::replay(e, r))),
            );
        }
        let mut tasks = self.inner.tasks.lock();
        tasks.retain(|k, h| {
            let keep = (want.contains_key(k) || *k == TaskKey::ConfigWatch) && !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        for (k, start) in want {
            if let std::collections::hash_map::Entry::Vacant(v) = tasks.entry(k) {
                if matches!(v.key(), TaskKey::Replay(_)) || !*self.inner.stop.borrow() {
                    v.insert(start());
                }
            }
        }
        Ok(())
    }
}

/// Follows `bus-config` and reloads when another process (a replica on the same PostgreSQL)
/// changed the definitions; this process's own changes are already applied.
async fn watch_definitions(engine: BusEngine) {
    let store = engine.inner.store.clone();
    loop {
        let next = engine.inner.defs.lock().1.map_or(0, |v| v + 1);
        let mut f = follow::Follower::new(
            &*store,
            names::CONFIG_STREAM.to_string(),
            next,
            engine.inner.cfg.poll_interval,
            engine.inner.stop.clone(),
        );
        match f.read(&*store, 1).await {
            Ok(events) if !events.is_empty() => {
                // A version past ours: another process changed the definitions (or our own
                // change is being applied right now: reloading reads the same).
                if let Err(e) = engine.reload().await {
                    tracing::warn!(error = %e, "reloading the bus definitions failed");
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the bus definitions failed"),
        }
        if f.wait(Some(Duration::from_secs(5))).await.is_err() {
            return;
        }
    }
}

/// The bus an entry names (`default` when empty; an ARN's last part).
pub fn bus_of(name: &str) -> &str {
    if name.is_empty() {
        return "default";
    }
    match name.rsplit_once(":event-bus/") {
        Some((_, n)) => n,
        None => name,
    }
}

fn schema_error(e: SchemaError) -> BusError {
    BusError::Validation(e.to_string())
}

/// Whether a store refusal of a batch is about one of its entries (so the others may go alone).
pub(crate) fn per_entry(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::EventTooLarge { .. }
            | StoreError::InvalidDetail { .. }
            | StoreError::InvalidEvent { .. }
            | StoreError::DuplicateIdInRequest { .. }
            | StoreError::PartialDuplicate { .. }
    )
}

/// EventBridge's per-entry error code for a store refusal.
fn entry_error(e: &StoreError) -> (String, String) {
    match e {
        StoreError::EventTooLarge { .. } => ("InvalidArgument".into(), e.to_string()),
        StoreError::InvalidDetail { .. } => ("MalformedDetail".into(), e.to_string()),
        StoreError::InvalidEvent { .. } | StoreError::DuplicateIdInRequest { .. } => {
            ("InvalidArgument".into(), e.to_string())
        }
        _ => ("InternalFailure".into(), e.to_string()),
    }
}

pub(crate) const EXT_EVENT_ID: &str = "outriderbuseventid";
pub(crate) const EXT_INGESTED: &str = "outriderbusingestedms";
