//! The session task: one sans-IO [`CloudSession`] per agent connection, whatever carries it.
//!
//! A transport adapter ([`crate::grpc`], [`crate::quic`]) authenticates the connection, builds a
//! [`Transport`] (the agent's frames in, the cloud's frames out) and spawns [`run`]. The task
//! feeds the session the agent's frames, runs its timers (milliseconds since the session
//! started, on tokio's monotonic clock), sends the frames it emits, and executes its store
//! actions on the blocking pool, one at a time (the session has at most one commit outstanding).
//!
//! Every session task and store call holds a clone of [`SessionCtx::alive`]; the server waits for
//! all of them to drop at shutdown, after raising the stop flag that ends every session.
//!
//! Insecure mode (no client certificate): the node id is taken from the first frame, which must
//! be a Hello with a valid `node_id`. Anyone who can reach the port can then write as any node:
//! development only.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outrider_proto::v1::{agent_frame, AgentFrame, CloudFrame};
use outrider_runtime::sync::{CloudAction, CloudConfig, CloudSession, CloudStats, CommitOutcome};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::identity::validate_node_name;
use crate::store::{IngestStore, StoreError};

/// How long a closed session keeps reading (and discarding) what the agent still sends, so its
/// last frames reach the agent before the connection goes.
const LINGER: Duration = Duration::from_secs(2);

/// What the server knows of a connection's peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The node proven by the client certificate; `None` on an insecure connection.
    pub node: Option<String>,
    pub remote: Option<SocketAddr>,
    /// The transport that carries the session: `grpc` or `quic`.
    pub transport: &'static str,
}

/// Counters of the ingest service, over all sessions and transports.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Sessions started (a node proved its identity and the session began).
    pub sessions: AtomicU64,
    /// Sessions running now (a gauge).
    pub active_sessions: AtomicU64,
    /// Connections refused before a session started (no identity).
    pub refused: AtomicU64,
    pub events_committed: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub commit_conflicts: AtomicU64,
    pub store_errors: AtomicU64,
    /// Batch frames received while streaming (valid or not).
    pub batches_received: AtomicU64,
    /// Batches received compressed (and decoded).
    pub batches_compressed: AtomicU64,
    /// Encoded size of the batch frames received (as sent: compressed or not).
    pub bytes_wire: AtomicU64,
    /// Encoded size of their events (after decompression).
    pub bytes_raw: AtomicU64,
    /// Nacks sent, by reason.
    pub nacks_out_of_order: AtomicU64,
    pub nacks_credit_exceeded: AtomicU64,
    pub nacks_invalid: AtomicU64,
    pub nacks_store_unavailable: AtomicU64,
    /// Commits the store reported durable, and the time they took (ms, summed).
    pub commits: AtomicU64,
    pub commit_ms_total: AtomicU64,
    /// Batches committed together with an earlier one (merged while the store was busy).
    pub merged_batches: AtomicU64,
}

impl IngestStats {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds what a session counted since `seen` (its previous snapshot), and moves `seen` on:
    /// the service's figures follow every session live, not only when it ends.
    pub(crate) fn absorb(&self, seen: &mut CloudStats, now: &CloudStats) {
        let pairs: [(&AtomicU64, u64, u64); 13] = [
            (
                &self.events_committed,
                seen.events_committed,
                now.events_committed,
            ),
            (
                &self.duplicates_dropped,
                seen.duplicates_dropped,
                now.duplicates_dropped,
            ),
            (
                &self.batches_received,
                seen.batches_received,
                now.batches_received,
            ),
            (
                &self.batches_compressed,
                seen.batches_compressed,
                now.batches_compressed,
            ),
            (&self.bytes_wire, seen.bytes_wire, now.bytes_wire),
            (&self.bytes_raw, seen.bytes_raw, now.bytes_raw),
            (
                &self.nacks_out_of_order,
                seen.nacks_out_of_order,
                now.nacks_out_of_order,
            ),
            (
                &self.nacks_credit_exceeded,
                seen.nacks_credit_exceeded,
                now.nacks_credit_exceeded,
            ),
            (&self.nacks_invalid, seen.nacks_invalid, now.nacks_invalid),
            (
                &self.nacks_store_unavailable,
                seen.nacks_store_unavailable,
                now.nacks_store_unavailable,
            ),
            (&self.commits, seen.commits, now.commits),
            (
                &self.commit_ms_total,
                seen.commit_ms_total,
                now.commit_ms_total,
            ),
            (
                &self.merged_batches,
                seen.merged_batches,
                now.merged_batches,
            ),
        ];
        for (c, before, after) in pairs {
            Self::add(c, after.saturating_sub(before));
        }
        seen.clone_from(now);
    }
}

/// One session's connection to its agent, as the session task sees it.
pub(crate) trait Transport: Send + 'static {
    /// The agent's next frame; `Ok(None)` once the agent ended its side. Must be cancel-safe
    /// (it races the session's timers and store calls).
    fn recv(&mut self) -> impl Future<Output = Result<Option<AgentFrame>, String>> + Send;

    /// Sends a frame to the agent; waits while the agent does not read. Fails once the agent is
    /// gone.
    fn send(&mut self, frame: CloudFrame) -> impl Future<Output = Result<(), String>> + Send;

    /// Refuses the session before it starts (insecure mode without a valid Hello), saying why.
    fn refuse(&mut self, message: &str);

    /// Ends the cloud's side: the frames sent so far still go out, then the end of the stream.
    /// The agent's side stays readable.
    fn finish(&mut self);

    /// Ends the connection (after [`Transport::finish`] and the linger, or at shutdown).
    fn close(&mut self, reason: &str);
}

/// What every session of a server shares.
#[derive(Clone)]
pub(crate) struct SessionCtx {
    pub store: Arc<dyn IngestStore>,
    pub cfg: CloudConfig,
    /// No client certificates: the node id comes from the Hello.
    pub insecure: bool,
    pub stop: watch::Receiver<bool>,
    /// Held by every session task and store call; the server waits for all to drop at shutdown.
    pub alive: mpsc::Sender<()>,
    pub stats: Arc<IngestStats>,
}

/// Resolves when the stop flag turns true (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

type StoreCall<T> = Option<JoinHandle<T>>;

/// Waits for a store call, or forever when there is none.
async fn join<T>(call: &mut StoreCall<T>) -> Result<T, tokio::task::JoinError> {
    match call.as_mut() {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Runs one session to its end: the connection is authenticated already (`peer.node`), or the
/// server is insecure and the Hello names the node.
pub(crate) async fn run<T: Transport>(ctx: SessionCtx, peer: PeerInfo, mut t: T) {
    let started = Instant::now();
    let now = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut stop = ctx.stop.clone();
    let (node, first) = match peer.node.clone() {
        Some(node) => (node, None),
        None if ctx.insecure => match hello_identity(&ctx, &peer, &mut t).await {
            Some(x) => x,
            None => {
                t.close("refused");
                return;
            }
        },
        None => {
            // The adapters authenticate first; this is a second line of defence.
            IngestStats::add(&ctx.stats.refused, 1);
            tracing::warn!(remote = ?peer.remote, transport = peer.transport, "sync connection without a verified node identity refused");
            t.refuse("no verified client certificate");
            t.close("refused");
            return;
        }
    };
    IngestStats::add(&ctx.stats.sessions, 1);
    ctx.stats.active_sessions.fetch_add(1, Ordering::Relaxed);
    let mut seen = CloudStats::default();
    tracing::info!(node = %node, remote = ?peer.remote, transport = peer.transport, "sync session started");
    let mut s = CloudSession::new(node.clone(), ctx.cfg.clone(), now());
    if let Some(f) = first {
        s.on_frame(now(), f);
    }
    let mut load: StoreCall<Result<Vec<(String, u64)>, StoreError>> = None;
    let mut commit: StoreCall<CommitOutcome> = None;
    let mut commit_seq = 0u64;
    let mut reason = "closed by the session";
    let send_timeout = Duration::from_millis(ctx.cfg.idle_timeout_ms);
    'session: loop {
        while let Some(action) = s.poll_action() {
            match action {
                CloudAction::Send(f) => {
                    // The agent reads while it sends; one that stops reading is dropped.
                    tokio::select! {
                        r = tokio::time::timeout(send_timeout, t.send(f)) => match r {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::debug!(node = %node, error = %e, "sending to the agent failed");
                                reason = "the agent went away";
                                break 'session;
                            }
                            Err(_) => {
                                reason = "the agent stopped reading";
                                break 'session;
                            }
                        },
                        () = stopped(&mut stop) => {
                            reason = "server shutting down";
                            break 'session;
                        }
                    }
                }
                CloudAction::LoadWatermarks { node, epoch, .. } => {
                    let (store, alive) = (ctx.store.clone(), ctx.alive.clone());
                    load = Some(tokio::task::spawn_blocking(move || {
                        let _alive = alive;
                        store.load_watermarks(&node, &epoch)
                    }));
                }
                CloudAction::Commit(req) => {
                    commit_seq = req.batch_seq;
                    let (store, alive) = (ctx.store.clone(), ctx.alive.clone());
                    commit = Some(tokio::task::spawn_blocking(move || {
                        let _alive = alive;
                        store.commit(req)
                    }));
                }
                CloudAction::Close { error } => match error {
                    Some(e) => {
                        tracing::warn!(node = %node, error = %e, "sync session refused or failed")
                    }
                    None => tracing::debug!(node = %node, "sync session closed"),
                },
            }
        }
        ctx.stats.absorb(&mut seen, s.stats());
        if s.is_closed() {
            break;
        }
        let deadline = s.poll_timeout().map(|t| started + Duration::from_millis(t));
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stopped(&mut stop) => {
                reason = "server shutting down";
                break;
            }
            r = join(&mut load) => {
                load = None;
                let r = match r {
                    Ok(r) => r.map_err(|e| e.0),
                    Err(e) => Err(format!("store task failed: {e}")),
                };
                s.on_watermarks(now(), r);
            }
            r = join(&mut commit) => {
                commit = None;
                let outcome = r.unwrap_or_else(|e| {
                    CommitOutcome::Unavailable(format!("store task failed: {e}"))
                });
                count(&ctx.stats, &outcome, &node);
                s.on_committed(now(), commit_seq, outcome);
            }
            m = t.recv() => match m {
                Ok(Some(f)) => s.on_frame(now(), f),
                Ok(None) => {
                    reason = "the agent ended the stream";
                    break;
                }
                Err(e) => {
                    tracing::debug!(node = %node, error = %e, "sync stream error");
                    reason = "stream error";
                    break;
                }
            },
            () = timer => s.handle_timeout(now()),
        }
    }
    // End the cloud's side (its last frames, then the end of the stream), but keep reading the
    // agent's side for a moment: dropping it while the agent still sends resets the stream, and
    // a reset can overtake the last frames (e.g. the Nack saying why).
    if reason != "server shutting down" {
        t.finish();
        let drain = async { while let Ok(Some(_)) = t.recv().await {} };
        tokio::select! {
            _ = tokio::time::timeout(LINGER, drain) => {}
            () = stopped(&mut stop) => {}
        }
    }
    t.close(reason);
    let st = s.stats();
    ctx.stats.absorb(&mut seen, st);
    ctx.stats.active_sessions.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(
        node = %node,
        transport = peer.transport,
        reason,
        batches = st.batches_received,
        events_committed = st.events_committed,
        duplicates_dropped = st.duplicates_dropped,
        "sync session ended"
    );
}

fn count(stats: &IngestStats, outcome: &CommitOutcome, node: &str) {
    match outcome {
        CommitOutcome::Committed => {}
        CommitOutcome::Conflict { .. } => IngestStats::add(&stats.commit_conflicts, 1),
        CommitOutcome::Unavailable(e) => {
            IngestStats::add(&stats.store_errors, 1);
            tracing::warn!(node = %node, error = %e, "commit failed");
        }
    }
}

/// Insecure mode: the first frame must be a Hello; its node id is the identity.
async fn hello_identity<T: Transport>(
    ctx: &SessionCtx,
    peer: &PeerInfo,
    t: &mut T,
) -> Option<(String, Option<AgentFrame>)> {
    let wait = Duration::from_millis(ctx.cfg.handshake_timeout_ms);
    let refuse = |t: &mut T, msg: String| {
        IngestStats::add(&ctx.stats.refused, 1);
        tracing::warn!(remote = ?peer.remote, transport = peer.transport, "insecure sync session refused: {msg}");
        t.refuse(&msg);
    };
    let mut stop = ctx.stop.clone();
    let frame = tokio::select! {
        r = tokio::time::timeout(wait, t.recv()) => match r {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) | Ok(Err(_)) => return None,
            Err(_) => {
                refuse(t, "no Hello in time".into());
                return None;
            }
        },
        () = stopped(&mut stop) => return None,
    };
    let node = match &frame.frame {
        Some(agent_frame::Frame::Hello(h)) => h.node_id.clone(),
        _ => {
            refuse(t, "the first frame must be a Hello".into());
            return None;
        }
    };
    if let Err(e) = validate_node_name(&node) {
        refuse(t, format!("Hello.node_id: {e}"));
        return None;
    }
    Some((node, Some(frame)))
}
