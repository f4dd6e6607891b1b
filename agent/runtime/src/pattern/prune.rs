//! Reading event text while keeping only the fields patterns look at.
//!
//! Most of the cost of matching JSON text is building the whole `serde_json::Value`. This
//! deserializer walks the text once and skips (without allocating) every field whose dotted path
//! is not one a pattern uses or a `.`-prefix of one, so the event that is then matched holds just
//! the relevant leaves. Matching the pruned event gives the same answer as matching the whole.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `text` keeping only the fields whose paths are in `relevant` (see
/// `add_path_prefixes`). A non-object event parses to `null`, which no pattern matches.
pub(crate) fn parse_pruned(
    text: &str,
    relevant: &HashSet<String>,
) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut path = String::new();
    let value = Pruned {
        relevant,
        path: &mut path,
        depth: 0,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// [`parse_pruned`] on bytes (serde_json's `from_slice`).
pub(crate) fn parse_pruned_slice(
    text: &[u8],
    relevant: &HashSet<String>,
) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let mut path = String::new();
    let value = Pruned {
        relevant,
        path: &mut path,
        depth: 0,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Pruned<'a> {
    relevant: &'a HashSet<String>,
    path: &'a mut String,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth == 0 {
            // A non-object event: read and drop it.
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Value::Null);
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Pruned {
            relevant: self.relevant,
            path: &mut *self.path,
            depth: self.depth + 1,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let len = self.path.len();
            if self.depth > 0 {
                self.path.push('.');
            }
            self.path.push_str(&key);
            if self.relevant.contains(self.path.as_str()) {
                let value = map.next_value_seed(Pruned {
                    relevant: self.relevant,
                    path: &mut *self.path,
                    depth: self.depth + 1,
                })?;
                out.insert(key.into_owned(), value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            self.path.truncate(len);
        }
        Ok(Value::Object(out))
    }
}
