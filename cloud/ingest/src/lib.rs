//! # outrider-ingest
//!
//! The cloud's sync endpoint: agents stream their outboxes here over gRPC with mTLS, and each
//! batch is committed with the node's new watermark in one atomic store write, exactly once.
//! Cloud-only: no crate the agent depends on may depend on this one.
//!
//! * [`server`]: [`serve`] / [`Server`]: bind, accept, mTLS handshake (rustls, ring), serve.
//! * [`grpc`]: the tonic `outrider.v1.Sync` service: one sans-IO
//!   [`outrider_runtime::sync::CloudSession`] per stream, driven by a task.
//! * [`store`]: the [`IngestStore`] trait and [`LogStore`] on the runtime's log.
//! * [`identity`]: the node id from the verified client certificate's URI SAN.
//! * [`tls`]: the server's rustls configuration from PEM files.

pub mod grpc;
pub mod identity;
pub mod server;
pub mod store;
pub mod tls;

pub use server::{serve, Security, Server, ServerConfig};
pub use store::{IngestStore, LogStore, StoreError};
pub use tls::TlsFiles;
