//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

use outrider_runtime::{Event, Log, LogConfig};

pub fn ev(id: &str, detail: serde_json::Value) -> Event {
    Event {
        id: id.to_string(),
        source: "test".into(),
        detail_type: "Thing".into(),
        detail: detail.to_string(),
        ..Default::default()
    }
}

pub fn open(dir: &std::path::Path) -> Log {
    open_with(LogConfig::new(dir))
}

pub fn open_with(cfg: LogConfig) -> Log {
    let (log, report) = Log::open(cfg).unwrap();
    assert_eq!(report.corrupt, None, "unexpected corruption: {report:?}");
    log
}
