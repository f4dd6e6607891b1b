//! Checks on what callers hand the store, shared by every backend so that both refuse exactly the
//! same input, with the same errors, before anything is written.

use outrider_proto::Event;
use prost::Message;

use crate::error::{Result, StoreError};

/// The largest encoded event accepted (EventBridge's limit): the event's protobuf encoding with
/// its stream name and origin, without the version and position the store assigns.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Most events in one append.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;
/// Longest stream, consumer, holder, checkpoint or watermark name, in bytes.
pub const MAX_NAME_BYTES: usize = 512;

/// Checks a consumer, holder, checkpoint or watermark name: 1..=512 bytes, no control characters.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(StoreError::InvalidName {
            what,
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("longer than 512 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}

/// The runtime's validation error as the store's (both name the same problem the same way).
fn from_runtime(e: outrider_runtime::Error) -> StoreError {
    use outrider_runtime::Error as E;
    match e {
        E::InvalidStreamName { name, reason } => StoreError::InvalidStreamName { name, reason },
        E::InvalidDetail { id, reason } => StoreError::InvalidDetail { id, reason },
        E::InvalidEvent { id, field, reason } => StoreError::InvalidEvent { id, field, reason },
        other => StoreError::InvalidEvent {
            id: String::new(),
            field: "event",
            reason: other.to_string(),
        },
    }
}

/// The runtime's stream name rules (one definition for the agent and the cloud).
pub(crate) fn validate_stream(name: &str) -> Result<()> {
    outrider_runtime::validate_stream_name(name).map_err(from_runtime)
}

/// The runtime's event rules, plus: an id holds no control characters (it names rows and keys).
fn validate_event(e: &Event) -> Result<()> {
    if e.id.chars().any(char::is_control) {
        return Err(StoreError::InvalidEvent {
            id: e.id.clone(),
            field: "id",
            reason: "contains a control character".into(),
        });
    }
    outrider_runtime::validate_event(e).map_err(from_runtime)
}

/// An append checked and completed: every event has an id, a time, the stream name; `local[i]`
/// says whether event i originates here (no origin given: its origin is this store's node and
/// its `origin_seq` its position). Local events keep an empty `origin_node` here; each backend
/// fills it its own way.
pub(crate) struct Checked {
    pub(crate) events: Vec<Event>,
    pub(crate) local: Vec<bool>,
}

/// Checks and completes one stream's append. `now` is the store clock's Unix time in ns.
pub(crate) fn check_append(
    stream: &str,
    mut events: Vec<Event>,
    node_id: &str,
    now: i64,
) -> Result<Checked> {
    validate_stream(stream)?;
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    if events.len() > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::TooManyEvents {
            count: events.len(),
            limit: MAX_EVENTS_PER_APPEND,
        });
    }
    let mut local = Vec::with_capacity(events.len());
    for e in &mut events {
        if e.id.is_empty() {
            e.id = uuid::Uuid::now_v7().to_string();
        }
        validate_event(e)?;
        e.stream.clear();
        e.stream.push_str(stream);
        e.version = 0;
        e.position = 0;
        let is_local = e.origin_node.is_empty();
        if is_local {
            e.origin_seq = 0;
        }
        if e.time_seconds == 0 && e.time_nanos == 0 {
            e.time_seconds = now.div_euclid(1_000_000_000);
            e.time_nanos = u32::try_from(now.rem_euclid(1_000_000_000)).unwrap_or(0);
        }
        // Sized as stored: with the origin node filled in.
        let size = e.encoded_len()
            + if is_local {
                1 + prost::length_delimiter_len(node_id.len()) + node_id.len()
            } else {
                0
            };
        if size > MAX_EVENT_BYTES {
            return Err(StoreError::EventTooLarge {
                id: std::mem::take(&mut e.id),
                size,
                limit: MAX_EVENT_BYTES,
            });
        }
        local.push(is_local);
    }
    if events.len() > 1 {
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        if let Some(e) = events.iter().find(|e| !seen.insert(e.id.as_str())) {
            return Err(StoreError::DuplicateIdInRequest { id: e.id.clone() });
        }
    }
    Ok(Checked { events, local })
}

/// Checks a batch: at least one append, each stream once.
pub(crate) fn check_batch_streams<'a>(streams: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut any = false;
    for s in streams {
        any = true;
        if !seen.insert(s) {
            return Err(StoreError::InvalidStreamName {
                name: s.chars().take(80).collect(),
                reason: "appears twice in one batch",
            });
        }
    }
    if !any {
        return Err(StoreError::EmptyAppend);
    }
    Ok(())
}

pub(crate) fn check_ttl(ttl: std::time::Duration) -> Result<i64> {
    let ms = ttl.as_millis();
    if ms == 0 || ms > 86_400_000 {
        return Err(StoreError::InvalidTtl { ttl });
    }
    Ok(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes() {
        assert!(validate_name("consumer", "orders-projection").is_ok());
        assert!(matches!(
            validate_name("consumer", ""),
            Err(StoreError::InvalidName {
                reason: "empty",
                ..
            })
        ));
        assert!(validate_name("consumer", &"x".repeat(513)).is_err());
        let big = Event {
            detail: format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_EVENT_BYTES)),
            ..Default::default()
        };
        assert!(matches!(
            check_append("s", vec![big], "cloud", 0),
            Err(StoreError::EventTooLarge { .. })
        ));
        let ok = check_append("s", vec![Event::default()], "cloud", 1_500_000_000_123).unwrap();
        assert_eq!(ok.events[0].time_seconds, 1_500);
        assert_eq!(ok.events[0].stream, "s");
        assert!(ok.local[0]);
    }
}
