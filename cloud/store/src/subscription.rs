//! Catch-up-then-live subscriptions over any [`EventStore`].
//!
//! A subscription is a cursor in the store's global order: it pages through
//! [`EventStore::read_all`] after its position, and when a read comes back empty it waits for
//! the store's change signal (appends in this process) or its poll interval (appends by other
//! processes, PostgreSQL only). Catch-up and live are the same loop over the same order, so
//! there is no switch-over at which an event could be missed or delivered twice.

use std::time::Duration;

use crate::error::{Result, StoreError};
use crate::{Event, EventStore};

/// Which streams a subscription delivers (it still moves its cursor over the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFilter {
    /// Only this stream.
    Stream(String),
    /// Streams whose name starts with this (a category, e.g. `order-`).
    Prefix(String),
}

impl StreamFilter {
    fn admits(&self, stream: &str) -> bool {
        match self {
            StreamFilter::Stream(s) => s == stream,
            StreamFilter::Prefix(p) => stream.starts_with(p.as_str()),
        }
    }
}

/// A batch handed out by a subscription.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionBatch {
    pub events: Vec<Event>,
    /// True exactly once: the first time the subscription found nothing more to read and is now
    /// live. The batch carrying it is empty.
    pub caught_up: bool,
}

/// A subscription to the whole store, in its global order. Works with any store handle that
/// implements [`EventStore`] (a backend, `Arc<dyn EventStore>`, ...).
pub struct Subscription<S> {
    store: S,
    after: Option<u64>,
    filter: Option<StreamFilter>,
    changes: tokio::sync::watch::Receiver<u64>,
    poll: Option<Duration>,
    caught_up_sent: bool,
}

impl<S> std::fmt::Debug for Subscription<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("after", &self.after)
            .field("filter", &self.filter)
            .finish()
    }
}

impl<S: EventStore> Subscription<S> {
    /// Subscribes after the event at position `after` (`None`: from the beginning).
    pub fn new(store: S, after: Option<u64>, filter: Option<StreamFilter>) -> Self {
        let changes = store.changes();
        let poll = store.poll_interval();
        Self {
            store,
            after,
            filter,
            changes,
            poll,
            caught_up_sent: false,
        }
    }

    /// Subscribes after consumer `name`'s durable checkpoint (from the beginning if it has none).
    pub async fn from_checkpoint(
        store: S,
        name: &str,
        filter: Option<StreamFilter>,
    ) -> Result<Self> {
        let after = store.load_checkpoint(name).await?;
        Ok(Self::new(store, after, filter))
    }

    /// The position of the last event the subscription read (delivered or filtered out): what a
    /// consumer checkpoints once it has processed the batches handed out so far.
    pub fn position(&self) -> Option<u64> {
        self.after
    }

    /// Overrides how often a waiting subscription polls for other processes' appends.
    pub fn with_poll_interval(mut self, poll: Option<Duration>) -> Self {
        self.poll = poll;
        self
    }

    /// The store it reads.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Waits for the next batch of at most `max` events (or the one `caught_up` marker).
    pub async fn next_batch(&mut self, max: usize) -> Result<SubscriptionBatch> {
        let max = max.max(1);
        loop {
            // Mark the current change as seen before reading, so a commit after the read wakes us.
            self.changes.borrow_and_update();
            let page = self.store.read_all(self.after, max).await?;
            if let Some(last) = page.last() {
                self.after = Some(last.position);
                let events: Vec<Event> = match &self.filter {
                    None => page,
                    Some(f) => page.into_iter().filter(|e| f.admits(&e.stream)).collect(),
                };
                if !events.is_empty() {
                    return Ok(SubscriptionBatch {
                        events,
                        caught_up: false,
                    });
                }
                continue;
            }
            if !self.caught_up_sent {
                self.caught_up_sent = true;
                return Ok(SubscriptionBatch {
                    events: Vec::new(),
                    caught_up: true,
                });
            }
            match self.poll {
                None => self
                    .changes
                    .changed()
                    .await
                    .map_err(|_| StoreError::Closed)?,
                Some(every) => {
                    tokio::select! {
                        r = self.changes.changed() => r.map_err(|_| StoreError::Closed)?,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            }
        }
    }
}
