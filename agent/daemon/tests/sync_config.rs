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
            transport: SyncTransport::Grpc,
            insecure: false,
            tls: Some(SyncTlsSection {
                ca: PathBuf::from("/etc/outrider/ca.pem"),
                cert: PathBuf::from("/etc/outrider/node.pem"),
                key: PathBuf::from("/etc/outrider/node-key.pem"),
            }),
            connect_timeout_ms: 10_000,
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
        ]),
    )
    .unwrap();
    let sync = cfg.sync.unwrap();
    assert!(sync.insecure);
    assert_eq!(sync.cloud_url, "http://127.0.0.1:7443");
    assert_eq!(sync.destination, "hq");
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
    let e = err("[sync]\ncloud_url = \"http://c:1\"\ninsecure = true\ntransport = \"quic\"\n");
    assert!(e.contains("sync.transport") && e.contains("quic"), "{e}");
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
