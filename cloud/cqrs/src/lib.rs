//! # outrider-cqrs
//!
//! CQRS and event sourcing over the cloud event store ([`outrider_store::EventStore`], so on
//! sled and PostgreSQL alike):
//!
//! * [`Aggregate`]: command → events or a typed domain error; event → state; one stream per
//!   aggregate (`<type>-<id>`).
//! * [`Repository`]: loads an aggregate (latest snapshot + the events after it), decides, appends
//!   with `ExpectedVersion::Exact` and, when another writer won the race, reloads and decides
//!   again (bounded, with jittered backoff). Idempotent by command id (a command record committed
//!   atomically with the events; see [`repository`]). A snapshot every N events (default 100,
//!   per aggregate type), serde_json with a schema version.
//! * [`Projection`]s fold the global order into read-model documents, durable and exactly-once
//!   (documents and position in one atomic commit), one runner across replicas (a store lease,
//!   fenced checkpoints), rebuildable from position zero with progress ([`projection`]).
//! * Process managers ([`processor`]): event handlers that send commands, e.g. the banking
//!   transfer.
//! * The API ([`api`]): send a command, get an aggregate's state and history, query read models,
//!   over HTTP/JSON (axum) and gRPC (tonic); typed errors with HTTP statuses and gRPC codes.
//! * Reference domains ([`domains`]): orders, banking, inventory.

pub mod aggregate;
pub mod api;
pub mod domains;
pub mod error;
pub mod processor;
pub mod projection;
pub mod repository;
mod runner;

pub use aggregate::{Aggregate, CommandContext, DomainError};
pub use error::{CqrsError, HandleError, Result};
pub use processor::{spawn_processor, EventHandler, ProcessorHandle, ProcessorStatus};
pub use projection::{
    spawn_projection, Docs, Projection, ProjectionHandle, ProjectionStatus, ReadModels,
    RebuildProgress,
};
pub use repository::{Loaded, Outcome, RecordedEvent, Repository, RepositoryConfig};
pub use runner::RunnerConfig;
