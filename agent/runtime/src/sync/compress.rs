//! Batch compression: the codecs a session can negotiate and the encoding of a compressed batch.
//!
//! A compressed [`Batch`](outrider_proto::v1::Batch) carries no `events`; its `compressed` field
//! holds the zstd compression of the protobuf encoding of an
//! [`EventList`] of the batch's events, and its `codec` field says [`ZSTD`]. The agent offers the
//! codecs it accepts in `Hello.codecs`, the cloud picks one in `Welcome.codec` (empty: none), and
//! only the picked codec may be used on that connection. An uncompressed batch is always valid.
//!
//! Decoding is bounded: the decompressed encoding may not exceed a limit (the cloud's
//! `max_batch_bytes`). A frame that declares its content size (as single-shot compression, the
//! agent's, does) is checked against the limit before anything is allocated and decoded into
//! exactly that much memory; a frame without it (a streaming compressor's) is decoded as a stream
//! that stops one byte past the limit, with the decoder's window capped at the larger of the
//! limit and 8 MiB (what streaming compressors use up to level 19). A zstd bomb therefore costs at
//! most about `limit` bytes of decompression work and `max(limit, 8 MiB)` bytes of memory.

use std::fmt;
use std::io::Read;

use outrider_proto::v1::EventList;
use outrider_proto::Event;
use prost::Message;

/// The name of the zstd codec in `Hello.codecs`, `Welcome.codec` and `Batch.codec`.
pub const ZSTD: &str = "zstd";

/// The default zstd level of the agent. Measured on synthetic telemetry batches (UUID ids, small
/// JSON details, repeated sources and types; the size-optimised libzstd of the release build):
/// level 1 compressed 4 KiB to 700 KiB batches 3.7x to 4.9x at 240 to 370 MB/s, level 3 3.6x to
/// 4.4x at 240 to 330 MB/s, so level 1 is both faster and no worse.
pub const DEFAULT_LEVEL: i32 = 1;

/// Why a compressed batch could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The batch names a codec this side does not speak, or one the handshake did not pick.
    #[error(
        "codec {got:?} was not negotiated (the handshake picked {})",
        codec_name(negotiated)
    )]
    NotNegotiated { got: String, negotiated: String },
    /// A compressed batch also carries plain events, or carries no compressed bytes.
    #[error("malformed compressed batch: {0}")]
    Malformed(&'static str),
    /// The decompressed encoding would exceed the limit.
    #[error("decompressed batch exceeds {limit} bytes{}", declared.map(|d| format!(" (declares {d})")).unwrap_or_default())]
    TooLarge { limit: usize, declared: Option<u64> },
    /// The compressed bytes are not a valid zstd frame (or the decompressor failed).
    #[error("corrupt zstd data: {0}")]
    Corrupt(String),
    /// The decompressed bytes are not an `EventList` encoding.
    #[error("decompressed bytes are not an EventList: {0}")]
    Decode(String),
    /// Compression failed (a zstd internal error).
    #[error("zstd compression failed: {0}")]
    Compress(String),
}

fn codec_name(codec: &str) -> String {
    if codec.is_empty() {
        "no codec".to_owned()
    } else {
        format!("{codec:?}")
    }
}

/// A reusable zstd compression context (allocating one per batch would cost more than compressing
/// a small batch).
pub struct Compressor {
    level: i32,
    ctx: zstd::bulk::Compressor<'static>,
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor at `level` (clamped to zstd's range; 0 means zstd's default, 3).
    pub fn new(level: i32) -> Result<Self, CodecError> {
        let range = zstd::compression_level_range();
        let level = level.clamp(*range.start(), *range.end());
        let ctx =
            zstd::bulk::Compressor::new(level).map_err(|e| CodecError::Compress(e.to_string()))?;
        Ok(Self { level, ctx })
    }

    /// The level in use.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Compresses `raw` (an `EventList` encoding) into one zstd frame that declares its content
    /// size.
    pub fn compress(&mut self, raw: &[u8]) -> Result<Vec<u8>, CodecError> {
        self.ctx
            .compress(raw)
            .map_err(|e| CodecError::Compress(e.to_string()))
    }
}

/// The length of the `EventList` encoding of `events` (equal to the length of the `events` field
/// of an uncompressed `Batch`: both use a one-byte tag).
pub fn raw_len(events: &[Event]) -> usize {
    prost::encoding::message::encoded_len_repeated(1, events)
}

/// The `EventList` encoding of `events`.
pub fn encode_events(events: Vec<Event>) -> (Vec<u8>, EventList) {
    let list = EventList { events };
    (list.encode_to_vec(), list)
}

/// Decodes `compressed` (codec [`ZSTD`]) into its events, allowing at most `limit` decompressed
/// bytes. Returns the events and the decompressed length.
pub fn decompress_events(
    compressed: &[u8],
    limit: usize,
) -> Result<(Vec<Event>, usize), CodecError> {
    let raw = decompress(compressed, limit)?;
    let list = EventList::decode(raw.as_slice()).map_err(|e| CodecError::Decode(e.to_string()))?;
    Ok((list.events, raw.len()))
}

/// Decompresses zstd data to at most `limit` bytes (see the module docs for the bounds).
pub fn decompress(compressed: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    if compressed.is_empty() {
        return Err(CodecError::Malformed("no compressed bytes"));
    }
    let declared = zstd::zstd_safe::get_frame_content_size(compressed)
        .map_err(|_| CodecError::Corrupt("no valid zstd frame header".to_owned()))?;
    match declared {
        Some(size) => {
            let cap =
                usize::try_from(size)
                    .ok()
                    .filter(|s| *s <= limit)
                    .ok_or(CodecError::TooLarge {
                        limit,
                        declared: Some(size),
                    })?;
            // Decoding into exactly the declared size: more data (a lying header, or more frames
            // behind the first) makes the decompressor fail instead of growing the buffer.
            let out = zstd::bulk::decompress(compressed, cap).map_err(corrupt)?;
            if out.len() as u64 != size {
                return Err(CodecError::Corrupt(format!(
                    "frame declares {size} bytes but holds {}",
                    out.len()
                )));
            }
            Ok(out)
        }
        None => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(compressed).map_err(corrupt)?;
            dec.window_log_max(window_log_for(limit)).map_err(corrupt)?;
            let mut out = Vec::new();
            let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            dec.take(bound).read_to_end(&mut out).map_err(corrupt)?;
            if out.len() > limit {
                return Err(CodecError::TooLarge {
                    limit,
                    declared: None,
                });
            }
            Ok(out)
        }
    }
}

/// A decompressor failure. The size-optimised libzstd has no error texts ("Error strings
/// stripped"), so that one is replaced by what it can mean here.
fn corrupt(e: std::io::Error) -> CodecError {
    let text = e.to_string();
    CodecError::Corrupt(if text.contains("stripped") {
        "not a valid zstd frame, truncated, or asking for a larger window than allowed".to_owned()
    } else {
        text
    })
}

/// The window log a streamed frame may use: one that covers `limit` bytes, but at least 23 (8
/// MiB: streaming compressors size their window by level, not by content, up to 2^23 for level
/// 19) and at most 27 (the decoder's own default maximum).
fn window_log_for(limit: usize) -> u32 {
    let bits = usize::BITS - limit.saturating_sub(1).leading_zeros();
    bits.clamp(23, 27)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: u64) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                id: format!("e{i}"),
                detail: format!("{{\"v\":\"{}\"}}", "x".repeat(100)),
                position: i,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn round_trip_and_raw_len() {
        let evs = events(50);
        let n = raw_len(&evs);
        let (raw, list) = encode_events(evs.clone());
        assert_eq!(raw.len(), n);
        assert_eq!(list.events, evs);
        let mut c = Compressor::new(DEFAULT_LEVEL).unwrap();
        let z = c.compress(&raw).unwrap();
        assert!(z.len() < raw.len() / 4, "{} vs {}", z.len(), raw.len());
        let (back, len) = decompress_events(&z, raw.len()).unwrap();
        assert_eq!((back, len), (evs, raw.len()));
        // One byte under the content size: refused before decoding.
        assert_eq!(
            decompress_events(&z, raw.len() - 1),
            Err(CodecError::TooLarge {
                limit: raw.len() - 1,
                declared: Some(raw.len() as u64)
            })
        );
    }

    #[test]
    fn streamed_frames_without_content_size_are_bounded() {
        let raw = vec![b'a'; 100_000];
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        std::io::Write::write_all(&mut enc, &raw).unwrap();
        let z = enc.finish().unwrap();
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&z),
            Ok(None)
        ));
        assert_eq!(decompress(&z, 100_000).unwrap(), raw);
        assert_eq!(
            decompress(&z, 99_999),
            Err(CodecError::TooLarge {
                limit: 99_999,
                declared: None
            })
        );
        // A frame asking for a 2^26 window (64 MiB of decoder memory) is refused outright.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.window_log(26).unwrap();
        std::io::Write::write_all(&mut enc, b"tiny").unwrap();
        let z = enc.finish().unwrap();
        assert!(matches!(decompress(&z, 1000), Err(CodecError::Corrupt(_))));
    }

    #[test]
    fn garbage_is_corrupt() {
        assert!(matches!(
            decompress(b"not zstd at all", 1000),
            Err(CodecError::Corrupt(_))
        ));
        assert_eq!(
            decompress(b"", 1000),
            Err(CodecError::Malformed("no compressed bytes"))
        );
        let mut c = Compressor::new(1).unwrap();
        let mut z = c.compress(&[7u8; 4000]).unwrap();
        let mid = z.len() / 2;
        z.truncate(mid);
        assert!(matches!(
            decompress(&z, 10_000),
            Err(CodecError::Corrupt(_))
        ));
        // Valid zstd, but not an EventList.
        let z = c.compress(&[0xff; 64]).unwrap();
        assert!(matches!(
            decompress_events(&z, 1000),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn window_logs() {
        assert_eq!(window_log_for(0), 23);
        assert_eq!(window_log_for(1 << 20), 23);
        assert_eq!(window_log_for(1 << 24), 24);
        assert_eq!(window_log_for((1 << 24) + 1), 25);
        assert_eq!(window_log_for(usize::MAX), 27);
    }
}
