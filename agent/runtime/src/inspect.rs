//! Offline inspection of a log directory: streams, sizes, cursors and a full checksum pass.

use std::collections::BTreeMap;
use std::path::Path;

use crate::codec::{self, RecordIter};
use crate::config::{LogConfig, VerifyOnOpen};
use crate::error::Result;
use crate::log::Log;
use crate::outbox::ClassStatus;
use crate::read::decode_event;

/// What [`inspect`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InspectReport {
    pub log_id: String,
    pub head: u64,
    pub start: u64,
    pub records: u64,
    pub events: u64,
    pub event_bytes: u64,
    pub size_on_disk: u64,
    /// Stream name → (events retained, last version).
    pub streams: BTreeMap<String, StreamSummary>,
    pub classes: Vec<ClassSummary>,
    /// (position, reason) of every record that failed its checksums. Inspection repairs nothing:
    /// the agent's next open cuts the log back to before the first of them.
    pub corrupt: Vec<(u64, String)>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamSummary {
    pub events: u64,
    pub last_version: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClassSummary {
    pub name: String,
    pub pending_events: u64,
    pub pending_bytes: u64,
    pub dropped_events: u64,
    pub expired_events: u64,
    pub floor: u64,
    pub cursors: BTreeMap<String, u64>,
}

impl From<ClassStatus> for ClassSummary {
    fn from(c: ClassStatus) -> Self {
        Self {
            name: c.name,
            pending_events: c.pending_events,
            pending_bytes: c.pending_bytes,
            dropped_events: c.dropped_events,
            expired_events: c.expired_events,
            floor: c.floor,
            cursors: c.cursors.into_iter().collect(),
        }
    }
}

/// Opens the log in `dir` (which must not be open elsewhere) with a full checksum pass and
/// summarises it. Inspection only reports: it cuts nothing and moves nothing. `cfg` supplies classes and destinations, so cursors can be shown by name;
/// `None` inspects with defaults.
pub fn inspect(dir: &Path, cfg: Option<LogConfig>) -> Result<InspectReport> {
    let mut cfg = cfg.unwrap_or_else(|| LogConfig::new(dir));
    cfg.dir = dir.to_path_buf();
    cfg.verify_on_open = VerifyOnOpen::Full;
    // The full scan below lists every damaged record itself, so the open's report is not needed.
    let (log, _report) = Log::open_mode(
        cfg,
        std::sync::Arc::new(crate::SystemClock),
        crate::recover::Mode::ReportOnly,
    )?;
    let sh = log.shared();
    let mut r = InspectReport {
        log_id: log.log_id().to_string(),
        head: log.head(),
        start: log.start(),
        size_on_disk: sh.db.size_on_disk()?,
        ..Default::default()
    };
    for kv in sh.db.scan_prefix([codec::LOG]) {
        let (k, v) = kv?;
        let first = codec::be_u64(&k[1..]).unwrap_or(0);
        r.records += 1;
        let (_, it) = match RecordIter::new(first, &v) {
            Ok(x) => x,
            Err(e) => {
                r.corrupt.push(located(first, e));
                continue;
            }
        };
        for raw in it {
            match raw
                .and_then(|raw| Ok((raw.payload.len(), decode_event(raw.position, raw.payload)?)))
            {
                Ok((len, e)) => {
                    r.events += 1;
                    r.event_bytes += len as u64;
                    let s = r.streams.entry(e.stream).or_default();
                    s.events += 1;
                    s.last_version = s.last_version.max(e.version);
                }
                Err(e) => {
                    r.corrupt.push(located(first, e));
                    break;
                }
            }
        }
    }
    r.classes = log.outbox_status().into_iter().map(Into::into).collect();
    log.close()?;
    Ok(r)
}

/// (position, reason) of a read error, at the event it names.
fn located(record_first: u64, e: crate::Error) -> (u64, String) {
    match e {
        crate::Error::Corrupt { position, reason } => (position, reason),
        other => (record_first, other.to_string()),
    }
}
