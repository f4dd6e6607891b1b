//! The JSONPath subset EventBridge accepts in InputPath, InputPathsMap and partition-key paths:
//! `$`, then `.name` or `['name']` steps and `[index]` array steps (`$.detail.items[0].id`).
//! Filters, wildcards, slices and recursive descent are refused with a reason.

use serde_json::Value;

use crate::error::{BusError, Result};

/// Longest path text accepted (EventBridge: 256).
pub const MAX_PATH_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath> {
        let bad = |why: &str| BusError::Validation(format!("invalid JSONPath {text:?}: {why}"));
        if text.len() > MAX_PATH_LEN {
            return Err(bad(&format!("longer than {MAX_PATH_LEN} characters")));
        }
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| bad("must start with '$'"))?;
        let b = rest.as_bytes();
        let mut i = 0;
        let mut steps = Vec::new();
        while i < b.len() {
            match b[i] {
                b'.' => {
                    i += 1;
                    if i < b.len() && b[i] == b'.' {
                        return Err(bad("recursive descent '..' is not supported"));
                    }
                    let start = i;
                    while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                        i += 1;
                    }
                    let key = &rest[start..i];
                    if key.is_empty() {
                        return Err(bad("empty field name"));
                    }
                    if key == "*" {
                        return Err(bad("wildcards are not supported"));
                    }
                    steps.push(Step::Key(key.to_string()));
                }
                b'[' => {
                    let close = rest[i..].find(']').ok_or_else(|| bad("'[' without ']'"))? + i;
                    let inner = rest[i + 1..close].trim();
                    if let Some(q) = inner
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                    {
                        steps.push(Step::Key(q.to_string()));
                    } else {
                        let n: usize = inner.parse().map_err(|_| {
                            bad(&format!("[{inner}] is not an array index or a quoted name"))
                        })?;
                        steps.push(Step::Index(n));
                    }
                    i = close + 1;
                }
                _ => {
                    return Err(bad(&format!(
                        "unexpected {:?} at offset {}",
                        b[i] as char,
                        i + 1
                    )))
                }
            }
        }
        Ok(JsonPath {
            text: text.to_string(),
            steps,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at the path, if the document has one.
    pub fn select<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        let mut cur = doc;
        for s in &self.steps {
            cur = match (s, cur) {
                (Step::Key(k), Value::Object(m)) => m.get(k)?,
                (Step::Index(n), Value::Array(a)) => a.get(*n)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_fields_and_indexes() {
        let doc = json!({"detail": {"items": [{"id": "a"}, {"id": "b"}], "a.b": 1}});
        let p = JsonPath::parse("$.detail.items[1].id").unwrap();
        assert_eq!(p.select(&doc), Some(&json!("b")));
        assert_eq!(JsonPath::parse("$").unwrap().select(&doc), Some(&doc));
        assert_eq!(
            JsonPath::parse("$.detail['a.b']").unwrap().select(&doc),
            Some(&json!(1))
        );
        assert_eq!(
            JsonPath::parse("$.detail.missing").unwrap().select(&doc),
            None
        );
        assert_eq!(
            JsonPath::parse("$.detail.items.id").unwrap().select(&doc),
            None
        );
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        for bad in [
            "detail",
            "$..a",
            "$.a[*]",
            "$.a[?(@.x)]",
            "$.",
            "$.a[1",
            "$x",
        ] {
            let e = JsonPath::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid JSONPath"), "{bad}: {e}");
        }
    }
}
