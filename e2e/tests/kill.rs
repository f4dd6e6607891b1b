//! Kill tests with real processes (issue 3 item 9): a real `outrider-cloud` and a real
//! `outrider-agent` with mTLS between them, a producer appending to the agent's gRPC API at full
//! speed, and, dozens of times at random moments (seeded; `OUTRIDER_E2E_SEED`):
//!
//! * `kill_agent_*`: `kill -9` the agent and restart it on the same data directory (sometimes
//!   killing it again while it opens its log);
//! * `kill_cloud_*`: `kill -9` the cloud server and restart it on the same store and port
//!   (sometimes killing it while it starts, sometimes leaving it down for a while);
//! * `network_cut_*`: cut the connection between them in a forwarder (every connection dropped,
//!   new ones refused) and restore it.
//!
//! Then the agent drains its outbox, both stop gracefully, and the cloud's store must hold every
//! event the agent acknowledged exactly once, each stream in the agent's order with the agent's
//! positions as origin seqs, nothing unacknowledged, and one watermark epoch whose lane
//! watermarks are the last acknowledged positions (`outrider_e2e::verify::check`).
//!
//! `OUTRIDER_KILL_ROUNDS` sets the rounds (default `outrider_e2e::DEFAULT_ROUNDS`). Each scenario
//! prints its seed first and a summary at the end (`cargo test -p outrider-e2e -- --nocapture`).
//! Each is `run_*(transport)`, so the QUIC transport gets the same tests.

use anyhow::Context as _;
use outrider_e2e::forward::{Forwarder, TcpForwarder, UdpForwarder};
use outrider_e2e::verify::Summary;
use outrider_e2e::Harness;

/// `kill -9` the agent at random moments while the producer appends and the agent syncs.
async fn run_kill_agent(transport: &str) {
    let mut h = Harness::new("kill-agent", transport).expect("setting up the scenario");
    let result = kill_agent_rounds(&mut h).await;
    h.conclude(result);
}

async fn kill_agent_rounds(h: &mut Harness) -> anyhow::Result<Summary> {
    let cloud = h.cloud.start().await?;
    h.make_agent(cloud)?;
    h.start_agent().await?;
    h.start_producers();
    let rounds = h.rounds;
    for round in 0..rounds {
        let ctx = || format!("round {round} of {rounds}");
        // This agent process took appends...
        h.wait_appends(1).await.with_context(ctx)?;
        // ...and, mostly, delivered some to the cloud, so kills land in every phase (before the
        // first Welcome, mid-batch, between a cloud commit and the outbox ack).
        if h.rng.chance(3, 4) {
            let before = h.delivered().await.with_context(ctx)?;
            h.wait_delivery_after(before).await.with_context(ctx)?;
        }
        h.random_pause(0, 400).await;
        h.kill_agent().await.with_context(ctx)?;
        if h.rng.chance(1, 5) {
            // Killed again while it opens and recovers its log.
            h.agent()?.spawn()?;
            h.random_pause(0, 80).await;
            h.kill_agent().await.with_context(ctx)?;
        }
        h.start_agent().await.with_context(ctx)?;
    }
    h.wait_appends(1).await.context("after the last restart")?;
    h.finish().await
}

/// `kill -9` the cloud server at random moments while the producer appends to a live agent.
async fn run_kill_cloud(transport: &str) {
    let mut h = Harness::new("kill-cloud", transport).expect("setting up the scenario");
    let result = kill_cloud_rounds(&mut h).await;
    h.conclude(result);
}

async fn kill_cloud_rounds(h: &mut Harness) -> anyhow::Result<Summary> {
    let cloud = h.cloud.start().await?;
    h.make_agent(cloud)?;
    h.start_agent().await?;
    h.start_producers();
    let mut delivered = h.delivered().await?;
    let rounds = h.rounds;
    for round in 0..rounds {
        let ctx = || format!("round {round} of {rounds}");
        // The agent synced to this cloud process...
        h.wait_delivery_after(delivered).await.with_context(ctx)?;
        // ...then, at a random moment: kill -9.
        h.random_pause(0, 400).await;
        h.cloud.kill9().await.with_context(ctx)?;
        if h.rng.chance(1, 5) {
            // Killed again while it opens its store.
            h.cloud.spawn().with_context(ctx)?;
            h.random_pause(0, 80).await;
            h.cloud.kill9().await.with_context(ctx)?;
        }
        // Nothing can be delivered now: what is acknowledged from here on went to the next
        // cloud process.
        delivered = h.delivered().await.with_context(ctx)?;
        if h.rng.chance(1, 3) {
            // Down for a while; the agent keeps taking appends into its outbox.
            h.random_pause(0, 500).await;
        }
        // Same store, same port: the agent's cloud_url is fixed.
        h.cloud.start().await.with_context(ctx)?;
    }
    h.wait_delivery_after(delivered)
        .await
        .context("after the last restart")?;
    h.finish().await
}

/// Cut and restore the network between agent and cloud at random moments.
async fn run_network_cut(transport: &str) {
    let mut h = Harness::new("network-cut", transport).expect("setting up the scenario");
    let result = match transport {
        "grpc" => network_cut_rounds(&mut h, TcpForwarder::start).await,
        "quic" => network_cut_rounds(&mut h, UdpForwarder::start).await,
        other => Err(anyhow::anyhow!("no forwarder for transport {other:?}")),
    };
    h.conclude(result);
}

async fn network_cut_rounds<L, F, Fut>(h: &mut Harness, forwarder: F) -> anyhow::Result<Summary>
where
    L: Forwarder,
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<L>>,
{
    let cloud = h.cloud.start().await?;
    let link = forwarder(cloud).await?;
    h.make_agent(link.addr())?;
    h.start_agent().await?;
    h.start_producers();
    let mut delivered = h.delivered().await?;
    let rounds = h.rounds;
    for round in 0..rounds {
        let ctx = || format!("round {round} of {rounds}");
        // The agent delivered through the restored link...
        h.wait_delivery_after(delivered).await.with_context(ctx)?;
        h.random_pause(0, 400).await;
        link.cut().await.with_context(ctx)?;
        // ...and nothing more until it is restored.
        delivered = h.delivered().await.with_context(ctx)?;
        // Cut for a while; the agent keeps taking appends into its outbox.
        h.random_pause(0, 600).await;
        link.restore().await.with_context(ctx)?;
    }
    h.wait_delivery_after(delivered)
        .await
        .context("after the last restore")?;
    eprintln!(
        "e2e network-cut[{}]: {} connections through the forwarder",
        h.transport,
        link.connections()
    );
    h.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_agent_grpc() {
    run_kill_agent("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_cloud_grpc() {
    run_kill_cloud("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_grpc() {
    run_network_cut("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_agent_quic() {
    run_kill_agent("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_cloud_quic() {
    run_kill_cloud("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_quic() {
    run_network_cut("quic").await;
}
