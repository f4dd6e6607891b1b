//! gRPC API (tonic): the `outrider.v1.Bus` service of `proto/outrider/v1/bus.proto`.
//!
//! * `PutEvents`: at most [`MAX_ENTRIES`] entries (more, or none: `INVALID_ARGUMENT`); each
//!   entry is checked as EventBridge checks a PutEvents entry (its size by AWS's formula, at
//!   most [`MAX_ENTRY_SIZE`]; `detail` a JSON object) and fails alone.
//! * `Subscribe`: the first message opens a membership of a consumer group
//!   ([`super::groups`]); the call's status is `NOT_FOUND` / `FAILED_PRECONDITION` /
//!   `INVALID_ARGUMENT` when it cannot. Then each `Ack` is applied, and deliveries stream back.
//!   Closing the request stream (or dropping the call) leaves the group.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use outrider_proto::eventbridge::{event_to_entry, MAX_ENTRIES, MAX_ENTRY_SIZE};
use outrider_proto::v1::bus_server::{Bus, BusServer};
use outrider_proto::v1::{
    bus_subscribe_request, bus_subscribe_response, BusDeliveries, BusDelivery, BusSubscribeRequest,
    BusSubscribeResponse, PutEventsRequest, PutEventsResponse, PutEventsResultEntry,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::groups::{GroupKey, Groups, MemberDelivery, MemberMessage};
use crate::bus::{BusEngine, PutOutcome};

/// How long a Subscribe call may take to send its `Open`.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request message: ten entries at the size limit plus their envelopes.
pub const MAX_REQUEST_BYTES: usize = MAX_ENTRIES * (MAX_ENTRY_SIZE + 16 * 1024);

/// The tonic service over an engine and its consumer groups.
#[derive(Clone, Debug)]
pub struct BusService {
    engine: BusEngine,
    groups: Groups,
}

impl BusService {
    /// The service of `groups` (and the engine they read).
    pub fn new(groups: Groups) -> Self {
        BusService {
            engine: groups.engine().clone(),
            groups,
        }
    }

    /// The service ready to add to a tonic `Server`, with its message size limits.
    pub fn server(groups: Groups) -> BusServer<Self> {
        BusServer::new(Self::new(groups))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

/// The proto form of a delivery.
pub fn delivery_to_proto(d: MemberDelivery) -> BusDelivery {
    let (payload, payload_error) = match d.payload {
        Ok(p) => (p, String::new()),
        Err(e) => (String::new(), e),
    };
    BusDelivery {
        delivery_id: d.delivery_id,
        position: d.position,
        attempt: d.attempt,
        event: Some(d.event),
        payload,
        payload_error,
    }
}

/// The proto form of PutEvents outcomes.
pub fn outcomes_to_proto(out: Vec<PutOutcome>) -> PutEventsResponse {
    let failed = out
        .iter()
        .filter(|o| matches!(o, PutOutcome::Failed { .. }))
        .count();
    PutEventsResponse {
        failed_entry_count: u32::try_from(failed).unwrap_or(u32::MAX),
        entries: out
            .into_iter()
            .map(|o| match o {
                PutOutcome::Accepted { event_id } => PutEventsResultEntry {
                    event_id,
                    ..PutEventsResultEntry::default()
                },
                PutOutcome::Failed { code, message } => PutEventsResultEntry {
                    error_code: code,
                    error_message: message,
                    ..PutEventsResultEntry::default()
                },
            })
            .collect(),
    }
}

/// The most bytes of deliveries one response message carries (a message holds at least one).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Deliveries as response messages of at most [`MAX_RESPONSE_BYTES`] each.
fn response_messages(deliveries: Vec<MemberDelivery>) -> Vec<BusSubscribeResponse> {
    use prost::Message;
    let wrap = |deliveries: Vec<BusDelivery>| BusSubscribeResponse {
        kind: Some(bus_subscribe_response::Kind::Deliveries(BusDeliveries {
            deliveries,
        })),
    };
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for d in deliveries {
        let d = delivery_to_proto(d);
        let len = d.encoded_len() + 8;
        if !batch.is_empty() && bytes + len > MAX_RESPONSE_BYTES {
            out.push(wrap(std::mem::take(&mut batch)));
            bytes = 0;
        }
        bytes += len;
        batch.push(d);
    }
    if !batch.is_empty() {
        out.push(wrap(batch));
    }
    out
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<BusSubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Bus for BusService {
    async fn put_events(
        &self,
        req: Request<PutEventsRequest>,
    ) -> Result<Response<PutEventsResponse>, Status> {
        let entries = req.into_inner().entries;
        if entries.is_empty() || entries.len() > MAX_ENTRIES {
            return Err(Status::invalid_argument(format!(
                "PutEvents takes 1 to {MAX_ENTRIES} entries, got {}",
                entries.len()
            )));
        }
        let checked = entries
            .into_iter()
            .map(|e| match event_to_entry(&e) {
                Ok(_) => Ok(e),
                Err(err) => Err(super::entry_failure(&err)),
            })
            .collect();
        let out = super::put_checked(&self.engine, checked).await;
        Ok(Response::new(outcomes_to_proto(out)))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<Streaming<BusSubscribeRequest>>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(OPEN_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::invalid_argument(format!(
                    "no Open message within {} s",
                    OPEN_TIMEOUT.as_secs()
                ))
            })??;
        let Some(bus_subscribe_request::Kind::Open(open)) = first.and_then(|m| m.kind) else {
            return Err(Status::invalid_argument(
                "the first message of Subscribe must be Open",
            ));
        };
        let key = GroupKey {
            bus: open.event_bus_name,
            rule: open.rule,
            target: open.target,
            group: open.group,
        };
        let mut member = self
            .groups
            .join(key, &open.consumer, open.max_in_flight)
            .await
            .map_err(|e| e.status())?;
        let (tx, rx) = mpsc::unbounded_channel::<Result<BusSubscribeResponse, Status>>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = member.recv() => match m {
                        Some(MemberMessage::Deliveries(d)) => {
                            let sent = response_messages(d)
                                .into_iter()
                                .all(|resp| tx.send(Ok(resp)).is_ok());
                            if !sent {
                                break;
                            }
                        }
                        Some(MemberMessage::Closed(e)) => {
                            let _ = tx.send(Err(e.status()));
                            break;
                        }
                        None => {
                            let _ = tx.send(Err(Status::unavailable("the consumer group stopped")));
                            break;
                        }
                    },
                    r = inbound.message() => match r {
                        Ok(Some(BusSubscribeRequest { kind: Some(bus_subscribe_request::Kind::Ack(a)) })) => {
                            member.ack(a.positions);
                        }
                        Ok(Some(BusSubscribeRequest { kind: Some(bus_subscribe_request::Kind::Open(_)) })) => {
                            let _ = tx.send(Err(Status::invalid_argument("Open may be sent only once")));
                            break;
                        }
                        Ok(Some(BusSubscribeRequest { kind: None })) => {}
                        Ok(None) | Err(_) => break,
                    },
                    _ = tx.closed() => break,
                }
            }
            // `member` drops here: it leaves the group, what it held goes to the others.
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// Serves the gRPC API on a bound listener until `shutdown` resolves. Stop the groups first
/// ([`Groups::shutdown`]) so that open Subscribe calls end.
pub async fn serve(
    listener: tokio::net::TcpListener,
    groups: Groups,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // Without TCP_NODELAY a small response waits for the peer's delayed ACK (~40 ms a call).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(BusService::server(groups))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(position: u64, payload_len: usize) -> MemberDelivery {
        MemberDelivery {
            delivery_id: format!("d{position}"),
            position,
            attempt: 1,
            event: outrider_proto::Event::default(),
            payload: Ok("x".repeat(payload_len)),
        }
    }

    fn sizes(msgs: &[BusSubscribeResponse]) -> Vec<Vec<u64>> {
        msgs.iter()
            .map(|m| match &m.kind {
                Some(bus_subscribe_response::Kind::Deliveries(d)) => {
                    d.deliveries.iter().map(|x| x.position).collect()
                }
                None => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn deliveries_are_split_into_messages_under_the_byte_limit() {
        let small = response_messages((0..100).map(|p| d(p, 100)).collect());
        assert_eq!(sizes(&small), vec![(0..100).collect::<Vec<u64>>()]);
        let big = response_messages(vec![
            d(0, 3 * 1024 * 1024),
            d(1, 3 * 1024 * 1024),
            d(2, 10),
            d(3, 5 * 1024 * 1024),
        ]);
        assert_eq!(sizes(&big), vec![vec![0], vec![1, 2], vec![3]]);
        assert!(response_messages(Vec::new()).is_empty());
    }
}
