//! The agent side: its configuration, a pre-filled log, and the `outrider-agent` process (started
//! behind an optional command prefix such as `ip netns exec NS`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use outrider_agent::config::{LogFormat, SyncSection, SyncTlsSection};
use outrider_agent::AgentConfig;
use outrider_runtime::{Durability, ExpectedVersion, Log};
use prost::Message as _;
use std::io::Write as _;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::payload::{Payload, NODE};
use crate::pki::Pki;
use crate::Transport;

/// How long the agent may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams the pre-filled events are spread over.
const STREAMS: u64 = 4;

/// A command line: the prefix's words, then `program`.
pub fn command(prefix: &[String], program: &Path) -> Command {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// The agent's configuration: node [`NODE`], data in `data_dir`, APIs on loopback ports the
/// system picks, JSON logs, sync to `cloud_url` with mTLS.
pub fn config(data_dir: &Path, cloud_url: String, pki: &Pki) -> AgentConfig {
    let mut cfg = AgentConfig {
        node_id: NODE.into(),
        data_dir: data_dir.to_path_buf(),
        ..AgentConfig::default()
    };
    cfg.api.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.api.metrics_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.logging.format = LogFormat::Json;
    cfg.sync = Some(SyncSection {
        cloud_url,
        tls: Some(SyncTlsSection {
            ca: pki.ca.clone(),
            cert: pki.node_cert.clone(),
            key: pki.node_key.clone(),
        }),
        ..SyncSection::default()
    });
    cfg
}

/// Writes `cfg` as TOML with `sync.transport` set to `transport`.
pub fn write_config(cfg: &AgentConfig, transport: Transport, path: &Path) -> anyhow::Result<()> {
    let mut table: toml::Table = cfg
        .to_toml()
        .context("agent configuration")?
        .parse()
        .context("agent configuration")?;
    let sync = table
        .get_mut("sync")
        .and_then(toml::Value::as_table_mut)
        .context("agent configuration has no [sync]")?;
    sync.insert("transport".into(), transport.name().into());
    std::fs::write(path, toml::to_string(&table)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Appends `n` events of `payload` to a new log in `cfg.data_dir` (the agent's own log
/// configuration, four writers, then flushed to stable storage) and returns the encoded bytes of
/// all events as the log holds them.
pub fn prefill(cfg: &AgentConfig, payload: &Payload, n: u64) -> anyhow::Result<u64> {
    let mut lc = cfg.log_config().context("agent log configuration")?;
    lc.durability = Durability::Periodic {
        interval: Duration::from_millis(100),
    };
    let (log, _) = Log::open(lc).context("cannot create the agent log")?;
    let batch = 256u64;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let writers: Vec<_> = (0..STREAMS)
            .map(|w| {
                let log = log.clone();
                s.spawn(move || -> anyhow::Result<()> {
                    let (from, to) = (n * w / STREAMS, n * (w + 1) / STREAMS);
                    let stream = format!("bench-{w}");
                    let mut i = from;
                    while i < to {
                        let k = batch.min(to - i);
                        let events = (i..i + k).map(|j| payload.event(j, 0)).collect();
                        log.append(&stream, ExpectedVersion::Any, events, None)?;
                        i += k;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        Ok(())
    })?;
    log.flush()?;
    let mut bytes = 0u64;
    let mut from = 0;
    loop {
        let events = log.read_all(from, 4096)?;
        let Some(last) = events.last() else { break };
        from = last.position + 1;
        bytes += events.iter().map(|e| e.encoded_len() as u64).sum::<u64>();
    }
    log.close()?;
    Ok(bytes)
}

/// A running `outrider-agent`.
pub struct AgentProc {
    child: Child,
    /// Its gRPC API.
    pub grpc: SocketAddr,
    /// Its `/metrics`.
    #[allow(dead_code)] // Reported for debugging; the benchmark watches the cloud instead.
    pub metrics: SocketAddr,
    log_path: PathBuf,
}

/// The last lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl AgentProc {
    /// Starts `bin --config config` behind `prefix`; its log goes to `log_path`. Returns once it
    /// listens (its JSON log's `agent listening` line names the ports).
    pub async fn spawn(
        bin: &Path,
        prefix: &[String],
        config: &Path,
        log_path: &Path,
    ) -> anyhow::Result<AgentProc> {
        let mut cmd = command(prefix, bin);
        cmd.arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let mut file = std::fs::File::create(log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<(SocketAddr, SocketAddr)>();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Small unbuffered writes, so the file is complete whenever it is read.
                let _ = writeln!(file, "{line}");
                if tx.is_some() && line.contains("agent listening") {
                    if let Some(addrs) = listening_addrs(&line) {
                        let _ = tx.take().map(|tx| tx.send(addrs));
                    }
                }
            }
        });
        let started = tokio::select! {
            r = rx => r.ok(),
            () = tokio::time::sleep(START_TIMEOUT) => None,
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                // Give the log reader a moment to write the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!(
                    "the agent exited at start ({status}); its log {}:\n{}",
                    log_path.display(),
                    tail(log_path, 20)
                );
            }
        };
        let Some((grpc, metrics)) = started else {
            let _ = child.start_kill();
            bail!(
                "the agent did not report listening within {START_TIMEOUT:?}; its log {}:\n{}",
                log_path.display(),
                tail(log_path, 20)
            );
        };
        Ok(AgentProc {
            child,
            grpc,
            metrics,
            log_path: log_path.to_path_buf(),
        })
    }

    /// The agent's process id (the prefix execs it, as `ip netns exec` does).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails if the agent has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the agent exited ({status}); its log {}:\n{}",
                self.log_path.display(),
                tail(&self.log_path, 20)
            );
        }
        Ok(())
    }

    /// Stops the agent with SIGTERM (SIGKILL after [`STOP_TIMEOUT`]); fails unless it exits 0.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                self.child.kill().await?;
                bail!("the agent did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed");
            }
        };
        if !status.success() {
            bail!(
                "the agent exited with {status}; its log {}:\n{}",
                self.log_path.display(),
                tail(&self.log_path, 20)
            );
        }
        Ok(())
    }
}

/// The gRPC and metrics addresses of the JSON `agent listening` log line.
fn listening_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    let addr = |k: &str| fields.get(k)?.as_str()?.parse().ok();
    Some((addr("grpc_addr")?, addr("metrics_addr")?))
}

/// Whether `bin` accepts `sync.transport = transport`: asks `--print-config` with a
/// configuration written to `scratch`. `Err(message)` holds the agent's refusal.
pub fn accepts_transport(
    bin: &Path,
    transport: Transport,
    scratch: &Path,
) -> anyhow::Result<Result<(), String>> {
    let path = scratch.join(format!("probe-{}.toml", transport.name()));
    let text = format!(
        "[sync]\ncloud_url = \"https://127.0.0.1:7443\"\ntransport = \"{}\"\n\
         [sync.tls]\nca = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node-key.pem\"\n",
        transport.name()
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(&path)
        .arg("--print-config")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let line = r#"{"timestamp":"2026-11-26T10:00:00Z","level":"INFO","fields":{"message":"agent listening","grpc_addr":"127.0.0.1:4100","metrics_addr":"127.0.0.1:4101"},"target":"outrider_agent::daemon"}"#;
        assert_eq!(
            listening_addrs(line),
            Some((
                "127.0.0.1:4100".parse().unwrap(),
                "127.0.0.1:4101".parse().unwrap()
            ))
        );
        assert_eq!(listening_addrs("agent listening"), None);
    }
}
