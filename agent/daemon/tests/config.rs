//! Configuration: defaults, the shipped example file, environment overrides and keyed errors.

use std::path::Path;
use std::time::Duration;

use outrider_agent::config::{
    ByteSize, ClassSection, DurabilityMode, FullPolicyMode, HumanDuration, LogFormat, VerifyMode,
};
use outrider_agent::{AgentConfig, ConfigError};
use outrider_runtime::{Durability, FullPolicy, VerifyOnOpen};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn err(text: &str, vars: &[(&str, &str)]) -> String {
    match AgentConfig::parse(text, env(vars)) {
        Ok(cfg) => panic!("expected an error for {text:?} / {vars:?}, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

fn example_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/agent.toml")
}

#[test]
fn defaults_without_a_file() {
    let cfg = AgentConfig::load_with_env(None, env(&[])).unwrap();
    assert_eq!(cfg, AgentConfig::default());
    assert_eq!(AgentConfig::parse("", env(&[])).unwrap(), cfg);

    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edge".into());
    assert_eq!(cfg.node_id, host);
    assert_eq!(cfg.data_dir, Path::new("./data/agent"));
    assert_eq!(cfg.api.listen.to_string(), "127.0.0.1:7400");
    assert_eq!(cfg.api.metrics_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(cfg.log.durability, DurabilityMode::Sync);
    assert_eq!(cfg.log.flush_interval_ms, 100);
    assert_eq!(cfg.log.cache_capacity_mb, 4);
    assert_eq!(cfg.log.max_event_bytes, 262_144);
    assert_eq!(cfg.log.dedupe_window, 65_536);
    assert_eq!(cfg.log.verify_on_open, VerifyMode::Tail);
    assert_eq!(cfg.outbox.default_class, "normal");
    assert!(cfg.outbox.destinations.is_empty());
    assert_eq!(cfg.outbox.classes, vec![ClassSection::unbounded("normal")]);
    assert_eq!(cfg.logging.format, LogFormat::Text);
    assert_eq!(cfg.logging.level, "info");

    let log = cfg.log_config().unwrap();
    assert_eq!(log.durability, Durability::Sync);
    assert_eq!(log.cache_capacity_bytes, 4 * 1024 * 1024);
    assert_eq!(log.max_event_bytes, 262_144);
    assert_eq!(log.dedupe_window, 65_536);
    assert_eq!(log.classes.len(), 1);
    assert_eq!(log.classes[0].name, "normal");
    assert_eq!(log.classes[0].max_bytes, u64::MAX);
    assert_eq!(log.classes[0].max_events, u64::MAX);
    assert_eq!(log.classes[0].ttl, None);
}

#[test]
fn the_shipped_example_parses() {
    let cfg = AgentConfig::load_with_env(Some(&example_path()), env(&[])).unwrap();
    assert_eq!(cfg.node_id, "edge-01");
    assert_eq!(cfg.data_dir, Path::new("/var/lib/outrider"));
    assert_eq!(cfg.outbox.destinations, vec!["cloud".to_string()]);
    let names: Vec<_> = cfg.outbox.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["critical", "normal", "bulk"]);
    assert_eq!(
        cfg.outbox.classes[0].max_bytes,
        Some(ByteSize(64 * 1024 * 1024))
    );
    assert_eq!(cfg.outbox.classes[0].max_events, Some(1_000_000));
    assert_eq!(
        cfg.outbox.classes[1].full_policy,
        FullPolicyMode::DropOldest
    );
    assert_eq!(
        cfg.outbox.classes[1].ttl,
        Some(HumanDuration(Duration::from_secs(7 * 86_400)))
    );

    let log = cfg.log_config().unwrap();
    assert_eq!(log.node_id, "edge-01");
    assert_eq!(log.classes[0].full_policy, FullPolicy::RejectNew);
    assert_eq!(log.classes[0].max_events, 1_000_000);
    assert_eq!(log.classes[1].max_events, u64::MAX);
    assert_eq!(log.classes[2].max_bytes, 1024 * 1024 * 1024);
    assert_eq!(log.classes[2].ttl, Some(Duration::from_secs(86_400)));
    assert_eq!(log.verify_on_open, VerifyOnOpen::Tail);

    // --print-config's output reads back as the same configuration.
    let printed = cfg.to_toml().unwrap();
    assert_eq!(AgentConfig::parse(&printed, env(&[])).unwrap(), cfg);
}

#[test]
fn sizes_accept_integers_and_units() {
    let cfg = AgentConfig::parse(
        "[outbox]\n[[outbox.classes]]\nname = \"normal\"\nmax_bytes = 1000\n\
         [[outbox.classes]]\nname = \"b\"\nmax_bytes = \"10MB\"\nttl = \"250ms\"\n",
        env(&[]),
    )
    .unwrap();
    assert_eq!(cfg.outbox.classes[0].max_bytes, Some(ByteSize(1000)));
    assert_eq!(cfg.outbox.classes[1].max_bytes, Some(ByteSize(10_000_000)));
    assert_eq!(
        cfg.outbox.classes[1].ttl,
        Some(HumanDuration(Duration::from_millis(250)))
    );
    let printed = cfg.to_toml().unwrap();
    assert_eq!(AgentConfig::parse(&printed, env(&[])).unwrap(), cfg);
}

#[test]
fn environment_overrides_the_file_which_overrides_defaults() {
    let file = r#"
node_id = "from-file"
data_dir = "/data/file"

[log]
durability = "sync"
cache_capacity_mb = 16

[outbox]
destinations = ["file-dest"]
"#;
    let cfg = AgentConfig::parse(
        file,
        env(&[
            ("OUTRIDER_NODE_ID", "from-env"),
            ("OUTRIDER_LOG__DURABILITY", "periodic"),
            ("OUTRIDER_LOG__FLUSH_INTERVAL_MS", "250"),
            ("OUTRIDER_API__LISTEN", "0.0.0.0:7400"),
            ("OUTRIDER_OUTBOX__DESTINATIONS", "cloud, backup"),
            ("OUTRIDER_LOGGING__FORMAT", "json"),
            // The CLI's variable is not a configuration key, nor the test tooling's.
            ("OUTRIDER_AGENT", "http://127.0.0.1:7400"),
            ("OUTRIDER_TEST_PG", "host=127.0.0.1 port=5432"),
            ("OUTRIDER_PG_HOME", "/tmp/pg"),
            ("OUTRIDER_E2E_SEED", "42"),
            ("OUTRIDER_KILL_ROUNDS", "3"),
            // Not ours at all.
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.node_id, "from-env");
    assert_eq!(cfg.data_dir, Path::new("/data/file")); // file, not overridden
    assert_eq!(cfg.log.durability, DurabilityMode::Periodic);
    assert_eq!(cfg.log.flush_interval_ms, 250);
    assert_eq!(cfg.log.cache_capacity_mb, 16); // file
    assert_eq!(cfg.log.max_event_bytes, 262_144); // default
    assert_eq!(cfg.api.listen.to_string(), "0.0.0.0:7400");
    assert_eq!(cfg.api.metrics_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(cfg.outbox.destinations, ["cloud", "backup"]);
    assert_eq!(cfg.logging.format, LogFormat::Json);
    assert_eq!(
        cfg.log_config().unwrap().durability,
        Durability::Periodic {
            interval: Duration::from_millis(250)
        }
    );
}

#[test]
fn environment_values_take_the_type_of_their_key() {
    let cfg = AgentConfig::parse(
        "",
        env(&[
            // A string key keeps digits as text...
            ("OUTRIDER_NODE_ID", "1234"),
            // ...an integer key reads an integer, a list key a TOML array or a comma list.
            ("OUTRIDER_LOG__MAX_EVENT_BYTES", "1024"),
            ("OUTRIDER_OUTBOX__DESTINATIONS", r#"["a", "b,c"]"#),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.node_id, "1234");
    assert_eq!(cfg.log.max_event_bytes, 1024);
    assert_eq!(cfg.outbox.destinations, ["a", "b,c"]);

    let cfg = AgentConfig::parse("", env(&[("OUTRIDER_OUTBOX__DESTINATIONS", "")])).unwrap();
    assert!(cfg.outbox.destinations.is_empty());
}

/// (config text, environment, expected message fragment).
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn errors_name_the_key_and_the_problem() {
    let cases: &[Case] = &[
        (
            "[log]\ndurability = \"fast\"\n",
            &[],
            r#"log.durability: unknown variant "fast", expected "sync" or "periodic""#,
        ),
        (
            "[[outbox.classes]]\nname = \"normal\"\n[[outbox.classes]]\nname = \"b\"\nmax_bytes = \"12XB\"\n",
            &[],
            r#"outbox.classes[1].max_bytes: unknown size unit "XB" in "12XB""#,
        ),
        (
            "[[outbox.classes]]\nname = \"normal\"\nttl = \"3 fortnights\"\n",
            &[],
            "outbox.classes[0].ttl: unknown duration unit",
        ),
        (
            "[[outbox.classes]]\nname = \"normal\"\nfull_policy = \"drop_newest\"\n",
            &[],
            r#"outbox.classes[0].full_policy: unknown variant "drop_newest", expected "reject_new" or "drop_oldest""#,
        ),
        (
            "[[outbox.classes]]\nmax_events = 5\n",
            &[],
            "outbox.classes[0].name: missing",
        ),
        (
            "[[outbox.classes]]\nname = \"normal\"\nmax_evnts = 5\n",
            &[],
            "outbox.classes[0].max_evnts: unknown key",
        ),
        (
            "[log]\ndurabilty = \"sync\"\n",
            &[],
            r#"log.durabilty: unknown key, expected one of "durability""#,
        ),
        ("nodeid = \"x\"\n", &[], "nodeid: unknown key"),
        ("[apii]\nlisten = \"x\"\n", &[], "apii: unknown key"),
        (
            "[api]\nlisten = \"localhost\"\n",
            &[],
            r#"api.listen: "localhost" is not an IP:port address"#,
        ),
        (
            "[log]\ncache_capacity_mb = \"lots\"\n",
            &[],
            r#"log.cache_capacity_mb: invalid type: string "lots", expected u64"#,
        ),
        (
            "[log]\nmax_event_bytes = -1\n",
            &[],
            "log.max_event_bytes: invalid value: integer \"-1\", expected u64",
        ),
        (
            "[logging]\nformat = \"xml\"\n",
            &[],
            r#"logging.format: unknown variant "xml", expected "text" or "json""#,
        ),
        (
            "[logging]\nlevel = \"info,,=[\"\n",
            &[],
            "logging.level: ",
        ),
        // The runtime's own checks, keyed the same way.
        (
            "[outbox]\ndefault_class = \"urgent\"\n",
            &[],
            r#"outbox.default_class: "urgent" is not a configured class"#,
        ),
        (
            "[log]\nmax_event_bytes = 0\n",
            &[],
            "log.max_event_bytes: must be 1..=",
        ),
        (
            "[[outbox.classes]]\nname = \"normal\"\n[[outbox.classes]]\nname = \"normal\"\n",
            &[],
            r#"outbox.classes[1].name: duplicate class "normal""#,
        ),
        (
            "[outbox]\ndestinations = [\"a\", \"a\"]\n",
            &[],
            r#"outbox.destinations[1]: duplicate destination "a""#,
        ),
        (
            "[api]\nlisten = \"127.0.0.1:9000\"\nmetrics_listen = \"127.0.0.1:9000\"\n",
            &[],
            "api.metrics_listen: 127.0.0.1:9000 is also api.listen",
        ),
        // Errors in values from the environment name the variable too.
        (
            "",
            &[("OUTRIDER_LOG__DURABILITY", "fast")],
            r#"log.durability: unknown variant "fast", expected "sync" or "periodic" (set by environment variable OUTRIDER_LOG__DURABILITY)"#,
        ),
        (
            "",
            &[("OUTRIDER_LOG__DURABILITY", "periodic"), ("OUTRIDER_LOG__FLUSH_INTERVAL_MS", "0")],
            "log.flush_interval_ms: must be 1..=60000 (set by environment variable OUTRIDER_LOG__FLUSH_INTERVAL_MS)",
        ),
        (
            "",
            &[("OUTRIDER_LOG__FSYNC", "always")],
            "log.fsync: unknown key",
        ),
        (
            "",
            &[("OUTRIDER_A__B__C", "1")],
            "environment variable OUTRIDER_A__B__C: expected OUTRIDER_<KEY> or OUTRIDER_<TABLE>__<KEY>",
        ),
        (
            "log = 5\n",
            &[("OUTRIDER_LOG__DURABILITY", "sync")],
            "log: is not a table, so OUTRIDER_LOG__DURABILITY cannot set log.durability",
        ),
    ];
    for (text, vars, want) in cases {
        let got = err(text, vars);
        assert!(
            got.contains(want),
            "config {text:?} env {vars:?}:\n  got:  {got}\n  want: {want}"
        );
    }
}

#[test]
fn errors_are_typed() {
    match AgentConfig::parse("[log]\ndurability = \"fast\"\n", env(&[])) {
        Err(ConfigError::Invalid { key, message }) => {
            assert_eq!(key, "log.durability");
            assert!(message.contains("fast"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn syntax_errors_and_missing_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let e = AgentConfig::load_with_env(Some(&missing), env(&[])).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[log\ndurability = \"sync\"\n").unwrap();
    let msg = AgentConfig::load_with_env(Some(&broken), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&broken.display().to_string()), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");
}
