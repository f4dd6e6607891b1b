//! [`IngestStore`] on any [`outrider_store::EventStore`] — PostgreSQL in particular, so that
//! several stateless cloud servers share one database.
//!
//! The contract is the one [`crate::LogStore`] keeps: a commit is ONE
//! [`EventStore::append_batch`] of the batch's events grouped into the cloud streams
//! `<node>/<stream>`, with the lane's watermark moved by a compare-and-set in the same
//! transaction; a watermark that moved meanwhile (another server committed the batch) writes
//! nothing and answers [`CommitOutcome::Conflict`] with its value. Watermarks are the store's
//! watermarks, named as [`watermark_name`] says.
//!
//! The ingest calls its store on tokio's blocking pool; this adapter runs the async store there
//! with the runtime handle it was made on.

use std::sync::Arc;

use outrider_runtime::sync::{CommitOutcome, CommitRequest};
use outrider_store::{EventStore, ExpectedVersion, StoreError as EsError, StreamAppend, Watermark};

use crate::store::{
    group_by_cloud_stream, watermark_name, watermark_prefix, IngestStore, StoreError,
};

/// The ingest's store on an [`EventStore`].
#[derive(Clone)]
pub struct EventStoreIngest {
    store: Arc<dyn EventStore>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for EventStoreIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStoreIngest")
            .field("backend", &self.store.backend())
            .finish()
    }
}

impl EventStoreIngest {
    /// Wraps `store`; must be called inside a tokio runtime (its handle runs the store's calls).
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        EventStoreIngest {
            store,
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// The wrapped store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }
}

impl IngestStore for EventStoreIngest {
    fn load_watermarks(&self, node: &str, epoch: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = watermark_prefix(node, epoch);
        let marks = self
            .handle
            .block_on(self.store.watermarks(&prefix))
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
        let watermark = Watermark {
            name,
            expected: req.prev_watermark,
            new: req.new_watermark,
        };
        if appends.is_empty() {
            // Nothing to write (cannot happen for a batch; the store refuses empty commits).
            return CommitOutcome::Unavailable("empty commit".into());
        }
        match self
            .handle
            .block_on(self.store.append_batch(appends, Some(watermark)))
        {
            Ok(_) => CommitOutcome::Committed,
            Err(EsError::WatermarkConflict { actual, .. }) => {
                CommitOutcome::Conflict { current: actual }
            }
            Err(e) => {
                tracing::warn!(node = %req.node, lane = %req.lane, error = %e, "commit failed");
                CommitOutcome::Unavailable(e.to_string())
            }
        }
    }
}
