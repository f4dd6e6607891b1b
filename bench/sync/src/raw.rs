//! The raw TCP baseline: a sender process writes N length-prefixed frames of the agent's encoded
//! event size over one plain TCP connection; a receiver in the benchmark's process counts them
//! and answers with a final ack (the frame count). No TLS, no protocol, no storage: the ceiling
//! of the path.
//!
//! Wire: `frames: u64 LE`, then `frames` × (`len: u32 LE`, `len` bytes); the receiver answers
//! `frames: u64 LE` once it has counted them all.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// `sync-bench raw-send`.
#[derive(Debug, Clone, Args)]
pub struct RawSendArgs {
    /// The receiver.
    #[arg(long)]
    pub to: SocketAddr,
    /// Frames to send.
    #[arg(long)]
    pub frames: u64,
    /// Bytes per frame (after its 4-byte length).
    #[arg(long)]
    pub frame_bytes: u32,
}

/// The sender: connects (retrying for 10 s), writes every frame, waits for the ack.
pub fn send(a: &RawSendArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match TcpStream::connect_timeout(&a.to, Duration::from_secs(5)) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("raw-send: connecting to {}: {e}; retrying", a.to);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", a.to)),
        }
    };
    let frame = usize::try_from(a.frame_bytes)? + 4;
    let per_chunk = ((1 << 20) / frame).max(1);
    let mut chunk = Vec::with_capacity(per_chunk * frame);
    for k in 0..per_chunk {
        chunk.extend_from_slice(&a.frame_bytes.to_le_bytes());
        // Bytes that do not compress, as protobuf events with ids and times do not entirely.
        let mut x = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..a.frame_bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.push(x as u8);
        }
    }
    conn.write_all(&a.frames.to_le_bytes())?;
    let mut left = a.frames;
    while left > 0 {
        let k = left.min(per_chunk as u64);
        conn.write_all(&chunk[..usize::try_from(k)? * frame])?;
        left -= k;
    }
    conn.flush()?;
    let mut ack = [0u8; 8];
    conn.read_exact(&mut ack)
        .context("no final ack from the receiver")?;
    let got = u64::from_le_bytes(ack);
    if got != a.frames {
        bail!("the receiver acknowledged {got} frames of {}", a.frames);
    }
    Ok(())
}

/// What the receiver measured.
#[derive(Debug, Clone, Copy)]
pub struct RawResult {
    /// Frames counted after the first read, over the time from the first read to the last frame.
    pub events_per_s: f64,
}

/// The receiver, bound.
pub struct Receiver {
    listener: TcpListener,
}

impl Receiver {
    pub async fn bind(ip: std::net::IpAddr) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .context("cannot bind the raw TCP receiver")?;
        Ok(Receiver { listener })
    }

    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Accepts one connection and counts its frames until all are there, then acks.
    pub async fn run(self) -> anyhow::Result<RawResult> {
        let (mut conn, _) = self.listener.accept().await?;
        let mut head = [0u8; 8];
        conn.read_exact(&mut head).await?;
        let frames = u64::from_le_bytes(head);
        let mut buf = vec![0u8; 1 << 20];
        let (mut count, mut body_left, mut hdr, mut hdr_have) = (0u64, 0usize, [0u8; 4], 0usize);
        let mut first: Option<(Instant, u64)> = None;
        while count < frames {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                bail!("the raw sender closed after {count} of {frames} frames");
            }
            let mut i = 0;
            while i < n {
                if body_left > 0 {
                    let take = body_left.min(n - i);
                    i += take;
                    body_left -= take;
                    if body_left == 0 {
                        count += 1;
                    }
                } else {
                    hdr[hdr_have] = buf[i];
                    hdr_have += 1;
                    i += 1;
                    if hdr_have == 4 {
                        hdr_have = 0;
                        body_left = u32::from_le_bytes(hdr) as usize;
                        if body_left == 0 {
                            count += 1;
                        }
                    }
                }
            }
            if first.is_none() {
                first = Some((Instant::now(), count));
            }
        }
        let done = Instant::now();
        conn.write_all(&count.to_le_bytes()).await?;
        let (t0, c0) = first.unwrap_or((done, 0));
        let secs = done.duration_since(t0).as_secs_f64().max(1e-9);
        Ok(RawResult {
            events_per_s: (frames - c0) as f64 / secs,
        })
    }
}
