//! Command handling: load (snapshot + tail), decide, append with an exact expected version,
//! retry lost races, remember the command id, snapshot every N events.
//!
//! **Idempotency by command id.** Every accepted command appends, in the same atomic
//! [`EventStore::append_batch`] as its events, one *command record* to the stream
//! `$cmd-<type>-<command id>` with `ExpectedVersion::NoStream`: the aggregate id, a fingerprint
//! of the command and the versions its events got. Re-sending the command id finds the record and
//! returns the original events (`duplicate = true`) without deciding again or appending. Two
//! copies racing each other both append with `NoStream` on the record stream: one commits, the
//! other gets a version conflict, finds the winner's record and returns its outcome. The event ids
//! are derived from the command id too (`<command id>:<n>`), so even a retried append of the same
//! batch is a no-op in the store. A *rejected* command writes nothing and records nothing: sending
//! its id again decides it again on the then-current state. The same id with another payload or
//! for another aggregate is [`CqrsError::CommandIdReused`].

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use outrider_store::{
    Direction, Event, EventStore, ExpectedVersion, StoreError, StreamAppend, StreamFrom,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::aggregate::{type_tag, Aggregate, CommandContext, DomainError};
use crate::error::{CqrsError, HandleError, Result};

/// The longest aggregate or command id accepted.
pub const MAX_ID_BYTES: usize = 200;
/// The CloudEvents extension that carries the command id on every event.
pub const COMMAND_ID_EXTENSION: &str = "commandid";

/// Per-aggregate-type settings of a [`Repository`].
#[derive(Debug, Clone)]
pub struct RepositoryConfig {
    /// A snapshot every this many events (0: never). Default: the aggregate's `SNAPSHOT_EVERY`.
    pub snapshot_every: u64,
    /// Attempts at a command before [`CqrsError::TooMuchContention`] (each lost race reloads).
    pub max_attempts: u32,
}

impl RepositoryConfig {
    pub fn for_aggregate<A: Aggregate>() -> Self {
        Self {
            snapshot_every: A::SNAPSHOT_EVERY,
            max_attempts: 100,
        }
    }
}

/// An event as the API shows it (the audit trail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339.
    pub time: String,
    pub command_id: String,
    pub data: serde_json::Value,
}

impl RecordedEvent {
    pub fn from_event(e: &Event) -> Result<Self> {
        let data = serde_json::from_str(&e.detail).map_err(|err| CqrsError::Corrupt {
            what: "event",
            stream: e.stream.clone(),
            version: e.version,
            reason: err.to_string(),
        })?;
        Ok(Self {
            stream: e.stream.clone(),
            version: e.version,
            position: e.position,
            id: e.id.clone(),
            event_type: e.detail_type.clone(),
            time: outrider_proto::time::format_rfc3339(e.time_seconds, e.time_nanos)
                .unwrap_or_default(),
            command_id: command_id_of(e).unwrap_or_default(),
            data,
        })
    }
}

/// The command id an event was appended for, if it carries one.
pub fn command_id_of(e: &Event) -> Option<String> {
    e.extensions
        .get(COMMAND_ID_EXTENSION)
        .and_then(|v| serde_json::from_str::<String>(v).ok())
}

/// What a handled command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The aggregate's version after the command (`None`: still no stream, a no-op).
    pub version: Option<u64>,
    /// The events the command appended (the originals for a duplicate).
    pub events: Vec<RecordedEvent>,
    /// The command id had been handled before: nothing was appended now.
    pub duplicate: bool,
}

/// A loaded aggregate.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub state: A,
    /// The version of its last event (`None`: no stream).
    pub version: Option<u64>,
    /// The version of the snapshot it started from, if any.
    pub snapshot_version: Option<u64>,
    /// Events folded on top of the snapshot (or from the start).
    pub replayed: usize,
}

#[derive(Serialize)]
struct SnapshotOut<'a, A> {
    schema: u32,
    #[serde(rename = "type")]
    ty: &'static str,
    state: &'a A,
}

#[derive(Deserialize)]
struct SnapshotHeader {
    schema: u32,
}

#[derive(Deserialize)]
struct SnapshotIn<A> {
    state: A,
}

#[derive(Debug, Serialize, Deserialize)]
struct CommandRecord {
    aggregate_id: String,
    fingerprint: String,
    first_version: u64,
    count: u64,
}

/// Loads and saves aggregates of type `A` in store `S`, and handles their commands.
pub struct Repository<A, S> {
    store: S,
    cfg: RepositoryConfig,
    _a: PhantomData<fn() -> A>,
}

impl<A, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            cfg: self.cfg.clone(),
            _a: PhantomData,
        }
    }
}

/// Checks an aggregate or command id.
pub fn check_id(id: &str) -> std::result::Result<(), &'static str> {
    if id.is_empty() {
        Err("empty")
    } else if id.len() > MAX_ID_BYTES {
        Err("longer than 200 bytes")
    } else if id.chars().any(char::is_control) {
        Err("contains a control character")
    } else {
        Ok(())
    }
}

/// A stable fingerprint of a command (FNV-1a 64 over its canonical JSON: serde_json sorts keys).
fn fingerprint<C: Serialize>(c: &C) -> String {
    let text = serde_json::to_value(c)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A random delay of up to `2^attempt` (≤ 16) ms before retrying a lost race.
fn backoff(attempt: u32) -> Duration {
    let cap_us = 1000u128 << attempt.min(4);
    let r = uuid::Uuid::new_v4().as_u128() % cap_us;
    Duration::from_micros(u64::try_from(r).unwrap_or(0))
}

impl<A: Aggregate, S: EventStore + Clone + 'static> Repository<A, S> {
    pub fn new(store: S) -> Self {
        Self::with_config(store, RepositoryConfig::for_aggregate::<A>())
    }

    pub fn with_config(store: S, cfg: RepositoryConfig) -> Self {
        Self {
            store,
            cfg,
            _a: PhantomData,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn config(&self) -> &RepositoryConfig {
        &self.cfg
    }

    fn command_stream(command_id: &str) -> String {
        format!("$cmd-{}-{}", A::TYPE, command_id)
    }

    fn check_aggregate_id(id: &str) -> Result<()> {
        check_id(id).map_err(|reason| CqrsError::InvalidAggregateId {
            id: id.to_string(),
            reason,
        })
    }

    /// Loads the aggregate: its latest snapshot (if of this schema version) and the events after.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        Self::check_aggregate_id(id)?;
        let stream = A::stream(id);
        let (snap, tail) = self.store.load(&stream).await?;
        let mut state = A::default();
        let mut snapshot_version = None;
        let events = match snap {
            Some(s) => match decode_snapshot::<A>(&s.payload) {
                Ok(st) => {
                    state = st;
                    snapshot_version = Some(s.version);
                    tail
                }
                Err(reason) => {
                    warn!(%stream, version = s.version, %reason, "ignoring snapshot; replaying all events");
                    self.read_from(&stream, 0).await?
                }
            },
            None => tail,
        };
        let mut version = snapshot_version;
        for e in &events {
            state.apply(&decode_event::<A>(e)?);
            version = Some(e.version);
        }
        Ok(Loaded {
            state,
            version,
            snapshot_version,
            replayed: events.len(),
        })
    }

    async fn read_from(&self, stream: &str, from: u64) -> Result<Vec<Event>> {
        let mut next = from;
        let mut out = Vec::new();
        loop {
            let page = self
                .store
                .read_stream(stream, StreamFrom::Version(next), Direction::Forwards, 4096)
                .await?;
            if let Some(last) = page.events.last() {
                next = last.version + 1;
            }
            let end = page.end || page.events.is_empty();
            out.extend(page.events);
            if end {
                return Ok(out);
            }
        }
    }

    /// Loads the aggregate and saves a snapshot of it now; returns the snapshot's version.
    pub async fn snapshot(&self, id: &str) -> Result<Option<u64>> {
        let loaded = self.load(id).await?;
        if let Some(v) = loaded.version {
            self.save_snapshot(&A::stream(id), v, &loaded.state).await?;
        }
        Ok(loaded.version)
    }

    async fn save_snapshot(&self, stream: &str, version: u64, state: &A) -> Result<()> {
        let payload = serde_json::to_vec(&SnapshotOut {
            schema: A::SCHEMA_VERSION,
            ty: A::TYPE,
            state,
        })
        .map_err(|e| CqrsError::Corrupt {
            what: "state (serializing a snapshot)",
            stream: stream.to_string(),
            version,
            reason: e.to_string(),
        })?;
        self.store.save_snapshot(stream, version, &payload).await?;
        debug!(%stream, version, bytes = payload.len(), "snapshot saved");
        Ok(())
    }

    /// The aggregate's events from version `from`, at most `max` (≤ 1000), and whether that
    /// reached the end.
    pub async fn history(
        &self,
        id: &str,
        from: u64,
        max: usize,
    ) -> Result<(Vec<RecordedEvent>, bool)> {
        Self::check_aggregate_id(id)?;
        let stream = A::stream(id);
        let page = self
            .store
            .read_stream(
                &stream,
                StreamFrom::Version(from),
                Direction::Forwards,
                max.clamp(1, 1000),
            )
            .await?;
        let events = page
            .events
            .iter()
            .map(RecordedEvent::from_event)
            .collect::<Result<Vec<_>>>()?;
        Ok((events, page.end))
    }

    /// The original outcome of `command_id`, if it was handled before.
    async fn recorded_outcome(
        &self,
        id: &str,
        command_id: &str,
        fp: &str,
    ) -> Result<Option<Outcome>> {
        let cmd_stream = Self::command_stream(command_id);
        let page = self
            .store
            .read_stream(&cmd_stream, StreamFrom::Start, Direction::Forwards, 1)
            .await?;
        let Some(rec) = page.events.first() else {
            return Ok(None);
        };
        let rec: CommandRecord =
            serde_json::from_str(&rec.detail).map_err(|e| CqrsError::Corrupt {
                what: "command record",
                stream: cmd_stream.clone(),
                version: 0,
                reason: e.to_string(),
            })?;
        if rec.aggregate_id != id {
            return Err(CqrsError::CommandIdReused {
                command_id: command_id.to_string(),
                reason: format!("{} {:?}", A::TYPE, rec.aggregate_id),
            });
        }
        if rec.fingerprint != fp {
            return Err(CqrsError::CommandIdReused {
                command_id: command_id.to_string(),
                reason: "another command payload".to_string(),
            });
        }
        let stream = A::stream(id);
        let max = usize::try_from(rec.count).unwrap_or(usize::MAX);
        let page = self
            .store
            .read_stream(
                &stream,
                StreamFrom::Version(rec.first_version),
                Direction::Forwards,
                max,
            )
            .await?;
        let events = page
            .events
            .iter()
            .map(RecordedEvent::from_event)
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Outcome {
            version: Some(rec.first_version + rec.count.saturating_sub(1)),
            events,
            duplicate: true,
        }))
    }

    /// Handles a command for aggregate `id`: see the module docs. `expected`: the version the
    /// caller saw (checked before deciding; `None`: no check).
    pub async fn handle(
        &self,
        id: &str,
        command_id: &str,
        expected: Option<u64>,
        command: &A::Command,
    ) -> std::result::Result<Outcome, HandleError<A::Error>> {
        Self::check_aggregate_id(id)?;
        check_id(command_id).map_err(|reason| CqrsError::InvalidCommandId {
            id: command_id.to_string(),
            reason,
        })?;
        let stream = A::stream(id);
        let cmd_stream = Self::command_stream(command_id);
        let fp = fingerprint(command);
        if let Some(o) = self.recorded_outcome(id, command_id, &fp).await? {
            return Ok(o);
        }
        let started = Instant::now();
        let attempts = self.cfg.max_attempts.max(1);
        for attempt in 0..attempts {
            let loaded = self.load(id).await?;
            if let Some(exp) = expected {
                if loaded.version != Some(exp) {
                    return Err(CqrsError::WrongExpectedVersion {
                        stream,
                        expected: exp,
                        actual: loaded.version,
                    }
                    .into());
                }
            }
            let ctx = CommandContext {
                aggregate_id: id,
                command_id,
                now_ms: now_ms(),
            };
            let new_events = loaded
                .state
                .decide(command, &ctx)
                .map_err(HandleError::Domain)?;
            if new_events.is_empty() {
                return Ok(Outcome {
                    version: loaded.version,
                    events: Vec::new(),
                    duplicate: false,
                });
            }
            let first_version = loaded.version.map_or(0, |v| v + 1);
            let mut encoded = Vec::with_capacity(new_events.len());
            for (i, ev) in new_events.iter().enumerate() {
                encoded.push(encode_event::<A>(id, command_id, i, ev)?);
            }
            let record = CommandRecord {
                aggregate_id: id.to_string(),
                fingerprint: fp.clone(),
                first_version,
                count: new_events.len() as u64,
            };
            let record_event = Event {
                id: format!("{command_id}:record"),
                source: format!("outrider.cqrs.{}", A::TYPE),
                detail_type: "CommandRecorded".to_string(),
                detail: serde_json::to_string(&record)
                    .map_err(|e| CqrsError::MalformedRequest(format!("command record: {e}")))?,
                ..Default::default()
            };
            let expected_store = loaded
                .version
                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            let types: Vec<(String, String)> = encoded
                .iter()
                .map(|e| (e.id.clone(), e.detail_type.clone()))
                .collect();
            let res = self
                .store
                .append_batch(
                    vec![
                        StreamAppend {
                            stream: stream.clone(),
                            expected: expected_store,
                            events: encoded,
                        },
                        StreamAppend {
                            stream: cmd_stream.clone(),
                            expected: ExpectedVersion::NoStream,
                            events: vec![record_event],
                        },
                    ],
                    None,
                )
                .await;
            match res {
                Ok(results) if results.iter().any(|r| r.duplicate) => {
                    // The store recognised our event ids: a copy of this command won.
                    if let Some(o) = self.recorded_outcome(id, command_id, &fp).await? {
                        return Ok(o);
                    }
                    debug!(%stream, attempt, "duplicate append without a record; reloading");
                }
                Ok(results) => {
                    let appended = results.into_iter().next();
                    let mut state = loaded.state;
                    for ev in &new_events {
                        state.apply(ev);
                    }
                    let nv = first_version + new_events.len() as u64 - 1;
                    let events = match &appended {
                        Some(r) => {
                            self.read_appended(
                                &stream,
                                r.versions.first().copied(),
                                new_events.len(),
                            )
                            .await?
                        }
                        None => Vec::new(),
                    };
                    self.maybe_snapshot(&stream, loaded.version, nv, &state)
                        .await;
                    debug!(%stream, command_id, version = nv, attempt, elapsed_us = started.elapsed().as_micros() as u64, "command handled");
                    return Ok(Outcome {
                        version: Some(nv),
                        events,
                        duplicate: false,
                    });
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    // A copy of this command may have won the race: its outcome is ours.
                    if let Some(o) = self.recorded_outcome(id, command_id, &fp).await? {
                        return Ok(o);
                    }
                    if let Some(exp) = expected {
                        return Err(CqrsError::WrongExpectedVersion {
                            stream,
                            expected: exp,
                            actual,
                        }
                        .into());
                    }
                    debug!(%stream, attempt, "lost a race; reloading");
                }
                Err(
                    StoreError::TransactionConflict { .. } | StoreError::PartialDuplicate { .. },
                ) => {
                    if let Some(o) = self.recorded_outcome(id, command_id, &fp).await? {
                        return Ok(o);
                    }
                    debug!(%stream, attempt, "transaction conflict; reloading");
                }
                Err(StoreError::EventTooLarge {
                    id: eid,
                    size,
                    limit,
                }) => {
                    let event_type = types
                        .iter()
                        .find(|(i, _)| *i == eid)
                        .map_or(eid, |(_, t)| t.clone());
                    return Err(CqrsError::EventTooLarge {
                        event_type,
                        size,
                        limit,
                    }
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
            if attempt + 1 < attempts {
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        Err(CqrsError::TooMuchContention { stream, attempts }.into())
    }

    async fn read_appended(
        &self,
        stream: &str,
        first: Option<u64>,
        count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let Some(first) = first else {
            return Ok(Vec::new());
        };
        let page = self
            .store
            .read_stream(
                stream,
                StreamFrom::Version(first),
                Direction::Forwards,
                count,
            )
            .await?;
        page.events.iter().map(RecordedEvent::from_event).collect()
    }

    async fn maybe_snapshot(&self, stream: &str, old: Option<u64>, new: u64, state: &A) {
        let every = self.cfg.snapshot_every;
        if every == 0 {
            return;
        }
        let before = old.map_or(0, |v| v + 1) / every;
        let after = (new + 1) / every;
        if after > before {
            // A failed snapshot costs only load time: log it, the command stands.
            if let Err(e) = self.save_snapshot(stream, new, state).await {
                warn!(%stream, version = new, error = %e, "snapshot failed");
            }
        }
    }
}

/// Decodes a snapshot payload of `A`'s current schema version.
fn decode_snapshot<A: Aggregate>(payload: &[u8]) -> std::result::Result<A, String> {
    let header: SnapshotHeader = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if header.schema != A::SCHEMA_VERSION {
        return Err(format!(
            "schema version {} is not this build's {}",
            header.schema,
            A::SCHEMA_VERSION
        ));
    }
    let s: SnapshotIn<A> = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    Ok(s.state)
}

/// Decodes a stored event of `A`.
pub fn decode_event<A: Aggregate>(e: &Event) -> Result<A::Event> {
    serde_json::from_str(&e.detail).map_err(|err| CqrsError::Corrupt {
        what: "event",
        stream: e.stream.clone(),
        version: e.version,
        reason: err.to_string(),
    })
}

/// Encodes a domain event of aggregate `id` for the store: id `<command id>:<n>`, `detail-type`
/// the event's tag, `detail` its JSON, `subject` the aggregate id, the command id as an extension.
pub fn encode_event<A: Aggregate>(
    id: &str,
    command_id: &str,
    n: usize,
    ev: &A::Event,
) -> Result<Event> {
    let value = serde_json::to_value(ev).map_err(|e| CqrsError::MalformedCommand {
        aggregate_type: A::TYPE.to_string(),
        command: String::new(),
        reason: format!("event does not serialize: {e}"),
    })?;
    let detail_type = type_tag(&value).unwrap_or(A::TYPE).to_string();
    let mut extensions = std::collections::HashMap::new();
    extensions.insert(
        COMMAND_ID_EXTENSION.to_string(),
        serde_json::Value::String(command_id.to_string()).to_string(),
    );
    Ok(Event {
        id: format!("{command_id}:{n}"),
        source: format!("outrider.cqrs.{}", A::TYPE),
        detail_type,
        detail: value.to_string(),
        subject: id.to_string(),
        extensions,
        ..Default::default()
    })
}

/// The domain error's API code (used by the type-erased API).
pub fn rejected<A: Aggregate>(e: &A::Error) -> CqrsError {
    CqrsError::Rejected {
        aggregate_type: A::TYPE.to_string(),
        code: e.code(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("a-1").is_ok());
        assert_eq!(check_id(""), Err("empty"));
        assert_eq!(check_id(&"x".repeat(201)), Err("longer than 200 bytes"));
        assert_eq!(check_id("a\u{0}b"), Err("contains a control character"));
    }

    #[test]
    fn fingerprints_ignore_key_order_but_not_values() {
        let a = serde_json::json!({"type": "Deposit", "amount_cents": 1, "x": [1, 2]});
        let b: serde_json::Value =
            serde_json::from_str(r#"{"x": [1, 2], "amount_cents": 1, "type": "Deposit"}"#)
                .unwrap_or_default();
        let c = serde_json::json!({"type": "Deposit", "amount_cents": 2, "x": [1, 2]});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..40 {
            assert!(backoff(attempt) < Duration::from_millis(16));
        }
    }
}
