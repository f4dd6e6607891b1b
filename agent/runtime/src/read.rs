//! Reads: straight from sled, never past the committed head.

use std::sync::atomic::Ordering;

use outrider_proto::Event;
use prost::Message;

use crate::codec::{self, RecordIter};
use crate::error::{Error, Result};
use crate::log::{Log, Shared};

/// Where a stream read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrom {
    /// The first event (forwards) — backwards from the start reads nothing but version 0.
    Start,
    /// This version.
    Version(u64),
    /// The last event (backwards) — forwards from the end reads nothing.
    End,
}

/// Read direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forwards,
    Backwards,
}

/// A page of a stream read.
#[derive(Debug, Clone, Default)]
pub struct ReadStream {
    pub events: Vec<Event>,
    /// True when the read reached the end (forwards) or the beginning (backwards) of the stream.
    pub end: bool,
}

/// (stream id, next version) of a stream as far as positions below `limit` go, or `None` if it
/// has no event there. (The committer's chunks for a group being synced are already in sled;
/// readers must not count them before the group is published.)
pub(crate) fn stream_info_below(sh: &Shared, name: &str, limit: u64) -> Result<Option<(u64, u64)>> {
    let Some(sid) = sh.db.get(codec::stream_key(name))? else {
        return Ok(None);
    };
    let sid =
        codec::be_u64(&sid).ok_or_else(|| Error::Storage(format!("stream {name:?}: bad id")))?;
    // Versions increase with positions, so the visible part of a stream is a prefix.
    for kv in sh.db.scan_prefix(codec::chunk_prefix(sid)).rev() {
        let (k, v) = kv?;
        let first = codec::be_u64(&k[9..]).unwrap_or(0);
        let visible = codec::decode_chunk(first, &v)?
            .iter()
            .take_while(|p| **p < limit)
            .count();
        if visible > 0 {
            return Ok(Some((sid, first + visible as u64)));
        }
    }
    Ok(None)
}

/// [`stream_info_below`] the published head: what readers may see.
pub(crate) fn stream_info(sh: &Shared, name: &str) -> Result<Option<(u64, u64)>> {
    stream_info_below(sh, name, sh.head.load(Ordering::Acquire))
}

/// The stream's last index chunk: (first version, positions).
pub(crate) fn last_chunk(sh: &Shared, sid: u64) -> Result<Option<(u64, Vec<u64>)>> {
    let Some(kv) = sh.db.scan_prefix(codec::chunk_prefix(sid)).next_back() else {
        return Ok(None);
    };
    let (k, v) = kv?;
    let first = codec::be_u64(&k[9..]).unwrap_or(0);
    Ok(Some((first, codec::decode_chunk(first, &v)?)))
}

/// Decodes one event payload; `pos` names it in errors.
pub(crate) fn decode_event(pos: u64, payload: &[u8]) -> Result<Event> {
    Event::decode(payload).map_err(|e| Error::Corrupt {
        position: pos,
        reason: format!("undecodable event: {e}"),
    })
}

/// Finds events by position, keeping the last record it read.
pub(crate) struct PositionReader<'a> {
    sh: &'a Shared,
    /// Positions at or past this are not visible to this reader.
    limit: u64,
    cached: Option<(u64, u64, sled::IVec)>,
}

impl<'a> PositionReader<'a> {
    /// A reader of committed (published) positions.
    pub(crate) fn new(sh: &'a Shared) -> Self {
        Self::with_limit(sh, sh.head.load(Ordering::Acquire))
    }

    /// A reader of positions below `limit` (the committer reads what it applied, before the
    /// syncer publishes it).
    pub(crate) fn with_limit(sh: &'a Shared, limit: u64) -> Self {
        Self {
            sh,
            limit,
            cached: None,
        }
    }

    /// The event at `pos`, or `None` if it was reclaimed or never committed.
    pub(crate) fn get(&mut self, pos: u64) -> Result<Option<Event>> {
        if pos >= self.limit {
            return Ok(None);
        }
        let hit = matches!(&self.cached, Some((first, end, _)) if (*first..*end).contains(&pos));
        if !hit {
            let Some(kv) = self.sh.db.range(..=codec::log_key(pos)).next_back() else {
                return Ok(None);
            };
            let (k, v) = kv?;
            if k.first() != Some(&codec::LOG) {
                return Ok(None);
            }
            let first = codec::be_u64(&k[1..]).unwrap_or(0);
            let h = codec::record_header(first, &v)?;
            self.cached = Some((first, first + u64::from(h.count), v));
        }
        let Some((first, end, bytes)) = &self.cached else {
            return Ok(None);
        };
        if pos >= *end {
            return Ok(None);
        }
        let (_, it) = RecordIter::new(*first, bytes)?;
        for raw in it {
            let raw = raw?;
            if raw.position == pos {
                return decode_event(pos, raw.payload).map(Some);
            }
        }
        Ok(None)
    }
}

impl Log {
    /// Reads up to `max` events of the whole log in position order, from `from` (or the first
    /// retained position after it).
    pub fn read_all(&self, from: u64, max: usize) -> Result<Vec<Event>> {
        let available = self.head().saturating_sub(from);
        let mut out =
            Vec::with_capacity(usize::try_from(available).unwrap_or(max).min(max).min(4096));
        scan_log(self.shared(), from, |_, payload, pos| {
            out.push(decode_event(pos, payload)?);
            Ok(out.len() < max)
        })?;
        Ok(out)
    }

    /// Reads up to `max` events of one stream.
    pub fn read_stream(
        &self,
        stream: &str,
        from: StreamFrom,
        direction: Direction,
        max: usize,
    ) -> Result<ReadStream> {
        let sh = self.shared();
        read_stream(sh, PositionReader::new(sh), stream, from, direction, max)
    }
}

/// Reads up to `max` events of one stream (see [`Log::read_stream`]).
pub(crate) fn read_stream(
    sh: &Shared,
    mut reader: PositionReader<'_>,
    stream: &str,
    from: StreamFrom,
    direction: Direction,
    max: usize,
) -> Result<ReadStream> {
    {
        let Some((sid, next_version)) = stream_info(sh, stream)? else {
            return Ok(ReadStream {
                events: vec![],
                end: true,
            });
        };
        let mut out = ReadStream::default();
        match direction {
            Direction::Forwards => {
                let from = match from {
                    StreamFrom::Start => 0,
                    StreamFrom::Version(v) => v,
                    StreamFrom::End => next_version,
                };
                // Start at the chunk holding `from`.
                let start_key = sh
                    .db
                    .range(codec::chunk_key(sid, 0)..=codec::chunk_key(sid, from))
                    .next_back()
                    .transpose()?
                    .map_or(codec::chunk_key(sid, from).to_vec(), |(k, _)| k.to_vec());
                let end_key = codec::chunk_key(sid, u64::MAX);
                'chunks: for kv in sh.db.range(start_key..=end_key.to_vec()) {
                    let (k, v) = kv?;
                    let first = codec::be_u64(&k[9..]).unwrap_or(0);
                    for (i, pos) in codec::decode_chunk(first, &v)?.into_iter().enumerate() {
                        let version = first + i as u64;
                        if version < from {
                            continue;
                        }
                        if out.events.len() >= max {
                            break 'chunks;
                        }
                        if let Some(e) = reader.get(pos)? {
                            out.events.push(e);
                        }
                    }
                }
                out.end = out
                    .events
                    .last()
                    .is_none_or(|e| e.version + 1 >= next_version)
                    || from >= next_version;
            }
            Direction::Backwards => {
                let from = match from {
                    StreamFrom::Start => 0,
                    StreamFrom::Version(v) => v.min(next_version - 1),
                    StreamFrom::End => next_version - 1,
                };
                'rchunks: for kv in sh
                    .db
                    .range(codec::chunk_key(sid, 0)..=codec::chunk_key(sid, from))
                    .rev()
                {
                    let (k, v) = kv?;
                    let first = codec::be_u64(&k[9..]).unwrap_or(0);
                    let positions = codec::decode_chunk(first, &v)?;
                    for (i, pos) in positions.into_iter().enumerate().rev() {
                        let version = first + i as u64;
                        if version > from {
                            continue;
                        }
                        if out.events.len() >= max {
                            break 'rchunks;
                        }
                        if let Some(e) = reader.get(pos)? {
                            out.events.push(e);
                        }
                    }
                }
                out.end = out.events.last().is_none_or(|e| e.version == 0);
            }
        }
        Ok(out)
    }
}

/// Walks committed records from `from`, calling `f(class, payload, position)` for each event at
/// or after `from` until it returns `Ok(false)`.
pub(crate) fn scan_log(
    sh: &Shared,
    from: u64,
    mut f: impl FnMut(u8, &[u8], u64) -> Result<bool>,
) -> Result<()> {
    let head = sh.head.load(Ordering::Acquire);
    if from >= head {
        return Ok(());
    }
    // The record holding `from` may start before it.
    let start = sh
        .db
        .range(codec::log_key(0)..=codec::log_key(from))
        .next_back()
        .transpose()?
        .map_or(from, |(k, _)| codec::be_u64(&k[1..]).unwrap_or(from));
    for kv in sh.db.range(codec::log_key(start)..codec::log_key(head)) {
        let (k, v) = kv?;
        let first = codec::be_u64(&k[1..]).unwrap_or(0);
        let (_, it) = RecordIter::new(first, &v)?;
        for raw in it {
            let raw = raw?;
            if raw.position < from {
                continue;
            }
            if raw.position >= head {
                return Ok(());
            }
            if !f(raw.class, raw.payload, raw.position)? {
                return Ok(());
            }
        }
    }
    Ok(())
}
