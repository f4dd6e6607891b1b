//! The store-and-forward outbox: a view of the log per destination and priority class.
//!
//! For each class, each destination has a durable cursor (every class event below it is
//! acknowledged) and the class has a drop floor (every class event below it was dropped by a cap
//! or TTL). The class's *release point* is `max(floor, min over destinations of cursor)`; events at
//! or after it are *pending* and count against the class's caps. Accounting is per record (a
//! record holds at most a few KiB of events), so a record counts as pending until all its events
//! in the class are released.

use std::sync::atomic::Ordering;

use outrider_proto::Event;

use crate::codec::{self, ClassEntry, ClassState, RecordIter};
use crate::error::Result;
use crate::log::{Log, Shared};
use crate::read::decode_event;

/// Run-time state of one class (mirrored for status readers; the committer owns the writes).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClassRt {
    pub(crate) state: ClassState,
    /// Per destination (configuration order): next unacknowledged position.
    pub(crate) cursors: Vec<u64>,
    pub(crate) pending_events: u64,
    pub(crate) pending_bytes: u64,
    pub(crate) rejected_events: u64,
}

impl ClassRt {
    pub(crate) fn release_point(&self) -> u64 {
        let min_cursor = self.cursors.iter().copied().min().unwrap_or(0);
        self.state.floor.max(min_cursor)
    }
}

/// Outbox state: one entry per configured class, in configuration order.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutboxState {
    pub(crate) classes: Vec<ClassRt>,
}

impl OutboxState {
    /// Loads cursors and floors, and sums pending figures from the class index.
    pub(crate) fn load(sh: &Shared) -> Result<Self> {
        let mut classes = Vec::with_capacity(sh.classes.len());
        for meta in &sh.classes {
            let state = match sh.db.get(codec::class_state_key(meta.id))? {
                Some(v) => ClassState::decode(&v)?,
                None => ClassState::default(),
            };
            let mut cursors = Vec::with_capacity(sh.cfg.destinations.len());
            for d in &sh.cfg.destinations {
                let c = match sh.db.get(codec::cursor_key(meta.id, d))? {
                    Some(v) => codec::be_u64(&v).unwrap_or(0),
                    None => 0,
                };
                cursors.push(c);
            }
            let mut rt = ClassRt {
                state,
                cursors,
                ..Default::default()
            };
            if !sh.cfg.destinations.is_empty() {
                for e in entries_from(sh, meta.id, rt.release_point()) {
                    let (_, e) = e?;
                    rt.pending_events += e.count;
                    rt.pending_bytes += e.bytes;
                }
            }
            classes.push(rt);
        }
        Ok(Self { classes })
    }
}

/// Class entries whose record ends after `point`, in position order: (record position, entry).
pub(crate) fn entries_from(
    sh: &Shared,
    class: u8,
    point: u64,
) -> impl Iterator<Item = Result<(u64, ClassEntry)>> + '_ {
    // The entry of the record holding `point` starts at or before it.
    let start = sh
        .db
        .range(codec::class_entry_key(class, 0)..=codec::class_entry_key(class, point))
        .next_back()
        .and_then(|r| r.ok())
        .and_then(|(k, _)| codec::be_u64(&k[2..]))
        .unwrap_or(point);
    sh.db
        .range(codec::class_entry_key(class, start)..=codec::class_entry_key(class, u64::MAX))
        .filter_map(move |kv| {
            let parsed = kv.map_err(Into::into).and_then(|(k, v)| {
                let pos = codec::be_u64(&k[2..]).unwrap_or(0);
                Ok((pos, ClassEntry::decode(pos, &v)?))
            });
            match parsed {
                Ok((_, e)) if e.end <= point => None,
                other => Some(other),
            }
        })
}

/// A class's outbox figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassStatus {
    pub name: String,
    pub pending_events: u64,
    pub pending_bytes: u64,
    /// Dropped by the drop-oldest policy.
    pub dropped_events: u64,
    pub dropped_bytes: u64,
    /// Dropped because they outlived the class TTL.
    pub expired_events: u64,
    pub expired_bytes: u64,
    /// Refused by the reject-new policy since the log opened.
    pub rejected_events: u64,
    /// When the oldest undelivered event of the class was committed (Unix ms, the log's clock);
    /// `None` when nothing is pending. The delivery lag in time is `now - this`.
    pub oldest_pending_unix_ms: Option<i64>,
    /// Every class event below this was dropped.
    pub floor: u64,
    /// Per destination: next unacknowledged position.
    pub cursors: Vec<(String, u64)>,
}

/// What a [`Log::maintain`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    pub expired_events: u64,
    pub reclaimed_events: u64,
    pub reclaimed_records: u64,
    /// The first retained position after the pass.
    pub start: u64,
    /// The pass stopped at its per-pass limit with more to reclaim: call again. (Each pass runs
    /// on the writer thread, so a bounded pass bounds how long appends wait behind it.)
    pub more: bool,
}

impl Log {
    /// Figures of every class, highest priority first.
    pub fn outbox_status(&self) -> Vec<ClassStatus> {
        let sh = self.shared();
        let ob = sh.outbox.lock();
        sh.classes
            .iter()
            .zip(&ob.classes)
            .map(|(meta, rt)| ClassStatus {
                name: meta.cfg.name.clone(),
                pending_events: rt.pending_events,
                pending_bytes: rt.pending_bytes,
                dropped_events: rt.state.dropped_events,
                dropped_bytes: rt.state.dropped_bytes,
                expired_events: rt.state.expired_events,
                expired_bytes: rt.state.expired_bytes,
                rejected_events: rt.rejected_events,
                // The record holding the oldest pending event (its commit time): one index
                // lookup per class.
                oldest_pending_unix_ms: if rt.pending_events == 0 {
                    None
                } else {
                    entries_from(sh, meta.id, rt.release_point())
                        .next()
                        .and_then(|e| e.ok())
                        .map(|(_, e)| e.commit_ms)
                },
                floor: rt.state.floor,
                cursors: sh
                    .cfg
                    .destinations
                    .iter()
                    .cloned()
                    .zip(rt.cursors.iter().copied())
                    .collect(),
            })
            .collect()
    }

    /// The next unacknowledged position of `dest` in `class` (after drops).
    pub fn outbox_cursor(&self, dest: &str, class: &str) -> Result<u64> {
        let sh = self.shared();
        let (d, c) = (sh.dest_index(dest)?, sh.class_index(Some(class))?);
        let ob = sh.outbox.lock();
        let rt = &ob.classes[c];
        Ok(rt.cursors[d].max(rt.state.floor))
    }

    /// Reads pending `class` events for `dest`, in position order, starting at `after + 1` (or at the
    /// destination's cursor when `after` is `None`), up to `max_events` / about `max_bytes`.
    /// Only durable events are handed out, so nothing a power cut could take back leaves the node.
    pub fn outbox_read(
        &self,
        dest: &str,
        class: &str,
        after: Option<u64>,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>> {
        let sh = self.shared();
        let (d, c) = (sh.dest_index(dest)?, sh.class_index(Some(class))?);
        let id = sh.classes[c].id;
        let from = {
            let ob = sh.outbox.lock();
            let rt = &ob.classes[c];
            let cursor = rt.cursors[d].max(rt.state.floor);
            after.map_or(cursor, |a| (a + 1).max(cursor))
        };
        let limit = sh.durable.load(Ordering::Acquire);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'entries: for entry in entries_from(sh, id, from) {
            let (pos, _) = entry?;
            if pos >= limit {
                break;
            }
            let Some(record) = sh.db.get(codec::log_key(pos))? else {
                continue; // reclaimed meanwhile
            };
            let (_, it) = RecordIter::new(pos, &record)?;
            for raw in it {
                let raw = raw?;
                if raw.position < from || raw.class != id {
                    continue;
                }
                if raw.position >= limit
                    || out.len() >= max_events
                    || (bytes >= max_bytes && !out.is_empty())
                {
                    break 'entries;
                }
                bytes += raw.payload.len();
                out.push(decode_event(raw.position, raw.payload)?);
            }
        }
        Ok(out)
    }
}
