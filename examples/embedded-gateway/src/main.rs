//! A gateway application that embeds the Outrider runtime: it keeps its own event-sourced log
//! and store-and-forward outbox in a local directory, with no agent daemon.
//!
//! It appends sensor readings to one stream per device, keeps a per-device aggregate with
//! snapshots, and forwards readings through the outbox: a forwarder reads each priority class
//! (alarms first) and acknowledges what it has delivered, which lets the log reclaim it.
//!
//! Run: `cargo run -p outrider-example-embedded-gateway -- [DATA_DIR]`

use anyhow::{Context, Result};
use outrider_proto::Event;
use outrider_runtime::{ClassConfig, ExpectedVersion, FullPolicy, Log, LogConfig};
use serde_json::json;

fn reading(device: &str, seq: u32, celsius: f64) -> Event {
    Event {
        id: format!("{device}-{seq}"),
        source: "gateway.sensors".into(),
        detail_type: "Temperature Reading".into(),
        detail: json!({ "device": device, "celsius": celsius }).to_string(),
        ..Default::default()
    }
}

/// The aggregate folded from a device's stream: count and sum of readings.
fn fold(state: (u64, f64), e: &Event) -> Result<(u64, f64)> {
    let d: serde_json::Value = serde_json::from_str(&e.detail)?;
    let c = d["celsius"].as_f64().context("reading without celsius")?;
    Ok((state.0 + 1, state.1 + c))
}

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("outrider-embedded-gateway"));
    let mut cfg = LogConfig::new(&dir);
    cfg.node_id = "gateway-7".into();
    cfg.destinations = vec!["uplink".into()];
    cfg.classes = vec![
        ClassConfig::unbounded("alarm"),
        ClassConfig {
            max_events: 10_000,
            full_policy: FullPolicy::DropOldest,
            ..ClassConfig::unbounded("telemetry")
        },
    ];
    cfg.default_class = "telemetry".into();
    let (log, report) = Log::open(cfg).context("opening the gateway's log")?;
    if let Some(bad) = &report.corrupt {
        eprintln!(
            "log repaired: cut at position {} ({})",
            bad.position, bad.reason
        );
    }

    // Append readings; an over-threshold reading also raises an alarm in the high class.
    for device in ["boiler", "chiller"] {
        let stream = format!("device-{device}");
        let base = log.stream_version(&stream)?.map_or(0, |v| v + 1) as u32;
        for i in 0..20u32 {
            let c = 20.0 + f64::from((base + i) % 70);
            log.append(
                &stream,
                ExpectedVersion::Any,
                vec![reading(device, base + i, c)],
                None,
            )?;
            if c > 35.0 {
                let alarm = Event {
                    source: "gateway.alarms".into(),
                    detail_type: "Overheat".into(),
                    detail: json!({ "device": device, "celsius": c }).to_string(),
                    ..Default::default()
                };
                log.append("alarms", ExpectedVersion::Any, vec![alarm], Some("alarm"))?;
            }
        }
        // Rebuild the aggregate from snapshot + tail, then snapshot it again.
        let (snap, tail) = log.load(&stream)?;
        let mut state = match &snap {
            Some(s) => serde_json::from_slice::<(u64, f64)>(&s.payload)?,
            None => (0, 0.0),
        };
        for e in &tail {
            state = fold(state, e)?;
        }
        if let Some(last) = tail.last() {
            log.save_snapshot(&stream, last.version, &serde_json::to_vec(&state)?)?;
        }
        println!(
            "{device}: {} readings, mean {:.1} C (snapshot at {:?}, {} events replayed)",
            state.0,
            state.1 / state.0 as f64,
            snap.map(|s| s.version),
            tail.len()
        );
    }

    // Forward: highest class first; acknowledge what the uplink took.
    log.flush()?; // the outbox hands out durable events only
    for class in log.class_names() {
        let mut sent = 0;
        loop {
            let batch = log.outbox_read("uplink", &class, None, 16, 64 * 1024)?;
            let Some(last) = batch.last() else { break };
            sent += batch.len();
            log.ack("uplink", &class, last.position)?;
        }
        println!("forwarded {sent} {class} events");
    }
    let m = log.maintain()?;
    println!(
        "reclaimed {} delivered events; log now starts at {}",
        m.reclaimed_events, m.start
    );
    log.close()?;
    Ok(())
}
