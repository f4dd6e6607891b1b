//! The two processes under test: `outrider-cloud` and `outrider-agent`, each started from a
//! configuration file the harness writes, with its output in a log file per start
//! (`logs/cloud-003.log`), restartable on the same data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::pki::TlsPaths;
use crate::process::{tail, Proc, POLL};

/// How long a process may take to become ready (debug builds on a busy 2-core machine).
pub const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long a graceful stop may take (the agent drains for up to 10 s).
pub const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// A command for `bin` without the test's own `OUTRIDER_*` variables (the agent would take
/// `OUTRIDER_KILL_ROUNDS` for a configuration key) and with a fixed log filter.
fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .starts_with(outrider_agent::config::ENV_PREFIX)
        {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    cmd
}

/// A path as a TOML string.
fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// What a cloud server is started with.
#[derive(Debug, Clone)]
pub struct CloudSpec {
    /// Where its configuration and logs go.
    pub dir: PathBuf,
    /// Its store.
    pub data_dir: PathBuf,
    /// mTLS files; `None`: insecure (plain text).
    pub tls: Option<TlsPaths>,
    /// The sync transport the agents use (`grpc`, `quic`).
    pub transport: String,
}

/// The cloud server process, restartable on the same data directory and port.
#[derive(Debug)]
pub struct Cloud {
    spec: CloudSpec,
    bin: PathBuf,
    addr: Option<SocketAddr>,
    proc: Option<Proc>,
    starts: u32,
    logs: Vec<PathBuf>,
    start_times: Vec<Duration>,
}

impl Cloud {
    /// A cloud not yet started.
    pub fn new(spec: CloudSpec, bin: PathBuf) -> Cloud {
        Cloud {
            spec,
            bin,
            addr: None,
            proc: None,
            starts: 0,
            logs: Vec::new(),
            start_times: Vec::new(),
        }
    }

    /// How long each completed [`Cloud::start`] took, from spawn to listening.
    pub fn start_times(&self) -> &[Duration] {
        &self.start_times
    }

    /// The address it listens on (known after the first start; kept for every restart).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The store directory.
    pub fn data_dir(&self) -> &Path {
        &self.spec.data_dir
    }

    /// The log files of every start so far, oldest first.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    fn config(&self, listen: SocketAddr) -> anyhow::Result<String> {
        let mut text = format!(
            "listen = {}\ndata_dir = {}\n",
            toml_str(&listen.to_string()),
            toml_path(&self.spec.data_dir)
        );
        match self.spec.transport.as_str() {
            // gRPC is always served (older servers know no `quic` key).
            "grpc" => {}
            // QUIC on UDP at the same address and port.
            "quic" | "auto" => text.push_str("quic = true\n"),
            other => bail!(
                "the cloud server's configuration for sync transport {other:?} is not known to \
                 the e2e harness (e2e/src/procs.rs, Cloud::config)"
            ),
        }
        match &self.spec.tls {
            Some(t) => {
                text.push_str(&format!(
                    "[tls]\nca = {}\ncert = {}\nkey = {}\n",
                    toml_path(&t.ca),
                    toml_path(&t.cert),
                    toml_path(&t.key)
                ));
            }
            None => text.push_str("insecure = true\n"),
        }
        Ok(text)
    }

    /// Starts the process without waiting for it (to kill it while it starts).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.proc.is_some() {
            bail!("the cloud is already running");
        }
        let listen = self
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let cfg = self.spec.dir.join("cloud.toml");
        write(&cfg, &self.config(listen)?)?;
        self.starts += 1;
        let log = self
            .spec
            .dir
            .join(format!("logs/cloud-{:03}.log", self.starts));
        let mut cmd = command(&self.bin);
        cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info");
        self.proc = Some(Proc::spawn(format!("cloud #{}", self.starts), cmd, &log)?);
        self.logs.push(log);
        Ok(())
    }

    /// Starts the server and waits until it listens; returns its address. The port of the
    /// first start is kept: a restart whose bind fails (the port not free yet) is retried until
    /// [`START_PATIENCE`].
    pub async fn start(&mut self) -> anyhow::Result<SocketAddr> {
        let began = Instant::now();
        let deadline = began + START_PATIENCE;
        loop {
            self.spawn()?;
            let proc = self.proc.as_mut().context("no process")?;
            let left = deadline.saturating_duration_since(Instant::now());
            match proc.wait_for_line("ingest server listening", left).await {
                Ok(line) => {
                    let addr = field(&line, "listen=")
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        .with_context(|| format!("no listen address in {line:?}"))?;
                    if let Some(expected) = self.addr {
                        if expected != addr {
                            bail!("the cloud listens on {addr}, not {expected}");
                        }
                    }
                    self.addr = Some(addr);
                    self.start_times.push(began.elapsed());
                    return Ok(addr);
                }
                Err(e) => {
                    let log = std::fs::read_to_string(proc.log_path()).unwrap_or_default();
                    let exited = proc.try_exit()?.is_some();
                    self.proc = None;
                    if exited && log.contains("cannot bind") && Instant::now() < deadline {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// SIGKILL.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill9().await?;
        }
        Ok(())
    }

    /// A graceful stop (SIGINT: the server drains its sessions and closes the store); fails
    /// unless it exits successfully.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut p) = self.proc.take() else {
            return Ok(());
        };
        let status = p.stop(libc::SIGINT, STOP_PATIENCE).await?;
        if !status.success() {
            bail!(
                "the cloud exited with {status} after SIGINT\n{}",
                tail(p.log_path(), 40)
            );
        }
        Ok(())
    }

    /// Fails (with the log's tail) if the process has exited on its own.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.proc.as_mut() {
            if let Some(status) = p.try_exit()? {
                bail!(
                    "{} exited on its own ({status})\n{}",
                    p.name(),
                    tail(p.log_path(), 40)
                );
            }
        }
        Ok(())
    }
}

/// The value after `key` in a text log line, up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()
}

/// What an agent is started with.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Where its configuration and logs go.
    pub dir: PathBuf,
    /// Its log.
    pub data_dir: PathBuf,
    /// Its node id (must match its certificate).
    pub node: String,
    /// Where it syncs to.
    pub cloud_url: String,
    /// mTLS files; `None`: insecure.
    pub tls: Option<TlsPaths>,
    /// `sync.transport`.
    pub transport: String,
    /// The outbox classes, highest first (the first is not the default class unless alone).
    pub classes: Vec<String>,
    /// The class of appends without one.
    pub default_class: String,
}

/// The agent process, restartable on the same data directory.
#[derive(Debug)]
pub struct Agent {
    spec: AgentSpec,
    bin: PathBuf,
    proc: Option<Proc>,
    grpc: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    starts: u32,
    logs: Vec<PathBuf>,
}

impl Agent {
    /// An agent not yet started. Checks the configuration with the agent's own parser.
    pub fn new(spec: AgentSpec, bin: PathBuf) -> anyhow::Result<Agent> {
        let agent = Agent {
            spec,
            bin,
            proc: None,
            grpc: None,
            metrics: None,
            starts: 0,
            logs: Vec::new(),
        };
        outrider_agent::AgentConfig::parse(&agent.config(), Vec::new())
            .context("the e2e harness wrote an agent configuration the agent refuses")?;
        Ok(agent)
    }

    /// The gRPC API's address while it runs.
    pub fn grpc(&self) -> Option<SocketAddr> {
        self.grpc
    }

    /// The metrics endpoint's address while it runs.
    pub fn metrics(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The log files of every start so far, oldest first.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    /// The configuration file's text: both servers on port 0 (the real ports are read from the
    /// "agent listening" log line), JSON logs, fsync per commit as in production.
    pub fn config(&self) -> String {
        let s = &self.spec;
        let mut text = format!(
            "node_id = {}\ndata_dir = {}\n\n[api]\nlisten = \"127.0.0.1:0\"\n\
             metrics_listen = \"127.0.0.1:0\"\n\n[log]\ndurability = \"sync\"\n\n\
             [logging]\nformat = \"json\"\nlevel = \"info\"\n\n[outbox]\ndefault_class = {}\n",
            toml_str(&s.node),
            toml_path(&s.data_dir),
            toml_str(&s.default_class),
        );
        for c in &s.classes {
            text.push_str(&format!("\n[[outbox.classes]]\nname = {}\n", toml_str(c)));
        }
        text.push_str(&format!(
            "\n[sync]\ncloud_url = {}\ntransport = {}\nconnect_timeout_ms = 2000\n",
            toml_str(&s.cloud_url),
            toml_str(&s.transport)
        ));
        if s.transport != "grpc" {
            // A killed cloud or a cut link is silence to QUIC: notice it within 2 s rather than
            // the default 15 s, or every round would wait that long.
            text.push_str("quic_idle_timeout_ms = 2000\n");
        }
        match &s.tls {
            Some(t) => text.push_str(&format!(
                "\n[sync.tls]\nca = {}\ncert = {}\nkey = {}\n",
                toml_path(&t.ca),
                toml_path(&t.cert),
                toml_path(&t.key)
            )),
            None => text.push_str("insecure = true\n"),
        }
        text
    }

    /// Starts the process without waiting for it (to kill it while it starts).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.proc.is_some() {
            bail!("the agent is already running");
        }
        let cfg = self.spec.dir.join("agent.toml");
        write(&cfg, &self.config())?;
        self.starts += 1;
        let log = self
            .spec
            .dir
            .join(format!("logs/agent-{:03}.log", self.starts));
        let mut cmd = command(&self.bin);
        cmd.arg("--config").arg(&cfg);
        self.proc = Some(Proc::spawn(format!("agent #{}", self.starts), cmd, &log)?);
        self.logs.push(log);
        self.grpc = None;
        self.metrics = None;
        Ok(())
    }

    /// Starts the agent and waits until it serves: its "agent listening" line (after the log is
    /// open), then `/healthz` answering. Returns the gRPC address.
    pub async fn start(&mut self) -> anyhow::Result<SocketAddr> {
        self.spawn()?;
        let deadline = Instant::now() + START_PATIENCE;
        let proc = self.proc.as_mut().context("no process")?;
        let line = proc
            .wait_for_line("agent listening", START_PATIENCE)
            .await?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("the agent's log line is not JSON: {line:?}"))?;
        let addr = |k: &str| {
            v["fields"][k]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .with_context(|| format!("no {k} in {line:?}"))
        };
        let grpc = addr("grpc_addr")?;
        let metrics = addr("metrics_addr")?;
        loop {
            if let Ok((200, _)) = http_get(metrics, "/healthz").await {
                break;
            }
            if let Some(status) = proc.try_exit()? {
                bail!(
                    "the agent exited ({status}) before /healthz answered\n{}",
                    tail(proc.log_path(), 40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent's /healthz did not answer within {START_PATIENCE:?}\n{}",
                    tail(proc.log_path(), 40)
                );
            }
            tokio::time::sleep(POLL).await;
        }
        self.grpc = Some(grpc);
        self.metrics = Some(metrics);
        Ok(grpc)
    }

    /// SIGKILL.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.grpc = None;
        self.metrics = None;
        if let Some(mut p) = self.proc.take() {
            p.kill9().await?;
        }
        Ok(())
    }

    /// A graceful stop (SIGTERM); fails unless it exits with status 0 after logging
    /// "flushed and closed".
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.grpc = None;
        self.metrics = None;
        let Some(mut p) = self.proc.take() else {
            return Ok(());
        };
        let status = p.stop(libc::SIGTERM, STOP_PATIENCE).await?;
        let log = std::fs::read_to_string(p.log_path()).unwrap_or_default();
        if status.code() != Some(0) || !log.contains("flushed and closed") {
            bail!(
                "the agent did not stop cleanly after SIGTERM ({status})\n{}",
                tail(p.log_path(), 40)
            );
        }
        Ok(())
    }

    /// Fails (with the log's tail) if the process has exited on its own.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.proc.as_mut() {
            if let Some(status) = p.try_exit()? {
                bail!(
                    "{} exited on its own ({status})\n{}",
                    p.name(),
                    tail(p.log_path(), 40)
                );
            }
        }
        Ok(())
    }

    /// Undelivered events in the outbox, all classes (`outrider_outbox_pending_events`).
    pub async fn pending_events(&self) -> anyhow::Result<u64> {
        let addr = self.metrics.context("the agent is not running")?;
        let (code, body) = http_get(addr, "/metrics").await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        let mut total = 0u64;
        let mut seen = false;
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("outrider_outbox_pending_events{") {
                let value = rest
                    .rsplit_once(' ')
                    .and_then(|(_, v)| v.parse::<f64>().ok())
                    .with_context(|| format!("bad sample {line:?}"))?;
                total += value as u64;
                seen = true;
            }
        }
        if !seen {
            bail!("no outrider_outbox_pending_events in /metrics");
        }
        Ok(total)
    }
}

/// A plain HTTP/1.1 GET with a timeout; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        std::io::Result::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}
