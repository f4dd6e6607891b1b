//! A client of the bus's gRPC API, and an idempotent-consumer helper.
//!
//! A Subscriber target sees each event at least once: a delivery not acknowledged in time, held
//! by a consumer that went away, or acknowledged after a gap when the server restarted, comes
//! again (with the same `delivery_id`, a higher `attempt`). [`Deduper`] remembers the delivery
//! ids a consumer has processed and skips redeliveries of them; its memory is a [`SeenStore`]:
//! the bounded in-memory [`MemorySeen`], or one a user backs with their database (ideally
//! written in the same transaction as the processing's effects).
//!
//! ```no_run
//! # async fn demo() -> Result<(), outrider_bus::client::ClientError> {
//! use outrider_bus::client::{BusClient, Deduper};
//! let mut client = BusClient::connect("http://127.0.0.1:50051").await?;
//! let mut sub = client.subscribe("default", "orders", "worker", "billing", "pod-1").await?;
//! let mut dedupe = Deduper::new(100_000);
//! while let Some(d) = sub.next().await? {
//!     if dedupe.first_time(&d).await? {
//!         // ... process d.payload ...
//!         dedupe.processed(&d).await?;
//!     }
//!     sub.ack(d.position).await?;
//! }
//! # Ok(()) }
//! ```

use std::collections::{HashSet, VecDeque};

use async_trait::async_trait;
use outrider_proto::v1::bus_client::BusClient as RawClient;
use outrider_proto::v1::{
    bus_subscribe_request, bus_subscribe_response, BusSubscribeAck, BusSubscribeOpen,
    BusSubscribeRequest, BusSubscribeResponse, PutEventsRequest,
};
use outrider_proto::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::bus::PutOutcome;

/// What the client fails with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The subscription's request stream is closed.
    #[error("the subscription is closed")]
    Closed,
    /// A [`SeenStore`] failed.
    #[error("seen store: {0}")]
    Seen(String),
}

/// A client of the `outrider.v1.Bus` service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BusClient {
    raw: RawClient<Channel>,
}

/// Options of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Empty: default.
    pub event_bus_name: String,
    pub rule: String,
    /// The Subscriber target's Id.
    pub target: String,
    pub group: String,
    pub consumer: String,
    /// Deliveries held unacknowledged at most (0: the server's default, 64).
    pub max_in_flight: u32,
}

impl BusClient {
    /// Connects to `endpoint` (`http://host:port`).
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, ClientError> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.into())?
            .connect()
            .await?;
        Ok(Self::new(channel))
    }

    /// A client on an existing channel.
    pub fn new(channel: Channel) -> Self {
        BusClient {
            raw: RawClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(crate::api::grpc::MAX_REQUEST_BYTES),
        }
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut RawClient<Channel> {
        &mut self.raw
    }

    /// `PutEvents`: one outcome per entry, in order. An error only when the call failed as a
    /// whole (more than 10 entries, the server unreachable).
    pub async fn put_events(
        &mut self,
        entries: Vec<Event>,
    ) -> Result<Vec<PutOutcome>, ClientError> {
        let resp = self
            .raw
            .put_events(PutEventsRequest { entries })
            .await?
            .into_inner();
        Ok(resp
            .entries
            .into_iter()
            .map(|e| {
                if e.error_code.is_empty() {
                    PutOutcome::Accepted {
                        event_id: e.event_id,
                    }
                } else {
                    PutOutcome::Failed {
                        code: e.error_code,
                        message: e.error_message,
                    }
                }
            })
            .collect())
    }

    /// Joins consumer group `group` of the Subscriber target `target` of `rule` on `bus` as
    /// `consumer`, with the default credit.
    pub async fn subscribe(
        &mut self,
        bus: &str,
        rule: &str,
        target: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Subscriber, ClientError> {
        self.subscribe_with(SubscribeOptions {
            event_bus_name: bus.into(),
            rule: rule.into(),
            target: target.into(),
            group: group.into(),
            consumer: consumer.into(),
            max_in_flight: 0,
        })
        .await
    }

    /// Joins a consumer group. Fails with the server's status (`NOT_FOUND`,
    /// `FAILED_PRECONDITION`, ...) when it cannot.
    pub async fn subscribe_with(&mut self, o: SubscribeOptions) -> Result<Subscriber, ClientError> {
        let (tx, rx) = mpsc::channel(64);
        let open = BusSubscribeRequest {
            kind: Some(bus_subscribe_request::Kind::Open(BusSubscribeOpen {
                event_bus_name: o.event_bus_name,
                rule: o.rule,
                target: o.target,
                group: o.group,
                consumer: o.consumer,
                max_in_flight: o.max_in_flight,
            })),
        };
        tx.send(open).await.map_err(|_| ClientError::Closed)?;
        let inbound = self
            .raw
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Subscriber {
            tx,
            inbound,
            buffered: VecDeque::new(),
        })
    }
}

/// One delivery of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribedDelivery {
    /// Stable across redeliveries: the key to dedupe on.
    pub delivery_id: String,
    /// What [`Subscriber::ack`] names.
    pub position: u64,
    /// 1 on the first delivery, +1 on each redelivery.
    pub attempt: u32,
    /// The original bus event (its id is the one PutEvents returned).
    pub event: Event,
    /// The target's input for the event, or why it could not be rendered.
    pub payload: Result<String, String>,
}

/// A member of a consumer group. Dropping it leaves the group (unacknowledged deliveries go
/// to the other members).
#[derive(Debug)]
pub struct Subscriber {
    tx: mpsc::Sender<BusSubscribeRequest>,
    inbound: Streaming<BusSubscribeResponse>,
    buffered: VecDeque<SubscribedDelivery>,
}

impl Subscriber {
    /// The next delivery; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<SubscribedDelivery>, ClientError> {
        loop {
            if let Some(d) = self.buffered.pop_front() {
                return Ok(Some(d));
            }
            let Some(msg) = self.inbound.message().await? else {
                return Ok(None);
            };
            if let Some(bus_subscribe_response::Kind::Deliveries(ds)) = msg.kind {
                self.buffered
                    .extend(ds.deliveries.into_iter().map(|d| SubscribedDelivery {
                        delivery_id: d.delivery_id,
                        position: d.position,
                        attempt: d.attempt,
                        event: d.event.unwrap_or_default(),
                        payload: if d.payload_error.is_empty() {
                            Ok(d.payload)
                        } else {
                            Err(d.payload_error)
                        },
                    }));
            }
        }
    }

    /// Acknowledges a processed delivery.
    pub async fn ack(&self, position: u64) -> Result<(), ClientError> {
        self.ack_many(vec![position]).await
    }

    /// Acknowledges processed deliveries.
    pub async fn ack_many(&self, positions: Vec<u64>) -> Result<(), ClientError> {
        self.tx
            .send(BusSubscribeRequest {
                kind: Some(bus_subscribe_request::Kind::Ack(BusSubscribeAck {
                    positions,
                })),
            })
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// The next delivery not processed before by `dedupe`'s reckoning; redeliveries of
    /// processed ones are acknowledged and skipped. Call [`Deduper::processed`] after
    /// processing what this returns, then [`Subscriber::ack`].
    pub async fn next_new<S: SeenStore>(
        &mut self,
        dedupe: &mut Deduper<S>,
    ) -> Result<Option<SubscribedDelivery>, ClientError> {
        loop {
            let Some(d) = self.next().await? else {
                return Ok(None);
            };
            if dedupe.first_time(&d).await? {
                return Ok(Some(d));
            }
            self.ack(d.position).await?;
        }
    }
}

/// Where a [`Deduper`] remembers processed delivery ids.
#[async_trait]
pub trait SeenStore: Send {
    /// Whether `id` was marked processed.
    async fn contains(&mut self, id: &str) -> Result<bool, ClientError>;
    /// Marks `id` processed.
    async fn insert(&mut self, id: &str) -> Result<(), ClientError>;
}

/// The last `capacity` processed ids in memory (the oldest is forgotten first).
#[derive(Debug, Clone)]
pub struct MemorySeen {
    capacity: usize,
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl MemorySeen {
    /// Remembers at most `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        MemorySeen {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[async_trait]
impl SeenStore for MemorySeen {
    async fn contains(&mut self, id: &str) -> Result<bool, ClientError> {
        Ok(self.set.contains(id))
    }

    async fn insert(&mut self, id: &str) -> Result<(), ClientError> {
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
        Ok(())
    }
}

/// The idempotent-consumer helper: skips deliveries whose id was processed already.
#[derive(Debug, Clone)]
pub struct Deduper<S = MemorySeen> {
    seen: S,
    skipped: u64,
}

impl Deduper<MemorySeen> {
    /// A deduper remembering the last `capacity` processed ids in memory.
    pub fn new(capacity: usize) -> Self {
        Self::with_store(MemorySeen::new(capacity))
    }
}

impl<S: SeenStore> Deduper<S> {
    /// A deduper on a user's store.
    pub fn with_store(seen: S) -> Self {
        Deduper { seen, skipped: 0 }
    }

    /// Whether `d` was not processed before (`false`: a redelivery of a processed one; skip
    /// it, but acknowledge it).
    pub async fn first_time(&mut self, d: &SubscribedDelivery) -> Result<bool, ClientError> {
        let seen = self.seen.contains(&d.delivery_id).await?;
        if seen {
            self.skipped += 1;
        }
        Ok(!seen)
    }

    /// Marks `d` processed.
    pub async fn processed(&mut self, d: &SubscribedDelivery) -> Result<(), ClientError> {
        self.seen.insert(&d.delivery_id).await
    }

    /// Redeliveries skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, attempt: u32) -> SubscribedDelivery {
        SubscribedDelivery {
            delivery_id: id.into(),
            position: 0,
            attempt,
            event: Event::default(),
            payload: Ok(String::new()),
        }
    }

    #[tokio::test]
    async fn deduper_skips_processed_ids_and_forgets_the_oldest() {
        let mut dd = Deduper::new(2);
        assert!(dd.first_time(&d("a", 1)).await.unwrap());
        dd.processed(&d("a", 1)).await.unwrap();
        assert!(!dd.first_time(&d("a", 2)).await.unwrap());
        assert_eq!(dd.skipped(), 1);
        dd.processed(&d("b", 1)).await.unwrap();
        dd.processed(&d("b", 1)).await.unwrap();
        assert_eq!(dd.store().len(), 2);
        dd.processed(&d("c", 1)).await.unwrap();
        assert_eq!(dd.store().len(), 2);
        assert!(dd.first_time(&d("a", 3)).await.unwrap(), "forgotten");
        assert!(!dd.first_time(&d("c", 2)).await.unwrap());
    }
}
