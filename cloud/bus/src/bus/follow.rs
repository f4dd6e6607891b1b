//! Following one stream by version: read what is there, then wait for the store's change
//! signal (this process's appends), its poll interval (other processes'), or the engine's stop.

use std::time::Duration;

use outrider_proto::Event;
use outrider_store::{Direction, EventStore, StreamFrom};

use crate::error::{BusError, Result};

pub(crate) struct Follower {
    stream: String,
    next: u64,
    changes: tokio::sync::watch::Receiver<u64>,
    poll: Option<Duration>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Follower {
    pub fn new(
        store: &dyn EventStore,
        stream: String,
        next: u64,
        poll: Option<Duration>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Follower {
            stream,
            next,
            changes: store.changes(),
            poll: poll.or(store.poll_interval()),
            stop,
        }
    }

    pub fn next_version(&self) -> u64 {
        self.next
    }

    /// Reads up to `max` events from the next version without waiting (maybe none).
    pub async fn read(&mut self, store: &dyn EventStore, max: usize) -> Result<Vec<Event>> {
        self.changes.borrow_and_update();
        let page = store
            .read_stream(
                &self.stream,
                StreamFrom::Version(self.next),
                Direction::Forwards,
                max.max(1),
            )
            .await?;
        if let Some(last) = page.events.last() {
            self.next = last.version + 1;
        }
        Ok(page.events)
    }

    /// Waits until the stream may have grown (or `max_wait` passed). `Err(Closed)` on stop.
    pub async fn wait(&mut self, max_wait: Option<Duration>) -> Result<()> {
        let poll = match (self.poll, max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if *self.stop.borrow() {
            return Err(BusError::Closed);
        }
        let sleep = async {
            match poll {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = self.changes.changed() => r.map_err(|_| BusError::Closed),
            _ = self.stop.changed() => Err(BusError::Closed),
            _ = sleep => Ok(()),
        }
    }
}
