//! `[[links]]`, `[failover]` and `[host]`: the documented example, keyed errors, and a running
//! agent that probes a link, appends its events, runs the hook and serves the figures.

use std::io::{Read, Write};
use std::time::Duration;

use outrider_agent::config::{ProbeKindName, SyncSection};
use outrider_agent::AgentConfig;
use tokio::time::Instant;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn err(text: &str) -> String {
    match AgentConfig::parse(text, env(&[])) {
        Ok(cfg) => panic!("expected an error for {text:?}, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

const SYNC: &str = "[sync]\ncloud_url = \"http://127.0.0.1:7443\"\ninsecure = true\n";

fn one_link(extra: &str) -> String {
    format!("[[links]]\nname = \"dx\"\nprobe = \"udp_echo\"\ntarget = \"10.0.0.1:7444\"\n{extra}")
}

/// The commented examples from `# [[links]]` on, uncommented (with a [sync] to refer to).
#[test]
fn the_documented_links_failover_and_host_sections_parse() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/agent.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("# [[links]]\n").expect("a [[links]] example");
    let mut section = String::from(
        "[sync]\ncloud_url = \"https://cloud.example.net:7443\"\n[sync.tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
    );
    for line in text[start..].lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let is_key = rest
            .split_once(" = ")
            .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        if rest.starts_with('[') || is_key {
            section.push_str(rest);
            section.push('\n');
        }
    }
    let cfg = AgentConfig::parse(&section, env(&[])).unwrap_or_else(|e| panic!("{e}\n{section}"));
    assert_eq!(cfg.links.len(), 2, "{section}");
    let dx = &cfg.links[0];
    assert_eq!(
        (dx.name.as_str(), dx.priority, dx.probe),
        ("dx", 10, ProbeKindName::UdpEcho)
    );
    assert_eq!(dx.interval_ms, 300);
    assert_eq!(dx.sync_local_addr, Some("10.20.0.2".parse().unwrap()));
    let h = dx.health();
    assert_eq!((h.down_failures, h.down_of, h.up_successes), (3, 3, 3));
    assert_eq!(cfg.links[1].probe, ProbeKindName::Tcp);
    assert_eq!(cfg.failover.hold_down_ms, 30_000);
    assert_eq!(cfg.failover.hook.len(), 2);
    let host = cfg.host.unwrap();
    assert_eq!(host.interval_ms, 10_000);
    assert!(!host.sample_events);
}

#[test]
fn defaults_and_overrides() {
    let cfg = AgentConfig::parse(&one_link(""), env(&[])).unwrap();
    let l = &cfg.links[0];
    assert_eq!((l.priority, l.interval_ms), (100, 300));
    assert_eq!(l.timeout(), Duration::from_millis(300));
    assert_eq!(cfg.failover.hold_down_ms, 30_000);
    assert!(cfg.host.is_none());
    let cfg = AgentConfig::parse(
        &one_link(""),
        env(&[
            ("OUTRIDER_FAILOVER__HOLD_DOWN_MS", "500"),
            ("OUTRIDER_HOST__INTERVAL_MS", "1000"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.failover.hold_down_ms, 500);
    assert_eq!(cfg.host.unwrap().interval_ms, 1000);
    // The configuration round-trips through --print-config.
    let cfg = AgentConfig::parse(
        &format!("{SYNC}{}", one_link("sync_local_addr = \"10.0.0.2\"\n")),
        env(&[]),
    )
    .unwrap();
    let again = AgentConfig::parse(&cfg.to_toml().unwrap(), env(&[])).unwrap();
    assert_eq!(again.links, cfg.links);
}

#[test]
fn errors_name_the_key() {
    let cases: &[(String, &str)] = &[
        (one_link("bogus = 1\n"), "links[0].bogus: unknown key"),
        (
            format!(
                "{}[[links]]\nname = \"vpn\"\nprobe = \"tcp\"\n",
                one_link("")
            ),
            "links[1].target: missing",
        ),
        (
            "[[links]]\nname = \"dx\"\nprobe = \"carrier_pigeon\"\ntarget = \"x\"\n".into(),
            "links[0].probe: unknown variant",
        ),
        (
            "[[links]]\nname = \"dx\"\nprobe = \"tcp\"\ntarget = \"10.0.0.1\"\n".into(),
            "links[0].target: \"10.0.0.1\" is not host:port",
        ),
        (
            one_link("timeout_ms = 500\n"),
            "links[0].timeout_ms: 500 is out of range",
        ),
        (one_link("interval_ms = 5\n"), "links[0].interval_ms"),
        (
            one_link("down_failures = 4\n"),
            "links[0].down_failures: 4 must not exceed down_of (3)",
        ),
        (
            one_link("up_successes = 0\n"),
            "links[0].up_successes: must be at least 1",
        ),
        (
            one_link("degraded_loss_percent = 0\n"),
            "links[0].degraded_loss_percent: 0 is out of range",
        ),
        (
            one_link("degraded_loss_percent = 2\ndegraded_loss_clear_percent = 3\n"),
            "links[0].degraded_loss_clear_percent",
        ),
        (
            one_link("degraded_rtt_p99_clear_ms = 3\n"),
            "links[0].degraded_rtt_p99_clear_ms: needs degraded_rtt_p99_ms",
        ),
        (
            format!("{}{}", one_link(""), one_link("")),
            "links[1].name: \"dx\" is used by another link",
        ),
        (
            one_link("name = \"a b\"\n").replacen("name = \"dx\"\n", "", 1),
            "links[0].name",
        ),
        (
            one_link("expect_status = 200\n"),
            "links[0].expect_status: only applies to probe = \"http\"",
        ),
        (
            "[[links]]\nname = \"w\"\nprobe = \"http\"\ntarget = \"https://10.0.0.1/healthz\"\n"
                .into(),
            "links[0].tls_ca: required for an https:// target",
        ),
        (
            "[[links]]\nname = \"w\"\nprobe = \"http\"\ntarget = \"ftp://10.0.0.1/\"\n".into(),
            "links[0].target",
        ),
        (
            "[[links]]\nname = \"d\"\nprobe = \"dns\"\ntarget = \"10.0.0.53\"\n".into(),
            "links[0].query_name: required",
        ),
        (
            "[[links]]\nname = \"i\"\nprobe = \"icmp\"\ntarget = \"10.0.0.1:80\"\n".into(),
            "links[0].target",
        ),
        (
            one_link("sync_local_addr = \"10.0.0.2\"\n"),
            "links[0].sync_local_addr: only applies with a [sync] section",
        ),
        (
            one_link("sync_local_addr = \"nope\"\n"),
            "links[0].sync_local_addr",
        ),
        (
            format!("{SYNC}{}", one_link("cloud_url = \"https://x:1\"\n")),
            "links[0].cloud_url: sync.insecure = true does not authenticate",
        ),
        (
            "[failover]\nhook_timeout_ms = 0\n".into(),
            "failover.hook_timeout_ms",
        ),
        ("[failover]\nhook = [\"\"]\n".into(), "failover.hook"),
        (
            "[failover]\nbogus = 1\n".into(),
            "failover.bogus: unknown key",
        ),
        (
            "[host]\ninterval_ms = 10\n".into(),
            "host.interval_ms: 10 is too short",
        ),
        (
            "[host]\ndisk_alert_percent = 80\ndisk_clear_percent = 85\n".into(),
            "host.disk_clear_percent: 85 must not exceed host.disk_alert_percent (80)",
        ),
        (
            "[host]\nmemory_alert_percent = 101\n".into(),
            "host.memory_alert_percent",
        ),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
    }
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A TCP link to a listener the test holds: the link comes up, its events land in the log, the
/// hook runs with its environment, and `/metrics` shows the link's and the host's figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probed_link_and_the_host_show_up_in_events_hook_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    // Accept (and drop) connections so connects complete.
    tokio::spawn(async move { while target.accept().await.is_ok() {} });
    let hook_out = dir.path().join("hook");
    // A destination nobody acknowledges keeps every event readable (no reclaim).
    let text = format!(
        "node_id = \"n1\"\ndata_dir = {data:?}\n[api]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [outbox]\ndestinations = [\"keep\"]\n\
         [[links]]\nname = \"lo\"\nprobe = \"tcp\"\ntarget = \"{target_addr}\"\ninterval_ms = 50\n\
         [failover]\nhook = [\"/bin/sh\", \"-c\", \"echo \\\"$EVENT $LINK $FROM $TO\\\" >> \\\"$0\\\"\", {hook:?}]\n\
         [host]\ninterval_ms = 100\nsample_events = true\n",
        data = dir.path().join("agent").display().to_string(),
        hook = hook_out.display().to_string(),
    );
    let cfg = AgentConfig::parse(&text, env(&[])).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let agent = outrider_agent::start(cfg).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = agent.log().read_all(0, 100_000).unwrap();
        let up = events.iter().any(|e| {
            e.stream == "outrider.links"
                && e.source == "outrider.probe"
                && e.detail_type == "LinkStateChanged"
                && e.detail
                    .contains("\"link\":\"lo\",\"from\":\"unknown\",\"to\":\"up\"")
        });
        let switched = events.iter().any(|e| {
            e.detail_type == "LinkFailover" && e.detail.contains("\"from\":null,\"to\":\"lo\"")
        });
        let sampled = events
            .iter()
            .any(|e| e.stream == "outrider.host" && e.detail_type == "HostSample");
        let hooked = std::fs::read_to_string(&hook_out).is_ok_and(|h| {
            h.contains("LinkStateChanged lo unknown up") && h.contains("LinkFailover lo  lo")
        });
        if up && switched && sampled && hooked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "up {up}, switched {switched}, sampled {sampled}, hook {:?}",
            std::fs::read_to_string(&hook_out)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent.links().unwrap().active.as_deref(), Some("lo"));
    let addr = agent.metrics_addr();
    let text = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    for want in [
        "\nprobe_success{link=\"lo\",probe=\"tcp\"} 1\n",
        "\noutrider_link_state{link=\"lo\",state=\"up\"} 1\n",
        "\noutrider_link_active{link=\"lo\"} 1\n",
        "\noutrider_host_memory_total_bytes ",
        "\noutrider_host_alerts_active ",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    agent.shutdown().await.unwrap();
}

/// Without links, sync keeps its plain route and nothing is probed.
#[tokio::test]
async fn no_links_no_probes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AgentConfig {
        data_dir: dir.path().join("a"),
        ..AgentConfig::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.metrics_listen = "127.0.0.1:0".parse().unwrap();
    cfg.sync = Some(SyncSection {
        cloud_url: "http://127.0.0.1:9".into(),
        insecure: true,
        ..SyncSection::default()
    });
    let agent = outrider_agent::start(cfg).await.unwrap();
    assert!(agent.links().is_none());
    assert!(agent.sync_route().borrow().is_none());
    agent.shutdown().await.unwrap();
}
