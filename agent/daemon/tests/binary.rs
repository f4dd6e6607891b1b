//! The real `outrider-agent` binary: exit codes, signals, restart.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use outrider_proto::v1::{Direction, ReadStreamRequest, SubscribeRequest};

const BIN: &str = env!("CARGO_BIN_EXE_outrider-agent");
const PATIENCE: Duration = Duration::from_secs(30);

/// The binary, without any `OUTRIDER_*` variables of the test's own environment.
fn agent_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OUTRIDER_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs the binary to completion with `args` and extra environment variables.
fn run(args: &[&str], vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = agent_command()
        .args(args)
        .envs(vars.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[log]\ndurability = \"fast\"\n").unwrap();
    let (code, stderr) = run(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"log.durability: unknown variant "fast", expected "sync" or "periodic""#),
        "{stderr}"
    );

    std::fs::write(
        &cfg,
        "[[outbox.classes]]\nname = \"normal\"\n[[outbox.classes]]\nname = \"x\"\nmax_bytes = \"12XB\"\n",
    )
    .unwrap();
    let (code, stderr) = run(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("outbox.classes[1].max_bytes"), "{stderr}");
    assert!(stderr.contains("12XB"), "{stderr}");

    // From the environment, with no file at all.
    let (code, stderr) = run(&[], &[("OUTRIDER_LOG__VERIFY_ON_OPEN", "sometimes")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("log.verify_on_open"), "{stderr}");
    assert!(stderr.contains("OUTRIDER_LOG__VERIFY_ON_OPEN"), "{stderr}");

    let missing = dir.path().join("missing.toml");
    let (code, stderr) = run(&["--config", missing.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}

#[test]
fn print_config_shows_the_effective_configuration() {
    let out = agent_command()
        .arg("--print-config")
        .env("OUTRIDER_NODE_ID", "printed-node")
        .env("OUTRIDER_OUTBOX__DESTINATIONS", "cloud,backup")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let cfg = outrider_agent::AgentConfig::parse(&text, Vec::new()).unwrap();
    assert_eq!(cfg.node_id, "printed-node");
    assert_eq!(cfg.outbox.destinations, ["cloud", "backup"]);
}

/// A running agent process, killed if the test ends early.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines read so far.
    seen: Vec<String>,
    grpc: SocketAddr,
    metrics: SocketAddr,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Starts the binary with a config in `dir` (ports 0, JSON logs) and reads the bound
    /// addresses from its "agent listening" log line.
    fn start(dir: &Path) -> Agent {
        let cfg = dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "node_id = \"bin-test\"\ndata_dir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\n\
                 metrics_listen = \"127.0.0.1:0\"\n[logging]\nformat = \"json\"\nlevel = \"info\"\n",
                dir.join("data").to_str().unwrap()
            ),
        )
        .unwrap();
        let mut child = agent_command()
            .arg("--config")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut agent = Agent {
            child,
            lines,
            seen: Vec::new(),
            grpc: "0.0.0.0:0".parse().unwrap(),
            metrics: "0.0.0.0:0".parse().unwrap(),
        };
        let listening = agent.wait_for_line("agent listening");
        let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
        agent.grpc = v["fields"]["grpc_addr"].as_str().unwrap().parse().unwrap();
        agent.metrics = v["fields"]["metrics_addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        agent
    }

    /// The first log line containing `needle` (waiting up to [`PATIENCE`]).
    fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no log line with {needle:?} in {:#?}: {e}", self.seen),
            }
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: plain syscall on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls `/healthz` until it answers, with a deadline.
async fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok((200, body)) = http_get(addr, "/healthz").await {
            assert_eq!(body, "ok");
            return;
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path());
    wait_healthy(agent.metrics).await;

    let mut c = client(agent.grpc).await;
    let r = c
        .append(append_req(
            "durable",
            any(),
            vec![event("A", r#"{"i":1}"#), event("B", r#"{"i":2}"#)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.positions, [0, 1]);
    // An open subscription must not hold up the shutdown.
    let mut sub = c
        .subscribe(SubscribeRequest {
            from_position: 0,
            stream: String::new(),
            event_pattern: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = sub.message().await.unwrap().unwrap();
    assert_eq!(first.events.len(), 2);

    let status = tokio::task::block_in_place(|| agent.terminate());
    assert_eq!(status.code(), Some(0), "{status:?}");
    agent.wait_for_line("flushed and closed");

    // Same data dir, new process: the events are there.
    let mut agent = Agent::start(dir.path());
    wait_healthy(agent.metrics).await;
    let mut c = client(agent.grpc).await;
    let page = c
        .read_stream(ReadStreamRequest {
            stream: "durable".into(),
            from_version: None,
            direction: Direction::Forwards as i32,
            max_count: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = page
        .events
        .iter()
        .map(|e| {
            (
                e.detail_type.as_str(),
                e.detail.as_str(),
                e.origin_node.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("A", r#"{"i":1}"#, "bin-test"),
            ("B", r#"{"i":2}"#, "bin-test")
        ]
    );
    let opened = agent.wait_for_line("log opened");
    let v: serde_json::Value = serde_json::from_str(&opened).unwrap();
    assert_eq!(v["fields"]["head"], 2);
}
