//! `sync-bench produce`: appends events through an agent's gRPC API, as fast as it takes them or
//! at a fixed rate (open loop: appends start on schedule whether or not earlier ones returned).
//! Event `i`'s detail carries `i` and the wall-clock time its append call started.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use outrider_proto::v1::agent_client::AgentClient;
use outrider_proto::v1::AppendRequest;
use outrider_runtime::ExpectedVersion;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::payload::{now_nanos, Payload};

/// Appends in flight at most (rate mode).
const MAX_IN_FLIGHT: usize = 1024;

/// `sync-bench produce`.
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// The agent's gRPC API.
    #[arg(long, default_value = "http://127.0.0.1:7400", value_name = "URL")]
    pub agent: String,

    /// Events to append (required unless --secs is given with --rate).
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,

    /// Append for this long (with --rate).
    #[arg(long, value_name = "S", requires = "rate")]
    pub secs: Option<f64>,

    /// Events per second (open loop); without it, as fast as the agent takes them.
    #[arg(long, value_name = "N")]
    pub rate: Option<u32>,

    /// Encoded event size in bytes (as the agent stores the event).
    #[arg(long, default_value_t = 256, value_name = "BYTES")]
    pub size: u32,

    /// Events per append call (default: 100; with --rate, a millisecond's worth).
    #[arg(long, value_name = "N")]
    pub batch: Option<u64>,

    /// Appends spread over this many streams, PREFIX-0 .. PREFIX-(K-1).
    #[arg(long, default_value_t = 3, value_name = "K")]
    pub streams: u64,

    /// Stream name prefix.
    #[arg(long, default_value = "load", value_name = "PREFIX")]
    pub stream_prefix: String,

    /// Index of the first event (detail field "i").
    #[arg(long, default_value_t = 0, value_name = "I")]
    pub first_index: u64,

    /// Appends in flight at once without --rate.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub concurrency: usize,

    /// Keep trying to connect to the agent for this long.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub connect_timeout: u64,
}

async fn connect(url: &str, timeout: Duration) -> anyhow::Result<AgentClient<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid agent URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let deadline = Instant::now() + timeout;
    loop {
        match endpoint.connect().await {
            Ok(c) => return Ok(AgentClient::new(c)),
            Err(e) if Instant::now() < deadline => {
                eprintln!("produce: connecting to {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot connect to the agent at {url}"))
            }
        }
    }
}

/// One append of events `first..first + k` to stream `stream`, stamped now.
async fn append(
    mut client: AgentClient<Channel>,
    payload: Arc<Payload>,
    stream: String,
    first: u64,
    k: u64,
) -> anyhow::Result<u64> {
    let t = now_nanos();
    let events = (first..first + k).map(|i| payload.event(i, t)).collect();
    let r = client
        .append(AppendRequest {
            stream: stream.clone(),
            expected: Some(ExpectedVersion::Any.into()),
            events,
            priority: String::new(),
        })
        .await
        .with_context(|| format!("append of events {first}..{} to {stream}", first + k))?
        .into_inner();
    if r.positions.len() as u64 != k {
        bail!(
            "append to {stream}: {} positions for {k} events",
            r.positions.len()
        );
    }
    Ok(k)
}

pub async fn run(a: ProduceArgs) -> anyhow::Result<()> {
    if a.streams == 0 || a.concurrency == 0 {
        bail!("--streams and --concurrency must be at least 1");
    }
    let payload = Arc::new(Payload::new(usize::try_from(a.size)?));
    let client = connect(&a.agent, Duration::from_secs(a.connect_timeout)).await?;
    let started = Instant::now();
    let mut tasks: JoinSet<anyhow::Result<u64>> = JoinSet::new();
    let mut appended = 0u64;
    let mut next = a.first_index;
    let stream = |b: u64| format!("{}-{}", a.stream_prefix, b % a.streams);
    let mut b = 0u64;
    match a.rate {
        Some(rate) => {
            if rate == 0 {
                bail!("--rate must be at least 1");
            }
            let batch = a.batch.unwrap_or((u64::from(rate) / 1000).max(1));
            let end = match (a.events, a.secs) {
                (Some(n), _) => a.first_index + n,
                (None, Some(s)) => a.first_index + (s * f64::from(rate)) as u64,
                (None, None) => bail!("--rate needs --events or --secs"),
            };
            let period = Duration::from_secs_f64(batch as f64 / f64::from(rate));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let gate = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            while next < end {
                tick.tick().await;
                while let Some(r) = tasks.try_join_next() {
                    appended += r??;
                }
                let k = batch.min(end - next);
                let permit = gate.clone().acquire_owned().await?;
                let (c, p, s) = (client.clone(), payload.clone(), stream(b));
                tasks.spawn(async move {
                    let r = append(c, p, s, next, k).await;
                    drop(permit);
                    r
                });
                next += k;
                b += 1;
            }
        }
        None => {
            let n = a.events.context("--events is required without --rate")?;
            let end = a.first_index + n;
            let batch = a.batch.unwrap_or(100).max(1);
            while next < end {
                while tasks.len() >= a.concurrency {
                    if let Some(r) = tasks.join_next().await {
                        appended += r??;
                    }
                }
                let k = batch.min(end - next);
                let (c, p, s) = (client.clone(), payload.clone(), stream(b));
                tasks.spawn(append(c, p, s, next, k));
                next += k;
                b += 1;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        appended += r??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "appended": appended,
            "first_index": a.first_index,
            "secs": secs,
            "events_per_s": appended as f64 / secs.max(1e-9),
        })
    );
    Ok(())
}
