//! The bus's network API.
//!
//! * [`http`]: the AWS JSON 1.1 protocol EventBridge speaks (`POST /` with
//!   `X-Amz-Target: AWSEvents.<Action>`), so the AWS CLI and SDKs work with `--endpoint-url`.
//! * [`grpc`]: the `outrider.v1.Bus` service (`proto/outrider/v1/bus.proto`): PutEvents and
//!   Subscribe, the consumer-group read of Subscriber targets.
//! * [`groups`]: the consumer groups behind Subscribe (the tokio shell of [`crate::group`]).

pub mod groups;
pub mod grpc;
pub mod http;

use crate::error::BusError;

/// EventBridge's exception name for an engine error, and whether it is the client's fault
/// (HTTP 400) or the server's (HTTP 500/503).
pub fn exception(e: &BusError) -> (&'static str, u16) {
    match e {
        BusError::Validation(_) => ("ValidationException", 400),
        BusError::InvalidPattern(_) => ("InvalidEventPatternException", 400),
        BusError::NotFound(_) => ("ResourceNotFoundException", 400),
        BusError::AlreadyExists(_) => ("ResourceAlreadyExistsException", 400),
        BusError::LimitExceeded(_) => ("LimitExceededException", 400),
        BusError::Store(outrider_store::StoreError::WrongExpectedVersion { .. }) => {
            ("ConcurrentModificationException", 400)
        }
        BusError::Store(_) => ("InternalException", 500),
        BusError::Closed => ("ServiceUnavailableException", 503),
    }
}

/// The message of an engine error without the exception name the `Display` form starts with.
pub fn message(e: &BusError) -> String {
    match e {
        BusError::Validation(m)
        | BusError::NotFound(m)
        | BusError::AlreadyExists(m)
        | BusError::LimitExceeded(m) => m.clone(),
        BusError::InvalidPattern(p) => p.to_string(),
        other => other.to_string(),
    }
}

/// The gRPC status of an engine error.
pub fn status(e: &BusError) -> tonic::Status {
    use tonic::Code;
    let code = match e {
        BusError::Validation(_) | BusError::InvalidPattern(_) => Code::InvalidArgument,
        BusError::NotFound(_) => Code::NotFound,
        BusError::AlreadyExists(_) => Code::AlreadyExists,
        BusError::LimitExceeded(_) => Code::ResourceExhausted,
        BusError::Store(outrider_store::StoreError::WrongExpectedVersion { .. }) => Code::Aborted,
        BusError::Store(_) => Code::Internal,
        BusError::Closed => Code::Unavailable,
    };
    tonic::Status::new(code, e.to_string())
}

/// The per-entry failure of an entry that does not convert or is over EventBridge's limits:
/// `MalformedDetail` for a `Detail` that is not a JSON object, `InvalidArgument` otherwise.
pub fn entry_failure(e: &outrider_proto::ConvertError) -> crate::bus::PutOutcome {
    use outrider_proto::ConvertError;
    let code = match e {
        ConvertError::InvalidJson { field, .. } | ConvertError::WrongType { field, .. }
            if field.eq_ignore_ascii_case("detail") =>
        {
            "MalformedDetail"
        }
        _ => "InvalidArgument",
    };
    crate::bus::PutOutcome::Failed {
        code: code.into(),
        message: e.to_string(),
    }
}

/// Room the boundary keeps under the store's event limit for what the engine and the
/// dispatcher add to an entry (id, time, account, region, stream, origin node; the queue
/// entry's delivery id and extensions).
pub const STORED_OVERHEAD_BYTES: usize = 512;

/// Checks an entry as the store will, so that it fails alone instead of failing the atomic
/// append of every entry of its bus: field sizes, and the size as stored (with
/// [`STORED_OVERHEAD_BYTES`]) under `outrider_store::MAX_EVENT_BYTES`.
pub fn check_stored(
    engine: &crate::bus::BusEngine,
    e: &outrider_proto::Event,
) -> Result<(), crate::bus::PutOutcome> {
    use prost::Message;
    let fail = |message: String| crate::bus::PutOutcome::Failed {
        code: "InvalidArgument".into(),
        message,
    };
    for (field, value) in [
        ("Id", &e.id),
        ("Source", &e.source),
        ("DetailType", &e.detail_type),
    ] {
        if value.len() > 256 {
            return Err(fail(format!("{field} is longer than 256 bytes")));
        }
    }
    let cfg = engine.config();
    let filled = if e.account.is_empty() {
        cfg.account.len()
    } else {
        0
    } + if e.region.is_empty() {
        cfg.region.len()
    } else {
        0
    } + crate::bus::bus_of(&e.event_bus_name).len() * 2;
    let size = e.encoded_len() + filled + STORED_OVERHEAD_BYTES;
    if size > outrider_store::MAX_EVENT_BYTES {
        return Err(fail(format!(
            "the entry is about {size} bytes as stored, over the store's {}-byte event limit",
            outrider_store::MAX_EVENT_BYTES
        )));
    }
    Ok(())
}

/// PutEvents with entries that may have failed at the boundary already: the others are checked
/// with [`check_stored`] (and for ids given twice) and go to the engine in one call; the
/// outcomes come back in the request's order.
pub async fn put_checked(
    engine: &crate::bus::BusEngine,
    entries: Vec<Result<outrider_proto::Event, crate::bus::PutOutcome>>,
) -> Vec<crate::bus::PutOutcome> {
    let mut out: Vec<Option<crate::bus::PutOutcome>> = Vec::with_capacity(entries.len());
    let mut good = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for e in entries {
        let checked = e.and_then(|ev| {
            check_stored(engine, &ev)?;
            if !ev.id.is_empty() && !ids.insert(ev.id.clone()) {
                return Err(crate::bus::PutOutcome::Failed {
                    code: "InvalidArgument".into(),
                    message: format!("id {} is given twice in the request", ev.id),
                });
            }
            Ok(ev)
        });
        match checked {
            Ok(ev) => {
                good.push(ev);
                out.push(None);
            }
            Err(f) => out.push(Some(f)),
        }
    }
    let mut done = if good.is_empty() {
        Vec::new()
    } else {
        engine.put_events(good).await
    }
    .into_iter();
    out.into_iter()
        .map(|o| {
            o.or_else(|| done.next())
                .unwrap_or(crate::bus::PutOutcome::Failed {
                    code: "InternalFailure".into(),
                    message: "entry was not processed".into(),
                })
        })
        .collect()
}
