//! Checks on what clients hand the log: stream names, event shape and size.

use outrider_proto::Event;

use crate::config::MAX_STREAM_NAME_BYTES;
use crate::error::{Error, Result};

/// A stream name is 1..=512 bytes of UTF-8 with no control characters.
pub fn validate_stream_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidStreamName {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_STREAM_NAME_BYTES {
        return bad("longer than 512 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}

/// Checks one event before it is assigned a place in the log (sizes of id, source and
/// detail-type, time, `detail` must be JSON). The cloud store applies the same rules.
pub fn validate_event(e: &Event) -> Result<()> {
    let field = |field: &'static str, reason: &str| {
        Err(Error::InvalidEvent {
            id: e.id.clone(),
            field,
            reason: reason.to_string(),
        })
    };
    if e.id.len() > 256 {
        return field("id", "longer than 256 bytes");
    }
    if e.source.len() > 256 {
        return field("source", "longer than 256 bytes");
    }
    if e.detail_type.len() > 256 {
        return field("detail-type", "longer than 256 bytes");
    }
    if e.time_nanos >= 1_000_000_000 {
        return field("time", "nanoseconds must be below 1e9");
    }
    if !e.detail.is_empty() {
        if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&e.detail) {
            return Err(Error::InvalidDetail {
                id: e.id.clone(),
                reason: err.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert!(validate_stream_name("orders-1").is_ok());
        assert!(matches!(
            validate_stream_name(""),
            Err(Error::InvalidStreamName {
                reason: "empty",
                ..
            })
        ));
        assert!(validate_stream_name(&"x".repeat(513)).is_err());
        assert!(validate_stream_name("a\nb").is_err());
    }

    #[test]
    fn detail_must_be_json() {
        let e = Event {
            id: "e1".into(),
            detail: "{not json".into(),
            ..Default::default()
        };
        assert!(matches!(
            validate_event(&e),
            Err(Error::InvalidDetail { .. })
        ));
    }
}
