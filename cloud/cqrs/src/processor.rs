//! Process managers: event handlers that react to events by sending commands (e.g. the banking
//! transfer: debit → credit → complete, or refund). One runner across replicas (a store lease),
//! resuming from a durable checkpoint saved **fenced** by the lease after each batch.
//!
//! Delivery is at least once (a crash between a command and the checkpoint re-delivers the
//! event), so handlers must be idempotent: send commands with command ids derived from the event
//! (see [`crate::Repository`]'s idempotency by command id) and the re-sent command returns its
//! original outcome.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outrider_store::{Event, EventStore, StreamFilter, Subscription};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::Result;
use crate::runner::{wait_or_shutdown, LeaseKeeper, RunnerConfig};

/// Reacts to events.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Its name: the lease and checkpoint are `$pm/<name>`.
    fn name(&self) -> &str;
    fn filter(&self) -> StreamFilter;
    /// Handles one event. An error is retried (with a growing pause) until it succeeds or the
    /// lease is lost; it must therefore be idempotent.
    async fn handle(&self, event: &Event) -> Result<()>;
}

/// What a process manager runner did so far.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ProcessorStatus {
    pub name: String,
    pub leader: bool,
    pub position: Option<u64>,
    pub events_handled: u64,
    pub caught_up: bool,
    pub last_error: Option<String>,
}

/// A running process manager.
pub struct ProcessorHandle {
    status: watch::Receiver<ProcessorStatus>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ProcessorHandle {
    pub fn status(&self) -> ProcessorStatus {
        self.status.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<ProcessorStatus> {
        self.status.clone()
    }

    /// Stops the runner and releases its lease.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Starts a process manager runner.
pub fn spawn_processor(
    store: Arc<dyn EventStore>,
    handler: Arc<dyn EventHandler>,
    cfg: RunnerConfig,
) -> ProcessorHandle {
    let (status_tx, status) = watch::channel(ProcessorStatus {
        name: handler.name().to_string(),
        ..Default::default()
    });
    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let consumer = format!("$pm/{}", handler.name());
        loop {
            if *shutdown_rx.borrow() {
                return;
            }
            match store
                .acquire_lease(&consumer, &cfg.holder, cfg.lease_ttl)
                .await
            {
                Ok(Some(lease)) => {
                    info!(processor = %consumer, token = lease.token, "process manager lease taken");
                    status_tx.send_modify(|s| s.leader = true);
                    let mut keeper = LeaseKeeper { lease };
                    let res = lead(
                        &store,
                        handler.as_ref(),
                        &consumer,
                        &cfg,
                        &mut keeper,
                        &status_tx,
                        &mut shutdown_rx,
                    )
                    .await;
                    status_tx.send_modify(|s| s.leader = false);
                    match res {
                        Ok(()) => {
                            let _ = store.release_lease(&keeper.lease).await;
                            return;
                        }
                        Err(e) => {
                            warn!(processor = %consumer, error = %e, "process manager stopped leading");
                            status_tx.send_modify(|s| s.last_error = Some(e.to_string()));
                        }
                    }
                    if wait_or_shutdown(Duration::from_millis(200), &mut shutdown_rx).await {
                        return;
                    }
                }
                Ok(None) => {
                    if wait_or_shutdown(cfg.lease_ttl / 4, &mut shutdown_rx).await {
                        return;
                    }
                }
                Err(e) => {
                    warn!(processor = %consumer, error = %e, "cannot take the lease");
                    if wait_or_shutdown(Duration::from_millis(500), &mut shutdown_rx).await {
                        return;
                    }
                }
            }
        }
    });
    ProcessorHandle {
        status,
        shutdown,
        task,
    }
}

enum Step {
    Stop,
    Nothing,
    Renew,
    Batch(outrider_store::Result<outrider_store::SubscriptionBatch>),
}

/// Runs while the lease holds; `Ok(())` on shutdown.
async fn lead(
    store: &Arc<dyn EventStore>,
    handler: &dyn EventHandler,
    consumer: &str,
    cfg: &RunnerConfig,
    keeper: &mut LeaseKeeper,
    status: &watch::Sender<ProcessorStatus>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()> {
    let mut sub =
        Subscription::from_checkpoint(store.clone(), consumer, Some(handler.filter())).await?;
    loop {
        let renew_at = keeper.renew_at();
        let step = tokio::select! {
            r = shutdown.changed() => if r.is_err() { Step::Stop } else { Step::Nothing },
            _ = tokio::time::sleep_until(renew_at) => Step::Renew,
            b = sub.next_batch(cfg.batch) => Step::Batch(b),
        };
        let batch = match step {
            Step::Stop => return Ok(()),
            Step::Nothing => {
                if *shutdown.borrow() {
                    return Ok(());
                }
                continue;
            }
            Step::Renew => {
                keeper.renew(store).await?;
                continue;
            }
            Step::Batch(b) => b?,
        };
        if batch.caught_up {
            status.send_modify(|s| s.caught_up = true);
            continue;
        }
        for e in &batch.events {
            let mut attempt = 0u32;
            loop {
                match handler.handle(e).await {
                    Ok(()) => break,
                    Err(err) => {
                        attempt += 1;
                        warn!(processor = %consumer, position = e.position, attempt, error = %err, "handler failed; retrying");
                        status.send_modify(|s| s.last_error = Some(err.to_string()));
                        if !keeper.lease.is_valid() {
                            keeper.renew(store).await?;
                        }
                        let pause = Duration::from_millis(10u64 << attempt.min(8));
                        if wait_or_shutdown(pause, shutdown).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
        if let Some(pos) = sub.position() {
            if keeper.renew_at() <= tokio::time::Instant::now() {
                keeper.renew(store).await?;
            }
            store
                .save_checkpoint(consumer, pos, Some(&keeper.lease))
                .await?;
            let n = batch.events.len() as u64;
            status.send_modify(|s| {
                s.position = Some(pos);
                s.events_handled += n;
            });
        }
    }
}
