//! A producer appending to the agent's gRPC API (`outrider.v1.Agent/Append`) at full speed, one
//! batch at a time, through any number of agent restarts.
//!
//! Every event has a unique id (`<tag>-<stream>-<batch>-<i>`), the append's idempotency key: a
//! batch whose answer was lost (the agent killed mid-append) is sent again with the same ids, and
//! the agent answers with the original positions if it had committed it (`duplicate = true`)
//! instead of writing it twice. A batch is retried until acknowledged, so when the producer
//! stops, everything it sent was acknowledged exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use outrider_proto::v1::agent_client::AgentClient;
use outrider_proto::v1::{expected_version::Kind, AppendRequest, Empty, ExpectedVersion};
use outrider_proto::Event;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Code;

/// How long the producer keeps retrying one batch before it gives up (the agent is down for
/// well under a second per kill; this only bounds a hang).
pub const RETRY_PATIENCE: Duration = Duration::from_secs(90);
/// One append's timeout.
const APPEND_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between failed attempts while waiting for the agent to come back.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// One stream the producer appends to and its outbox class.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// The stream on the node.
    pub stream: String,
    /// The `priority` of its appends (its lane).
    pub class: String,
}

/// What one producer does.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Prefix of every event id (unique per test run).
    pub tag: String,
    /// The streams, appended to in turn.
    pub streams: Vec<StreamSpec>,
    /// Events per append.
    pub batch_events: usize,
    /// Filler bytes in each event's `detail`.
    pub payload_bytes: usize,
}

/// An event the agent acknowledged, with where the agent put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The event id.
    pub id: String,
    /// The stream on the node.
    pub stream: String,
    /// Its outbox class (lane).
    pub class: String,
    /// Its version in the stream, as the agent assigned it.
    pub version: u64,
    /// Its position in the agent's log (the origin seq the cloud must carry).
    pub position: u64,
    /// Its `detail`.
    pub detail: String,
}

/// What a producer did.
#[derive(Debug, Default)]
pub struct ProducerReport {
    /// Every acknowledged event, in acknowledgement order.
    pub acked: Vec<Acked>,
    /// Batches acknowledged.
    pub batches: u64,
    /// Attempts that failed and were retried.
    pub failed_attempts: u64,
    /// Retried batches the agent answered as duplicates (committed before the failure).
    pub duplicate_answers: u64,
    /// A sample of the errors that were retried, by gRPC code.
    pub errors: BTreeMap<String, (u64, String)>,
}

/// The id of event `i` of batch `batch` of `stream`.
pub fn event_id(tag: &str, stream: &str, batch: u64, i: usize) -> String {
    format!("{tag}-{stream}-{batch}-{i}")
}

fn any() -> Option<ExpectedVersion> {
    Some(ExpectedVersion {
        kind: Some(Kind::Any(Empty {})),
    })
}

fn batch_events(cfg: &ProducerConfig, stream: &StreamSpec, batch: u64) -> Vec<Event> {
    let pad = "x".repeat(cfg.payload_bytes);
    (0..cfg.batch_events)
        .map(|i| Event {
            id: event_id(&cfg.tag, &stream.stream, batch, i),
            source: "outrider.e2e".into(),
            detail_type: "KillTest".into(),
            detail: format!(
                "{{\"stream\":\"{}\",\"batch\":{batch},\"i\":{i},\"pad\":\"{pad}\"}}",
                stream.stream
            ),
            ..Default::default()
        })
        .collect()
}

/// Whether a failed append is worth retrying: the agent is down, restarting or unreachable.
/// Anything else (a refused or invalid append) is a failure of the test.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// Appends until `stop` turns true, then returns what the agent acknowledged. The agent's
/// current gRPC address comes from `agent` (`None` while it is down); `acked` counts
/// acknowledged events as they come, for the orchestrator's progress checks.
pub async fn produce(
    cfg: ProducerConfig,
    mut agent: watch::Receiver<Option<SocketAddr>>,
    stop: watch::Receiver<bool>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<ProducerReport> {
    let mut report = ProducerReport::default();
    let mut next_batch = vec![0u64; cfg.streams.len()];
    let mut client: Option<(SocketAddr, AgentClient<Channel>)> = None;
    let mut turn = 0usize;
    while !*stop.borrow() {
        let s = turn % cfg.streams.len();
        turn += 1;
        let spec = &cfg.streams[s];
        let batch = next_batch[s];
        next_batch[s] += 1;
        let events = batch_events(&cfg, spec, batch);
        let request = AppendRequest {
            stream: spec.stream.clone(),
            expected: any(),
            events: events.clone(),
            priority: spec.class.clone(),
        };
        let started = Instant::now();
        let mut attempts = 0u64;
        let response = loop {
            if started.elapsed() > RETRY_PATIENCE {
                bail!(
                    "batch {batch} of {} not acknowledged within {RETRY_PATIENCE:?} \
                     ({attempts} attempts); errors: {:?}",
                    spec.stream,
                    report.errors
                );
            }
            let current = *agent.borrow_and_update();
            let Some(addr) = current else {
                // The agent is down: wait for its next address.
                let _ = tokio::time::timeout(Duration::from_millis(200), agent.changed()).await;
                continue;
            };
            if client.as_ref().is_none_or(|(a, _)| *a != addr) {
                client = None;
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    AgentClient::connect(format!("http://{addr}")),
                )
                .await
                {
                    Ok(Ok(c)) => client = Some((addr, c)),
                    _ => {
                        attempts += 1;
                        report.failed_attempts += 1;
                        let _ = tokio::time::timeout(RETRY_PAUSE, agent.changed()).await;
                        continue;
                    }
                }
            }
            let Some((_, c)) = client.as_mut() else {
                continue;
            };
            attempts += 1;
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(APPEND_TIMEOUT);
            match tokio::time::timeout(APPEND_TIMEOUT + Duration::from_secs(1), c.append(req)).await
            {
                Ok(Ok(r)) => break r.into_inner(),
                Ok(Err(status)) if retryable(status.code()) => {
                    report.failed_attempts += 1;
                    let entry = report
                        .errors
                        .entry(format!("{:?}", status.code()))
                        .or_insert((0, status.message().to_string()));
                    entry.0 += 1;
                    client = None;
                    let _ = tokio::time::timeout(RETRY_PAUSE, agent.changed()).await;
                }
                Ok(Err(status)) => bail!(
                    "append of batch {batch} to {} refused (not retryable): {status:?}",
                    spec.stream
                ),
                Err(_) => {
                    report.failed_attempts += 1;
                    client = None;
                }
            }
        };
        if response.positions.len() != events.len() || response.versions.len() != events.len() {
            bail!(
                "append of batch {batch} to {}: {} events but {} positions and {} versions",
                spec.stream,
                events.len(),
                response.positions.len(),
                response.versions.len()
            );
        }
        if response.duplicate {
            if attempts < 2 {
                bail!(
                    "batch {batch} of {} was answered as a duplicate on its first attempt",
                    spec.stream
                );
            }
            report.duplicate_answers += 1;
        }
        report.batches += 1;
        for ((e, position), version) in events
            .into_iter()
            .zip(response.positions)
            .zip(response.versions)
        {
            report.acked.push(Acked {
                id: e.id,
                stream: spec.stream.clone(),
                class: spec.class.clone(),
                version,
                position,
                detail: e.detail,
            });
        }
        acked.fetch_add(cfg.batch_events as u64, Ordering::Relaxed);
    }
    Ok(report)
}

/// The acknowledged-progress counter as a value (for waits).
pub fn count(acked: &AtomicU64) -> u64 {
    acked.load(Ordering::Relaxed)
}

/// The agent's `Status` answer.
pub async fn agent_status(addr: SocketAddr) -> anyhow::Result<outrider_proto::v1::StatusResponse> {
    let status = async {
        let mut c = AgentClient::connect(format!("http://{addr}")).await?;
        anyhow::Ok(
            c.status(outrider_proto::v1::StatusRequest {})
                .await?
                .into_inner(),
        )
    };
    tokio::time::timeout(Duration::from_secs(10), status)
        .await
        .context("Status timed out")?
}

/// Reads an agent's per-class acknowledged positions for `destination` over its `Status` RPC
/// and sums them (each +1): a number that grows whenever the agent's outbox is acknowledged by
/// the cloud.
pub async fn delivered_progress(addr: SocketAddr, destination: &str) -> anyhow::Result<u64> {
    let status = agent_status(addr).await?;
    Ok(status
        .destinations
        .iter()
        .filter(|d| d.name == destination)
        .flat_map(|d| d.acked.values())
        .map(|v| v + 1)
        .sum())
}
