//! The store the ingest server commits to: [`IngestStore`], and [`LogStore`] on the runtime's
//! [`Log`] (the cloud's sled store for now; the store issue adds PostgreSQL behind the same trait).
//!
//! The trait is synchronous: the gRPC shell calls it on tokio's blocking pool
//! (`spawn_blocking`), one call at a time per session.

use std::collections::HashMap;

use outrider_runtime::sync::{CommitOutcome, CommitRequest};
use outrider_runtime::{Checkpoint, Error as LogError, ExpectedVersion, Log, StreamAppend};

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// What the ingest server needs of a store.
pub trait IngestStore: Send + Sync + 'static {
    /// The committed watermark of every lane of (node, epoch) that has one: (lane, watermark).
    fn load_watermarks(&self, node: &str, epoch: &str) -> Result<Vec<(String, u64)>, StoreError>;

    /// Writes `req.events` and moves the lane's watermark from `req.prev_watermark` to
    /// `req.new_watermark`, atomically: all or nothing. A watermark that is not
    /// `prev_watermark` any more writes nothing and answers [`CommitOutcome::Conflict`].
    fn commit(&self, req: CommitRequest) -> CommitOutcome;
}

impl<S: IngestStore + ?Sized> IngestStore for std::sync::Arc<S> {
    fn load_watermarks(&self, node: &str, epoch: &str) -> Result<Vec<(String, u64)>, StoreError> {
        (**self).load_watermarks(node, epoch)
    }

    fn commit(&self, req: CommitRequest) -> CommitOutcome {
        (**self).commit(req)
    }
}

/// Escapes `/` and `%` so that a name is one path segment of a checkpoint name.
fn segment(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

/// The checkpoint name prefix of the watermarks of (node, epoch): `wm/<node>/<epoch>/`.
///
/// Node names cannot hold `/` (see [`crate::identity::validate_node_name`]); an epoch's `/` and
/// `%` are escaped as `%2F` and `%25`, so the prefix of one (node, epoch) is never the prefix of
/// another's.
pub fn watermark_prefix(node: &str, epoch: &str) -> String {
    format!("wm/{}/{}/", segment(node), segment(epoch))
}

/// The checkpoint that holds the watermark of (node, epoch, lane): `wm/<node>/<epoch>/<lane>`.
pub fn watermark_name(node: &str, epoch: &str, lane: &str) -> String {
    format!("{}{lane}", watermark_prefix(node, epoch))
}

/// The name in the cloud store of a node's stream: `<node>/<stream>`.
pub fn cloud_stream(node: &str, stream: &str) -> String {
    format!("{node}/{stream}")
}

/// A batch's events grouped by their cloud stream (`<node>/<stream>`), streams in order of
/// first appearance, events in the node's order: one append per stream of a commit.
pub(crate) fn group_by_cloud_stream(
    node: &str,
    events: Vec<outrider_runtime::Event>,
) -> Vec<(String, Vec<outrider_runtime::Event>)> {
    let mut groups: Vec<(String, Vec<outrider_runtime::Event>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for e in events {
        let stream = cloud_stream(node, &e.stream);
        let i = *index.entry(stream.clone()).or_insert_with(|| {
            groups.push((stream, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(e);
    }
    groups
}

/// The runtime configuration of a cloud store in `dir`: node id `cloud`, and room for an event
/// at the agent's size limit once its stream carries the `<node>/` prefix.
pub fn cloud_log_config(dir: impl Into<std::path::PathBuf>) -> outrider_runtime::LogConfig {
    let mut cfg = outrider_runtime::LogConfig::new(dir);
    cfg.node_id = "cloud".into();
    cfg.max_event_bytes = outrider_runtime::config::MAX_EVENT_BYTES + 1024;
    cfg
}

/// [`IngestStore`] on a runtime [`Log`].
///
/// * The watermark of (node, epoch, lane) is the checkpoint [`watermark_name`]
///   (`wm/<node>/<epoch>/<lane>`).
/// * A commit is ONE [`Log::append_batch`]: the batch's events grouped by their stream on the
///   node, each group appended to the cloud stream `<node>/<stream>` ([`cloud_stream`]) with
///   [`ExpectedVersion::Any`], together with the checkpoint compare-and-set
///   `{ expected: prev_watermark, new: new_watermark }`. A
///   [`LogError::CheckpointConflict`] becomes [`CommitOutcome::Conflict`].
///
/// What the cloud log holds of an event: the runtime overwrites `Event.stream` with the cloud
/// stream name, and `version`/`position` with the cloud's own; `origin_node` and `origin_seq`
/// stay the agent's (an event whose `origin_node` is set keeps them). The stream on the node is
/// the cloud stream name without its `<origin_node>/` prefix.
///
/// Order: within a cloud stream, events are in the node's order (origin seq). One batch's
/// groups are appended in the order of their streams' first event in the batch, so across the
/// streams of one batch the cloud's global order can differ from the node's (the runtime's
/// `append_batch` takes each stream once).
#[derive(Debug, Clone)]
pub struct LogStore {
    log: Log,
}

impl LogStore {
    pub fn new(log: Log) -> Self {
        Self { log }
    }

    /// The underlying log.
    pub fn log(&self) -> &Log {
        &self.log
    }
}

impl IngestStore for LogStore {
    fn load_watermarks(&self, node: &str, epoch: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = watermark_prefix(node, epoch);
        let marks = self
            .log
            .checkpoints(&prefix)
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(marks
            .into_iter()
            .filter_map(|(name, wm)| Some((name.strip_prefix(&prefix)?.to_owned(), wm)))
            .collect())
    }

    fn commit(&self, req: CommitRequest) -> CommitOutcome {
        let name = watermark_name(&req.node, &req.epoch, &req.lane);
        let appends: Vec<StreamAppend> = group_by_cloud_stream(&req.node, req.events)
            .into_iter()
            .map(|(stream, events)| StreamAppend {
                stream,
                expected: ExpectedVersion::Any,
                events,
            })
            .collect();
        let checkpoint = Checkpoint {
            name,
            expected: req.prev_watermark,
            new: req.new_watermark,
        };
        match self.log.append_batch(appends, None, Some(checkpoint)) {
            Ok(_) => CommitOutcome::Committed,
            Err(LogError::CheckpointConflict { actual, .. }) => {
                CommitOutcome::Conflict { current: actual }
            }
            Err(e) => {
                // Invalid events (e.g. a stream name too long once prefixed) are refused the same
                // way: the agent retries with backoff and the error is logged here.
                tracing::warn!(node = %req.node, lane = %req.lane, error = %e, "commit failed");
                CommitOutcome::Unavailable(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_runtime::Event;

    fn ev(stream: &str, seq: u64) -> Event {
        Event {
            id: format!("id-{seq}"),
            source: "test".into(),
            detail_type: "T".into(),
            detail: "{}".into(),
            stream: stream.into(),
            origin_node: "gw-1".into(),
            origin_seq: seq,
            position: seq,
            ..Default::default()
        }
    }

    fn req(prev: Option<u64>, seqs: &[(&str, u64)]) -> CommitRequest {
        CommitRequest {
            node: "gw-1".into(),
            epoch: "e1".into(),
            lane: "normal".into(),
            batch_seq: 1,
            prev_watermark: prev,
            new_watermark: seqs.last().map_or(0, |s| s.1),
            events: seqs.iter().map(|(st, s)| ev(st, *s)).collect(),
            duplicates: 0,
        }
    }

    #[test]
    fn commits_are_compare_and_set_and_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(cloud_log_config(dir.path())).unwrap();
        let store = LogStore::new(log.clone());
        assert_eq!(store.load_watermarks("gw-1", "e1").unwrap(), vec![]);
        let r = req(None, &[("a", 1), ("b", 2), ("a", 3)]);
        assert_eq!(store.commit(r), CommitOutcome::Committed);
        assert_eq!(
            store.load_watermarks("gw-1", "e1").unwrap(),
            vec![("normal".to_string(), 3)]
        );
        // A stale expectation writes nothing and reports the current watermark.
        let stale = req(None, &[("a", 4)]);
        assert_eq!(
            store.commit(stale),
            CommitOutcome::Conflict { current: Some(3) }
        );
        assert_eq!(log.head(), 3);
        assert_eq!(
            store.commit(req(Some(3), &[("c", 5)])),
            CommitOutcome::Committed
        );
        let all = log.read_all(0, 100).unwrap();
        let got: Vec<(String, u64)> = all
            .iter()
            .map(|e| (e.stream.clone(), e.origin_seq))
            .collect();
        assert_eq!(
            got,
            [("gw-1/a", 1), ("gw-1/a", 3), ("gw-1/b", 2), ("gw-1/c", 5)]
                .map(|(s, q)| (s.to_string(), q))
        );
        assert!(all.iter().all(|e| e.origin_node == "gw-1"));
        // Other epochs and nodes have their own watermarks.
        assert_eq!(store.load_watermarks("gw-1", "e2").unwrap(), vec![]);
        assert_eq!(store.load_watermarks("gw-10", "e1").unwrap(), vec![]);
        log.close().unwrap();
    }

    #[test]
    fn names() {
        assert_eq!(watermark_name("gw-1", "e/1%", "hi"), "wm/gw-1/e%2F1%25/hi");
        assert_eq!(cloud_stream("gw-1", "orders-7"), "gw-1/orders-7");
    }
}
