//! # outrider-store
//!
//! The cloud's event store: one async trait, [`EventStore`], and two backends with the same
//! semantics, checked by one conformance suite (`tests/conformance.rs`):
//!
//! * [`SledStore`] — the embedded default: the runtime's [`outrider_runtime::Log`] (one sled
//!   tree, group commit, fdatasync before acknowledging) wrapped, not re-implemented.
//! * [`PgStore`] — PostgreSQL, for several stateless servers over one database: appends are one
//!   round trip to a PL/pgSQL function; the global order is safe for concurrent writers (see
//!   [`pg`] for the sequence-gap problem and its solution); consumer leases and checkpoints live
//!   in the database; the schema migrates itself at start.
//!
//! What the trait promises, on both backends:
//!
//! * **Append** `append(stream, expected, events)`: atomic; `expected` is
//!   [`ExpectedVersion`] `Any | NoStream | StreamExists | Exact(v)` (KurrentDB semantics); a
//!   mismatch is [`StoreError::WrongExpectedVersion`] with the stream's actual version. Versions
//!   are dense per stream from 0; every event gets a unique global `position`.
//! * **Idempotency**: re-appending event ids the stream already holds writes nothing and returns
//!   the original positions with `duplicate = true`; an append whose ids are only partly in the
//!   stream is [`StoreError::PartialDuplicate`]. (The sled backend remembers the last 65,536
//!   events for `Any`/`NoStream`/`StreamExists` retries and checks `Exact` retries against the
//!   stream itself; PostgreSQL checks every retry against the whole stream.)
//! * **Bad input** is refused with a typed error before anything is written: an event over
//!   [`MAX_EVENT_BYTES`] encoded, a stream name empty, over 512 bytes or with control characters,
//!   a `detail` that is not JSON, an empty append, duplicate ids in one append.
//! * **Reads**: one stream forwards or backwards from a version ([`EventStore::read_stream`]); the
//!   whole store in its **global order** after a position ([`EventStore::read_all`]). The global
//!   order is append-only: an event never appears in it before an event already read. On sled it
//!   is position order; on PostgreSQL it is (transaction id, position); within a stream it
//!   always follows versions, and one append's events are contiguous in it. Positions are unique
//!   but a later transaction can hold smaller ones (see [`pg`]). Positions are cursors either
//!   way: "after position p" means after the event at p in the global order. An acknowledged
//!   append is at once in `read_stream` and `stream_version`; it enters the global order (and
//!   `read_all`, and subscriptions) once every append that began before it has ended: at once
//!   on sled, on PostgreSQL when no older write transaction of the cluster is still running.
//! * **Subscriptions** ([`Subscription`]): catch up, then follow live, from a position or a
//!   consumer's durable checkpoint ([`EventStore::save_checkpoint`]); no gap, no duplicate.
//! * **Snapshots**: the latest per stream, with the version of the last event folded in.
//! * **Leases** ([`Lease`]): `acquire_lease(consumer, holder, ttl)` / renew / release, so that a
//!   projection or bus consumer runs once across replicas; tokens fence checkpoint writes.
//! * **Watermarks**: [`EventStore::append_batch`] appends to several streams and moves a named
//!   watermark by compare-and-set in one atomic commit (the ingest's exactly-once commit).
//!
//! For the CQRS layer: an aggregate repository needs `load` (snapshot + tail),
//! `append(.., Exact(v), ..)` and `save_snapshot`; a projection needs a lease, a
//! [`Subscription`] from its checkpoint and `save_checkpoint(.., Some(&lease))`.

mod error;
mod lease;
pub mod pg;
mod sled;
mod subscription;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use error::{Result, StoreError};
pub use lease::Lease;
pub use outrider_proto::Event;
pub use outrider_runtime::{AppendResult, Direction, ExpectedVersion, ReadStream, StreamFrom};
pub use pg::{PgConfig, PgStore, PgTransaction};
pub use sled::{SledConfig, SledStore};
pub use subscription::{StreamFilter, Subscription, SubscriptionBatch};
pub use validate::{validate_name, MAX_EVENTS_PER_APPEND, MAX_EVENT_BYTES, MAX_NAME_BYTES};

/// One stream's part of [`EventStore::append_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<Event>,
}

/// A compare-and-set of a named watermark, committed atomically with an
/// [`EventStore::append_batch`] (e.g. the ingest's per-lane watermark of a node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub name: String,
    /// The value the watermark must have now (`None`: it must not exist).
    pub expected: Option<u64>,
    pub new: u64,
}

/// A stream's latest snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The version of the last event folded into the snapshot.
    pub version: u64,
    pub payload: Vec<u8>,
}

/// The event store. Every backend has the same semantics (see the crate docs); the conformance
/// suite runs the same cases against each.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// A short name of the backend (`"sled"`, `"postgres"`).
    fn backend(&self) -> &'static str;

    /// Appends `events` to `stream` atomically if the stream's version admits `expected`.
    /// Events without an id get a UUIDv7; events without a time get the store's clock; events
    /// without an origin get this store's node id with `origin_seq` = their position.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult>;

    /// Appends to several distinct streams and, optionally, moves a watermark, in one atomic
    /// commit: every append and the watermark are written, or nothing is. Each stream is checked
    /// as in [`EventStore::append`]; the watermark is a compare-and-set
    /// ([`StoreError::WatermarkConflict`]). Results are in request order.
    async fn append_batch(
        &self,
        appends: Vec<StreamAppend>,
        watermark: Option<Watermark>,
    ) -> Result<Vec<AppendResult>>;

    /// Reads up to `max` events of one stream.
    async fn read_stream(
        &self,
        stream: &str,
        from: StreamFrom,
        direction: Direction,
        max: usize,
    ) -> Result<ReadStream>;

    /// Reads up to `max` events in the global order, after the event at position `after`
    /// (`None`: from the beginning). A position that names no event is
    /// [`StoreError::UnknownPosition`]. Only events that can no longer be preceded by another
    /// are returned: an acknowledged append may show here a little later than in
    /// [`EventStore::read_stream`] (see the crate docs), never out of order.
    async fn read_all(&self, after: Option<u64>, max: usize) -> Result<Vec<Event>>;

    /// The version of the stream's last event (`None`: no such stream).
    async fn stream_version(&self, stream: &str) -> Result<Option<u64>>;

    /// Saves `payload` as the snapshot of `stream` at `version` (the last event it folds in). An
    /// older snapshot never replaces a newer one; a version the stream does not have is
    /// [`StoreError::SnapshotBeyondStream`].
    async fn save_snapshot(&self, stream: &str, version: u64, payload: &[u8]) -> Result<()>;

    /// The latest snapshot of `stream`, if any.
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>>;

    /// Durably stores consumer `name`'s checkpoint: the position of the last event it processed.
    /// With `fence`, the write happens only while that lease is still held
    /// ([`StoreError::LeaseLost`] otherwise), so a deposed replica cannot move it.
    async fn save_checkpoint(&self, name: &str, position: u64, fence: Option<&Lease>)
        -> Result<()>;

    /// Consumer `name`'s checkpoint, if it ever stored one.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>>;

    /// Watermarks (see [`EventStore::append_batch`]) whose names start with `prefix`, by name.
    async fn watermarks(&self, prefix: &str) -> Result<Vec<(String, u64)>>;

    /// Takes the lease on `consumer` for `holder` for `ttl`, if nobody else holds it (or its
    /// holder stopped renewing it). `None`: another holder has it. Re-acquiring a lease one
    /// already holds renews it and keeps its token.
    async fn acquire_lease(
        &self,
        consumer: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>>;

    /// Extends a held lease by its ttl from now. [`StoreError::LeaseLost`] when it expired and
    /// another holder took it (or it was released).
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease>;

    /// Gives a lease up at once, so another holder can take it. Releasing a lease that was
    /// already lost is not an error.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// A watch that changes whenever this process appended to the store: subscriptions wait on
    /// it (and poll every [`EventStore::poll_interval`] for other processes' appends).
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// How often a waiting subscription looks for events appended by other processes; `None`
    /// when no other process can append (sled: the store's directory is locked by one process).
    fn poll_interval(&self) -> Option<Duration>;

    /// Loads a stream to rebuild state: its latest snapshot and every event after it.
    async fn load(&self, stream: &str) -> Result<(Option<Snapshot>, Vec<Event>)> {
        let snap = self.load_snapshot(stream).await?;
        let mut next = snap.as_ref().map_or(0, |s| s.version + 1);
        let mut events = Vec::new();
        loop {
            let page = self
                .read_stream(stream, StreamFrom::Version(next), Direction::Forwards, 4096)
                .await?;
            if let Some(last) = page.events.last() {
                next = last.version + 1;
            }
            let end = page.end || page.events.is_empty();
            events.extend(page.events);
            if end {
                break;
            }
        }
        Ok((snap, events))
    }
}

macro_rules! forward_store {
    ($($t:tt)*) => {
        #[async_trait]
        impl<S: EventStore + ?Sized> EventStore for $($t)* {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            async fn append(
                &self,
                stream: &str,
                expected: ExpectedVersion,
                events: Vec<Event>,
            ) -> Result<AppendResult> {
                (**self).append(stream, expected, events).await
            }
            async fn append_batch(
                &self,
                appends: Vec<StreamAppend>,
                watermark: Option<Watermark>,
            ) -> Result<Vec<AppendResult>> {
                (**self).append_batch(appends, watermark).await
            }
            async fn read_stream(
                &self,
                stream: &str,
                from: StreamFrom,
                direction: Direction,
                max: usize,
            ) -> Result<ReadStream> {
                (**self).read_stream(stream, from, direction, max).await
            }
            async fn read_all(&self, after: Option<u64>, max: usize) -> Result<Vec<Event>> {
                (**self).read_all(after, max).await
            }
            async fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
                (**self).stream_version(stream).await
            }
            async fn save_snapshot(&self, stream: &str, version: u64, payload: &[u8]) -> Result<()> {
                (**self).save_snapshot(stream, version, payload).await
            }
            async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
                (**self).load_snapshot(stream).await
            }
            async fn save_checkpoint(
                &self,
                name: &str,
                position: u64,
                fence: Option<&Lease>,
            ) -> Result<()> {
                (**self).save_checkpoint(name, position, fence).await
            }
            async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>> {
                (**self).load_checkpoint(name).await
            }
            async fn watermarks(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
                (**self).watermarks(prefix).await
            }
            async fn acquire_lease(
                &self,
                consumer: &str,
                holder: &str,
                ttl: Duration,
            ) -> Result<Option<Lease>> {
                (**self).acquire_lease(consumer, holder, ttl).await
            }
            async fn renew_lease(&self, lease: &Lease) -> Result<Lease> {
                (**self).renew_lease(lease).await
            }
            async fn release_lease(&self, lease: &Lease) -> Result<()> {
                (**self).release_lease(lease).await
            }
            fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
                (**self).changes()
            }
            fn poll_interval(&self) -> Option<Duration> {
                (**self).poll_interval()
            }
        }
    };
}

forward_store!(Arc<S>);
forward_store!(Box<S>);
