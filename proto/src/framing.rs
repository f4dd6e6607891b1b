//! Frames on a QUIC stream: each a prost message with a varint length prefix (protobuf's
//! length-delimited form, `prost::Message::encode_length_delimited`), at most
//! [`MAX_FRAME_BYTES`] long.
//!
//! Both ends use this one codec: the agent's QUIC client and the cloud's QUIC server.

use prost::Message;

/// The largest frame body accepted or sent: 8 MiB and a margin. A batch holds at most about
/// 1 MiB of events plus one event of at most 256 KiB, so this is never reached by a sane peer.
pub const MAX_FRAME_BYTES: usize = (8 << 20) + (64 << 10);

/// The ALPN protocol of the QUIC sync transport.
pub const ALPN: &[u8] = b"outrider-sync/1";

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces a frame over the limit.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    /// The length prefix is not a valid varint.
    #[error("malformed frame length prefix")]
    BadLength,
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({0} bytes of it received)")]
    Truncated(usize),
}

/// Encodes `msg` as one frame (length prefix and body), appended to `out`.
pub fn encode_frame<M: Message>(msg: &M, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_BYTES,
        });
    }
    out.reserve(len + prost::length_delimiter_len(len));
    msg.encode_length_delimited(out)
        .map_err(|e| FrameError::Decode(e.to_string()))
}

/// Splits a byte stream into frames: [`FrameDecoder::push`] what arrives, then take frames with
/// [`FrameDecoder::next_frame`] until it answers `None`.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` before this are consumed.
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received and not yet part of a frame taken.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, if one has arrived. A length over [`MAX_FRAME_BYTES`] is an error
    /// as soon as its prefix is read, before the body is buffered.
    pub fn next_frame<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        let data = &self.buf[self.start..];
        // A varint is at most 10 bytes; its last byte has the high bit clear.
        let Some(end) = data.iter().take(10).position(|b| b & 0x80 == 0) else {
            return if data.len() >= 10 {
                Err(FrameError::BadLength)
            } else {
                Ok(None)
            };
        };
        let len = prost::encoding::decode_varint(&mut &data[..=end])
            .map_err(|_| FrameError::BadLength)?;
        if len > MAX_FRAME_BYTES as u64 {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME_BYTES,
            });
        }
        let len = len as usize;
        let body = end + 1;
        if data.len() < body + len {
            return Ok(None);
        }
        let msg =
            M::decode(&data[body..body + len]).map_err(|e| FrameError::Decode(e.to_string()))?;
        self.start += body + len;
        Ok(Some(msg))
    }

    /// The stream ended: fails if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.pending() {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{agent_frame, AgentFrame, Ping};

    fn ping(n: u64) -> AgentFrame {
        AgentFrame {
            frame: Some(agent_frame::Frame::Ping(Ping {
                nonce: n,
                sent_unix_nanos: 0,
            })),
        }
    }

    #[test]
    fn frames_split_at_any_byte() {
        let mut wire = Vec::new();
        for n in 0..50 {
            encode_frame(&ping(n), &mut wire).unwrap();
        }
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                d.push(chunk);
                while let Some(f) = d.next_frame::<AgentFrame>().unwrap() {
                    got.push(f);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, (0..50).map(ping).collect::<Vec<_>>(), "step {step}");
        }
    }

    #[test]
    fn oversized_and_malformed_frames_are_named() {
        let mut d = FrameDecoder::new();
        let mut prefix = Vec::new();
        prost::encoding::encode_varint((MAX_FRAME_BYTES + 1) as u64, &mut prefix);
        d.push(&prefix);
        let e = d.next_frame::<AgentFrame>().unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("over the limit"), "{e}");

        let mut d = FrameDecoder::new();
        d.push(&[0xff; 10]);
        assert_eq!(d.next_frame::<AgentFrame>(), Err(FrameError::BadLength));

        let mut d = FrameDecoder::new();
        d.push(&[3, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.next_frame::<AgentFrame>(),
            Err(FrameError::Decode(_))
        ));

        let mut d = FrameDecoder::new();
        d.push(&[5, 1]);
        assert_eq!(d.next_frame::<AgentFrame>(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(2)));
    }
}
