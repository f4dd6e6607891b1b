//! `outrider log inspect`: an offline summary of a log directory.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use outrider_agent::AgentConfig;
use outrider_runtime::inspect::InspectReport;

use crate::args::InspectArgs;

/// Inspects the directory and prints the report; exit code 1 when corruption was found.
pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    if !args.dir.is_dir() {
        bail!("{}: no such directory", args.dir.display());
    }
    let cfg = match &args.config {
        Some(path) => Some(
            AgentConfig::load(Some(path))
                .and_then(|c| c.log_config())
                .with_context(|| format!("configuration {}", path.display()))?,
        ),
        None => None,
    };
    let report = match outrider_runtime::inspect::inspect(&args.dir, cfg) {
        Ok(r) => r,
        Err(e) if e.to_string().contains("could not acquire lock") => bail!(
            "cannot inspect {}: it is in use (stop the agent first): {e}",
            args.dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", args.dir.display())),
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(
            stdout,
            "{}",
            summary(&args.dir.display().to_string(), &report)
        )?;
    }
    Ok(if is_corrupt(&report) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn is_corrupt(r: &InspectReport) -> bool {
    !r.corrupt.is_empty()
}

/// A byte count for people: `512 B`, `12.3 KiB`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// The human-readable report.
pub fn summary(dir: &str, r: &InspectReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "log directory  {dir}");
    let _ = writeln!(s, "log id         {}", r.log_id);
    let _ = writeln!(s, "positions      start {}, head {}", r.start, r.head);
    let _ = writeln!(
        s,
        "contents       {} events in {} records, {} of events, {} on disk",
        r.events,
        r.records,
        human_bytes(r.event_bytes),
        human_bytes(r.size_on_disk)
    );
    if is_corrupt(r) {
        let _ = writeln!(s, "checksums      CORRUPTION FOUND");
        for (pos, reason) in &r.corrupt {
            let _ = writeln!(s, "  record at position {pos}: {reason}");
        }
        let _ = writeln!(
            s,
            "  nothing was changed; the agent's next start cuts the log back to before the first"
        );
    } else {
        let _ = writeln!(s, "checksums      OK (every record verified)");
    }
    let _ = writeln!(s, "\nstreams ({})", r.streams.len());
    if !r.streams.is_empty() {
        let width = r
            .streams
            .keys()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(6, 60);
        let _ = writeln!(
            s,
            "  {:<width$}  {:>10}  {:>12}",
            "STREAM", "EVENTS", "LAST VERSION"
        );
        for (name, st) in &r.streams {
            let _ = writeln!(
                s,
                "  {name:<width$}  {:>10}  {:>12}",
                st.events, st.last_version
            );
        }
    }
    let _ = writeln!(s, "\noutbox classes ({})", r.classes.len());
    for c in &r.classes {
        let _ = writeln!(
            s,
            "  {}: {} events ({}) pending, {} dropped, {} expired, floor {}",
            c.name,
            c.pending_events,
            human_bytes(c.pending_bytes),
            c.dropped_events,
            c.expired_events,
            c.floor
        );
        for (dest, cursor) in &c.cursors {
            let _ = writeln!(s, "    cursor {dest}: next position {cursor}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn corruption_is_reported() {
        let r = InspectReport {
            corrupt: vec![(7, "bad checksum".into())],
            ..Default::default()
        };
        let s = summary("/d", &r);
        assert!(s.contains("CORRUPTION FOUND"), "{s}");
        assert!(s.contains("record at position 7: bad checksum"), "{s}");
        assert!(is_corrupt(&r));
        assert!(!is_corrupt(&InspectReport::default()));
    }
}
