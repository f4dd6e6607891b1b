//! The benchmark's events: a JSON detail carrying the event's index and the wall-clock time its
//! append started, padded so that the event as the agent stores it (id, stream, version,
//! position, origin and time assigned) encodes to about the target size.

use std::time::{SystemTime, UNIX_EPOCH};

use outrider_proto::Event;
use prost::Message as _;

/// The node id of the benchmark's agent (and of its certificate).
pub const NODE: &str = "bench-node";

/// Fixed widths of the index and time fields, so every event of a size has the same length.
const INDEX_WIDTH: usize = 12;
const TIME_WIDTH: usize = 20;

/// Wall-clock nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Events of about `target` encoded bytes once placed by the agent's log.
///
/// The padding is pseudo-random text (64 symbols, different for every event), so batch
/// compression cannot shrink it below about 6 bits per character: a benchmark of highly
/// repetitive events would measure the compressor, not the link.
#[derive(Debug, Clone)]
pub struct Payload {
    pad: usize,
}

impl Payload {
    pub fn new(target: usize) -> Payload {
        let len = |pad: usize| placed(&Payload { pad }.event(0, 0)).encoded_len();
        let mut pad = target.saturating_sub(len(0));
        for _ in 0..8 {
            let l = len(pad);
            if l == target {
                break;
            }
            pad = if l > target {
                pad.saturating_sub(l - target)
            } else {
                pad + (target - l)
            };
        }
        Payload { pad }
    }

    /// A client event (no id, no placement) with index `i`, stamped with `time_nanos`.
    pub fn event(&self, i: u64, time_nanos: u64) -> Event {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut detail = format!(
            r#"{{"i":"{i:0iw$}","t":"{time_nanos:0tw$}","device":"plc-07","value":21.5,"pad":""#,
            iw = INDEX_WIDTH,
            tw = TIME_WIDTH,
        );
        detail.reserve(self.pad + 2);
        let mut x = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..self.pad {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            detail.push(char::from(ALPHABET[(x >> 58) as usize]));
        }
        detail.push_str("\"}");
        Event {
            source: "com.example.gateway".into(),
            detail_type: "SensorReading".into(),
            detail,
            ..Default::default()
        }
    }
}

/// The event as the agent's log places it (field sizes typical of a log of a million events).
fn placed(e: &Event) -> Event {
    Event {
        id: "01936f5e-2b7c-7d3a-9b1e-3f2a1c4d5e6f".into(),
        stream: "bench-0".into(),
        version: 250_000,
        position: 1_000_000,
        origin_node: NODE.into(),
        origin_seq: 1_000_000,
        time_seconds: 1_790_000_000,
        time_nanos: 123_456_789,
        ..e.clone()
    }
}

/// A quoted numeric field of a detail made by [`Payload::event`].
fn field(detail: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\":\"");
    let start = detail.find(&key)? + key.len();
    let rest = &detail[start..];
    let end = rest.find('"')?;
    rest[..end].parse().ok()
}

/// The index an event's detail carries.
pub fn index_of(detail: &str) -> Option<u64> {
    field(detail, "i")
}

/// The wall-clock nanoseconds an event's detail carries (when its append started).
pub fn stamp_of(detail: &str) -> Option<u64> {
    field(detail, "t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_fields() {
        for target in [256usize, 1024] {
            let p = Payload::new(target);
            let e = p.event(42, 1_790_000_000_123_456_789);
            assert_eq!(placed(&e).encoded_len(), target);
            assert_eq!(index_of(&e.detail), Some(42));
            assert_eq!(stamp_of(&e.detail), Some(1_790_000_000_123_456_789));
            serde_json::from_str::<serde_json::Value>(&e.detail).unwrap();
            // Every index and time gives the same size.
            assert_eq!(
                placed(&p.event(u64::from(u32::MAX), 7)).encoded_len(),
                target
            );
        }
        assert_eq!(index_of("{}"), None);
    }
}
