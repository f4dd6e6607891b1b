//! EventBridge JSON views of an [`Event`]: the event as EventBridge delivers it to targets, and
//! PutEvents request entries.
//!
//! # Delivered events
//!
//! [`to_json`] writes the shape targets receive:
//!
//! ```json
//! {"version": "0", "id": "…", "detail-type": "…", "source": "…", "account": "…",
//!  "time": "2019-12-02T19:02:51Z", "region": "…", "resources": ["…"], "detail": {…}}
//! ```
//!
//! plus `"replay-name"` when [`Event::replay_name`] is set, and Outrider's other fields in one more
//! top-level member, `"outrider"`: `stream`, `version`, `position`, `node` ([`Event::origin_node`]),
//! `seq` ([`Event::origin_seq`]), `event-bus-name`, `trace-header`, `subject`, `dataschema`,
//! `datacontenttype` and `extensions` (name -> JSON value). Only members that are not empty or
//! zero are written (`u64`s as JSON numbers), and `"outrider"` is left out when none is.
//!
//! [`from_json`] reads that shape back: `id`, `source` and `detail-type` are required, `detail`
//! must be a JSON object (absent means `{}`), `time` absent means 0, `version` (always `"0"`) and
//! unknown top-level members are ignored (EventBridge may add some), while unknown members of
//! `"outrider"` are rejected.
//!
//! # PutEvents entries
//!
//! [`entry_to_event`] and [`event_to_entry`] convert `PutEventsRequestEntry` objects
//! (`Source`, `DetailType`, `Detail` as a string holding a JSON object, `Resources`, `Time`,
//! `EventBusName`, `TraceHeader`), validated as EventBridge does; see [`MAX_ENTRY_SIZE`].
//! An entry carries no id, account, region or Outrider fields: EventBridge assigns the first three
//! on ingestion.
//!
//! # `null`
//!
//! A member whose value is `null` reads as absent.
//!
//! # `detail` text, key order and numbers
//!
//! [`Event::detail`] is JSON text; it is parsed on the way out and written with
//! `serde_json::Value::to_string` (compact) on the way in. This workspace builds `serde_json`
//! without its `preserve_order` feature, so JSON objects are `BTreeMap`s: parsing sorts their keys.
//! A round trip Event -> JSON -> Event therefore reproduces `detail` byte for byte exactly when it
//! is canonical, i.e. what `serde_json` prints for its parsed value (compact, keys sorted; were
//! `preserve_order` turned on, keys would keep their order). Any other `detail` comes back as the
//! same JSON value in canonical form. Numbers are held as `u64`, `i64` or `f64`, so integers
//! outside 64 bits and decimals with more than ~17 significant digits are rounded.
//!
//! An empty [`Event::detail`] (a CloudEvent without `data`) is written as `{}` and so reads back
//! as `"{}"`; it is the one [`Event`] value the delivered shape does not round-trip.

use serde_json::{Map, Value};

use crate::cloudevents::{check_content_type, extension_from_json, extension_to_json};
use crate::fields::{self, wrong_type, Members};
use crate::{time, ConvertError, Event};

/// The largest PutEvents entry EventBridge accepts, in bytes as [`entry_to_event`] computes it:
/// 256 KiB, the limit EventBridge documents and this crate enforces (reports say AWS raised it to
/// 1 MB in January 2026).
///
/// The size is AWS's formula ("Calculating PutEvents event entry size"): the UTF-8 lengths of
/// `Source`, `DetailType`, `Detail` (as sent) and each of `Resources`, plus 14 bytes when `Time`
/// is set. `EventBusName` and `TraceHeader` do not count.
pub const MAX_ENTRY_SIZE: usize = 256 * 1024;

/// The most entries one PutEvents request may hold.
pub const MAX_ENTRIES: usize = 10;

/// What `Time` counts towards an entry's size when set.
const TIME_SIZE: usize = 14;

/// The members of a PutEvents entry.
const ENTRY_MEMBERS: [&str; 7] = [
    "Source",
    "DetailType",
    "Detail",
    "Resources",
    "Time",
    "EventBusName",
    "TraceHeader",
];

/// Converts an event to the JSON object EventBridge delivers to targets.
pub fn to_json(e: &Event) -> Result<Value, ConvertError> {
    let mut out = Map::new();
    out.insert("version".to_owned(), Value::from("0"));
    out.insert("id".to_owned(), Value::from(e.id.as_str()));
    out.insert(
        "detail-type".to_owned(),
        Value::from(e.detail_type.as_str()),
    );
    out.insert("source".to_owned(), Value::from(e.source.as_str()));
    out.insert("account".to_owned(), Value::from(e.account.as_str()));
    out.insert("time".to_owned(), Value::from(fields::event_time(e)?));
    out.insert("region".to_owned(), Value::from(e.region.as_str()));
    out.insert("resources".to_owned(), Value::from(e.resources.clone()));
    out.insert("detail".to_owned(), fields::detail_object(e)?);
    fields::put_string(&mut out, "replay-name", &e.replay_name);
    let outrider = outrider_to_json(e)?;
    if !outrider.is_empty() {
        out.insert("outrider".to_owned(), Value::Object(outrider));
    }
    Ok(Value::Object(out))
}

/// Converts an event to the JSON text (compact) EventBridge delivers to targets.
pub fn to_json_string(e: &Event) -> Result<String, ConvertError> {
    to_json(e).map(|v| v.to_string())
}

/// Reads an event as EventBridge delivers it to targets.
pub fn from_json(v: &Value) -> Result<Event, ConvertError> {
    let m = Members::of(v, "event", "")?;
    let detail = match m.get("detail") {
        None => "{}".to_owned(),
        Some(detail) => {
            fields::require_object(detail, "detail")?;
            detail.to_string()
        }
    };
    let (time_seconds, time_nanos) = m.time("time")?;
    let mut e = Event {
        id: m.required_string("id")?.to_owned(),
        source: m.required_string("source")?.to_owned(),
        detail_type: m.required_string("detail-type")?.to_owned(),
        time_seconds,
        time_nanos,
        account: m.owned_string("account")?,
        region: m.owned_string("region")?,
        resources: m.strings("resources")?,
        detail,
        replay_name: m.owned_string("replay-name")?,
        ..Event::default()
    };
    if let Some(outrider) = m.object("outrider", "outrider.")? {
        outrider_from_json(&outrider, &mut e)?;
    }
    Ok(e)
}

/// Reads an event from the JSON text EventBridge delivers to targets.
pub fn from_json_str(s: &str) -> Result<Event, ConvertError> {
    from_json(&fields::parse_json(s, "event")?)
}

/// The `"outrider"` member: the event's fields EventBridge has no place for, when set.
fn outrider_to_json(e: &Event) -> Result<Map<String, Value>, ConvertError> {
    let mut out = Map::new();
    fields::put_string(&mut out, "stream", &e.stream);
    for (key, value) in [
        ("version", e.version),
        ("position", e.position),
        ("seq", e.origin_seq),
    ] {
        if value != 0 {
            out.insert(key.to_owned(), Value::from(value));
        }
    }
    fields::put_string(&mut out, "node", &e.origin_node);
    fields::put_string(&mut out, "event-bus-name", &e.event_bus_name);
    fields::put_string(&mut out, "trace-header", &e.trace_header);
    fields::put_string(&mut out, "subject", &e.subject);
    fields::put_string(&mut out, "dataschema", &e.dataschema);
    if !e.datacontenttype.is_empty() {
        check_content_type(&e.datacontenttype)?;
        out.insert(
            "datacontenttype".to_owned(),
            Value::from(e.datacontenttype.as_str()),
        );
    }
    let mut extensions = Map::new();
    for (name, value) in fields::sorted_extensions(e) {
        extensions.insert(name.to_owned(), extension_to_json(name, value)?);
    }
    if !extensions.is_empty() {
        out.insert("extensions".to_owned(), Value::Object(extensions));
    }
    Ok(out)
}

/// Reads the `"outrider"` member into `e`.
fn outrider_from_json(m: &Members<'_>, e: &mut Event) -> Result<(), ConvertError> {
    for (key, _) in m.iter() {
        match key {
            "stream" => e.stream = m.owned_string(key)?,
            "version" => e.version = m.u64(key)?,
            "position" => e.position = m.u64(key)?,
            "node" => e.origin_node = m.owned_string(key)?,
            "seq" => e.origin_seq = m.u64(key)?,
            "event-bus-name" => e.event_bus_name = m.owned_string(key)?,
            "trace-header" => e.trace_header = m.owned_string(key)?,
            "subject" => e.subject = m.owned_string(key)?,
            "dataschema" => e.dataschema = m.owned_string(key)?,
            "datacontenttype" => {
                if let Some(content_type) = m.string(key)? {
                    check_content_type(content_type)?;
                    e.datacontenttype = content_type.to_owned();
                }
            }
            "extensions" => {
                if let Some(extensions) = m.object(key, "outrider.extensions.")? {
                    for (name, value) in extensions.iter() {
                        if let Some(text) = extension_from_json(name, value)? {
                            e.extensions.insert(name.to_owned(), text);
                        }
                    }
                }
            }
            _ => return Err(ConvertError::UnknownField(m.field(key))),
        }
    }
    Ok(())
}

/// Reads one PutEvents request entry (a `PutEventsRequestEntry` object).
///
/// `Source`, `DetailType` and `Detail` are required; `Detail` must be a string holding a JSON
/// object, stored compact in [`Event::detail`]. `Time` is an RFC 3339 string or a number of
/// seconds since the epoch (the AWS SDKs send the latter). Entries over [`MAX_ENTRY_SIZE`] and
/// members PutEvents does not define are rejected.
pub fn entry_to_event(v: &Value) -> Result<Event, ConvertError> {
    let m = Members::of(v, "entry", "")?;
    m.deny_unknown(&ENTRY_MEMBERS)?;
    let source = m.required_string("Source")?;
    let detail_type = m.required_string("DetailType")?;
    let detail = m.required_string("Detail")?;
    let resources = m.strings("Resources")?;
    let time = entry_time(&m)?;
    check_entry_size(source, detail_type, detail, &resources, time.is_some())?;
    let detail = fields::parse_json(detail, "Detail")?;
    fields::require_object(&detail, "Detail")?;
    let (time_seconds, time_nanos) = time.unwrap_or_default();
    Ok(Event {
        source: source.to_owned(),
        detail_type: detail_type.to_owned(),
        detail: detail.to_string(),
        resources,
        time_seconds,
        time_nanos,
        event_bus_name: m.owned_string("EventBusName")?,
        trace_header: m.owned_string("TraceHeader")?,
        ..Event::default()
    })
}

/// Converts an event to a PutEvents request entry.
///
/// Only the fields an entry carries are used: source, detail type, detail (an empty one is `{}`),
/// resources, time (left out when both parts are 0), event bus name and trace header. Fails if the
/// detail is not a JSON object or the entry would exceed [`MAX_ENTRY_SIZE`].
pub fn event_to_entry(e: &Event) -> Result<Value, ConvertError> {
    let detail = fields::detail_object(e)?.to_string();
    let has_time = fields::has_time(e);
    check_entry_size(&e.source, &e.detail_type, &detail, &e.resources, has_time)?;
    let mut out = Map::new();
    out.insert("Source".to_owned(), Value::from(e.source.as_str()));
    out.insert("DetailType".to_owned(), Value::from(e.detail_type.as_str()));
    out.insert("Detail".to_owned(), Value::from(detail));
    if !e.resources.is_empty() {
        out.insert("Resources".to_owned(), Value::from(e.resources.clone()));
    }
    if has_time {
        out.insert("Time".to_owned(), Value::from(fields::event_time(e)?));
    }
    fields::put_string(&mut out, "EventBusName", &e.event_bus_name);
    fields::put_string(&mut out, "TraceHeader", &e.trace_header);
    Ok(Value::Object(out))
}

/// Reads a PutEvents request (`{"Entries": [...]}`) into one event per entry, in order.
///
/// At most [`MAX_ENTRIES`] entries are accepted; an invalid entry fails the whole request with
/// [`ConvertError::InvalidEntry`] naming its index. `EndpointId` (global endpoints) is accepted
/// and ignored.
pub fn put_events_request_to_events(v: &Value) -> Result<Vec<Event>, ConvertError> {
    let m = Members::of(v, "request", "")?;
    m.deny_unknown(&["Entries", "EndpointId"])?;
    let entries = match m.get("Entries") {
        None => return Err(ConvertError::MissingField("Entries")),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(wrong_type("Entries", "an array")),
    };
    if entries.len() > MAX_ENTRIES {
        return Err(ConvertError::TooManyEntries {
            count: entries.len(),
            limit: MAX_ENTRIES,
        });
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            entry_to_event(entry).map_err(|error| ConvertError::InvalidEntry {
                index,
                error: Box::new(error),
            })
        })
        .collect()
}

/// An entry's `Time`: an RFC 3339 string or a number of seconds since the epoch.
fn entry_time(m: &Members<'_>) -> Result<Option<(i64, u32)>, ConvertError> {
    let (value, parsed) = match m.get("Time") {
        None => return Ok(None),
        Some(Value::String(text)) => (text.clone(), time::parse_rfc3339(text)),
        Some(Value::Number(n)) => {
            let text = n.to_string();
            let parsed = time::parse_epoch_seconds(&text);
            (text, parsed)
        }
        Some(_) => {
            return Err(wrong_type(
                "Time",
                "an RFC 3339 string or a number of seconds since the epoch",
            ))
        }
    };
    parsed
        .map(Some)
        .map_err(|reason| ConvertError::InvalidTime {
            field: "Time".to_owned(),
            value,
            reason,
        })
}

/// Fails if an entry is larger than [`MAX_ENTRY_SIZE`] by AWS's formula.
fn check_entry_size(
    source: &str,
    detail_type: &str,
    detail: &str,
    resources: &[String],
    has_time: bool,
) -> Result<(), ConvertError> {
    let size = source.len()
        + detail_type.len()
        + detail.len()
        + resources.iter().map(String::len).sum::<usize>()
        + if has_time { TIME_SIZE } else { 0 };
    if size > MAX_ENTRY_SIZE {
        Err(ConvertError::TooLarge {
            size,
            limit: MAX_ENTRY_SIZE,
        })
    } else {
        Ok(())
    }
}
