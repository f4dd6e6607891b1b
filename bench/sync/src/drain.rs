//! The benchmark proper: for each (transport, size) a raw TCP baseline, a drain run and a latency
//! run (see the crate doc).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::agent::{self, AgentProc};
use crate::cloud::Cloud;
use crate::payload::{now_nanos, stamp_of, Payload, NODE};
use crate::report::{self, Row};
use crate::{cpu, pki, raw, verify, BenchArgs, Transport, TransportArg};

/// Latencies of events whose append started this soon after the first are not counted.
const LATENCY_WARMUP: Duration = Duration::from_millis(500);

/// Events per drain run by default: about 100 MB of events (a fifth with `--quick`).
fn default_events(size: u32, quick: bool) -> u64 {
    let n = 100_000_000 / u64::from(size);
    let n = if quick { n / 5 } else { n };
    n.div_ceil(1000) * 1000
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "nproc {cores} ({cpu}), kernel {}",
        read("/proc/sys/kernel/osrelease").trim()
    )
}

/// Where scratch data goes by default.
fn default_work_dir() -> PathBuf {
    let base = if Path::new("target").is_dir() {
        PathBuf::from("target/bench-tmp")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("sync-{}", std::process::id()))
}

/// The address a client uses to reach a listener bound to `ip`.
fn reachable(ip: IpAddr) -> IpAddr {
    if ip.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        ip
    }
}

struct Setup {
    args: BenchArgs,
    prefix: Vec<String>,
    agent_bin: PathBuf,
    self_bin: PathBuf,
    pki: pki::Pki,
    work: PathBuf,
    latency_secs: u64,
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let self_bin = std::env::current_exe().context("cannot find this executable")?;
    let agent_bin = match &args.agent_bin {
        Some(p) => p.clone(),
        None => self_bin.with_file_name("outrider-agent"),
    };
    if !agent_bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p outrider-agent -p outrider-sync-bench), or pass --agent-bin",
            agent_bin.display()
        );
    }
    let work = args.work_dir.clone().unwrap_or_else(default_work_dir);
    if work.exists() {
        bail!("{} exists: pick another --work-dir", work.display());
    }
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let work = work.canonicalize()?;
    let prefix: Vec<String> = args
        .agent_prefix
        .split_whitespace()
        .map(str::to_string)
        .collect();

    let mut transports = Vec::new();
    let want_quic = matches!(args.transport, TransportArg::Quic | TransportArg::All);
    if matches!(args.transport, TransportArg::Grpc | TransportArg::All) {
        transports.push(Transport::Grpc);
    }
    let mut notes = Vec::new();
    if want_quic {
        let why_not = match agent::accepts_transport(&agent_bin, Transport::Quic, &work)? {
            Ok(()) => None,
            Err(msg) => Some(format!(
                "the agent refuses sync.transport = \"quic\": {msg}"
            )),
        };
        match why_not {
            None => transports.push(Transport::Quic),
            Some(why) if args.transport == TransportArg::Quic => {
                bail!("QUIC is not available: {why}")
            }
            Some(why) => notes.push(format!("quic: not measured: {why}")),
        }
    }

    let sizes = if args.size.is_empty() {
        vec![256, 1024]
    } else {
        args.size.clone()
    };
    let latency_secs = args.latency_secs.unwrap_or(if args.quick { 3 } else { 11 });
    let pki = pki::make(&work.join("pki"), args.cloud_listen.ip(), NODE)?;
    let setup = Setup {
        args: args.clone(),
        prefix,
        agent_bin,
        self_bin,
        pki,
        work: work.clone(),
        latency_secs,
    };

    println!("sync-bench: {}", machine());
    if cfg!(debug_assertions) {
        println!("WARNING: a debug build of sync-bench: figures are not representative (build with --release)");
    }
    println!(
        "agent: {} {}; cloud: in-process on {}; scratch {}",
        setup.agent_bin.display(),
        if setup.prefix.is_empty() {
            String::new()
        } else {
            format!("(behind `{}`)", setup.prefix.join(" "))
        },
        args.cloud_listen,
        work.display()
    );
    for n in &notes {
        println!("{n}");
    }

    let mut rows = Vec::new();
    for &size in &sizes {
        for &t in &transports {
            let n = args
                .events
                .unwrap_or_else(|| default_events(size, args.quick));
            let row = run_row(&setup, t, size, n).await.with_context(|| {
                format!("{} {size} B (scratch kept in {})", t.name(), work.display())
            })?;
            println!(
                "  {} {size} B: {} events/s ({:.1} MB/s), raw TCP {} events/s: {:.0} %{}",
                t.name(),
                report::rate(row.events_per_s),
                row.mb_per_s(),
                report::rate(row.raw_events_per_s),
                row.ratio() * 100.0,
                match row.latency {
                    Some((p50, p99, k)) =>
                        format!("; latency p50 {p50:.1} ms, p99 {p99:.1} ms ({k} events)"),
                    None => String::new(),
                }
            );
            rows.push(row);
        }
    }

    println!();
    println!(
        "Drain: N events pre-filled in the agent's log, then `outrider-agent` started with sync on; events/s = events after the cloud's first commit ÷ time from it to the commit that completes all N (cloud store durable: fsync per commit group). MB/s = events/s × encoded event bytes (1 MB = 10^6 B). Raw TCP: the same number of length-prefixed frames of the same encoded size over one plain TCP connection on the same path, counted by a receiver in the cloud's process, with a final ack. Latency (a fresh agent and cloud): an open-loop producer appends {} events/s over the agent's gRPC API for {} s (a millisecond's worth per append; warm-up of {} ms not counted); latency = cloud commit observed by a subscription on the cloud log − the append call's start (wall clock). CPU (cores busy, from /proc) during the drain: the agent process, this process (the cloud), and all other processes of the machine (during the drain / the latency run; above ~0.1 the row was measured on a shared machine).",
        args.rate,
        latency_secs,
        LATENCY_WARMUP.as_millis()
    );
    println!();
    print!("{}", report::table(&rows, args.rate));
    println!();
    let loopback = setup.prefix.is_empty()
        && (args.cloud_listen.ip().is_loopback() || args.cloud_listen.ip().is_unspecified());
    for v in report::verdicts(&rows, loopback) {
        println!("{v}");
    }
    if !args.keep {
        std::fs::remove_dir_all(&work).ok();
    }
    Ok(())
}

async fn run_row(s: &Setup, t: Transport, size: u32, n: u64) -> anyhow::Result<Row> {
    let dir = s.work.join(format!("{}-{size}", t.name()));
    std::fs::create_dir_all(&dir)?;
    let payload = Payload::new(usize::try_from(size)?);
    let cloud = Cloud::start(&dir.join("cloud"), s.args.cloud_listen, &s.pki, t).await?;

    let cfg = agent::config(&dir.join("agent"), cloud.url(), &s.pki);
    let bytes = {
        let (cfg, payload) = (cfg.clone(), payload.clone());
        tokio::task::spawn_blocking(move || agent::prefill(&cfg, &payload, n)).await??
    };
    let encoded = bytes as f64 / n as f64;

    let raw_eps = raw_baseline(s, n, encoded.round() as u32).await?;

    let config_path = dir.join("agent.toml");
    agent::write_config(&cfg, t, &config_path)?;
    let mut head = cloud.log.watch_head();
    head.borrow_and_update();
    let before = cpu::Sample::take(&[]);
    let spawned = Instant::now();
    let mut agent = AgentProc::spawn(
        &s.agent_bin,
        &s.prefix,
        &config_path,
        &dir.join("agent.log"),
    )
    .await?;
    let deadline = spawned + Duration::from_secs(60 + n / 2000);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let h = cloud.log.head();
        if h > 0 && first.is_none() {
            first = Some((Instant::now(), h));
        }
        if h >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the cloud holds {h} of {n} events after {:?}",
                spawned.elapsed()
            );
        }
        agent.check_alive()?;
        let _ = tokio::time::timeout(Duration::from_millis(500), head.changed()).await;
    }
    let done = Instant::now();
    let pids: Vec<u32> = agent.pid().into_iter().collect();
    let drain_cpu = before.usage_since(&cpu::Sample::take(&pids));
    let (t0, h0) = first.unwrap_or((done, 0));
    let events_per_s = (n - h0.min(n)) as f64 / done.duration_since(t0).as_secs_f64().max(1e-9);
    let start_to_first = t0.duration_since(spawned).as_secs_f64();
    {
        let log = cloud.log.clone();
        tokio::task::spawn_blocking(move || verify::check(&log, NODE, n, 0))
            .await?
            .context("after the drain")?;
    }
    agent.stop().await?;
    cloud.stop().await?;

    // Latency on a fresh agent and cloud: steady state, not the reclaim of the drained backlog.
    let latency = if s.latency_secs > 0 {
        let cloud =
            Cloud::start(&dir.join("cloud-latency"), s.args.cloud_listen, &s.pki, t).await?;
        let cfg = agent::config(&dir.join("agent-latency"), cloud.url(), &s.pki);
        let config_path = dir.join("agent-latency.toml");
        agent::write_config(&cfg, t, &config_path)?;
        let mut agent = AgentProc::spawn(
            &s.agent_bin,
            &s.prefix,
            &config_path,
            &dir.join("agent-latency.log"),
        )
        .await?;
        let (lat, sent, others) = latency_run(s, t, &cloud, &mut agent, size, 0).await?;
        let log = cloud.log.clone();
        tokio::task::spawn_blocking(move || verify::check(&log, NODE, sent, 0))
            .await?
            .context("after the latency run")?;
        agent.stop().await?;
        cloud.stop().await?;
        Some((lat, others))
    } else {
        None
    };
    if !s.args.keep {
        // Rows of 100 MB of events leave several times that on disk.
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(Row {
        transport: t,
        size,
        events: n,
        encoded_bytes: encoded,
        events_per_s,
        raw_events_per_s: raw_eps,
        start_to_first_commit_s: start_to_first,
        latency: latency.map(|l| l.0),
        drain_cpu,
        others_latency: latency.map(|l| l.1),
    })
}

/// The raw TCP baseline: `n` frames of `frame_bytes` from a sender behind the agent prefix.
async fn raw_baseline(s: &Setup, n: u64, frame_bytes: u32) -> anyhow::Result<f64> {
    let receiver = raw::Receiver::bind(s.args.cloud_listen.ip()).await?;
    let to = SocketAddr::new(reachable(receiver.addr()?.ip()), receiver.addr()?.port());
    let mut cmd = agent::command(&s.prefix, &s.self_bin);
    cmd.arg("raw-send")
        .arg("--to")
        .arg(to.to_string())
        .arg("--frames")
        .arg(n.to_string())
        .arg("--frame-bytes")
        .arg(frame_bytes.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut sender = cmd.spawn().context("cannot start the raw TCP sender")?;
    let limit = Duration::from_secs(60 + n / 10_000);
    let result = tokio::time::timeout(limit, receiver.run())
        .await
        .map_err(|_| anyhow::anyhow!("the raw TCP baseline did not finish within {limit:?}"))??;
    let status = tokio::time::timeout(Duration::from_secs(30), sender.wait())
        .await
        .context("the raw TCP sender did not exit")??;
    if !status.success() {
        bail!("the raw TCP sender failed: {status}");
    }
    Ok(result.events_per_s)
}

/// The latency phase: returns ((p50 ms, p99 ms, events measured), events sent, cores kept busy
/// by other processes meanwhile).
async fn latency_run(
    s: &Setup,
    transport: Transport,
    cloud: &Cloud,
    agent: &mut AgentProc,
    size: u32,
    first_index: u64,
) -> anyhow::Result<((f64, f64, usize), u64, f64)> {
    let mut sub = cloud.log.subscribe(cloud.log.head(), None);
    let (target_tx, mut target_rx) = watch::channel(u64::MAX);
    let collector = tokio::spawn(async move {
        let mut got: Vec<(u64, u64)> = Vec::new();
        loop {
            let target = *target_rx.borrow_and_update();
            if got.len() as u64 >= target {
                return Ok::<_, anyhow::Error>(got);
            }
            tokio::select! {
                b = sub.next_batch(8192) => {
                    let b = b?;
                    let now = now_nanos();
                    for e in &b.events {
                        if e.origin_node != NODE {
                            continue;
                        }
                        let t = stamp_of(&e.detail).context("a latency event without a time stamp")?;
                        got.push((t, now.saturating_sub(t)));
                    }
                }
                r = target_rx.changed() => r?,
            }
        }
    });

    let mut cmd = agent::command(&s.prefix, &s.self_bin);
    cmd.arg("produce")
        .arg("--agent")
        .arg(format!("http://{}", agent.grpc))
        .arg("--rate")
        .arg(s.args.rate.to_string())
        .arg("--secs")
        .arg(s.latency_secs.to_string())
        .arg("--size")
        .arg(size.to_string())
        .arg("--first-index")
        .arg(first_index.to_string())
        .arg("--streams")
        .arg("4")
        .arg("--stream-prefix")
        .arg("lat")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut producer = cmd.spawn().context("cannot start the producer")?;
    let pids: Vec<u32> = agent.pid().into_iter().chain(producer.id()).collect();
    let before = cpu::Sample::take(&pids);
    let mut after = None;
    let mut out = String::new();
    let mut stdout = producer.stdout.take().context("producer stdout")?;
    let limit = Duration::from_secs(s.latency_secs + 60);
    let status = tokio::time::timeout(limit, async {
        stdout.read_to_string(&mut out).await?;
        // Stdout closes as the producer exits: sample while it still exists.
        after = Some(cpu::Sample::take(&pids));
        producer.wait().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("the producer did not finish within {limit:?}"))??;
    if !status.success() {
        agent.check_alive()?;
        bail!("the producer failed: {status}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("producer output {out:?}"))?;
    let sent = summary["appended"]
        .as_u64()
        .context("producer output: appended")?;
    target_tx.send_replace(sent);
    let got = tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .map_err(|_| {
            anyhow::anyhow!("the cloud did not receive every latency event within 60 s")
        })???;
    let t0 = got.iter().map(|g| g.0).min().unwrap_or(0);
    if let Some(dir) = &s.args.latency_dump {
        use std::fmt::Write as _;
        let mut text = String::new();
        for (t, lat) in &got {
            let _ = writeln!(text, "{t} {:.3}", *lat as f64 / 1e6);
        }
        let path = dir.join(format!("latency-{}-{size}.txt", transport.name()));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let warm = u64::try_from(LATENCY_WARMUP.as_nanos())?;
    let mut ms: Vec<f64> = got
        .iter()
        .filter(|g| g.0 >= t0 + warm)
        .map(|g| g.1 as f64 / 1e6)
        .collect();
    ms.sort_by(f64::total_cmp);
    let others = after.map_or(0.0, |a| before.usage_since(&a).others);
    Ok((
        (
            report::quantile(&ms, 0.5),
            report::quantile(&ms, 0.99),
            ms.len(),
        ),
        sent,
        others,
    ))
}
