//! Consumer groups over the network: the tokio shell of [`crate::group::GroupCore`].
//!
//! One task per active group (bus, rule, target, group) in this process: it holds the group's
//! lease (`names::group_checkpoint`), so across replicas on one PostgreSQL store a group is
//! served by one of them; reads the target's stream into the core's window as it grows; hands
//! assignments to members; and saves the checkpoint (fenced by the lease) as the acknowledged
//! prefix moves. The task ends when its last member leaves (after saving the checkpoint) or at
//! [`Groups::shutdown`].
//!
//! A member is a [`Membership`]: deliveries arrive on it, acknowledgements go through it, and
//! dropping it leaves the group (what it held is delivered to the others).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outrider_proto::Event;
use outrider_store::{ExpectedVersion, Lease};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::bus::api_support::SubscriberEntry;
use crate::bus::{bus_of, BusEngine};
use crate::error::BusError;
use crate::group::{GroupConfig, GroupCore, MemberId};
use crate::model::{validate_name, Destination, RuleDef, TargetDef};
use crate::names;

/// Default credit of a member that asks for 0.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
/// The most credit a member may ask for.
pub const MAX_MAX_IN_FLIGHT: u32 = 4096;
/// The longest consumer name.
pub const MAX_CONSUMER_LEN: usize = 128;

/// The shortest visibility timeout (a shorter setting is raised to it).
pub const MIN_VISIBILITY_TIMEOUT: Duration = Duration::from_millis(100);

/// Settings of the consumer groups.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// How long a member may hold a delivery unacknowledged before it goes to another member
    /// (default 30 s; at least [`MIN_VISIBILITY_TIMEOUT`]).
    pub visibility_timeout: Duration,
    /// Entries of a group held in memory at most.
    pub window: usize,
    /// Entries read from the store per read.
    pub read_batch: usize,
    /// The ttl of a group's lease (renewed every third of it).
    pub lease_ttl: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            visibility_timeout: Duration::from_secs(30),
            window: 1024,
            read_batch: 256,
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// Which group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// The bus (`default` when empty; an ARN's name is taken).
    pub bus: String,
    pub rule: String,
    /// The target's Id within the rule.
    pub target: String,
    pub group: String,
}

/// Why joining or staying in a group failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// A malformed group or consumer name or credit.
    #[error("{0}")]
    InvalidArgument(String),
    /// The bus, rule or target does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The target is not a Subscriber target.
    #[error("{0}")]
    NotSubscriber(String),
    /// Shutting down, or the group is served by another replica.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error("{0}")]
    Internal(String),
}

impl From<BusError> for GroupError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::NotFound(m) => GroupError::NotFound(m),
            BusError::Validation(m) => GroupError::InvalidArgument(m),
            BusError::Closed => GroupError::Unavailable("shutting down".into()),
            other => GroupError::Internal(other.to_string()),
        }
    }
}

impl GroupError {
    /// The gRPC status of the error.
    pub fn status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            GroupError::InvalidArgument(_) => Code::InvalidArgument,
            GroupError::NotFound(_) => Code::NotFound,
            GroupError::NotSubscriber(_) => Code::FailedPrecondition,
            GroupError::Unavailable(_) => Code::Unavailable,
            GroupError::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, self.to_string())
    }
}

/// One delivery to a member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberDelivery {
    /// The stable delivery id of (bus event, rule, target).
    pub delivery_id: String,
    /// The entry's version in the target's stream (what an acknowledgement names).
    pub position: u64,
    /// 1 on the first delivery by this process, +1 on each redelivery.
    pub attempt: u32,
    /// The original bus event.
    pub event: Event,
    /// The target's input for the event, or why it could not be rendered.
    pub payload: Result<String, String>,
}

/// What a member receives.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberMessage {
    Deliveries(Vec<MemberDelivery>),
    /// The group stopped serving this member (shutdown, lease lost, store failure).
    Closed(GroupError),
}

enum Cmd {
    Join {
        id: MemberId,
        max_in_flight: usize,
        out: mpsc::UnboundedSender<MemberMessage>,
        reply: oneshot::Sender<Result<(), GroupError>>,
    },
    Ack {
        id: MemberId,
        positions: Vec<u64>,
    },
    Leave {
        id: MemberId,
    },
}

struct Shared {
    engine: BusEngine,
    settings: GroupSettings,
    groups: Mutex<HashMap<GroupKey, mpsc::UnboundedSender<Cmd>>>,
    next_member: AtomicU64,
    stop_tx: watch::Sender<bool>,
    /// This process's holder name of group leases.
    holder: String,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The consumer groups of an engine. Cheap to clone.
#[derive(Clone)]
pub struct Groups {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups")
            .field("active", &self.shared.groups.lock().len())
            .finish()
    }
}

/// A member of a group. Dropping it leaves the group.
#[derive(Debug)]
pub struct Membership {
    id: MemberId,
    cmds: mpsc::UnboundedSender<Cmd>,
    rx: mpsc::UnboundedReceiver<MemberMessage>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Join { id, .. } => write!(f, "Join({id})"),
            Cmd::Ack { id, positions } => write!(f, "Ack({id}, {positions:?})"),
            Cmd::Leave { id } => write!(f, "Leave({id})"),
        }
    }
}

impl Membership {
    /// This member's id (unique in the process).
    pub fn id(&self) -> MemberId {
        self.id
    }

    /// The next message; `None` once the group is gone.
    pub async fn recv(&mut self) -> Option<MemberMessage> {
        self.rx.recv().await
    }

    /// Acknowledges processed deliveries by position.
    pub fn ack(&self, positions: Vec<u64>) {
        if !positions.is_empty() {
            let _ = self.cmds.send(Cmd::Ack {
                id: self.id,
                positions,
            });
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Leave { id: self.id });
    }
}

impl Groups {
    /// The consumer groups of `engine`.
    pub fn new(engine: BusEngine, settings: GroupSettings) -> Self {
        let (stop_tx, _) = watch::channel(false);
        Groups {
            shared: Arc::new(Shared {
                engine,
                settings,
                groups: Mutex::new(HashMap::new()),
                next_member: AtomicU64::new(1),
                stop_tx,
                holder: format!("bus-groups-{}", uuid::Uuid::new_v4().simple()),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The engine the groups read.
    pub fn engine(&self) -> &BusEngine {
        &self.shared.engine
    }

    /// Joins `key`'s group as `consumer` with credit `max_in_flight` (0: the default). Fails if
    /// the bus, rule or target does not exist, the target is not a Subscriber target, or the
    /// group is served by another replica.
    pub async fn join(
        &self,
        mut key: GroupKey,
        consumer: &str,
        max_in_flight: u32,
    ) -> Result<Membership, GroupError> {
        validate_name("consumer group", &key.group).map_err(GroupError::from)?;
        if consumer.is_empty()
            || consumer.len() > MAX_CONSUMER_LEN
            || consumer.chars().any(char::is_control)
        {
            return Err(GroupError::InvalidArgument(format!(
                "consumer name must be 1 to {MAX_CONSUMER_LEN} bytes without control characters"
            )));
        }
        if max_in_flight > MAX_MAX_IN_FLIGHT {
            return Err(GroupError::InvalidArgument(format!(
                "max_in_flight must be at most {MAX_MAX_IN_FLIGHT}, got {max_in_flight}"
            )));
        }
        let max_in_flight = if max_in_flight == 0 {
            DEFAULT_MAX_IN_FLIGHT
        } else {
            max_in_flight
        };
        key.bus = bus_of(&key.bus).to_string();
        let (_, target) = self
            .shared
            .engine
            .target_def(&key.bus, &key.rule, &key.target)?;
        if !matches!(target.destination, Destination::Subscriber) {
            return Err(GroupError::NotSubscriber(format!(
                "Target {} of rule {} on EventBus {} is not a Subscriber target.",
                key.target, key.rule, key.bus
            )));
        }
        if *self.shared.stop_tx.borrow() {
            return Err(GroupError::Unavailable("shutting down".into()));
        }
        let id = self.shared.next_member.fetch_add(1, Ordering::Relaxed);
        let (out, rx) = mpsc::unbounded_channel();
        let (reply, replied) = oneshot::channel();
        let mut cmd = Cmd::Join {
            id,
            max_in_flight: max_in_flight as usize,
            out,
            reply,
        };
        let cmds = {
            let mut groups = self.shared.groups.lock();
            loop {
                if let Some(tx) = groups.get(&key) {
                    match tx.send(cmd) {
                        Ok(()) => break tx.clone(),
                        Err(mpsc::error::SendError(c)) => {
                            cmd = c;
                            groups.remove(&key);
                        }
                    }
                } else {
                    let (tx, task_rx) = mpsc::unbounded_channel();
                    groups.insert(key.clone(), tx);
                    let shared = self.shared.clone();
                    let k = key.clone();
                    let h = tokio::spawn(async move { run(shared, k, task_rx).await });
                    let mut tasks = self.shared.tasks.lock();
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(h);
                }
            }
        };
        match replied.await {
            Ok(Ok(())) => Ok(Membership { id, cmds, rx }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(GroupError::Unavailable("the group stopped".into())),
        }
    }

    /// Groups served by this process now.
    pub fn active(&self) -> usize {
        self.shared.groups.lock().len()
    }

    /// Stops every group: members get [`MemberMessage::Closed`], checkpoints are saved, leases
    /// released.
    pub async fn shutdown(&self) {
        let _ = self.shared.stop_tx.send(true);
        let handles: Vec<JoinHandle<()>> = self.shared.tasks.lock().drain(..).collect();
        for h in handles {
            let _ = h.await;
        }
    }
}

/// The state of one running group.
struct Running {
    shared: Arc<Shared>,
    key: GroupKey,
    cp_name: String,
    lease: Lease,
    renewed: Instant,
    core: GroupCore<Arc<SubscriberEntry>>,
    members: BTreeMap<MemberId, mpsc::UnboundedSender<MemberMessage>>,
    defs: (RuleDef, TargetDef),
    base: Instant,
    /// A checkpoint not saved yet, and when the last one was.
    unsaved: Option<u64>,
    saved_at: Instant,
}

/// How long a busy group's checkpoint may lag behind its acknowledgements (a restart delivers
/// what was acknowledged in that time again: at least once).
const SAVE_EVERY: Duration = Duration::from_millis(100);

impl Running {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Join {
                id,
                max_in_flight,
                out,
                reply,
            } => {
                self.core.join(id, max_in_flight);
                self.members.insert(id, out);
                let _ = reply.send(Ok(()));
            }
            Cmd::Ack { id, positions } => {
                for p in positions {
                    self.core.ack(id, p);
                }
            }
            Cmd::Leave { id } => {
                self.core.leave(id);
                self.members.remove(&id);
            }
        }
    }

    /// Reads what the window takes. Returns whether the stream may hold more.
    async fn read(&mut self) -> Result<bool, BusError> {
        let want = self.core.room().min(self.shared.settings.read_batch.max(1));
        if want == 0 {
            return Ok(true);
        }
        if let Ok(d) =
            self.shared
                .engine
                .target_def(&self.key.bus, &self.key.rule, &self.key.target)
        {
            self.defs = d;
        }
        let entries = self
            .shared
            .engine
            .read_subscriber(&self.defs.0, &self.defs.1, self.core.next_offer(), want)
            .await?;
        let full = entries.len() >= want;
        for e in entries {
            self.core.offer(e.position, Arc::new(e));
        }
        Ok(full)
    }

    /// Hands out what can be handed out; members whose stream is gone leave.
    fn dispatch(&mut self) {
        loop {
            let now = self.now_ms();
            self.core.expire(now);
            let assigned = self.core.assign(now);
            if assigned.is_empty() {
                return;
            }
            let mut by_member: BTreeMap<MemberId, Vec<MemberDelivery>> = BTreeMap::new();
            for a in assigned {
                by_member.entry(a.member).or_default().push(MemberDelivery {
                    delivery_id: a.item.delivery_id.clone(),
                    position: a.position,
                    attempt: a.attempt,
                    event: a.item.event.clone(),
                    payload: a.item.payload.clone(),
                });
            }
            let mut gone = Vec::new();
            for (m, batch) in by_member {
                let sent = self
                    .members
                    .get(&m)
                    .is_some_and(|tx| tx.send(MemberMessage::Deliveries(batch)).is_ok());
                if !sent {
                    gone.push(m);
                }
            }
            if gone.is_empty() {
                return;
            }
            for m in gone {
                self.core.leave(m);
                self.members.remove(&m);
            }
        }
    }

    /// Writes the entries that used up their deliveries to the target's dead-letter stream (the
    /// same record as a pushed target's: the event, the limit, the attempts), before the next
    /// checkpoint can pass them.
    async fn dead_letter(&mut self) -> Result<(), BusError> {
        let dead = self.core.take_exhausted();
        if dead.is_empty() {
            return Ok(());
        }
        let (rule, target) = (&self.defs.0, &self.defs.1);
        let rule_arn = self
            .shared
            .engine
            .rule_arn(&rule.event_bus_name, &rule.name);
        let records: Vec<Event> = dead
            .iter()
            .map(|(_, entry, attempts)| {
                crate::bus::dead_letter_record(
                    &entry.delivery_id,
                    &entry.event,
                    &rule_arn,
                    &rule.name,
                    &target.id,
                    "NotAcknowledged",
                    &format!("delivered {attempts} times to consumer group {} without an acknowledgement", self.key.group),
                    *attempts,
                    "MaximumRetryAttempts",
                )
            })
            .collect();
        if !target.dead_letter {
            tracing::warn!(group = %self.key.group, dropped = records.len(), "entries never acknowledged; no dead-letter stream configured");
            return Ok(());
        }
        let dlq = names::dlq_stream(&rule.event_bus_name, &rule.name, &target.id);
        let store = self.shared.engine.store();
        match store
            .append(&dlq, ExpectedVersion::Any, records.clone())
            .await
        {
            Ok(_) => Ok(()),
            Err(outrider_store::StoreError::PartialDuplicate { .. }) => {
                for r in records {
                    store.append(&dlq, ExpectedVersion::Any, vec![r]).await?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Saves the checkpoint if it moved: at once with `now`, else when the last save is
    /// [`SAVE_EVERY`] old (a busy group saves a few times a second, an idle one at once).
    async fn save(&mut self, now: bool) -> Result<(), BusError> {
        if let Some(cp) = self.core.advance() {
            self.unsaved = Some(cp);
        }
        let Some(cp) = self.unsaved else {
            return Ok(());
        };
        if !now && self.saved_at.elapsed() < SAVE_EVERY {
            return Ok(());
        }
        self.shared
            .engine
            .store()
            .save_checkpoint(&self.cp_name, cp, Some(&self.lease))
            .await?;
        self.unsaved = None;
        self.saved_at = Instant::now();
        Ok(())
    }

    fn close_all(&mut self, why: &GroupError) {
        for (_, tx) in std::mem::take(&mut self.members) {
            let _ = tx.send(MemberMessage::Closed(why.clone()));
        }
    }
}

/// Removes the group's entry (if it is still this task's channel) and answers what is queued.
fn deregister(shared: &Shared, key: &GroupKey, rx: &mut mpsc::UnboundedReceiver<Cmd>) -> Vec<Cmd> {
    let mut groups = shared.groups.lock();
    let mut left = Vec::new();
    while let Ok(c) = rx.try_recv() {
        left.push(c);
    }
    if left.is_empty() {
        groups.remove(key);
        rx.close();
    }
    left
}

async fn start(shared: &Arc<Shared>, key: &GroupKey) -> Result<Running, GroupError> {
    let store = shared.engine.store().clone();
    let defs = shared.engine.target_def(&key.bus, &key.rule, &key.target)?;
    let cp_name = names::group_checkpoint(&key.bus, &key.rule, &key.target, &key.group);
    let lease = store
        .acquire_lease(&cp_name, &shared.holder, shared.settings.lease_ttl)
        .await
        .map_err(|e| GroupError::Internal(e.to_string()))?
        .ok_or_else(|| {
            GroupError::Unavailable(format!(
                "consumer group {} is served by another replica",
                key.group
            ))
        })?;
    let checkpoint = store
        .load_checkpoint(&cp_name)
        .await
        .map_err(|e| GroupError::Internal(e.to_string()))?;
    let cfg = GroupConfig {
        visibility_timeout_ms: u64::try_from(
            shared
                .settings
                .visibility_timeout
                .max(MIN_VISIBILITY_TIMEOUT)
                .as_millis(),
        )
        .unwrap_or(u64::MAX),
        window: shared.settings.window,
        max_deliveries: Some(defs.1.retry_policy.maximum_retry_attempts.saturating_add(1)),
    };
    Ok(Running {
        shared: shared.clone(),
        key: key.clone(),
        cp_name,
        lease,
        renewed: Instant::now(),
        core: GroupCore::new(cfg, checkpoint),
        members: BTreeMap::new(),
        defs,
        base: Instant::now(),
        unsaved: None,
        saved_at: Instant::now(),
    })
}

async fn run(shared: Arc<Shared>, key: GroupKey, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut g = match start(&shared, &key).await {
        Ok(g) => g,
        Err(e) => {
            // Refuse what is queued, then leave the map (joins after that start a new task).
            loop {
                let left = deregister(&shared, &key, &mut rx);
                if left.is_empty() {
                    return;
                }
                for c in left {
                    if let Cmd::Join { reply, .. } = c {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    };
    let store = shared.engine.store().clone();
    let mut changes = store.changes();
    let poll = store.poll_interval();
    let mut stop = shared.stop_tx.subscribe();
    let mut more = true;
    let outcome: Result<(), GroupError> = loop {
        if *stop.borrow() {
            // Also a task started just as the groups shut down (its `changed` never fires).
            break Err(GroupError::Unavailable("shutting down".into()));
        }
        while let Ok(c) = rx.try_recv() {
            g.handle(c);
        }
        if g.members.is_empty() {
            // Keep the progress, then leave the map unless someone joined meanwhile. The lease
            // is not released: this process's holder name takes it again at once, other
            // replicas after its ttl.
            if let Err(e) = g.save(true).await {
                break Err(GroupError::from(e));
            }
            let left = deregister(&shared, &key, &mut rx);
            if left.is_empty() {
                return;
            }
            for c in left {
                g.handle(c);
            }
            continue;
        }
        if g.renewed.elapsed() >= shared.settings.lease_ttl / 3 {
            match store.renew_lease(&g.lease).await {
                Ok(l) => {
                    g.lease = l;
                    g.renewed = Instant::now();
                }
                Err(e) => {
                    break Err(GroupError::Unavailable(format!(
                        "consumer group {} lost its lease: {e}",
                        key.group
                    )));
                }
            }
        }
        if more && g.core.room() > 0 {
            changes.borrow_and_update();
            match g.read().await {
                Ok(m) => more = m,
                Err(e) => break Err(GroupError::from(e)),
            }
        }
        g.dispatch();
        if let Err(e) = g.dead_letter().await {
            break Err(GroupError::from(e));
        }
        // Busy (more commands queued): coalesce; about to wait: save now.
        if let Err(e) = g.save(rx.is_empty()).await {
            break Err(GroupError::from(e));
        }
        if more && g.core.room() > 0 {
            continue;
        }
        let deadline = g
            .core
            .next_deadline()
            .map(|d| g.base + Duration::from_millis(d));
        let renew_at = g.renewed + shared.settings.lease_ttl / 3;
        tokio::select! {
            c = rx.recv() => match c {
                Some(c) => g.handle(c),
                None => break Ok(()),
            },
            r = changes.changed(), if !more => {
                if r.is_err() {
                    break Err(GroupError::Unavailable("the store closed".into()));
                }
                more = true;
            }
            _ = sleep_opt(poll), if !more && poll.is_some() => more = true,
            _ = sleep_until_opt(deadline), if deadline.is_some() => {}
            _ = tokio::time::sleep_until(renew_at) => {}
            _ = stop.changed() => break Err(GroupError::Unavailable("shutting down".into())),
        }
    };
    // The group cannot go on: keep the progress, close the members, give the lease up, and
    // refuse what is queued until the map forgets this task.
    let why = outcome
        .err()
        .unwrap_or_else(|| GroupError::Unavailable("the group stopped".into()));
    tracing::info!(bus = %key.bus, rule = %key.rule, target = %key.target, group = %key.group, reason = %why, "consumer group stopped");
    let _ = g.save(true).await;
    g.close_all(&why);
    let _ = store.release_lease(&g.lease).await;
    loop {
        let left = deregister(&shared, &key, &mut rx);
        if left.is_empty() {
            break;
        }
        for c in left {
            if let Cmd::Join { reply, .. } = c {
                let _ = reply.send(Err(why.clone()));
            }
        }
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
