//! The in-process cloud: `outrider_ingest::Server` over a `LogStore` in a fresh directory, with
//! mTLS.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use outrider_ingest::{LogStore, Security, Server, ServerConfig, TlsFiles};
use outrider_runtime::Log;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::pki::Pki;
use crate::Transport;

/// A running cloud.
pub struct Cloud {
    pub log: Log,
    /// The address agents connect to.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Cloud {
    /// Opens a store in `dir` and starts serving `transport` on `listen`.
    pub async fn start(
        dir: &Path,
        listen: SocketAddr,
        pki: &Pki,
        transport: Transport,
    ) -> anyhow::Result<Cloud> {
        let cfg = outrider_ingest::store::cloud_log_config(dir);
        let shown = dir.display().to_string();
        let (log, _) = tokio::task::spawn_blocking(move || Log::open(cfg))
            .await?
            .with_context(|| format!("cannot open the cloud store in {shown}"))?;
        let security = Security::Mtls(TlsFiles {
            ca: pki.ca.clone(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
        });
        // The server serves gRPC on TCP and QUIC on UDP, both on `listen`.
        let server = Server::bind(ServerConfig::new(listen, security)).await?;
        if transport == Transport::Quic && server.quic_addr().is_none() {
            anyhow::bail!("the ingest server started without its QUIC endpoint");
        }
        let addr = server.local_addr();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(LogStore::new(log.clone()), async move {
            let _ = rx.await;
        }));
        Ok(Cloud {
            log,
            addr,
            stop,
            task,
        })
    }

    /// The URL an agent's `sync.cloud_url` names.
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            std::net::IpAddr::V4(ip) => ip.to_string(),
        };
        format!("https://{ip}:{}", self.addr.port())
    }

    /// Stops serving and closes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let served = self.task.await.context("the cloud task failed");
        let log = self.log;
        tokio::task::spawn_blocking(move || log.close())
            .await?
            .context("closing the cloud store")?;
        served??;
        Ok(())
    }
}
