//! The gRPC transport: a new HTTP/2 connection per attempt (TCP + TLS with mTLS, tonic with
//! rustls and ring) and one `outrider.v1.Sync/Session` bidirectional stream on it. Insecure mode
//! is plain-text HTTP/2.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use outrider_proto::v1::sync_client::SyncClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::{Conn, Inbound, Keep, TlsPem, TransportKind, OUTBOUND_FRAMES};

/// Connects over gRPC; made once from the configuration.
#[derive(Clone)]
pub(super) struct GrpcConnector {
    endpoint: Endpoint,
}

impl GrpcConnector {
    pub(super) fn new(
        cloud_url: &str,
        tls: Option<&TlsPem>,
        connect_timeout: Duration,
        local: Option<IpAddr>,
    ) -> anyhow::Result<Self> {
        // `local`: the active link's `sync_local_addr`, the TCP connection's source address.
        let mut endpoint = Endpoint::from_shared(cloud_url.to_string())
            .with_context(|| format!("sync.cloud_url {cloud_url:?}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .local_address(local);
        if let Some(pem) = tls {
            let tls_cfg = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem.ca.clone()))
                .identity(Identity::from_pem(pem.cert.clone(), pem.key.clone()));
            endpoint = endpoint
                .tls_config(tls_cfg)
                .context("sync.tls: invalid TLS configuration")?;
        }
        Ok(Self { endpoint })
    }

    /// A new connection and its `Session` stream, within `timeout`.
    pub(super) async fn connect(self, timeout: Duration) -> anyhow::Result<Conn> {
        let attempt = async {
            let channel = self.endpoint.connect().await.context("cannot connect")?;
            let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
            let response = SyncClient::new(channel.clone())
                .session(ReceiverStream::new(rx))
                .await
                .context("the cloud refused the sync stream")?;
            anyhow::Ok(Conn {
                kind: TransportKind::Grpc,
                tx,
                inbound: Inbound::Grpc(response.into_inner()),
                keep: Keep::Grpc(channel),
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| anyhow!("timed out after {} ms", timeout.as_millis()))?
    }
}
