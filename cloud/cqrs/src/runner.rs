//! What projections and process managers share: the runner's settings and lease keeping.

use std::sync::Arc;
use std::time::Duration;

use outrider_store::{EventStore, Lease};
use tokio::sync::watch;

use crate::error::Result;

/// Settings of a projection or process-manager runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This replica's name in the lease (unique per process).
    pub holder: String,
    /// The lease's ttl: a replica that stops renewing loses the work after this long.
    pub lease_ttl: Duration,
    /// Events per subscription batch (one read-model commit or checkpoint each).
    pub batch: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            holder: format!("cqrs-{}", uuid::Uuid::new_v4().simple()),
            lease_ttl: Duration::from_secs(10),
            batch: 256,
        }
    }
}

/// Keeps a lease, renewing it at a third of its ttl.
pub(crate) struct LeaseKeeper {
    pub lease: Lease,
}

impl LeaseKeeper {
    /// When to renew next.
    pub fn renew_at(&self) -> tokio::time::Instant {
        let third = self.lease.ttl / 3;
        let until = tokio::time::Instant::from_std(self.lease.valid_until);
        until.checked_sub(self.lease.ttl - third).unwrap_or(until)
    }

    pub async fn renew(&mut self, store: &Arc<dyn EventStore>) -> Result<()> {
        self.lease = store.renew_lease(&self.lease).await?;
        Ok(())
    }
}

/// Waits for `d` or until shutdown is asked for; true when shutting down.
pub(crate) async fn wait_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}
