//! The `[sync]` section: parsing, environment overrides, keyed errors, and the destination it
//! adds to the outbox. (The sync itself is tested end to end in cloud/ingest/tests, so that the
//! agent never depends on a cloud crate.)

use std::path::PathBuf;

use outrider_agent::config::{SyncSection, SyncTlsSection, SyncTransport};
use outrider_agent::AgentConfig;

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

const MTLS: &str = r#"
[sync]
cloud_url = "https://cloud.example.com:7443"
[sync.tls]
ca = "/etc/outrider/ca.pem"
cert = "/etc/outrider/node.pem"
key = "/etc/outrider/node-key.pem"
"#;

#[test]
fn no_sync_by_default() {
    assert_eq!(AgentConfig::default().sync, None);
    assert_eq!(AgentConfig::parse("", env(&[])).unwrap().sync, None);
}

#[test]
fn mtls_section_parses_with_defaults_and_adds_its_destination() {
    let cfg = AgentConfig::parse(MTLS, env(&[])).unwrap();
    let sync = cfg.sync.clone().unwrap();
    assert_eq!(
        sync,
        SyncSection {
            cloud_url: "https://cloud.example.com:7443".into(),
            destination: "cloud".into(),
            transport: SyncTransport::Auto,
            insecure: false,
            tls: Some(SyncTlsSection {
                ca: PathBuf::from("/etc/outrider/ca.pem"),
                cert: PathBuf::from("/etc/outrider/node.pem"),
                key: PathBuf::from("/etc/outrider/node-key.pem"),
            }),
            connect_timeout_ms: 10_000,
            quic_retry_ms: 300_000,
            quic_idle_timeout_ms: 15_000,
        }
    );
    assert_eq!(cfg.log_config().unwrap().destinations, vec!["cloud"]);
    // Printed and parsed again, it is the same.
    let again = AgentConfig::parse(&cfg.to_toml().unwrap(), env(&[])).unwrap();
    assert_eq!(again, cfg);
    // A destination already listed is not added twice.
    let text = format!("[outbox]\ndestinations = [\"cloud\", \"backup\"]\n{MTLS}");
    let cfg = AgentConfig::parse(&text, env(&[])).unwrap();
    assert_eq!(
        cfg.log_config().unwrap().destinations,
        vec!["cloud", "backup"]
    );
}

#[test]
fn environment_sets_sync_keys() {
    let cfg = AgentConfig::parse(
        "",
        env(&[
            ("OUTRIDER_SYNC__CLOUD_URL", "http://127.0.0.1:7443"),
            ("OUTRIDER_SYNC__INSECURE", "true"),
            ("OUTRIDER_SYNC__DESTINATION", "hq"),
            ("OUTRIDER_SYNC__TRANSPORT", "quic"),
            ("OUTRIDER_SYNC__QUIC_RETRY_MS", "60000"),
            ("OUTRIDER_SYNC__QUIC_IDLE_TIMEOUT_MS", "5000"),
        ]),
    )
    .unwrap();
    let sync = cfg.sync.unwrap();
    assert!(sync.insecure);
    assert_eq!(sync.cloud_url, "http://127.0.0.1:7443");
    assert_eq!(sync.destination, "hq");
    assert_eq!(sync.transport, SyncTransport::Quic);
    assert_eq!(sync.quic_retry_ms, 60_000);
    assert_eq!(sync.quic_idle_timeout_ms, 5_000);
}

#[test]
fn every_transport_parses() {
    for (text, want) in [
        ("grpc", SyncTransport::Grpc),
        ("quic", SyncTransport::Quic),
        ("auto", SyncTransport::Auto),
    ] {
        let cfg = AgentConfig::parse(
            &format!(
                "[sync]\ncloud_url = \"http://c:1\"\ninsecure = true\ntransport = \"{text}\"\n"
            ),
            env(&[]),
        )
        .unwrap();
        assert_eq!(cfg.sync.unwrap().transport, want);
    }
}

#[test]
fn errors_name_the_key() {
    let e = err("[sync]\ncloud_url = \"https://c:1\"\n");
    assert!(e.starts_with("sync.tls: required"), "{e}");
    let e = err(
        "[sync]\ncloud_url = \"http://c:1\"\n[sync.tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
    );
    assert!(
        e.starts_with("sync.cloud_url: http:// is plain text"),
        "{e}"
    );
    let e = err("[sync]\ncloud_url = \"https://c:1\"\ninsecure = true\n");
    assert!(e.starts_with("sync.cloud_url:"), "{e}");
    let e = err("[sync]\ncloud_url = \"http://c:1\"\ninsecure = true\n[sync.tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n");
    assert!(e.starts_with("sync.tls: set either"), "{e}");
    let e = err("[sync]\ncloud_url = \"cloud\"\ninsecure = true\n");
    assert!(e.starts_with("sync.cloud_url:"), "{e}");
    let e = err("[sync]\ncloud_url = \"http://c:1\"\ninsecure = true\ntransport = \"udp\"\n");
    assert!(
        e.starts_with("sync.transport:") && e.contains("udp") && e.contains("auto"),
        "{e}"
    );
    let e = err("[sync]\ncloud_url = \"http://c:1\"\ninsecure = true\nquic_idle_timeout_ms = 10\n");
    assert!(
        e.starts_with("sync.quic_idle_timeout_ms: 10 is too short"),
        "{e}"
    );
    let e = err("[sync]\ncloud_url = \"http://c:1\"\ninsecure = true\nquic_retry_ms = 0\n");
    assert!(e.starts_with("sync.quic_retry_ms: 0 is too short"), "{e}");
    let e = err("[sync]\ncloud_url = \"http://c:1\"\ninsecure = true\nconnect_timeout_ms = 0\n");
    assert!(e.starts_with("sync.connect_timeout_ms:"), "{e}");
    let e = err("[sync]\ncloud_url = \"https://c:1/ingest\"\n[sync.tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n");
    assert!(
        e.starts_with("sync.cloud_url:") && e.contains("path"),
        "{e}"
    );
    let e = err("[sync]\ncloud_url = \"http://c:1\"\ninsecure = true\nbogus = 1\n");
    assert!(e.contains("sync.bogus"), "{e}");
}

#[tokio::test]
async fn unreadable_tls_files_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AgentConfig::parse(MTLS, env(&[])).unwrap();
    cfg.data_dir = dir.path().join("data");
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.metrics_listen = "127.0.0.1:0".parse().unwrap();
    let e = outrider_agent::start(cfg).await.unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("sync.tls.ca") && e.contains("/etc/outrider/ca.pem"),
        "{e}"
    );
}

/// The commented `[sync]` example of deploy/config/agent.toml, uncommented, is valid and shows
/// the defaults.
#[test]
fn the_example_sync_section_parses() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/agent.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("# [sync]\n").expect("a [sync] example");
    let mut section = String::new();
    for line in text[start..].lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let is_key = rest
            .split_once(" = ")
            .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        // insecure = true is the alternative to [sync.tls].
        if rest.starts_with('[') || (is_key && !rest.starts_with("insecure")) {
            section.push_str(rest);
            section.push('\n');
        }
    }
    let cfg = AgentConfig::parse(&section, env(&[])).unwrap_or_else(|e| panic!("{e}\n{section}"));
    let sync = cfg.sync.unwrap();
    let defaults = SyncSection::default();
    assert_eq!(sync.transport, defaults.transport);
    assert_eq!(sync.connect_timeout_ms, defaults.connect_timeout_ms);
    assert_eq!(sync.quic_retry_ms, defaults.quic_retry_ms);
    assert_eq!(sync.quic_idle_timeout_ms, defaults.quic_idle_timeout_ms);
    assert!(sync.tls.is_some());
}
