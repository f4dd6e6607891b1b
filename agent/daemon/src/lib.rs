//! # outrider-agent
//!
//! The Outrider edge agent as a library: the `outrider-agent` binary is a thin wrapper around it,
//! and tests (and the CLI's) start it in-process.
//!
//! * [`config`]: [`AgentConfig`], parsed from `agent.toml` with `OUTRIDER_*` environment
//!   overrides; every error names its key.
//! * [`api`]: the gRPC `outrider.v1.Agent` service over the runtime's [`outrider_runtime::Log`].
//! * [`metrics`]: Prometheus text at `GET /metrics`, and `GET /healthz`.
//! * [`daemon`]: [`start`] / [`run`]: open the log, serve, maintain, shut down gracefully.
//! * [`logging`]: the agent's own `tracing` output.
//! * [`sync`]: streaming the outbox to the cloud over gRPC with mTLS, when `[sync]` is set.
//! * [`probing`]: link probes, failover and host health (`[[links]]`, `[failover]`, `[host]`,
//!   parsed by [`probe_config`]): their events go to the log, their figures to `/metrics`, and
//!   the active link's route to the sync task, which reconnects through it.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut cfg = outrider_agent::AgentConfig::load(None)?; // defaults + OUTRIDER_* overrides
//! cfg.api.listen = "127.0.0.1:0".parse()?;
//! cfg.api.metrics_listen = "127.0.0.1:0".parse()?;
//! let agent = outrider_agent::start(cfg).await?;
//! println!("gRPC on {}", agent.grpc_addr());
//! agent.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod probe_config;
pub mod probing;
pub mod sync;

pub use config::{AgentConfig, ConfigError};
pub use daemon::{run, start, Running};
