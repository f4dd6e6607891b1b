//! `sync-bench verify`: checks that a cloud store holds every event of a node exactly once.
//!
//! The events are the ones `sync-bench produce` (or the benchmark's pre-fill) made: event `i`'s
//! detail carries `i`. Checked: the node's events number exactly `expect`; their origin seqs are
//! distinct; their indices are exactly `first..first + expect`, each once; within each cloud
//! stream, origin seqs increase (the node's order).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use outrider_runtime::Log;

use crate::payload::index_of;

/// `sync-bench verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The cloud's data directory (the cloud must be stopped).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,

    /// The node whose events are checked.
    #[arg(long, default_value = crate::payload::NODE)]
    pub node: String,

    /// How many events of the node the store must hold.
    #[arg(long, value_name = "N")]
    pub expect: u64,

    /// The index of the first event.
    #[arg(long, default_value_t = 0, value_name = "I")]
    pub first_index: u64,
}

/// Checks `log` (see the module doc); returns a one-line summary, or an error saying what is
/// wrong.
pub fn check(log: &Log, node: &str, expect: u64, first: u64) -> anyhow::Result<String> {
    let n = usize::try_from(expect)?;
    let mut seen_index = vec![0u32; n];
    let mut seqs: HashMap<u64, u32> = HashMap::with_capacity(n);
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let (mut total, mut others, mut out_of_range, mut unindexed, mut disorder) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut from = 0;
    loop {
        let events = log.read_all(from, 4096)?;
        let Some(last) = events.last() else { break };
        from = last.position + 1;
        for e in &events {
            // The event bus's copies and bookkeeping (outrider-cloud runs the bus by default).
            if e.stream.starts_with("bus/") || e.stream.starts_with("bus-") {
                continue;
            }
            if e.origin_node != node {
                others += 1;
                continue;
            }
            total += 1;
            *seqs.entry(e.origin_seq).or_default() += 1;
            match index_of(&e.detail) {
                Some(i) if i >= first && i - first < expect => {
                    seen_index[usize::try_from(i - first)?] += 1;
                }
                Some(_) => out_of_range += 1,
                None => unindexed += 1,
            }
            let prev = last_seq.insert(e.stream.clone(), e.origin_seq);
            if prev.is_some_and(|p| p >= e.origin_seq) {
                disorder += 1;
            }
        }
    }
    let missing = seen_index.iter().filter(|c| **c == 0).count();
    let duplicated = seen_index.iter().filter(|c| **c > 1).count();
    let dup_seqs = seqs.values().filter(|c| **c > 1).count();
    let mut problems = Vec::new();
    if total != expect {
        problems.push(format!("{total} events of node {node}, expected {expect}"));
    }
    if missing > 0 {
        let first_missing = seen_index.iter().position(|c| *c == 0).unwrap_or(0) as u64 + first;
        problems.push(format!(
            "{missing} indices missing (the first: {first_missing})"
        ));
    }
    if duplicated > 0 {
        problems.push(format!("{duplicated} indices stored more than once"));
    }
    if dup_seqs > 0 {
        problems.push(format!("{dup_seqs} origin seqs stored more than once"));
    }
    if out_of_range + unindexed > 0 {
        problems.push(format!(
            "{out_of_range} events with an index outside {first}..{}, {unindexed} without one",
            first + expect
        ));
    }
    if disorder > 0 {
        problems.push(format!(
            "{disorder} events out of the node's order within their stream"
        ));
    }
    if !problems.is_empty() {
        bail!("NOT exactly once: {}", problems.join("; "));
    }
    Ok(format!(
        "{expect} events of node {node}, each exactly once (indices {first}..{}, distinct origin \
         seqs), in order within each of {} streams{}",
        first + expect,
        last_seq.len(),
        if others > 0 {
            format!("; {others} events of other nodes ignored")
        } else {
            String::new()
        }
    ))
}

pub fn run(a: &VerifyArgs) -> anyhow::Result<()> {
    if !a.data.is_dir() {
        bail!("{}: no such directory", a.data.display());
    }
    let cfg = outrider_ingest::store::cloud_log_config(&a.data);
    let (log, report) = Log::open(cfg).with_context(|| {
        format!(
            "cannot open the cloud store in {} (is the cloud still running?)",
            a.data.display()
        )
    })?;
    if let Some(c) = &report.corrupt {
        bail!(
            "the cloud store in {} is corrupt at position {}: {}",
            a.data.display(),
            c.position,
            c.reason
        );
    }
    let result = check(&log, &a.node, a.expect, a.first_index);
    log.close()?;
    println!("verify: {}", result?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Payload;
    use outrider_ingest::{IngestStore, LogStore};
    use outrider_runtime::sync::{CommitOutcome, CommitRequest};

    fn commit(store: &LogStore, p: &Payload, prev: Option<u64>, seqs: &[(u64, u64)]) {
        let events = seqs
            .iter()
            .map(|&(seq, i)| {
                let mut e = p.event(i, 0);
                e.id = format!("id-{seq}");
                e.stream = format!("s-{}", i % 2);
                e.origin_node = "n1".into();
                e.origin_seq = seq;
                e.position = seq;
                e
            })
            .collect();
        let r = CommitRequest {
            node: "n1".into(),
            epoch: "e".into(),
            lane: "normal".into(),
            batch_seq: 1,
            prev_watermark: prev,
            new_watermark: seqs.last().unwrap().0,
            events,
            duplicates: 0,
        };
        assert_eq!(store.commit(r), CommitOutcome::Committed);
    }

    #[test]
    fn finds_missing_and_duplicate_events() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(outrider_ingest::store::cloud_log_config(dir.path())).unwrap();
        let store = LogStore::new(log.clone());
        let p = Payload::new(256);
        commit(&store, &p, None, &[(1, 0), (2, 1), (3, 2)]);
        let ok = check(&log, "n1", 3, 0).unwrap();
        assert!(ok.contains("each exactly once"), "{ok}");
        let e = check(&log, "n1", 4, 0).unwrap_err().to_string();
        assert!(e.contains("1 indices missing (the first: 3)"), "{e}");
        // The same index again under another seq: a duplicate.
        commit(&store, &p, Some(3), &[(4, 2)]);
        let e = check(&log, "n1", 3, 0).unwrap_err().to_string();
        assert!(e.contains("4 events of node n1, expected 3"), "{e}");
        assert!(e.contains("1 indices stored more than once"), "{e}");
        log.close().unwrap();
    }
}
