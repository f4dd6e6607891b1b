//! Helpers shared by the conversions: typed reads of JSON object members, and the parts of an
//! [`Event`] every JSON view writes the same way.

use serde_json::{Map, Value};

use crate::time::{self, TimeError};
use crate::{ConvertError, Event};

/// Builds a [`ConvertError::WrongType`].
pub(crate) fn wrong_type(field: impl Into<String>, expected: &'static str) -> ConvertError {
    ConvertError::WrongType {
        field: field.into(),
        expected,
    }
}

/// The members of one JSON object, read with typed errors that name the member as
/// `prefix` + key. A member whose value is `null` reads as absent.
pub(crate) struct Members<'a> {
    object: &'a Map<String, Value>,
    prefix: &'static str,
}

impl<'a> Members<'a> {
    /// `value`'s members; `field` names `value` in the error when it is not an object.
    pub(crate) fn of(
        value: &'a Value,
        field: &str,
        prefix: &'static str,
    ) -> Result<Self, ConvertError> {
        match value {
            Value::Object(object) => Ok(Self { object, prefix }),
            _ => Err(wrong_type(field, "a JSON object")),
        }
    }

    /// The name errors give the member `key`.
    pub(crate) fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// All members, `null`s included.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'a str, &'a Value)> {
        self.object.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The member `key` as written, `null` included.
    pub(crate) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.object.get(key)
    }

    /// The member `key`, `None` when absent or `null`.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.raw(key).filter(|v| !v.is_null())
    }

    /// Fails with [`ConvertError::UnknownField`] on the first member not in `known`.
    pub(crate) fn deny_unknown(&self, known: &[&str]) -> Result<(), ConvertError> {
        match self.object.keys().find(|k| !known.contains(&k.as_str())) {
            Some(key) => Err(ConvertError::UnknownField(self.field(key))),
            None => Ok(()),
        }
    }

    /// The string member `key`, if present.
    pub(crate) fn string(&self, key: &str) -> Result<Option<&'a str>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(self.field(key), "a string")),
        }
    }

    /// The string member `key`, which must be present. Only for top-level members (the prefix is
    /// not part of [`ConvertError::MissingField`]).
    pub(crate) fn required_string(&self, key: &'static str) -> Result<&'a str, ConvertError> {
        self.string(key)?.ok_or(ConvertError::MissingField(key))
    }

    /// The string member `key`, empty when absent.
    pub(crate) fn owned_string(&self, key: &str) -> Result<String, ConvertError> {
        Ok(self.string(key)?.unwrap_or_default().to_owned())
    }

    /// The array-of-strings member `key`, empty when absent.
    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>, ConvertError> {
        let Some(value) = self.get(key) else {
            return Ok(Vec::new());
        };
        let wrong = || wrong_type(self.field(key), "an array of strings");
        value
            .as_array()
            .ok_or_else(wrong)?
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(wrong))
            .collect()
    }

    /// The unsigned 64-bit integer member `key` (a JSON number), 0 when absent.
    pub(crate) fn u64(&self, key: &str) -> Result<u64, ConvertError> {
        match self.get(key) {
            None => Ok(0),
            Some(value) => value
                .as_u64()
                .ok_or_else(|| wrong_type(self.field(key), "an unsigned 64-bit integer")),
        }
    }

    /// The RFC 3339 member `key` as `(seconds, nanos)`, `(0, 0)` when absent.
    pub(crate) fn time(&self, key: &str) -> Result<(i64, u32), ConvertError> {
        match self.string(key)? {
            None => Ok((0, 0)),
            Some(text) => time::parse_rfc3339(text).map_err(|reason| ConvertError::InvalidTime {
                field: self.field(key),
                value: text.to_owned(),
                reason,
            }),
        }
    }

    /// The object member `key`, whose own members are named with `prefix`, if present.
    pub(crate) fn object(
        &self,
        key: &str,
        prefix: &'static str,
    ) -> Result<Option<Members<'a>>, ConvertError> {
        self.get(key)
            .map(|value| Members::of(value, &self.field(key), prefix))
            .transpose()
    }
}

/// Parses JSON text held in `field`.
pub(crate) fn parse_json(text: &str, field: &str) -> Result<Value, ConvertError> {
    serde_json::from_str(text).map_err(|e| ConvertError::InvalidJson {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

/// Fails unless `value` is a JSON object.
pub(crate) fn require_object(value: &Value, field: &str) -> Result<(), ConvertError> {
    if value.is_object() {
        Ok(())
    } else {
        Err(wrong_type(field, "a JSON object"))
    }
}

/// The event's `detail` as the JSON object EventBridge requires; an empty `detail` is `{}`.
pub(crate) fn detail_object(e: &Event) -> Result<Value, ConvertError> {
    if e.detail.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let detail = parse_json(&e.detail, "detail")?;
    require_object(&detail, "detail")?;
    Ok(detail)
}

/// Whether the event has a time (anything but the epoch itself, which stands for "unset").
pub(crate) fn has_time(e: &Event) -> bool {
    e.time_seconds != 0 || e.time_nanos != 0
}

/// The event's time as a canonical RFC 3339 string.
pub(crate) fn event_time(e: &Event) -> Result<String, ConvertError> {
    time::format_rfc3339(e.time_seconds, e.time_nanos).map_err(|reason| {
        let (field, value) = match reason {
            TimeError::NanosOutOfRange => ("time_nanos", e.time_nanos.to_string()),
            _ => ("time_seconds", e.time_seconds.to_string()),
        };
        ConvertError::InvalidTime {
            field: field.to_owned(),
            value,
            reason,
        }
    })
}

/// The event's extension attributes sorted by name, so output and errors are deterministic.
pub(crate) fn sorted_extensions(e: &Event) -> Vec<(&str, &str)> {
    let mut extensions: Vec<_> = e
        .extensions
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    extensions.sort_unstable();
    extensions
}

/// Inserts `key: value` unless `value` is empty.
pub(crate) fn put_string(out: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        out.insert(key.to_owned(), Value::from(value));
    }
}
