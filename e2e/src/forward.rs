//! Forwarders between the agent and the cloud that can cut the network and restore it.
//!
//! [`Forwarder`] is what a scenario needs. [`TcpForwarder`] implements it for TCP (the gRPC
//! transport): a cut closes every connection and the listener. [`UdpForwarder`] implements it
//! for UDP (QUIC): a cut drops every datagram and forgets every flow, as a link going down behind
//! a NAT does; the transport sees silence (its idle timeout notices), and after the restore the
//! agent's datagrams reach the cloud from a new port (for QUIC, a migrated or new connection).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A man in the middle that can cut the link and restore it.
#[allow(async_fn_in_trait)] // Only used by the tests' own generic code.
pub trait Forwarder {
    /// The address the agent connects to.
    fn addr(&self) -> SocketAddr;
    /// Cuts the link: every connection is dropped, new ones are refused. Returns once done.
    async fn cut(&self) -> anyhow::Result<()>;
    /// Restores the link: new connections are accepted and forwarded. Returns once listening.
    async fn restore(&self) -> anyhow::Result<()>;
    /// Connections forwarded so far.
    fn connections(&self) -> u64;
}

enum Command {
    Cut(oneshot::Sender<()>),
    Restore(oneshot::Sender<anyhow::Result<()>>),
}

/// A TCP forwarder on a loopback port. While cut, its listener is closed (connections are
/// refused) and every forwarded connection has been closed on both sides.
pub struct TcpForwarder {
    addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TcpForwarder {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<TcpForwarder> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot bind the forwarder")?;
        let addr = listener.local_addr().context("forwarder address")?;
        let (commands, rx) = mpsc::channel(4);
        let connections = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(listener, addr, upstream, rx, connections.clone()));
        Ok(TcpForwarder {
            addr,
            commands,
            connections,
            task,
        })
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forwarder for TcpForwarder {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn cut(&self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Cut(tx))
            .await
            .context("the forwarder has stopped")?;
        rx.await.context("the forwarder has stopped")
    }

    async fn restore(&self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Restore(tx))
            .await
            .context("the forwarder has stopped")?;
        rx.await.context("the forwarder has stopped")?
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Binds `addr` again after a cut, retrying briefly while the port is not free yet.
async fn rebind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => bail!("cannot bind the forwarder on {addr} again: {e}"),
        }
    }
}

async fn accept(listener: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn run(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut commands: mpsc::Receiver<Command>,
    connections: Arc<AtomicU64>,
) {
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(Command::Cut(done)) => {
                    listener = None;
                    conns.shutdown().await;
                    let _ = done.send(());
                }
                Some(Command::Restore(done)) => {
                    if listener.is_none() {
                        match rebind(addr).await {
                            Ok(l) => listener = Some(l),
                            Err(e) => {
                                let _ = done.send(Err(e));
                                continue;
                            }
                        }
                    }
                    let _ = done.send(Ok(()));
                }
            },
            accepted = accept(&listener) => {
                let Ok((mut inbound, _)) = accepted else { continue };
                connections.fetch_add(1, Ordering::Relaxed);
                conns.spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// A UDP forwarder on a loopback port: one upstream socket per client address (a flow).
pub struct UdpForwarder {
    addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    flows: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl UdpForwarder {
    /// Listens on a free loopback UDP port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<UdpForwarder> {
        let socket = UdpSocket::bind(("127.0.0.1", 0))
            .await
            .context("cannot bind the UDP forwarder")?;
        let addr = socket.local_addr().context("forwarder address")?;
        let (commands, rx) = mpsc::channel(4);
        let flows = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run_udp(Arc::new(socket), upstream, rx, flows.clone()));
        Ok(UdpForwarder {
            addr,
            commands,
            flows,
            task,
        })
    }
}

impl Drop for UdpForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forwarder for UdpForwarder {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn cut(&self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Cut(tx))
            .await
            .context("the forwarder has stopped")?;
        rx.await.context("the forwarder has stopped")
    }

    async fn restore(&self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Restore(tx))
            .await
            .context("the forwarder has stopped")?;
        rx.await.context("the forwarder has stopped")?
    }

    /// Flows (client addresses seen with a fresh upstream socket) so far.
    fn connections(&self) -> u64 {
        self.flows.load(Ordering::Relaxed)
    }
}

/// The largest datagram forwarded.
const MAX_DATAGRAM: usize = 65_535;

async fn run_udp(
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    mut commands: mpsc::Receiver<Command>,
    flows_made: Arc<AtomicU64>,
) {
    let mut up = true;
    // client address -> (upstream socket, the task copying its answers back to the client)
    let mut flows: HashMap<SocketAddr, (Arc<UdpSocket>, JoinHandle<()>)> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(Command::Cut(done)) => {
                    up = false;
                    for (_, (_, task)) in flows.drain() {
                        task.abort();
                    }
                    let _ = done.send(());
                }
                Some(Command::Restore(done)) => {
                    up = true;
                    let _ = done.send(Ok(()));
                }
            },
            received = socket.recv_from(&mut buf) => {
                let Ok((n, client)) = received else { continue };
                if !up {
                    continue;
                }
                if let std::collections::hash_map::Entry::Vacant(flow) = flows.entry(client) {
                    let Ok(out) = UdpSocket::bind(("127.0.0.1", 0)).await else { continue };
                    if out.connect(upstream).await.is_err() {
                        continue;
                    }
                    let out = Arc::new(out);
                    flows_made.fetch_add(1, Ordering::Relaxed);
                    let (back, front) = (out.clone(), socket.clone());
                    let task = tokio::spawn(async move {
                        let mut buf = vec![0u8; MAX_DATAGRAM];
                        loop {
                            // An error is an ICMP "port unreachable" from a cloud that is down:
                            // the flow stays, as a NAT mapping would.
                            if let Ok(n) = back.recv(&mut buf).await {
                                let _ = front.send_to(&buf[..n], client).await;
                            }
                        }
                    });
                    flow.insert((out, task));
                }
                if let Some((out, _)) = flows.get(&client) {
                    let _ = out.send(&buf[..n]).await;
                }
            }
        }
    }
}
