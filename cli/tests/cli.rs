//! The real `outrider` binary against an agent started in-process on loopback ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use outrider_agent::config::ApiSection;
use outrider_agent::{AgentConfig, Running};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_outrider");
const PATIENCE: Duration = Duration::from_secs(30);

fn config(dir: &Path) -> AgentConfig {
    AgentConfig {
        node_id: "cli-test".into(),
        data_dir: dir.to_path_buf(),
        api: ApiSection {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
        },
        ..AgentConfig::default()
    }
}

async fn start(dir: &Path) -> Running {
    outrider_agent::start(config(dir)).await.unwrap()
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }
}

/// Runs `outrider --agent <addr> <args>` off the async workers.
async fn outrider(agent: Option<SocketAddr>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OUTRIDER_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    if let Some(addr) = agent {
        cmd.arg("--agent").arg(format!("http://{addr}"));
    }
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ok(out: &Output) {
    assert_eq!(
        out.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&dir.path().join("data")).await;
    let a = Some(agent.grpc_addr());

    let out = outrider(
        a,
        &[
            "events",
            "put",
            "--stream",
            "orders",
            "--expected",
            "no-stream",
            "--source",
            "shop",
            "--detail-type",
            "OrderPlaced",
            "--detail",
            r#"{"order":1}"#,
            "--id",
            "order-1",
        ],
    )
    .await;
    ok(&out);
    let put: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(put["positions"], serde_json::json!([0]));
    assert_eq!(put["versions"], serde_json::json!([0]));
    assert_eq!(put["next_expected_version"], 0);
    assert_eq!(put["duplicate"], false);

    // The same id again is an idempotent retry.
    let out = outrider(
        a,
        &[
            "events",
            "put",
            "--stream",
            "orders",
            "--source",
            "shop",
            "--detail-type",
            "OrderPlaced",
            "--detail",
            r#"{"order":1}"#,
            "--id",
            "order-1",
        ],
    )
    .await;
    ok(&out);
    let put: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(put["duplicate"], true);
    assert_eq!(put["positions"], serde_json::json!([0]));

    // A JSON-lines file in all three shapes, plus a detail read from a file.
    let file = dir.path().join("events.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"Source":"shop","DetailType":"OrderPaid","Detail":"{\"order\":1,\"eur\":5}"}"#,
            "\n\n",
            r#"{"version":"0","id":"ship-1","source":"warehouse","detail-type":"OrderShipped","account":"","time":"2024-05-06T07:08:09Z","region":"","resources":["arn:x"],"detail":{"order":1}}"#,
            "\n",
            r#"{"source":"shop","detail-type":"OrderClosed","detail":{"order":1}}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = outrider(
        a,
        &[
            "events",
            "put",
            "--stream",
            "orders",
            "--expected",
            "0",
            "--file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    ok(&out);
    let put: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(put["positions"], serde_json::json!([1, 2, 3]));
    assert_eq!(put["next_expected_version"], 3);

    let detail = dir.path().join("detail.json");
    std::fs::write(&detail, r#"{"note": "from a file"}"#).unwrap();
    let at = format!("@{}", detail.display());
    let out = outrider(
        a,
        &[
            "events",
            "put",
            "--stream",
            "notes",
            "--source",
            "ops",
            "--detail-type",
            "Note",
            "--detail",
            &at,
        ],
    )
    .await;
    ok(&out);

    let out = outrider(a, &["events", "read", "--stream", "orders"]).await;
    ok(&out);
    let events = out.json_lines();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| e["detail-type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["OrderPlaced", "OrderPaid", "OrderShipped", "OrderClosed"]
    );
    assert_eq!(events[0]["id"], "order-1");
    assert_eq!(events[0]["detail"]["order"], 1);
    assert_eq!(events[1]["detail"]["eur"], 5);
    assert_eq!(events[2]["id"], "ship-1");
    assert_eq!(events[2]["time"], "2024-05-06T07:08:09Z");
    assert_eq!(events[2]["resources"], serde_json::json!(["arn:x"]));
    assert_eq!(events[3]["outrider"]["stream"], "orders");
    assert_eq!(events[3]["outrider"]["version"], 3);
    assert_eq!(events[3]["outrider"]["node"], "cli-test");

    let out = outrider(
        a,
        &[
            "events",
            "read",
            "--stream",
            "orders",
            "--backwards",
            "--max",
            "2",
        ],
    )
    .await;
    ok(&out);
    let versions: Vec<_> = out
        .json_lines()
        .iter()
        .map(|e| e["outrider"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2]);

    let out = outrider(
        a,
        &[
            "events", "read", "--stream", "orders", "--from", "2", "--max", "1",
        ],
    )
    .await;
    ok(&out);
    let lines = out.json_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["detail-type"], "OrderShipped");

    let out = outrider(a, &["events", "read", "--all", "--from", "3"]).await;
    ok(&out);
    let lines = out.json_lines();
    let kinds: Vec<_> = lines
        .iter()
        .map(|e| e["detail-type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["OrderClosed", "Note"]);
    assert_eq!(lines[1]["detail"]["note"], "from a file");

    let out = outrider(a, &["status"]).await;
    ok(&out);
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(status["node_id"], "cli-test");
    assert_eq!(status["head_position"], 5);
    assert_eq!(status["classes"][0]["name"], "normal");

    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_pages_through_long_streams() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let events = (0..2500)
        .map(|i| outrider_proto::Event {
            source: "t".into(),
            detail_type: "Tick".into(),
            detail: format!(r#"{{"i":{i}}}"#),
            ..Default::default()
        })
        .collect();
    agent
        .log()
        .append_async(
            "ticks",
            outrider_runtime::ExpectedVersion::Any,
            events,
            None,
        )
        .await
        .unwrap();
    let a = Some(agent.grpc_addr());

    let out = outrider(a, &["events", "read", "--stream", "ticks"]).await;
    ok(&out);
    let lines = out.json_lines();
    assert_eq!(lines.len(), 2500);
    assert_eq!(lines[2499]["detail"]["i"], 2499);

    let out = outrider(a, &["events", "read", "--stream", "ticks", "--backwards"]).await;
    ok(&out);
    let lines = out.json_lines();
    assert_eq!(lines.len(), 2500);
    assert_eq!(lines[0]["detail"]["i"], 2499);
    assert_eq!(lines[2499]["detail"]["i"], 0);

    let out = outrider(a, &["events", "read", "--all", "--max", "1200"]).await;
    ok(&out);
    assert_eq!(out.json_lines().len(), 1200);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_exit_non_zero_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let a = Some(agent.grpc_addr());
    let put = |expected: &'static str| {
        [
            "events",
            "put",
            "--stream",
            "s",
            "--expected",
            expected,
            "--source",
            "x",
            "--detail-type",
            "T",
            "--detail",
            "{}",
        ]
    };
    ok(&outrider(a, &put("any")).await);

    let out = outrider(a, &put("7")).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains(r#"error: FAILED_PRECONDITION: wrong expected version on stream "s": expected 7, actual 0"#),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());

    let out = outrider(a, &put("no-stream")).await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("FAILED_PRECONDITION"), "{}", out.stderr);

    let out = outrider(a, &put("sometimes")).await;
    assert_eq!(out.code, Some(2), "usage errors are clap's exit 2");
    assert!(
        out.stderr
            .contains("not any, no-stream, exists or a version number"),
        "{}",
        out.stderr
    );

    let out = outrider(
        a,
        &[
            "events",
            "put",
            "--stream",
            "s",
            "--source",
            "x",
            "--detail-type",
            "T",
            "--detail",
            "{oops",
        ],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("--detail is not valid JSON"),
        "{}",
        out.stderr
    );

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"source\":\"a\",\"detail-type\":\"T\"}\n{\"source\":\"a\"}\n",
    )
    .unwrap();
    let out = outrider(
        a,
        &[
            "events",
            "put",
            "--stream",
            "s",
            "--file",
            bad.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("bad.jsonl:2"), "{}", out.stderr);
    assert!(out.stderr.contains("detail-type"), "{}", out.stderr);

    let out = outrider(
        a,
        &[
            "events",
            "put",
            "--stream",
            "s",
            "--priority",
            "urgent",
            "--source",
            "x",
            "--detail-type",
            "T",
            "--detail",
            "{}",
        ],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("error: INVALID_ARGUMENT: unknown priority class \"urgent\""),
        "{}",
        out.stderr
    );

    agent.shutdown().await.unwrap();

    // Nobody listening: port 1 on loopback (a port freed by the shutdown above could be taken
    // by another test's agent meanwhile).
    let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let out = outrider(Some(closed), &["status"]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("cannot connect to the agent at http://"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_history_then_live_events_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let a = agent.grpc_addr();
    let put = |stream: &str, t: &str| {
        let log = agent.log().clone();
        let (stream, t) = (stream.to_string(), t.to_string());
        async move {
            let e = outrider_proto::Event {
                source: "t".into(),
                detail_type: t,
                detail: "{}".into(),
                ..Default::default()
            };
            log.append_async(
                &stream,
                outrider_runtime::ExpectedVersion::Any,
                vec![e],
                None,
            )
            .await
            .unwrap();
        }
    };
    put("a", "Old").await;
    put("b", "OtherStream").await;

    let mut child = Command::new(BIN)
        .args([
            "--agent",
            &format!("http://{a}"),
            "events",
            "tail",
            "--stream",
            "a",
            "--from",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |lines: &mpsc::Receiver<String>| -> Value {
        let line = lines.recv_timeout(PATIENCE).expect("no line from tail");
        serde_json::from_str(&line).unwrap()
    };
    let first = tokio::task::block_in_place(|| next(&lines));
    assert_eq!(first["detail-type"], "Old");

    put("b", "Skipped").await;
    put("a", "New").await;
    let second = tokio::task::block_in_place(|| next(&lines));
    assert_eq!(second["detail-type"], "New");
    assert_eq!(second["outrider"]["stream"], "a");

    // SIGINT (Ctrl-C) ends it cleanly.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: plain syscall on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tail did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_inspect_summarises_a_closed_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let agent = start(&data).await;
    let a = Some(agent.grpc_addr());
    for i in 0..3 {
        let detail = format!(r#"{{"n":{i}}}"#);
        ok(&outrider(
            a,
            &[
                "events",
                "put",
                "--stream",
                "sensor-7",
                "--source",
                "s",
                "--detail-type",
                "Reading",
                "--detail",
                &detail,
            ],
        )
        .await);
    }
    ok(&outrider(
        a,
        &[
            "events",
            "put",
            "--stream",
            "door",
            "--source",
            "s",
            "--detail-type",
            "Opened",
            "--detail",
            "{}",
        ],
    )
    .await);
    agent.shutdown().await.unwrap();

    let data_arg = data.to_str().unwrap();
    let out = outrider(None, &["log", "inspect", data_arg]).await;
    ok(&out);
    assert!(out.stdout.contains("checksums      OK"), "{}", out.stdout);
    assert!(out.stdout.contains("4 events"), "{}", out.stdout);
    let row = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("sensor-7"))
        .unwrap_or_else(|| panic!("no sensor-7 row in\n{}", out.stdout));
    let cols: Vec<_> = row.split_whitespace().collect();
    assert_eq!(cols, ["sensor-7", "3", "2"], "stream, events, last version");

    // With the agent's configuration: classes and destination cursors by name.
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[outbox]\ndestinations = [\"cloud\"]\n[[outbox.classes]]\nname = \"normal\"\n",
    )
    .unwrap();
    let out = outrider(
        None,
        &[
            "log",
            "inspect",
            data_arg,
            "--config",
            cfg.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    ok(&out);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["events"], 4);
    assert_eq!(report["head"], 4);
    assert_eq!(report["streams"]["sensor-7"]["events"], 3);
    assert_eq!(report["streams"]["door"]["last_version"], 0);
    assert_eq!(report["classes"][0]["name"], "normal");
    assert_eq!(report["classes"][0]["cursors"]["cloud"], 0);
    assert_eq!(report["corrupt"], serde_json::json!([]));

    let bad_cfg = dir.path().join("bad.toml");
    std::fs::write(&bad_cfg, "[log]\ndurability = \"fast\"\n").unwrap();
    let out = outrider(
        None,
        &[
            "log",
            "inspect",
            data_arg,
            "--config",
            bad_cfg.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("log.durability"), "{}", out.stderr);

    let missing = dir.path().join("missing");
    let out = outrider(None, &["log", "inspect", missing.to_str().unwrap()]).await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no such directory"), "{}", out.stderr);
    assert!(!missing.exists(), "inspect must not create a log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_help() {
    let cases: [(&[&str], &str); 8] = [
        (&["--help"], "Operate an Outrider edge agent"),
        (
            &["events", "--help"],
            "Append, read and follow events through the agent",
        ),
        (
            &["events", "put", "--help"],
            "Append events to a stream, atomically",
        ),
        (
            &["events", "read", "--help"],
            "Read events of one stream or of the whole log",
        ),
        (
            &["events", "tail", "--help"],
            "Follow the log or one stream",
        ),
        (
            &["status", "--help"],
            "Show the agent's log positions and outbox figures",
        ),
        (&["log", "--help"], "Work on a log data directory offline"),
        (&["log", "inspect", "--help"], "Summarise a log directory"),
    ];
    for (args, about) in cases {
        let out = outrider(None, args).await;
        ok(&out);
        assert!(out.stdout.contains(about), "{args:?}: {}", out.stdout);
        assert!(
            out.stdout.contains("Usage: outrider"),
            "{args:?}: {}",
            out.stdout
        );
    }
    // Subcommand listings name their children.
    let out = outrider(None, &["events", "--help"]).await;
    for sub in ["put", "read", "tail"] {
        assert!(out.stdout.contains(sub), "{}", out.stdout);
    }
}
