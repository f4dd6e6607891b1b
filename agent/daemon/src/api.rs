//! The gRPC `outrider.v1.Agent` service over an [`outrider_runtime::Log`].

use outrider_proto::v1::agent_server::{Agent, AgentServer};
use outrider_proto::v1::{
    self, AppendRequest, AppendResponse, DestinationStatus, ReadAllRequest, ReadResponse,
    ReadStreamRequest, StatusRequest, StatusResponse, SubscribeRequest, SubscribeResponse,
};
use outrider_proto::Event;
use outrider_runtime::{Direction, Error, ExpectedVersion, Log, StreamFrom};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

/// Largest gRPC message the server decodes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Events a read returns when the request asks for 0.
pub const DEFAULT_READ_COUNT: usize = 100;
/// Most events one read returns.
pub const MAX_READ_COUNT: usize = 1000;
/// Most events a subscription reads from the log at once.
pub const SUBSCRIBE_BATCH: usize = 256;
/// Messages buffered per subscription: a slow client holds the reader back, not memory.
pub const SUBSCRIBE_BUFFER: usize = 16;
/// Responses carry at most about this many bytes of events, so a client with the default
/// 4 MiB decoding limit can read them; a read cut short says `end = false`.
const RESPONSE_BUDGET: usize = MAX_MESSAGE_BYTES - 64 * 1024;

/// Metadata key carrying the stream's actual version on a FAILED_PRECONDITION answer
/// (`none` when the stream does not exist).
pub const ACTUAL_VERSION_METADATA: &str = "outrider-actual-version";

/// The `Agent` service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentService {
    log: Log,
    shutdown: watch::Receiver<bool>,
}

impl AgentService {
    /// A service over `log`. Subscriptions end when `shutdown` turns true (or its sender drops),
    /// so a graceful server stop is not held up by open streams.
    pub fn new(log: Log, shutdown: watch::Receiver<bool>) -> Self {
        Self { log, shutdown }
    }

    /// The tonic server for this service, decoding messages of up to [`MAX_MESSAGE_BYTES`].
    pub fn into_server(self) -> AgentServer<Self> {
        AgentServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// The gRPC status for a runtime error.
pub fn error_to_status(e: &Error) -> Status {
    let code = match e {
        Error::WrongExpectedVersion { actual, .. } => {
            let mut status = Status::failed_precondition(e.to_string());
            let actual = actual.map_or_else(|| "none".to_string(), |v| v.to_string());
            if let Ok(v) = actual.parse() {
                status.metadata_mut().insert(ACTUAL_VERSION_METADATA, v);
            }
            return status;
        }
        Error::EventTooLarge { .. }
        | Error::InvalidStreamName { .. }
        | Error::InvalidDetail { .. }
        | Error::InvalidEvent { .. }
        | Error::EmptyAppend
        | Error::TooManyEvents { .. }
        | Error::DuplicateIdInRequest { .. }
        | Error::UnknownClass(_)
        | Error::UnknownDestination(_)
        | Error::PartialDuplicate { .. }
        | Error::AckBeyondHead { .. } => Code::InvalidArgument,
        Error::OutboxFull { .. } => Code::ResourceExhausted,
        Error::Closed => Code::Unavailable,
        Error::Corrupt { .. } => Code::DataLoss,
        Error::Storage(_) | Error::DataDir { .. } | Error::Config(_) | Error::NoSuchLog(_) => {
            Code::Internal
        }
        #[allow(unreachable_patterns)]
        _ => Code::Internal,
    };
    Status::new(code, e.to_string())
}

fn status(e: Error) -> Status {
    error_to_status(&e)
}

/// Runs a blocking log call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(status),
        Err(e) => Err(Status::internal(format!("read task failed: {e}"))),
    }
}

/// The requested count with 0 meaning the default, capped.
fn read_count(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_READ_COUNT,
        n => usize::try_from(n)
            .unwrap_or(MAX_READ_COUNT)
            .min(MAX_READ_COUNT),
    }
}

/// Splits `events` into the longest prefix within [`RESPONSE_BUDGET`] (at least one event) and the rest.
fn split_by_budget(mut events: Vec<Event>) -> (Vec<Event>, Vec<Event>) {
    let mut bytes = 0usize;
    let mut cut = events.len();
    for (i, e) in events.iter().enumerate() {
        // Field tag + length prefix: at most 6 bytes per event.
        bytes += e.encoded_len() + 6;
        if bytes > RESPONSE_BUDGET && i > 0 {
            cut = i;
            break;
        }
    }
    let rest = events.split_off(cut);
    (events, rest)
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let req = request.into_inner();
        let expected = req
            .expected
            .as_ref()
            .map_or(ExpectedVersion::Any, ExpectedVersion::from);
        let class = Some(req.priority.as_str()).filter(|p| !p.is_empty());
        let r = self
            .log
            .append_async(&req.stream, expected, req.events, class)
            .await
            .map_err(|e| {
                tracing::debug!(stream = %req.stream, error = %e, "append refused");
                status(e)
            })?;
        Ok(Response::new(AppendResponse {
            next_expected_version: r.next_expected_version,
            positions: r.positions,
            versions: r.versions,
            duplicate: r.duplicate,
        }))
    }

    async fn read_stream(
        &self,
        request: Request<ReadStreamRequest>,
    ) -> Result<Response<ReadResponse>, Status> {
        let req = request.into_inner();
        outrider_runtime::validate_stream_name(&req.stream).map_err(status)?;
        let direction = match v1::Direction::try_from(req.direction) {
            Ok(v1::Direction::Forwards) => Direction::Forwards,
            Ok(v1::Direction::Backwards) => Direction::Backwards,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "direction: unknown value {}",
                    req.direction
                )))
            }
        };
        let from = match (req.from_version, direction) {
            (Some(v), _) => StreamFrom::Version(v),
            (None, Direction::Forwards) => StreamFrom::Start,
            (None, Direction::Backwards) => StreamFrom::End,
        };
        let max = read_count(req.max_count);
        let log = self.log.clone();
        let stream = req.stream;
        let page = blocking(move || log.read_stream(&stream, from, direction, max)).await?;
        let (events, rest) = split_by_budget(page.events);
        Ok(Response::new(ReadResponse {
            events,
            end: page.end && rest.is_empty(),
        }))
    }

    async fn read_all(
        &self,
        request: Request<ReadAllRequest>,
    ) -> Result<Response<ReadResponse>, Status> {
        let req = request.into_inner();
        let max = read_count(req.max_count);
        let log = self.log.clone();
        let (events, head) = blocking(move || {
            let events = log.read_all(req.from_position, max)?;
            Ok((events, log.head()))
        })
        .await?;
        let full = events.len() >= max;
        let (events, rest) = split_by_budget(events);
        let end =
            rest.is_empty() && (!full || events.last().is_none_or(|e| e.position + 1 >= head));
        Ok(Response::new(ReadResponse { events, end }))
    }

    type SubscribeStream = ReceiverStream<Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        let stream = Some(req.stream).filter(|s| !s.is_empty());
        if let Some(s) = &stream {
            outrider_runtime::validate_stream_name(s).map_err(status)?;
        }
        let pattern = if req.event_pattern.is_empty() {
            None
        } else {
            Some(
                outrider_runtime::pattern::Pattern::parse(&req.event_pattern).map_err(|e| {
                    Status::invalid_argument(format!(
                        "event_pattern: InvalidEventPatternException: {e}"
                    ))
                })?,
            )
        };
        let (tx, rx) = mpsc::channel(SUBSCRIBE_BUFFER);
        let sub = self.log.subscribe(req.from_position, stream);
        tokio::spawn(feed_subscription(sub, pattern, tx, self.shutdown.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let classes = self.log.outbox_status();
        let destinations = self
            .log
            .config()
            .destinations
            .iter()
            .map(|d| DestinationStatus {
                name: d.clone(),
                // `acked` is the last acknowledged position: one below the cursor, if any.
                acked: classes
                    .iter()
                    .filter_map(|c| {
                        let cursor = c.cursors.iter().find(|(n, _)| n == d)?.1.max(c.floor);
                        Some((c.name.clone(), cursor.checked_sub(1)?))
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(StatusResponse {
            node_id: self.log.config().node_id.clone(),
            head_position: self.log.head(),
            durable_position: self.log.durable_head(),
            streams: self.log.stream_count(),
            classes: classes
                .into_iter()
                .map(|c| v1::ClassStatus {
                    name: c.name,
                    pending_events: c.pending_events,
                    pending_bytes: c.pending_bytes,
                    dropped_events: c.dropped_events + c.expired_events,
                    dropped_bytes: c.dropped_bytes + c.expired_bytes,
                    rejected_events: c.rejected_events,
                })
                .collect(),
            destinations,
        }))
    }
}

/// Moves a subscription's batches into the client's bounded channel until the client goes away,
/// the log closes, or the agent shuts down.
async fn feed_subscription(
    mut sub: outrider_runtime::Subscription,
    pattern: Option<outrider_runtime::pattern::Pattern>,
    tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        // Ends when shutdown turns true or its sender is gone.
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    loop {
        let batch = tokio::select! {
            () = tx.closed() => return,
            () = &mut stop => return,
            b = sub.next_batch(SUBSCRIBE_BATCH) => b,
        };
        let mut messages = Vec::new();
        match batch {
            Ok(b) if b.caught_up && b.events.is_empty() => messages.push(Ok(SubscribeResponse {
                events: vec![],
                caught_up: true,
            })),
            Ok(b) => {
                let caught_up = b.caught_up;
                let mut rest = b.events;
                if let Some(p) = &pattern {
                    rest.retain(|e| matches_pattern(p, e));
                    if rest.is_empty() {
                        continue;
                    }
                }
                while !rest.is_empty() {
                    let (events, more) = split_by_budget(rest);
                    rest = more;
                    messages.push(Ok(SubscribeResponse {
                        events,
                        caught_up: caught_up && rest.is_empty(),
                    }));
                }
            }
            Err(e) => {
                let closed = matches!(e, Error::Closed);
                if !closed {
                    tracing::warn!(error = %e, "subscription failed");
                }
                messages.push(Err(status(e)));
            }
        }
        let failed = messages.iter().any(Result::is_err);
        for m in messages {
            tokio::select! {
                sent = tx.send(m) => if sent.is_err() { return },
                () = &mut stop => return,
            }
        }
        if failed {
            return;
        }
    }
}

/// Whether the event's EventBridge JSON view matches the pattern (events with no such view —
/// a detail that is not an object — never match).
fn matches_pattern(p: &outrider_runtime::pattern::Pattern, e: &outrider_proto::Event) -> bool {
    outrider_proto::eventbridge::to_json(e).is_ok_and(|j| p.matches(&j))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_counts_default_and_cap() {
        assert_eq!(read_count(0), DEFAULT_READ_COUNT);
        assert_eq!(read_count(7), 7);
        assert_eq!(read_count(1_000_000), MAX_READ_COUNT);
    }

    #[test]
    fn responses_are_split_under_the_budget() {
        let big = Event {
            detail: format!("\"{}\"", "x".repeat(1024 * 1024)),
            ..Default::default()
        };
        let (first, rest) = split_by_budget(vec![big.clone(); 6]);
        assert_eq!(first.len(), 3);
        assert_eq!(rest.len(), 3);
        // One oversized event still goes out on its own.
        let huge = Event {
            detail: format!("\"{}\"", "x".repeat(5 * 1024 * 1024)),
            ..Default::default()
        };
        let (first, rest) = split_by_budget(vec![huge]);
        assert_eq!((first.len(), rest.len()), (1, 0));
    }

    #[test]
    fn version_conflicts_carry_the_actual_version() {
        let s = error_to_status(&Error::WrongExpectedVersion {
            stream: "s".into(),
            expected: ExpectedVersion::Exact(5),
            actual: Some(2),
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("actual 2"), "{}", s.message());
        assert_eq!(
            s.metadata()
                .get(ACTUAL_VERSION_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
    }
}
