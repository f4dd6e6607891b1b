//! CloudEvents 1.0 JSON format (structured content mode) <-> [`Event`].
//!
//! # Mapping
//!
//! | CloudEvents attribute | [`Event`] field |
//! | --------------------- | --------------- |
//! | `specversion`         | — (must be `"1.0"`) |
//! | `id`, `source`        | `id`, `source` |
//! | `type`                | `detail_type` |
//! | `time`                | `time_seconds` + `time_nanos` (omitted when both are 0) |
//! | `subject`, `dataschema`, `datacontenttype` | same names |
//! | `data`                | `detail` (compact JSON text of any JSON value; `""` when `data` is absent) |
//! | `account`, `region`   | same names |
//! | `resources`           | `resources` (a JSON array of strings) |
//! | `outriderstream`, `outridernode` | `stream`, `origin_node` |
//! | `outriderversion`, `outriderposition`, `outriderseq` | `version`, `position`, `origin_seq` |
//! | `outriderbus`, `outridertrace`, `replayname` | `event_bus_name`, `trace_header`, `replay_name` |
//! | any other attribute   | `extensions[name]` (the value as compact JSON text) |
//!
//! Empty strings, zero numbers and empty lists are not written, so absent and empty read back the
//! same way. `id`, `source`, `type` and `specversion` are required on input (their emptiness is not
//! checked, so every [`Event`] round-trips).
//!
//! The three `u64` attributes are written as strings of decimal digits: the CloudEvents `Integer`
//! type is 32-bit, too small for them, and JSON numbers above 2^53 lose precision in many
//! consumers. On input, a JSON number is accepted too.
//!
//! # Data
//!
//! An [`Event`]'s detail is JSON, so `data_base64` is rejected
//! ([`ConvertError::BinaryDataUnsupported`]) and so is a `datacontenttype` that does not declare JSON
//! (`*/json` or `*/*+json`, parameters allowed; [`ConvertError::UnsupportedContentType`]). An absent
//! `datacontenttype` means `application/json` and stays absent. `data: null` is an explicit null
//! payload (`detail == "null"`), distinct from an absent `data` (`detail == ""`).
//!
//! # Extension attributes
//!
//! Names must consist of `a`-`z` and `0`-`9` ([`ConvertError::InvalidExtensionName`]); the spec's
//! advice to keep them within 20 characters is not enforced. Names the conversion maps itself (the
//! context attributes and the attributes in the table above) are rejected as [`Event::extensions`]
//! keys, since they would not read back as extensions. Values may be any JSON value but `null`: as
//! the JSON format requires, an attribute whose value is `null` reads as absent, so an [`Event`]
//! extension holding `null` is rejected on output ([`ConvertError::WrongType`]).
//!
//! See the [`eventbridge`](crate::eventbridge) module for how JSON key order and numbers in
//! `detail` affect exact round trips.

use serde_json::{Map, Value};

use crate::fields::{self, wrong_type, Members};
use crate::{ConvertError, Event};

/// The only CloudEvents version supported.
pub const SPEC_VERSION: &str = "1.0";

const ACCOUNT: &str = "account";
const REGION: &str = "region";
const RESOURCES: &str = "resources";
const STREAM: &str = "outriderstream";
const VERSION: &str = "outriderversion";
const POSITION: &str = "outriderposition";
const NODE: &str = "outridernode";
const SEQ: &str = "outriderseq";
const BUS: &str = "outriderbus";
const TRACE: &str = "outridertrace";
const REPLAY_NAME: &str = "replayname";

/// Attributes the conversion maps to [`Event`] fields; none may be an [`Event::extensions`] key.
const MAPPED: [&str; 20] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "dataschema",
    "datacontenttype",
    "data",
    ACCOUNT,
    REGION,
    RESOURCES,
    STREAM,
    VERSION,
    POSITION,
    NODE,
    SEQ,
    BUS,
    TRACE,
    REPLAY_NAME,
];

/// Converts an event to a CloudEvents 1.0 JSON object.
pub fn to_json(e: &Event) -> Result<Value, ConvertError> {
    let mut out = Map::new();
    out.insert("specversion".to_owned(), Value::from(SPEC_VERSION));
    out.insert("id".to_owned(), Value::from(e.id.as_str()));
    out.insert("source".to_owned(), Value::from(e.source.as_str()));
    out.insert("type".to_owned(), Value::from(e.detail_type.as_str()));
    if fields::has_time(e) {
        out.insert("time".to_owned(), Value::from(fields::event_time(e)?));
    }
    fields::put_string(&mut out, "subject", &e.subject);
    fields::put_string(&mut out, "dataschema", &e.dataschema);
    if !e.datacontenttype.is_empty() {
        check_content_type(&e.datacontenttype)?;
        out.insert(
            "datacontenttype".to_owned(),
            Value::from(e.datacontenttype.as_str()),
        );
    }
    if !e.detail.is_empty() {
        out.insert("data".to_owned(), fields::parse_json(&e.detail, "detail")?);
    }

    fields::put_string(&mut out, ACCOUNT, &e.account);
    fields::put_string(&mut out, REGION, &e.region);
    if !e.resources.is_empty() {
        out.insert(RESOURCES.to_owned(), Value::from(e.resources.clone()));
    }
    fields::put_string(&mut out, STREAM, &e.stream);
    for (key, value) in [
        (VERSION, e.version),
        (POSITION, e.position),
        (SEQ, e.origin_seq),
    ] {
        if value != 0 {
            out.insert(key.to_owned(), Value::from(value.to_string()));
        }
    }
    fields::put_string(&mut out, NODE, &e.origin_node);
    fields::put_string(&mut out, BUS, &e.event_bus_name);
    fields::put_string(&mut out, TRACE, &e.trace_header);
    fields::put_string(&mut out, REPLAY_NAME, &e.replay_name);

    for (name, value) in fields::sorted_extensions(e) {
        out.insert(name.to_owned(), extension_to_json(name, value)?);
    }
    Ok(Value::Object(out))
}

/// Converts an event to CloudEvents 1.0 JSON text (compact).
pub fn to_json_string(e: &Event) -> Result<String, ConvertError> {
    to_json(e).map(|v| v.to_string())
}

/// Reads a CloudEvents 1.0 JSON object.
pub fn from_json(v: &Value) -> Result<Event, ConvertError> {
    let m = Members::of(v, "event", "")?;
    let spec_version = m.required_string("specversion")?;
    if spec_version != SPEC_VERSION {
        return Err(ConvertError::UnsupportedSpecVersion(
            spec_version.to_owned(),
        ));
    }
    if m.get("data_base64").is_some() {
        return Err(ConvertError::BinaryDataUnsupported);
    }
    let datacontenttype = match m.string("datacontenttype")? {
        Some(content_type) => {
            check_content_type(content_type)?;
            content_type.to_owned()
        }
        None => String::new(),
    };
    let (time_seconds, time_nanos) = m.time("time")?;

    let mut e = Event {
        id: m.required_string("id")?.to_owned(),
        source: m.required_string("source")?.to_owned(),
        detail_type: m.required_string("type")?.to_owned(),
        time_seconds,
        time_nanos,
        subject: m.owned_string("subject")?,
        dataschema: m.owned_string("dataschema")?,
        datacontenttype,
        // `raw`: an explicit `null` payload is data, unlike a `null` attribute.
        detail: m.raw("data").map(Value::to_string).unwrap_or_default(),
        account: m.owned_string(ACCOUNT)?,
        region: m.owned_string(REGION)?,
        resources: m.strings(RESOURCES)?,
        stream: m.owned_string(STREAM)?,
        version: u64_attribute(&m, VERSION)?,
        position: u64_attribute(&m, POSITION)?,
        origin_node: m.owned_string(NODE)?,
        origin_seq: u64_attribute(&m, SEQ)?,
        event_bus_name: m.owned_string(BUS)?,
        trace_header: m.owned_string(TRACE)?,
        replay_name: m.owned_string(REPLAY_NAME)?,
        ..Event::default()
    };
    for (name, value) in m.iter().filter(|(name, _)| !MAPPED.contains(name)) {
        if let Some(text) = extension_from_json(name, value)? {
            e.extensions.insert(name.to_owned(), text);
        }
    }
    Ok(e)
}

/// Reads CloudEvents 1.0 JSON text.
pub fn from_json_str(s: &str) -> Result<Event, ConvertError> {
    from_json(&fields::parse_json(s, "event")?)
}

/// A `u64` attribute: a string of decimal digits or a JSON number, 0 when absent.
fn u64_attribute(m: &Members<'_>, key: &str) -> Result<u64, ConvertError> {
    let value = match m.get(key) {
        None => Some(0),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        Some(_) => None,
    };
    value.ok_or_else(|| wrong_type(m.field(key), "an unsigned 64-bit integer"))
}

/// Fails unless `name` is a valid CloudEvents attribute name the conversion does not map itself.
fn check_extension_name(name: &str) -> Result<(), ConvertError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !MAPPED.contains(&name);
    if valid {
        Ok(())
    } else {
        Err(ConvertError::InvalidExtensionName(name.to_owned()))
    }
}

/// An [`Event::extensions`] entry as a JSON attribute value (for CloudEvents and for the
/// `outrider.extensions` member of EventBridge events).
pub(crate) fn extension_to_json(name: &str, value: &str) -> Result<Value, ConvertError> {
    check_extension_name(name)?;
    let field = format!("extensions.{name}");
    match fields::parse_json(value, &field)? {
        Value::Null => Err(wrong_type(field, "a non-null JSON value")),
        value => Ok(value),
    }
}

/// A JSON attribute as an [`Event::extensions`] value; `None` for `null`, which means unset.
pub(crate) fn extension_from_json(
    name: &str,
    value: &Value,
) -> Result<Option<String>, ConvertError> {
    check_extension_name(name)?;
    Ok((!value.is_null()).then(|| value.to_string()))
}

/// Fails unless `content_type` declares JSON: its media type, parameters stripped, is `*/json` or
/// `*/*+json` (case-insensitive), as the CloudEvents JSON format defines it.
pub(crate) fn check_content_type(content_type: &str) -> Result<(), ConvertError> {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = media_type.split_once('/').is_some_and(|(kind, subtype)| {
        !kind.is_empty() && (subtype == "json" || (subtype.len() > 5 && subtype.ends_with("+json")))
    });
    if is_json {
        Ok(())
    } else {
        Err(ConvertError::UnsupportedContentType(
            content_type.to_owned(),
        ))
    }
}
