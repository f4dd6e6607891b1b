//! On-disk layout: key spaces of the one sled tree, and the checksummed record formats.
//!
//! Everything lives in one sled tree so that one commit group is one atomic `apply_batch`.
//!
//! | key | value |
//! | --- | --- |
//! | `L` pos | a record: events at positions pos, pos+1, ... (see [`RecordWriter`]) |
//! | `S` sid first_version | a stream chunk: positions of versions first_version.. |
//! | `M` name | stream id (u64) |
//! | `Q` class pos | class entry: that class's events in record `L` pos (count, bytes, oldest time) |
//! | `C` class dest | a destination's cursor for a class: every class event below it is acknowledged |
//! | `D` class | class state: drop floor and drop counters |
//! | `K` name | class id assigned to a class name |
//! | `P` sid | the stream's latest snapshot |
//! | `G` name | log metadata (next stream id, log id, reclaimed-through position) |
//! | `W` name | a checkpoint (u64), moved atomically with appends |
//!
//! Integers in keys are big-endian so that sled's byte order is numeric order.

use crate::error::{Error, Result};

pub(crate) const LOG: u8 = b'L';
pub(crate) const CHUNK: u8 = b'S';
pub(crate) const STREAM: u8 = b'M';
pub(crate) const CLASS_ENTRY: u8 = b'Q';
pub(crate) const CURSOR: u8 = b'C';
pub(crate) const CLASS_STATE: u8 = b'D';
pub(crate) const CLASS_ID: u8 = b'K';
pub(crate) const SNAPSHOT: u8 = b'P';

pub(crate) const CHECKPOINT: u8 = b'W';
pub(crate) const META_NEXT_SID: &[u8] = b"Gnext_sid";
pub(crate) const META_LOG_ID: &[u8] = b"Glog_id";
pub(crate) const META_RECLAIMED: &[u8] = b"Greclaimed";

const RECORD_MAGIC: u8 = 0xB1;
const RECORD_FORMAT: u8 = 1;
/// magic, format, count u32, commit_ms i64, class_mask u32, header crc u32.
pub(crate) const RECORD_HEADER_LEN: usize = 1 + 1 + 4 + 8 + 4 + 4;
/// len u32, crc u32, class u8.
pub(crate) const EVENT_HEADER_LEN: usize = 4 + 4 + 1;

pub(crate) fn key_u64(prefix: u8, v: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&v.to_be_bytes());
    k
}

pub(crate) fn log_key(pos: u64) -> [u8; 9] {
    key_u64(LOG, pos)
}

pub(crate) fn chunk_key(sid: u64, first_version: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = CHUNK;
    k[1..9].copy_from_slice(&sid.to_be_bytes());
    k[9..].copy_from_slice(&first_version.to_be_bytes());
    k
}

pub(crate) fn chunk_prefix(sid: u64) -> [u8; 9] {
    key_u64(CHUNK, sid)
}

pub(crate) fn stream_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(STREAM);
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn class_entry_key(class: u8, pos: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = CLASS_ENTRY;
    k[1] = class;
    k[2..].copy_from_slice(&pos.to_be_bytes());
    k
}

pub(crate) fn cursor_key(class: u8, dest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + dest.len());
    k.push(CURSOR);
    k.push(class);
    k.extend_from_slice(dest.as_bytes());
    k
}

pub(crate) fn class_state_key(class: u8) -> [u8; 2] {
    [CLASS_STATE, class]
}

pub(crate) fn class_id_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(CLASS_ID);
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn checkpoint_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(CHECKPOINT);
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn snapshot_key(sid: u64) -> [u8; 9] {
    key_u64(SNAPSHOT, sid)
}

pub(crate) fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

pub(crate) fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn corrupt(position: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        position,
        reason: reason.into(),
    }
}

/// Builds one record: a header and checksummed events at consecutive positions.
pub(crate) struct RecordWriter {
    buf: Vec<u8>,
    count: u32,
    class_mask: u32,
}

impl RecordWriter {
    pub(crate) fn new(commit_ms: i64) -> Self {
        let mut buf = Vec::with_capacity(16 * 1024);
        buf.extend_from_slice(&[RECORD_MAGIC, RECORD_FORMAT]);
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&commit_ms.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        Self {
            buf,
            count: 0,
            class_mask: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Appends one event's encoded bytes, given in parts (the client's encoding and the fields
    /// the committer adds).
    pub(crate) fn push(&mut self, class: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut h = crc32fast::Hasher::new();
        h.update(&[class]);
        for p in parts {
            h.update(p);
        }
        // Payload length is bounded by the event size limit (far below u32::MAX).
        self.buf.reserve(EVENT_HEADER_LEN + len);
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        self.buf.extend_from_slice(&h.finalize().to_le_bytes());
        self.buf.push(class);
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.count += 1;
        self.class_mask |= 1 << class;
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf[2..6].copy_from_slice(&self.count.to_le_bytes());
        self.buf[14..18].copy_from_slice(&self.class_mask.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[..18]);
        self.buf[18..22].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// A record's header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHeader {
    pub(crate) count: u32,
    pub(crate) commit_ms: i64,
    pub(crate) class_mask: u32,
}

/// Reads and checks a record's header. `pos` is the record's first position (for errors).
pub(crate) fn record_header(pos: u64, bytes: &[u8]) -> Result<RecordHeader> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(corrupt(pos, "record shorter than its header"));
    }
    if bytes[0] != RECORD_MAGIC {
        return Err(corrupt(pos, format!("bad record magic {:#x}", bytes[0])));
    }
    if bytes[1] != RECORD_FORMAT {
        return Err(corrupt(pos, format!("unknown record format {}", bytes[1])));
    }
    let stored = le_u32(bytes, 18).unwrap_or(0);
    if crc32fast::hash(&bytes[..18]) != stored {
        return Err(corrupt(pos, "record header checksum mismatch"));
    }
    Ok(RecordHeader {
        count: le_u32(bytes, 2).unwrap_or(0),
        commit_ms: le_u64(bytes, 6).unwrap_or(0) as i64,
        class_mask: le_u32(bytes, 14).unwrap_or(0),
    })
}

/// One event slot of a record, not yet decoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawEvent<'a> {
    pub(crate) position: u64,
    pub(crate) class: u8,
    pub(crate) payload: &'a [u8],
}

/// Iterates a record's events, checking each checksum. Yields an error (and then stops) at the
/// first torn or corrupt event, naming its position.
pub(crate) struct RecordIter<'a> {
    bytes: &'a [u8],
    at: usize,
    next_pos: u64,
    remaining: u32,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    pub(crate) fn new(first_pos: u64, bytes: &'a [u8]) -> Result<(RecordHeader, Self)> {
        let header = record_header(first_pos, bytes)?;
        Ok((
            header,
            Self {
                bytes,
                at: RECORD_HEADER_LEN,
                next_pos: first_pos,
                remaining: header.count,
                failed: false,
            },
        ))
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RawEvent<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.remaining == 0 {
            if self.at != self.bytes.len() {
                self.failed = true;
                return Some(Err(corrupt(
                    self.next_pos,
                    "trailing bytes after the record's last event",
                )));
            }
            return None;
        }
        let pos = self.next_pos;
        let b = self.bytes;
        let at = self.at;
        let (Some(len), Some(crc), Some(&class)) =
            (le_u32(b, at), le_u32(b, at + 4), b.get(at + 8))
        else {
            self.failed = true;
            return Some(Err(corrupt(pos, "torn event header")));
        };
        let start = at + EVENT_HEADER_LEN;
        let Some(payload) = start
            .checked_add(len as usize)
            .and_then(|end| b.get(start..end))
        else {
            self.failed = true;
            return Some(Err(corrupt(pos, "torn event payload")));
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&[class]);
        h.update(payload);
        if h.finalize() != crc {
            self.failed = true;
            return Some(Err(corrupt(pos, "event checksum mismatch")));
        }
        self.at = start + len as usize;
        self.next_pos += 1;
        self.remaining -= 1;
        Some(Ok(RawEvent {
            position: pos,
            class,
            payload,
        }))
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Encodes a stream chunk: the positions of consecutive versions, delta-coded, with a checksum.
pub(crate) fn encode_chunk(positions: &[u64]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + positions.len() * 3);
    put_varint(&mut buf, positions.len() as u64);
    let mut prev = 0u64;
    for &p in positions {
        put_varint(&mut buf, p.wrapping_sub(prev));
        prev = p;
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Decodes a stream chunk. `pos_hint` names the chunk in errors.
pub(crate) fn decode_chunk(pos_hint: u64, bytes: &[u8]) -> Result<Vec<u64>> {
    let bad = || corrupt(pos_hint, "stream index chunk is corrupt");
    let body_len = bytes.len().checked_sub(4).ok_or_else(bad)?;
    let stored = le_u32(bytes, body_len).ok_or_else(bad)?;
    if crc32fast::hash(&bytes[..body_len]) != stored {
        return Err(bad());
    }
    let body = &bytes[..body_len];
    let mut at = 0;
    let n = get_varint(body, &mut at).ok_or_else(bad)?;
    let mut out = Vec::with_capacity(n.min(1 << 16) as usize);
    let mut prev = 0u64;
    for _ in 0..n {
        prev = prev.wrapping_add(get_varint(body, &mut at).ok_or_else(bad)?);
        out.push(prev);
    }
    if at != body.len() {
        return Err(bad());
    }
    Ok(out)
}

/// A class's share of one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClassEntry {
    pub(crate) count: u64,
    pub(crate) bytes: u64,
    pub(crate) commit_ms: i64,
    /// One past the position of the class's last event in the record (logs written before
    /// 0.1.x's fix hold one past the record's last position: such entries release later, never
    /// earlier, than they could).
    pub(crate) end: u64,
}

impl ClassEntry {
    pub(crate) fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.commit_ms.to_le_bytes());
        b[24..].copy_from_slice(&self.end.to_le_bytes());
        b
    }

    pub(crate) fn decode(pos: u64, b: &[u8]) -> Result<Self> {
        let bad = || corrupt(pos, "class index entry is corrupt");
        Ok(Self {
            count: le_u64(b, 0).ok_or_else(bad)?,
            bytes: le_u64(b, 8).ok_or_else(bad)?,
            commit_ms: le_u64(b, 16).ok_or_else(bad)? as i64,
            end: le_u64(b, 24).ok_or_else(bad)?,
        })
    }
}

/// A class's persistent drop state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClassState {
    /// Class events below this position were dropped (cap or TTL) and will not be delivered.
    pub(crate) floor: u64,
    pub(crate) dropped_events: u64,
    pub(crate) dropped_bytes: u64,
    pub(crate) expired_events: u64,
    pub(crate) expired_bytes: u64,
}

impl ClassState {
    pub(crate) fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        for (i, v) in [
            self.floor,
            self.dropped_events,
            self.dropped_bytes,
            self.expired_events,
            self.expired_bytes,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        let bad = || Error::Storage("class state is corrupt".into());
        Ok(Self {
            floor: le_u64(b, 0).ok_or_else(bad)?,
            dropped_events: le_u64(b, 8).ok_or_else(bad)?,
            dropped_bytes: le_u64(b, 16).ok_or_else(bad)?,
            expired_events: le_u64(b, 24).ok_or_else(bad)?,
            expired_bytes: le_u64(b, 32).ok_or_else(bad)?,
        })
    }
}

/// Encodes a snapshot value: version, payload, checksum.
pub(crate) fn encode_snapshot(version: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + payload.len());
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(payload);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode_snapshot(b: &[u8]) -> Result<(u64, Vec<u8>)> {
    let bad = || Error::Storage("snapshot is corrupt".into());
    let body_len = b.len().checked_sub(4).ok_or_else(bad)?;
    if body_len < 8 || crc32fast::hash(&b[..body_len]) != le_u32(b, body_len).ok_or_else(bad)? {
        return Err(bad());
    }
    Ok((le_u64(b, 0).ok_or_else(bad)?, b[8..body_len].to_vec()))
}

/// Protobuf tags of the envelope fields the committer appends to a client's encoding
/// (`version` = 11, `position` = 12, `origin_seq` = 14; varint wire type).
const TAG_VERSION: u8 = 11 << 3;
const TAG_POSITION: u8 = 12 << 3;
const TAG_ORIGIN_SEQ: u8 = 14 << 3;
/// Longest suffix [`place_suffix`] writes: three one-byte tags and three 10-byte varints.
pub(crate) const MAX_PLACE_SUFFIX: usize = 33;

/// Encodes the fields that place an event in the log, to be appended to its encoding (which was
/// made with them at their default of zero, so they are absent there). Protobuf decoders accept
/// fields in any order; zero values are omitted as proto3 does.
pub(crate) fn place_suffix(
    version: u64,
    position: u64,
    origin_seq: Option<u64>,
) -> ([u8; MAX_PLACE_SUFFIX], usize) {
    let mut out = [0u8; MAX_PLACE_SUFFIX];
    let mut n = 0;
    for (tag, v) in [
        (TAG_VERSION, version),
        (TAG_POSITION, position),
        (TAG_ORIGIN_SEQ, origin_seq.unwrap_or(0)),
    ] {
        if v == 0 {
            continue;
        }
        out[n] = tag;
        n += 1;
        let mut v = v;
        while v >= 0x80 {
            out[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        out[n] = v as u8;
        n += 1;
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_corruption_is_located() {
        let mut w = RecordWriter::new(42);
        w.push(0, &[b"fir", b"st"]);
        w.push(3, &[b"second"]);
        w.push(1, &[]);
        let bytes = w.finish();
        let (h, it) = RecordIter::new(100, &bytes).unwrap();
        assert_eq!((h.count, h.commit_ms, h.class_mask), (3, 42, 0b1011));
        let evs: Vec<_> = it.collect::<Result<_>>().unwrap();
        assert_eq!(evs[1].position, 101);
        assert_eq!(evs[1].payload, b"second");
        assert_eq!(evs[1].class, 3);

        // Flip a byte in the second event's payload: the first still reads, the second is named.
        let mut bad = bytes.clone();
        let at = RECORD_HEADER_LEN + EVENT_HEADER_LEN + 5 + EVENT_HEADER_LEN;
        bad[at] ^= 0xff;
        let (_, it) = RecordIter::new(100, &bad).unwrap();
        let res: Vec<_> = it.collect();
        assert!(res[0].is_ok());
        assert!(matches!(res[1], Err(Error::Corrupt { position: 101, .. })));
        assert_eq!(res.len(), 2);

        // A torn record (cut short inside its last event, at 9) is reported, not panicked on.
        let torn = &bytes[..bytes.len() - 3];
        let (_, it) = RecordIter::new(7, torn).unwrap();
        let res: Vec<_> = it.collect();
        assert!(matches!(
            res.last(),
            Some(Err(Error::Corrupt { position: 9, .. }))
        ));

        let mut hdr = bytes.clone();
        hdr[3] ^= 1;
        assert!(matches!(
            RecordIter::new(9, &hdr),
            Err(Error::Corrupt { position: 9, .. })
        ));
    }

    #[test]
    fn place_suffix_decodes_as_the_envelope_fields() {
        use prost::Message;
        let base = outrider_proto::Event {
            id: "x".into(),
            stream: "s".into(),
            origin_node: "n".into(),
            ..Default::default()
        };
        for (v, p, o) in [
            (0, 0, None),
            (1, 300, Some(300)),
            (u64::MAX, u64::MAX - 1, Some(u64::MAX)),
        ] {
            let mut bytes = base.encode_to_vec();
            let (suf, n) = place_suffix(v, p, o);
            bytes.extend_from_slice(&suf[..n]);
            let e = outrider_proto::Event::decode(bytes.as_slice()).unwrap();
            assert_eq!(
                (e.version, e.position, e.origin_seq),
                (v, p, o.unwrap_or(0))
            );
            assert_eq!(e.id, "x");
        }
    }

    #[test]
    fn chunk_round_trip() {
        let ps = vec![5, 6, 90, 1 << 40, (1 << 40) + 1];
        let enc = encode_chunk(&ps);
        assert_eq!(decode_chunk(0, &enc).unwrap(), ps);
        let mut bad = enc.clone();
        bad[1] ^= 0x10;
        assert!(decode_chunk(0, &bad).is_err());
    }
}
