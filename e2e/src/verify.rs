//! The end-of-test check: what the cloud store holds against what the agent acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use outrider_proto::Event;
use outrider_runtime::Log;

use crate::producer::Acked;

/// Everything the cloud store holds, read after the cloud stopped.
#[derive(Debug, Default)]
pub struct CloudContents {
    /// Every event, in the store's order.
    pub events: Vec<Event>,
    /// Every checkpoint (the sync watermarks `wm/<node>/<epoch>/<lane>`).
    pub checkpoints: Vec<(String, u64)>,
}

/// The event bus's streams in the cloud store (`outrider_bus::names`).
pub fn is_bus_stream(stream: &str) -> bool {
    stream.starts_with("bus/") || stream.starts_with("bus-")
}

/// Opens the cloud's store (the runtime log in `dir`, as `outrider-cloud` opens it), reads it
/// whole and closes it.
pub fn read_cloud_store(dir: &Path) -> anyhow::Result<CloudContents> {
    let cfg = outrider_ingest::store::cloud_log_config(dir);
    let (log, report) = Log::open(cfg)
        .with_context(|| format!("cannot open the cloud store in {}", dir.display()))?;
    let mut out = CloudContents::default();
    let result = (|| {
        if let Some(c) = &report.corrupt {
            anyhow::bail!(
                "the cloud store was corrupt at position {}: {}",
                c.position,
                c.reason
            );
        }
        let mut from = 0;
        loop {
            let batch = log.read_all(from, 4096)?;
            let Some(last) = batch.last() else { break };
            from = last.position + 1;
            // The ingest's events only: the event bus (on by default in outrider-cloud) keeps
            // its own copies and bookkeeping in `bus/...` and `bus-...` streams.
            out.events
                .extend(batch.into_iter().filter(|e| !is_bus_stream(&e.stream)));
        }
        out.checkpoints = log.checkpoints("wm/")?;
        Ok(())
    })();
    let closed = log.close();
    result?;
    closed.context("closing the cloud store")?;
    Ok(out)
}

/// What the check found, when everything held.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Events acknowledged by the agent (= events of the node in the cloud).
    pub events: usize,
    /// Streams.
    pub streams: usize,
    /// Lanes with a watermark.
    pub lanes: usize,
}

/// A list of violations, each with a few examples.
#[derive(Default)]
struct Violations {
    text: String,
    count: usize,
}

impl Violations {
    fn add(&mut self, what: &str, examples: &[String], total: usize) {
        if total == 0 {
            return;
        }
        self.count += 1;
        let _ = writeln!(self.text, "- {what}: {total}");
        for e in examples.iter().take(8) {
            let _ = writeln!(self.text, "    {e}");
        }
    }
}

/// Checks that the cloud holds exactly the acknowledged events of `node`, once each, with the
/// agent's ids, payloads and positions, each stream in the agent's order, and one watermark
/// epoch whose lane watermarks are the last acknowledged position of each lane.
///
/// Every event the producer sent was acknowledged (it retries until then), so an event in the
/// cloud that was not acknowledged, or one that is there twice, is a violation.
pub fn check(node: &str, acked: &[Acked], cloud: &CloudContents) -> Result<Summary, String> {
    let mut v = Violations::default();
    let by_id: HashMap<&str, &Acked> = acked.iter().map(|a| (a.id.as_str(), a)).collect();
    if by_id.len() != acked.len() {
        v.add(
            "event ids acknowledged more than once (the producer's own bookkeeping)",
            &[],
            acked.len() - by_id.len(),
        );
    }
    let mine: Vec<&Event> = cloud
        .events
        .iter()
        .filter(|e| e.origin_node == node)
        .collect();
    let foreign = cloud.events.len() - mine.len();
    v.add(
        "events in the cloud from another origin node",
        &cloud
            .events
            .iter()
            .filter(|e| e.origin_node != node)
            .take(8)
            .map(|e| format!("{:?} from {:?}", e.id, e.origin_node))
            .collect::<Vec<_>>(),
        foreign,
    );

    // Exactly once, by id.
    let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in &mine {
        seen.entry(e.id.as_str()).or_default().push(e.position);
    }
    let dups: Vec<String> = seen
        .iter()
        .filter(|(_, p)| p.len() > 1)
        .map(|(id, p)| format!("{id} at cloud positions {p:?}"))
        .collect();
    v.add(
        "events stored more than once in the cloud",
        &dups,
        dups.len(),
    );
    let unknown: Vec<String> = mine
        .iter()
        .filter(|e| !by_id.contains_key(e.id.as_str()))
        .map(|e| format!("{} (origin_seq {})", e.id, e.origin_seq))
        .collect();
    v.add(
        "events in the cloud that the agent never acknowledged",
        &unknown,
        unknown.len(),
    );
    let missing: Vec<String> = acked
        .iter()
        .filter(|a| !seen.contains_key(a.id.as_str()))
        .map(|a| {
            format!(
                "{} ({} v{} at agent position {})",
                a.id, a.stream, a.version, a.position
            )
        })
        .collect();
    v.add(
        "acknowledged events missing from the cloud",
        &missing,
        missing.len(),
    );

    // Content: the cloud carries the agent's stream, position (origin seq) and payload.
    let mut wrong = Vec::new();
    for e in &mine {
        let Some(a) = by_id.get(e.id.as_str()) else {
            continue;
        };
        let stream = outrider_ingest::store::cloud_stream(node, &a.stream);
        if e.stream != stream
            || e.origin_seq != a.position
            || e.detail != a.detail
            || e.source != "outrider.e2e"
        {
            wrong.push(format!(
                "{}: cloud has stream {:?} origin_seq {} detail {:.60?}; agent acknowledged \
                 stream {stream:?} position {} detail {:.60?}",
                e.id, e.stream, e.origin_seq, e.detail, a.position, a.detail
            ));
        }
    }
    v.add(
        "events whose stream, origin seq or payload differ from what the agent acknowledged",
        &wrong,
        wrong.len(),
    );

    // Order: each cloud stream is the agent's stream, version for version.
    let mut streams: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in &mine {
        streams.entry(e.stream.as_str()).or_default().push(e);
    }
    let mut disorder = Vec::new();
    for (stream, events) in &streams {
        let mut prev_seq: Option<u64> = None;
        for (i, e) in events.iter().enumerate() {
            let i = i as u64;
            if prev_seq.is_some_and(|p| p >= e.origin_seq) {
                disorder.push(format!(
                    "{stream}: origin_seq {} after {} (event {})",
                    e.origin_seq,
                    prev_seq.unwrap_or_default(),
                    e.id
                ));
            }
            prev_seq = Some(e.origin_seq);
            if e.version != i {
                disorder.push(format!(
                    "{stream}: event {} has cloud version {} at index {i}",
                    e.id, e.version
                ));
            }
            if let Some(a) = by_id.get(e.id.as_str()) {
                if a.version != i {
                    disorder.push(format!(
                        "{stream}: cloud version {i} holds {} which is agent version {}",
                        e.id, a.version
                    ));
                }
            }
        }
    }
    v.add(
        "cloud streams not in the agent's order",
        &disorder,
        disorder.len(),
    );

    // Watermarks: one epoch (the agent's log was never recreated), and each lane's watermark is
    // the last position acknowledged in it.
    // `wm/<node>/<epoch>/<lane>` (outrider_ingest::store::watermark_name); node names hold no
    // `/` and an epoch's `/` is escaped, so the epoch is the segment after the node.
    let node_prefix = outrider_ingest::store::watermark_prefix(node, "");
    let node_prefix = node_prefix.strip_suffix('/').unwrap_or(&node_prefix);
    let mut epochs: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (name, wm) in &cloud.checkpoints {
        let Some(rest) = name.strip_prefix(node_prefix) else {
            continue;
        };
        let Some((epoch, lane)) = rest.split_once('/') else {
            continue;
        };
        epochs
            .entry(epoch.to_string())
            .or_default()
            .insert(lane.to_string(), *wm);
    }
    if epochs.len() != 1 {
        v.add(
            "watermark epochs (agent log incarnations) in the cloud, expected exactly 1",
            &epochs.keys().cloned().collect::<Vec<_>>(),
            epochs.len().max(1),
        );
    }
    let mut last_by_lane: BTreeMap<&str, u64> = BTreeMap::new();
    for a in acked {
        let e = last_by_lane.entry(a.class.as_str()).or_insert(a.position);
        *e = (*e).max(a.position);
    }
    let mut lanes = 0;
    if let Some(marks) = epochs.values().next() {
        lanes = marks.len();
        let mut bad = Vec::new();
        for (lane, last) in &last_by_lane {
            match marks.get(*lane) {
                Some(wm) if wm == last => {}
                other => bad.push(format!(
                    "lane {lane}: watermark {other:?}, last acknowledged position {last}"
                )),
            }
        }
        v.add(
            "lane watermarks that differ from the last acknowledged position",
            &bad,
            bad.len(),
        );
    }

    if v.count > 0 {
        return Err(format!(
            "the cloud store does not hold the acknowledged events exactly once in order \
             ({} acknowledged, {} of node {node} in the cloud):\n{}",
            acked.len(),
            mine.len(),
            v.text
        ));
    }
    Ok(Summary {
        events: mine.len(),
        streams: streams.len(),
        lanes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(id: &str, stream: &str, version: u64, position: u64) -> Acked {
        Acked {
            id: id.into(),
            stream: stream.into(),
            class: "normal".into(),
            version,
            position,
            detail: "{}".into(),
        }
    }

    fn stored(a: &Acked, version: u64, position: u64) -> Event {
        Event {
            id: a.id.clone(),
            source: "outrider.e2e".into(),
            detail: a.detail.clone(),
            stream: format!("n/{}", a.stream),
            version,
            position,
            origin_node: "n".into(),
            origin_seq: a.position,
            ..Default::default()
        }
    }

    fn contents(events: Vec<Event>, wm: u64) -> CloudContents {
        CloudContents {
            events,
            checkpoints: vec![("wm/n/epoch-1/normal".into(), wm)],
        }
    }

    #[test]
    fn exact_copy_passes_and_every_fault_is_caught() {
        let a = vec![acked("a", "s", 0, 0), acked("b", "s", 1, 1)];
        let good = vec![stored(&a[0], 0, 0), stored(&a[1], 1, 1)];
        let s = check("n", &a, &contents(good.clone(), 1)).unwrap();
        assert_eq!((s.events, s.streams, s.lanes), (2, 1, 1));

        // A duplicate.
        let mut dup = good.clone();
        dup.push(stored(&a[1], 2, 2));
        let e = check("n", &a, &contents(dup, 1)).unwrap_err();
        assert!(e.contains("more than once"), "{e}");
        // A loss.
        let e = check("n", &a, &contents(good[..1].to_vec(), 1)).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        // Reordered.
        let swapped = vec![stored(&a[1], 0, 0), stored(&a[0], 1, 1)];
        let e = check("n", &a, &contents(swapped, 1)).unwrap_err();
        assert!(e.contains("order"), "{e}");
        // An unacknowledged event.
        let mut extra = good.clone();
        extra.push(stored(&acked("z", "s", 2, 2), 2, 2));
        let e = check("n", &a, &contents(extra, 1)).unwrap_err();
        assert!(e.contains("never acknowledged"), "{e}");
        // A wrong watermark, a second epoch.
        let e = check("n", &a, &contents(good.clone(), 0)).unwrap_err();
        assert!(e.contains("watermark"), "{e}");
        let mut two = contents(good, 1);
        two.checkpoints.push(("wm/n/epoch-2/normal".into(), 1));
        let e = check("n", &a, &two).unwrap_err();
        assert!(e.contains("epochs"), "{e}");
    }
}
