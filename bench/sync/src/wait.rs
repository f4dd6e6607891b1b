//! `sync-bench wait-drained`: polls an agent's `/metrics` until its log holds at least the
//! expected events and its outbox has nothing pending (`outrider_outbox_pending_events` = 0 in
//! every class), or fails at the deadline with the last figures.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;

/// `sync-bench wait-drained`.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// The agent's metrics URL (plain http).
    #[arg(
        long,
        default_value = "http://127.0.0.1:9464/metrics",
        value_name = "URL"
    )]
    pub metrics: String,

    /// Also wait until the log's head position is at least N (every event was appended).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub min_head: u64,

    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120, value_name = "S")]
    pub timeout: u64,
}

/// The figures read from `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub head: u64,
    pub pending: u64,
}

/// Parses the Prometheus text of the agent.
pub fn parse(text: &str) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let (mut saw_head, mut saw_pending) = (false, false);
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = name.split('{').next().unwrap_or(name);
        let value = || -> anyhow::Result<u64> {
            value
                .trim()
                .parse()
                .with_context(|| format!("bad metric line {line:?}"))
        };
        match metric {
            "outrider_log_head_position" => {
                f.head = value()?;
                saw_head = true;
            }
            "outrider_outbox_pending_events" => {
                f.pending += value()?;
                saw_pending = true;
            }
            _ => {}
        }
    }
    if !saw_head || !saw_pending {
        bail!("the metrics have no outrider_log_head_position or outrider_outbox_pending_events");
    }
    Ok(f)
}

/// `http://HOST:PORT/PATH` → (address, path).
fn split_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// URLs"))?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/metrics".to_string()),
    };
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("{url:?}: bad host:port"))?
        .next()
        .with_context(|| format!("{url:?}: no address"))?;
    Ok((addr, path))
}

fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or("no status line"));
    }
    Ok(body.to_string())
}

pub fn run(a: &WaitArgs) -> anyhow::Result<()> {
    let (addr, path) = split_url(&a.metrics)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.timeout);
    let mut last_report = start;
    let mut last: Result<Figures, String>;
    loop {
        last = fetch(addr, &path)
            .and_then(|t| parse(&t))
            .map_err(|e| format!("{e:#}"));
        if let Ok(f) = last {
            if f.head >= a.min_head && f.pending == 0 {
                println!(
                    "drained: head {}, 0 events pending, after {:.1} s",
                    f.head,
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now.duration_since(last_report) >= Duration::from_secs(5) {
            last_report = now;
            match &last {
                Ok(f) => eprintln!(
                    "wait-drained: head {} (want >= {}), {} pending, {:.0} s",
                    f.head,
                    a.min_head,
                    f.pending,
                    start.elapsed().as_secs_f64()
                ),
                Err(e) => eprintln!("wait-drained: {}: {e}", a.metrics),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match last {
        Ok(f) => bail!(
            "not drained after {} s: head {} (want >= {}), {} events pending",
            a.timeout,
            f.head,
            a.min_head,
            f.pending
        ),
        Err(e) => bail!("not drained after {} s: {}: {e}", a.timeout, a.metrics),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_metrics() {
        let text = "# HELP outrider_log_head_position x\n# TYPE outrider_log_head_position gauge\n\
                    outrider_log_head_position 1200\n\
                    outrider_outbox_pending_events{class=\"high\"} 3\n\
                    outrider_outbox_pending_events{class=\"normal\"} 4\n\
                    outrider_outbox_pending_bytes{class=\"normal\"} 999\n";
        assert_eq!(
            parse(text).unwrap(),
            Figures {
                head: 1200,
                pending: 7
            }
        );
        assert!(parse("outrider_log_head_position 1\n").is_err());
        assert_eq!(
            split_url("http://127.0.0.1:9464/metrics").unwrap(),
            ("127.0.0.1:9464".parse().unwrap(), "/metrics".to_string())
        );
    }
}
