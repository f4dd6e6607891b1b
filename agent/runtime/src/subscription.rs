//! Catch-up-then-live subscriptions.
//!
//! A subscription is only a position: it reads committed records from it, and when it reaches the
//! head it waits for the head to move. Catch-up and live reading are the same loop over the same
//! log, so there is no switch-over at which an event could be missed or seen twice.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use outrider_proto::Event;

use crate::error::{Error, Result};
use crate::log::Log;
use crate::read::{decode_event, scan_log};

/// A batch handed out by a subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionBatch {
    pub events: Vec<Event>,
    /// True exactly once: the first time the subscription has read everything committed before
    /// the call and is now live. The batch carrying it is empty.
    pub caught_up: bool,
}

/// A subscription to the whole log or one stream. See [`Log::subscribe`].
pub struct Subscription {
    log: Log,
    next: u64,
    stream: Option<String>,
    head_rx: tokio::sync::watch::Receiver<u64>,
    caught_up_sent: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("next", &self.next)
            .field("stream", &self.stream)
            .finish()
    }
}

impl Subscription {
    pub(crate) fn new(log: Log, from: u64, stream: Option<String>) -> Self {
        let head_rx = log.shared().head_tx.subscribe();
        Self {
            log,
            next: from,
            stream,
            head_rx,
            caught_up_sent: false,
        }
    }

    /// The next position this subscription will look at.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Reads what is committed after the subscription's position; `None` when nothing is.
    fn poll(&mut self, max: usize) -> Result<Option<SubscriptionBatch>> {
        let sh = self.log.shared();
        let head = sh.head.load(Ordering::Acquire);
        if self.next < head {
            let mut events = Vec::new();
            let mut next = self.next;
            let stream = self.stream.as_deref();
            let mut scanned = 0usize;
            scan_log(sh, self.next, |_, payload, pos| {
                next = pos + 1;
                scanned += 1;
                let e = decode_event(pos, payload)?;
                if stream.is_none_or(|s| s == e.stream) {
                    events.push(e);
                }
                // Bound work per call even when a stream filter skips most events.
                Ok(events.len() < max && scanned < max.saturating_mul(64).max(4096))
            })?;
            // Positions below the retained start were reclaimed: skip to it.
            self.next = next.max(sh.start.load(Ordering::Acquire)).max(self.next);
            if !events.is_empty() {
                return Ok(Some(SubscriptionBatch {
                    events,
                    caught_up: false,
                }));
            }
            if self.next < head {
                return Ok(Some(SubscriptionBatch::default()));
            }
        }
        if !self.caught_up_sent {
            self.caught_up_sent = true;
            return Ok(Some(SubscriptionBatch {
                events: vec![],
                caught_up: true,
            }));
        }
        Ok(None)
    }

    /// Waits for the next batch of at most `max` events.
    pub async fn next_batch(&mut self, max: usize) -> Result<SubscriptionBatch> {
        loop {
            // Mark the current head as seen before reading, so a commit after the read wakes us.
            self.head_rx.borrow_and_update();
            if let Some(b) = self.poll(max.max(1))? {
                if !b.events.is_empty() || b.caught_up {
                    return Ok(b);
                }
                continue;
            }
            self.head_rx.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    /// Blocking form of [`Subscription::next_batch`]; returns an empty batch after `timeout`.
    pub fn next_batch_blocking(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<SubscriptionBatch> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.log.head();
            if let Some(b) = self.poll(max.max(1))? {
                if !b.events.is_empty() || b.caught_up {
                    return Ok(b);
                }
                continue;
            }
            let sh = self.log.shared();
            let mut guard = sh.head_lock.lock();
            while sh.head.load(Ordering::Acquire) == seen {
                if sh.head_cv.wait_until(&mut guard, deadline).timed_out() {
                    return Ok(SubscriptionBatch::default());
                }
            }
        }
    }
}
