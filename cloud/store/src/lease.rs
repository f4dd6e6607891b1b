//! Consumer leases: one holder at a time per consumer, taken over when the holder stops renewing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_runtime::Clock;
use parking_lot::Mutex;

use crate::error::{Result, StoreError};

/// A held lease on a consumer (a projection, a bus target...).
///
/// The holder must renew it before `valid_until` and stop working on the consumer when a renewal
/// fails with [`StoreError::LeaseLost`]. `token` fences: it grows every time the lease changes
/// hands, and [`crate::EventStore::save_checkpoint`] with `Some(&lease)` writes only while this
/// token still holds the lease, so a replica that paused past its ttl cannot overwrite the work
/// of its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub consumer: String,
    pub holder: String,
    /// The fencing token.
    pub token: u64,
    pub ttl: Duration,
    /// Until when the holder may act, by this process's monotonic clock: the ttl counted from
    /// before the request that took or renewed the lease was sent, so never later than the
    /// expiry the store itself enforces (the database's clock, for PostgreSQL).
    pub valid_until: Instant,
}

impl Lease {
    /// Whether the holder may still act on the consumer (renew well before this turns false).
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

struct Entry {
    holder: String,
    token: u64,
    expires_at: i64,
}

/// The leases of a single-process store: a table in memory on the store's (injectable) clock.
pub(crate) struct MemoryLeases {
    clock: Arc<dyn Clock>,
    table: Mutex<HashMap<String, Entry>>,
}

fn ttl_nanos(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX)
}

impl MemoryLeases {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            table: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn acquire(&self, consumer: &str, holder: &str, ttl: Duration) -> Option<Lease> {
        let started = Instant::now();
        let now = self.clock.now_unix_nanos();
        let expires_at = now.saturating_add(ttl_nanos(ttl));
        let mut table = self.table.lock();
        let token = match table.get_mut(consumer) {
            None => {
                table.insert(
                    consumer.to_string(),
                    Entry {
                        holder: holder.to_string(),
                        token: 1,
                        expires_at,
                    },
                );
                1
            }
            Some(e) => {
                let live = e.expires_at > now;
                if live && e.holder != holder {
                    return None;
                }
                if !live {
                    e.token += 1;
                    e.holder = holder.to_string();
                }
                e.expires_at = expires_at;
                e.token
            }
        };
        Some(Lease {
            consumer: consumer.to_string(),
            holder: holder.to_string(),
            token,
            ttl,
            valid_until: started + ttl,
        })
    }

    /// Runs `f` while `lease` is held (under the table's lock, so it cannot change hands
    /// meanwhile); `LeaseLost` otherwise.
    pub(crate) fn while_held<T>(&self, lease: &Lease, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let now = self.clock.now_unix_nanos();
        let table = self.table.lock();
        match table.get(&lease.consumer) {
            Some(e) if e.holder == lease.holder && e.token == lease.token && e.expires_at > now => {
                f()
            }
            _ => Err(lost(lease)),
        }
    }

    pub(crate) fn renew(&self, lease: &Lease) -> Result<Lease> {
        let started = Instant::now();
        let now = self.clock.now_unix_nanos();
        let mut table = self.table.lock();
        match table.get_mut(&lease.consumer) {
            Some(e) if e.holder == lease.holder && e.token == lease.token && e.expires_at > now => {
                e.expires_at = now.saturating_add(ttl_nanos(lease.ttl));
                Ok(Lease {
                    valid_until: started + lease.ttl,
                    ..lease.clone()
                })
            }
            _ => Err(lost(lease)),
        }
    }

    pub(crate) fn release(&self, lease: &Lease) {
        let mut table = self.table.lock();
        if let Some(e) = table.get_mut(&lease.consumer) {
            if e.holder == lease.holder && e.token == lease.token {
                e.expires_at = i64::MIN;
            }
        }
    }
}

pub(crate) fn lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        consumer: lease.consumer.clone(),
        holder: lease.holder.clone(),
        token: lease.token,
    }
}
