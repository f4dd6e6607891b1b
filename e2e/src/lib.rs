//! # outrider-e2e
//!
//! End-to-end tests with real processes: a real `outrider-cloud` and a real `outrider-agent`
//! (the workspace's binaries, see [`bins`]) with mTLS between them, a producer appending to the
//! agent's gRPC API at full speed, and an orchestrator that kills (`SIGKILL`) the agent or the
//! cloud, or cuts the network between them ([`forward`]), dozens of times at random moments. At
//! the end the agent delivers everything (the cloud acknowledged every lane through its last
//! event), both stop gracefully, and the cloud's store is opened and checked ([`verify`]): every
//! acknowledged event exactly once, each stream in the agent's order, nothing else.
//!
//! The scenarios are in `tests/kill.rs`. This library is the harness:
//!
//! * [`bins`]: finding (or building) the binaries;
//! * [`process`]: child processes with their output in files, killed on drop;
//! * [`procs`]: the cloud and the agent processes, their configuration and readiness;
//! * [`pki`]: the CA and certificates;
//! * [`producer`]: the appending client;
//! * [`forward`]: the network-cutting forwarders (TCP for gRPC, UDP for QUIC);
//! * [`verify`]: reading the cloud store and the checks;
//! * [`Harness`]: one scenario's directory, seed, processes and producers.
//!
//! Knobs (environment): `OUTRIDER_KILL_ROUNDS` (kills or cuts per scenario, default
//! [`DEFAULT_ROUNDS`]), `OUTRIDER_E2E_SEED` (the seed of the random moments; printed by every
//! run and on failure), `OUTRIDER_E2E_BIN_DIR` (prebuilt binaries), `OUTRIDER_E2E_KEEP=1` (keep
//! the temporary directory of a passing run; a failing run always keeps it).
//!
//! Waiting never sleeps as synchronisation: every wait polls a real condition (a log line,
//! `/healthz`, a counter, the outbox) with a deadline and fails with the processes' log tails.
//! The only sleeps are the random moments themselves.

pub mod bins;
pub mod forward;
pub mod pki;
pub mod process;
pub mod procs;
pub mod producer;
pub mod verify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pki::Pki;
use crate::process::{tail, POLL};
use crate::procs::{Agent, AgentSpec, Cloud, CloudSpec};
use crate::producer::{ProducerConfig, ProducerReport, StreamSpec};

/// Kills or cuts per scenario unless `OUTRIDER_KILL_ROUNDS` says otherwise: two dozen, sized for
/// CI on a 2-core machine (the six scenarios, gRPC and QUIC, take about 1.5 minutes there; the
/// cloud kills are the slowest, as the agent's reconnect backoff and the store's reopening take
/// up to a few seconds per round).
pub const DEFAULT_ROUNDS: u32 = 24;
/// The environment variable with the number of rounds.
pub const ROUNDS_VAR: &str = "OUTRIDER_KILL_ROUNDS";
/// The environment variable with the seed.
pub const SEED_VAR: &str = "OUTRIDER_E2E_SEED";
/// The environment variable that keeps a passing run's directory.
pub const KEEP_VAR: &str = "OUTRIDER_E2E_KEEP";

/// How long the agent may take to deliver its backlog after the producer stops.
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(60);
/// How long one round may wait for progress (an append through a restarted agent, a delivery
/// after a restart or cut; the agent's reconnect backoff is jittered up to a few seconds).
pub const PROGRESS_PATIENCE: Duration = Duration::from_secs(60);

/// The outbox destination the agent syncs (the `[sync]` default).
pub const DESTINATION: &str = "cloud";

/// SplitMix64: a small, seedable generator for the random moments.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` if empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.range(0, den) < num
    }

    /// A duration uniform in `lo_ms..hi_ms` milliseconds.
    pub fn millis(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.range(lo_ms, hi_ms))
    }
}

/// `OUTRIDER_KILL_ROUNDS`, or [`DEFAULT_ROUNDS`].
pub fn rounds() -> anyhow::Result<u32> {
    match std::env::var(ROUNDS_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{ROUNDS_VAR}={v:?} is not a number of rounds")),
        Err(_) => Ok(DEFAULT_ROUNDS),
    }
}

/// `OUTRIDER_E2E_SEED`, or one from the clock.
pub fn seed() -> anyhow::Result<u64> {
    match std::env::var(SEED_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{SEED_VAR}={v:?} is not a u64")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())),
    }
}

/// The running producers.
struct Producers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<ProducerReport>>>,
}

/// One scenario: its temporary directory, seed, certificates, processes and producers.
///
/// On failure, [`Harness::conclude`] panics with the error, the seed, how to rerun it and the
/// tail of every process's last logs, and keeps the directory. A panic elsewhere still prints
/// the seed and the directory (from `Drop`); the child processes are killed by their own guards.
pub struct Harness {
    /// The scenario's name, e.g. `kill-agent`.
    pub name: String,
    /// `sync.transport`.
    pub transport: String,
    /// The seed of [`Harness::rng`].
    pub seed: u64,
    /// The random moments.
    pub rng: Rng,
    /// Kills or cuts to do.
    pub rounds: u32,
    /// The node's id.
    pub node: String,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    pki: Pki,
    bins: bins::Binaries,
    /// The cloud server.
    pub cloud: Cloud,
    agent: Option<Agent>,
    agent_addr: watch::Sender<Option<SocketAddr>>,
    acked: Arc<AtomicU64>,
    producers: Option<Producers>,
    started: Instant,
    concluded: bool,
}

impl Harness {
    /// Sets up a scenario: finds the binaries, makes the directory and certificates. Nothing
    /// runs yet.
    pub fn new(name: &str, transport: &str) -> anyhow::Result<Harness> {
        let bins = bins::binaries()?;
        let seed = seed()?;
        let rounds = rounds()?;
        eprintln!(
            "e2e {name}[{transport}]: seed {seed} ({SEED_VAR}), {rounds} rounds ({ROUNDS_VAR})"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("outrider-e2e-{name}-{transport}-"))
            .tempdir()
            .context("cannot make a temporary directory")?;
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("logs")).context("cannot make the logs directory")?;
        let pki = Pki::new(&root.join("certs"))?;
        let cloud = Cloud::new(
            CloudSpec {
                dir: root.clone(),
                data_dir: root.join("cloud-data"),
                tls: Some(pki.server()),
                transport: transport.to_string(),
            },
            bins.cloud.clone(),
        );
        let (agent_addr, _) = watch::channel(None);
        Ok(Harness {
            name: name.to_string(),
            transport: transport.to_string(),
            seed,
            rng: Rng::new(seed),
            rounds,
            node: format!("e2e-{name}"),
            dir: Some(dir),
            root,
            pki,
            bins,
            cloud,
            agent: None,
            agent_addr,
            acked: Arc::default(),
            producers: None,
            started: Instant::now(),
            concluded: false,
        })
    }

    /// The scenario's directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Creates the agent (not started), syncing to `cloud` (the cloud or a forwarder in front
    /// of it) over mTLS with two lanes, `high` and `normal`.
    pub fn make_agent(&mut self, cloud: SocketAddr) -> anyhow::Result<()> {
        let tls = self.pki.issue_node(&self.node)?;
        let spec = AgentSpec {
            dir: self.root.clone(),
            data_dir: self.root.join("agent-data"),
            node: self.node.clone(),
            cloud_url: format!("https://127.0.0.1:{}", cloud.port()),
            tls: Some(tls),
            transport: self.transport.clone(),
            classes: vec!["high".into(), "normal".into()],
            default_class: "normal".into(),
        };
        self.agent = Some(Agent::new(spec, self.bins.agent.clone())?);
        Ok(())
    }

    /// The agent.
    pub fn agent(&mut self) -> anyhow::Result<&mut Agent> {
        self.agent.as_mut().context("no agent (make_agent first)")
    }

    /// Starts the agent and tells the producers its address.
    pub async fn start_agent(&mut self) -> anyhow::Result<SocketAddr> {
        let addr = self.agent()?.start().await?;
        self.agent_addr.send_replace(Some(addr));
        Ok(addr)
    }

    /// Kills the agent (SIGKILL); the producers wait for its next start.
    pub async fn kill_agent(&mut self) -> anyhow::Result<()> {
        self.agent_addr.send_replace(None);
        self.agent()?.kill9().await
    }

    /// Starts the producers: one on the `high` lane (one stream, small batches) and one on the
    /// `normal` lane (three streams, larger batches), each appending as fast as the agent
    /// acknowledges.
    pub fn start_producers(&mut self) {
        let (stop, stopped) = watch::channel(false);
        let tag = format!("{}-{}", self.name, self.seed);
        let configs = [
            ProducerConfig {
                tag: tag.clone(),
                streams: vec![StreamSpec {
                    stream: "alerts-0".into(),
                    class: "high".into(),
                }],
                batch_events: 4,
                payload_bytes: 64,
            },
            ProducerConfig {
                tag,
                streams: (0..3)
                    .map(|i| StreamSpec {
                        stream: format!("metrics-{i}"),
                        class: "normal".into(),
                    })
                    .collect(),
                batch_events: 24,
                payload_bytes: 160,
            },
        ];
        let tasks = configs
            .into_iter()
            .map(|cfg| {
                tokio::spawn(producer::produce(
                    cfg,
                    self.agent_addr.subscribe(),
                    stopped.clone(),
                    self.acked.clone(),
                ))
            })
            .collect();
        self.producers = Some(Producers { stop, tasks });
    }

    /// Events acknowledged to the producers so far.
    pub fn acked(&self) -> u64 {
        producer::count(&self.acked)
    }

    /// Fails if a producer has already stopped (it only stops on an error).
    fn check_producers(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.producers {
            if p.tasks.iter().any(JoinHandle::is_finished) {
                bail!("a producer stopped early (see the error at the end of the scenario)");
            }
        }
        Ok(())
    }

    /// Fails if a process that should run has exited on its own.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.cloud.check_alive()?;
        if let Some(a) = self.agent.as_mut() {
            a.check_alive()?;
        }
        self.check_producers()
    }

    /// Waits until the producers got `n` more events acknowledged (through whatever agent runs
    /// now).
    pub async fn wait_appends(&mut self, n: u64) -> anyhow::Result<()> {
        let target = self.acked() + n;
        let deadline = Instant::now() + PROGRESS_PATIENCE;
        while self.acked() < target {
            if let Err(e) = self.check_alive() {
                return Err(self.stop_producers_for_error(e).await);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the producers got no acknowledgement for {PROGRESS_PATIENCE:?} ({} so far)",
                    self.acked()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// How far the cloud has acknowledged the agent's outbox (grows with every delivery).
    pub async fn delivered(&mut self) -> anyhow::Result<u64> {
        let addr = self.agent()?.grpc().context("the agent is not running")?;
        producer::delivered_progress(addr, DESTINATION).await
    }

    /// Waits until the cloud acknowledged more of the agent's outbox than `since` (a delivery
    /// went through after a restart or a cut).
    pub async fn wait_delivery_after(&mut self, since: u64) -> anyhow::Result<u64> {
        let deadline = Instant::now() + PROGRESS_PATIENCE;
        loop {
            self.check_alive()?;
            let now = self.delivered().await?;
            if now > since {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the cloud acknowledged nothing more of the agent's outbox within \
                     {PROGRESS_PATIENCE:?} (still {now})"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A random moment: `lo_ms..hi_ms` milliseconds drawn from the seeded generator.
    pub async fn random_pause(&mut self, lo_ms: u64, hi_ms: u64) {
        let d = self.rng.millis(lo_ms, hi_ms);
        tokio::time::sleep(d).await;
    }

    async fn stop_producers_for_error(&mut self, e: anyhow::Error) -> anyhow::Error {
        match self.stop_producers().await {
            Ok(_) => e,
            Err(p) => e.context(format!("{p:#}")),
        }
    }

    /// Stops the producers and collects what they did; fails if one failed.
    pub async fn stop_producers(&mut self) -> anyhow::Result<Vec<ProducerReport>> {
        let Some(p) = self.producers.take() else {
            return Ok(Vec::new());
        };
        p.stop.send_replace(true);
        let mut reports = Vec::new();
        let mut errors = Vec::new();
        for t in p.tasks {
            match tokio::time::timeout(producer::RETRY_PATIENCE * 2, t).await {
                Ok(Ok(Ok(r))) => reports.push(r),
                Ok(Ok(Err(e))) => errors.push(format!("a producer failed: {e:#}")),
                Ok(Err(e)) => errors.push(format!("a producer panicked: {e}")),
                Err(_) => errors.push("a producer did not stop".to_string()),
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(reports)
    }

    /// The end of every scenario: stop producing, let the agent drain its outbox into the cloud,
    /// stop both gracefully, and check the cloud store against what the agent acknowledged.
    pub async fn finish(&mut self) -> anyhow::Result<verify::Summary> {
        let reports = self.stop_producers().await?;
        let acked: Vec<_> = reports
            .iter()
            .flat_map(|r| r.acked.iter().cloned())
            .collect();
        let produced = Instant::now();
        let pending_metric = self.wait_drained(&acked).await?;
        let drained = produced.elapsed();
        self.agent()?.stop().await?;
        self.cloud.stop().await?;
        let dir = self.cloud.data_dir().to_path_buf();
        let cloud = tokio::task::spawn_blocking(move || verify::read_cloud_store(&dir))
            .await
            .context("reading the cloud store: task failed")??;
        let summary = verify::check(&self.node, &acked, &cloud).map_err(anyhow::Error::msg)?;
        // Kill -9 is not a power cut: neither side may ever have had to start over.
        let mut quarantined = Vec::new();
        for e in std::fs::read_dir(&self.root).context("listing the scenario directory")? {
            let name = e.context("listing the scenario directory")?.file_name();
            if name.to_string_lossy().contains(".corrupt-") {
                quarantined.push(name.to_string_lossy().into_owned());
            }
        }
        if !quarantined.is_empty() {
            bail!("data directories were moved aside as unopenable: {quarantined:?}");
        }
        let corruption = self.count_log_lines("CORRUPTION FOUND");
        let starts = self.cloud.start_times();
        if starts.len() > 1 {
            eprintln!(
                "e2e {}[{}]: cloud starts took {:.0?} (max {:.0?})",
                self.name,
                self.transport,
                starts.iter().sum::<Duration>() / starts.len() as u32,
                starts.iter().max().copied().unwrap_or_default()
            );
        }
        let failed: u64 = reports.iter().map(|r| r.failed_attempts).sum();
        let dups: u64 = reports.iter().map(|r| r.duplicate_answers).sum();
        let batches: u64 = reports.iter().map(|r| r.batches).sum();
        eprintln!(
            "e2e {}[{}]: OK in {:.1?}: {} rounds, {} events in {} batches on {} streams and {} \
             lanes exactly once in the cloud; {} append attempts retried, {} retries answered \
             as duplicates; drained in {:.1?} (outrider_outbox_pending_events then: {}); {} \
             corruption reports in the logs; seed {}",
            self.name,
            self.transport,
            self.started.elapsed(),
            self.rounds,
            summary.events,
            batches,
            summary.streams,
            summary.lanes,
            failed,
            dups,
            drained,
            pending_metric,
            corruption,
            self.seed
        );
        Ok(summary)
    }

    /// The last acknowledged position of each lane.
    fn last_by_lane(acked: &[producer::Acked]) -> BTreeMap<String, u64> {
        let mut last = BTreeMap::new();
        for a in acked {
            let e = last.entry(a.class.clone()).or_insert(a.position);
            *e = (*e).max(a.position);
        }
        last
    }

    /// Waits until the cloud has acknowledged, in every lane, the agent's outbox through the last
    /// position the producers got acknowledged in that lane (the agent's `Status`, destination
    /// [`DESTINATION`]): everything is delivered. Returns `outrider_outbox_pending_events` then.
    ///
    /// This does not wait for `outrider_outbox_pending_events` to reach 0: that figure is
    /// counted per log record, and a record holding the last events of two classes stays
    /// pending for the class whose events end first even after they are all delivered (see
    /// `outbox_pending_metric_reaches_zero_after_delivery`).
    pub async fn wait_drained(&mut self, acked: &[producer::Acked]) -> anyhow::Result<u64> {
        let want = Self::last_by_lane(acked);
        let deadline = Instant::now() + DRAIN_PATIENCE;
        loop {
            self.check_alive()?;
            let addr = self.agent()?.grpc().context("the agent is not running")?;
            let status = producer::agent_status(addr).await?;
            let got: BTreeMap<String, u64> = status
                .destinations
                .iter()
                .filter(|d| d.name == DESTINATION)
                .flat_map(|d| d.acked.clone())
                .collect();
            let behind: Vec<String> = want
                .iter()
                .filter(|(lane, last)| got.get(*lane).is_none_or(|g| g < last))
                .map(|(lane, last)| format!("{lane}: acked {:?} of {last}", got.get(lane)))
                .collect();
            if behind.is_empty() {
                return self.agent()?.pending_events().await;
            }
            if Instant::now() >= deadline {
                let found = self.diagnose_stuck().await;
                bail!(
                    "the cloud had not acknowledged everything {DRAIN_PATIENCE:?} after the \
                     producers stopped ({})\n{found}",
                    behind.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the agent and the cloud hold when the outbox does not drain: the agent's outbox
    /// status, then both stopped gracefully (the agent logs its sync counters) and the cloud's
    /// watermarks and last stored origin seq per stream.
    async fn diagnose_stuck(&mut self) -> String {
        let mut out = String::new();
        if let Some(addr) = self.agent.as_ref().and_then(Agent::grpc) {
            match producer::agent_status(addr).await {
                Ok(s) => out.push_str(&format!("agent status: {s:?}\n")),
                Err(e) => out.push_str(&format!("agent status: {e:#}\n")),
            }
        }
        if let Some(a) = self.agent.as_mut() {
            if let Err(e) = a.stop().await {
                out.push_str(&format!("stopping the agent: {e:#}\n"));
            }
        }
        if let Err(e) = self.cloud.stop().await {
            out.push_str(&format!("stopping the cloud: {e:#}\n"));
            return out;
        }
        let dir = self.cloud.data_dir().to_path_buf();
        match tokio::task::spawn_blocking(move || verify::read_cloud_store(&dir)).await {
            Ok(Ok(c)) => {
                let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
                for e in &c.events {
                    let entry = last.entry(e.stream.as_str()).or_default();
                    *entry = (entry.0 + 1, e.origin_seq);
                }
                out.push_str(&format!(
                    "cloud watermarks: {:?}\ncloud streams (events, last origin seq): {last:?}\n",
                    c.checkpoints
                ));
            }
            Ok(Err(e)) => out.push_str(&format!("reading the cloud store: {e:#}\n")),
            Err(e) => out.push_str(&format!("reading the cloud store: {e}\n")),
        }
        out
    }

    /// Lines containing `needle` in every log of both processes.
    fn count_log_lines(&self, needle: &str) -> usize {
        let agent_logs = self.agent.as_ref().map(|a| a.logs()).unwrap_or_default();
        self.cloud
            .logs()
            .iter()
            .chain(agent_logs)
            .map(|l| {
                std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .lines()
                    .filter(|line| line.contains(needle))
                    .count()
            })
            .sum()
    }

    /// Tails of the last two logs of each process.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        let agent_logs = self.agent.as_ref().map(|a| a.logs()).unwrap_or_default();
        for logs in [self.cloud.logs(), agent_logs] {
            for l in logs.iter().rev().take(2).rev() {
                out.push_str(&tail(l, 30));
            }
        }
        out
    }

    /// Ends the scenario: on error, panics with the error, the seed, how to rerun it and the
    /// processes' log tails, keeping the directory.
    pub fn conclude<T>(mut self, result: anyhow::Result<T>) -> T {
        self.concluded = true;
        match result {
            Ok(v) => {
                if std::env::var_os(KEEP_VAR).is_some() {
                    if let Some(d) = self.dir.take() {
                        eprintln!("e2e {}: kept {}", self.name, d.keep().display());
                    }
                }
                v
            }
            Err(e) => {
                let tails = self.log_tails();
                let kept = self.dir.take().map(|d| d.keep());
                panic!(
                    "e2e {}[{}] FAILED after {:.1?}: {e:#}\n\nrerun with {SEED_VAR}={} \
                     {ROUNDS_VAR}={}; files kept in {}\n{tails}",
                    self.name,
                    self.transport,
                    self.started.elapsed(),
                    self.seed,
                    self.rounds,
                    kept.map_or_else(|| "?".into(), |d| d.display().to_string()),
                );
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(p) = &self.producers {
            p.stop.send_replace(true);
            for t in &p.tasks {
                t.abort();
            }
        }
        if !self.concluded {
            let kept = self.dir.take().map(|d| d.keep());
            eprintln!(
                "e2e {}[{}] did not finish: seed {} ({SEED_VAR}), {} rounds; files kept in {}",
                self.name,
                self.transport,
                self.seed,
                self.rounds,
                kept.map_or_else(|| "?".into(), |d| d.display().to_string()),
            );
        }
    }
}
