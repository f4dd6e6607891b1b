//! # outrider-ingest
//!
//! The cloud's sync endpoint: agents stream their outboxes here with mTLS, over gRPC (TCP) or
//! QUIC (UDP, same address and port), and each batch is committed with the node's new watermark
//! in one atomic store write, exactly once. Cloud-only: no crate the agent depends on may depend
//! on this one.
//!
//! * [`server`]: [`serve`] / [`Server`]: bind TCP and UDP, accept, mTLS handshakes (rustls,
//!   ring), serve both transports; shutdown ends every session and waits for store calls.
//! * `session` (private): the transport-agnostic session task: one sans-IO
//!   [`outrider_runtime::sync::CloudSession`] per connection, its timers, its store calls on the
//!   blocking pool, the linger after it closes, the counters ([`IngestStats`]).
//! * [`grpc`]: the tonic `outrider.v1.Sync` service, a thin adapter onto the session task.
//! * [`quic`]: the quinn endpoint, a thin adapter: one bidirectional stream per connection,
//!   the same mTLS rules (ALPN `outrider-sync/1`), insecure mode with a self-signed certificate.
//! * [`framing`]: length-delimited frames on QUIC streams, with a size limit.
//! * [`store`]: the [`IngestStore`] trait and [`LogStore`] on the runtime's log.
//! * [`identity`]: the node id from the verified client certificate's URI SAN.
//! * [`metrics`]: the ingest figures (and the store's) in the Prometheus text format.
//! * [`tls`]: the server's rustls configuration from PEM files.

pub use outrider_proto::framing;
pub mod event_store;
pub mod grpc;
pub mod identity;
pub mod metrics;
pub mod quic;
pub mod server;
mod session;
pub mod store;
pub mod tls;

pub use event_store::EventStoreIngest;
pub use server::{serve, Security, Server, ServerConfig};
pub use session::{IngestStats, PeerInfo};
pub use store::{IngestStore, LogStore, StoreError};
pub use tls::TlsFiles;
