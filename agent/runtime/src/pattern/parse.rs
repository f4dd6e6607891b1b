//! Pattern JSON → typed AST ([`super::ast`]), with validation errors worded as AWS words them.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::ast::{
    AnythingBut, Bound, Branch, Cidr, Condition, Literal, Matcher, NumericRange, Wildcard,
    WildcardToken,
};

/// How deep objects may nest in a pattern.
pub const MAX_PATTERN_DEPTH: usize = 64;
/// How many branches the `$or` alternatives of one pattern may expand to.
pub const MAX_BRANCHES: usize = 1024;
/// How many wildcard characters one wildcard pattern may hold (AWS rejects more as too complex).
pub const MAX_WILDCARD_STARS: usize = 5;

/// What kind of problem made a pattern invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternErrorKind {
    /// The text is not JSON.
    Json,
    /// The JSON is not a valid pattern.
    Invalid,
    /// The pattern is valid but beyond a complexity or size limit.
    TooComplex,
}

/// An invalid event pattern (`InvalidEventPatternException`).
///
/// `Display` gives AWS's message: `Event pattern is not valid. Reason: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    kind: PatternErrorKind,
    reason: String,
}

impl PatternError {
    /// The AWS error code for invalid patterns.
    pub const CODE: &'static str = "InvalidEventPatternException";

    pub(crate) fn new(kind: PatternErrorKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }

    fn invalid(reason: impl Into<String>) -> Self {
        Self::new(PatternErrorKind::Invalid, reason)
    }

    /// The kind of problem.
    pub fn kind(&self) -> PatternErrorKind {
        self.kind
    }

    /// The reason alone, e.g. `Empty arrays are not allowed`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Event pattern is not valid. Reason: {}", self.reason)
    }
}

impl std::error::Error for PatternError {}

type Result<T> = std::result::Result<T, PatternError>;

/// Parses pattern text.
pub fn parse_str(text: &str) -> Result<Vec<Branch>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| PatternError::new(PatternErrorKind::Json, e.to_string()))?;
    parse_value(&value)
}

/// Parses a pattern already read as JSON.
pub fn parse_value(value: &Value) -> Result<Vec<Branch>> {
    match value {
        Value::Object(map) => parse_object(map, "", 0),
        _ => Err(PatternError::invalid("Filter is not an object")),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Every combination of one branch of `a` and one of `b`.
fn cross(a: Vec<Branch>, b: Vec<Branch>) -> Result<Vec<Branch>> {
    if a.len().saturating_mul(b.len()) > MAX_BRANCHES {
        return Err(PatternError::new(
            PatternErrorKind::TooComplex,
            format!(
                "Rule is too complex - more than {MAX_BRANCHES} combinations of $or alternatives"
            ),
        ));
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in &a {
        for y in &b {
            let mut conditions = x.conditions.clone();
            conditions.extend(y.conditions.iter().cloned());
            out.push(Branch { conditions });
        }
    }
    Ok(out)
}

fn parse_object(map: &Map<String, Value>, prefix: &str, depth: usize) -> Result<Vec<Branch>> {
    if depth >= MAX_PATTERN_DEPTH {
        return Err(PatternError::new(
            PatternErrorKind::TooComplex,
            format!("Event pattern nests deeper than {MAX_PATTERN_DEPTH} levels"),
        ));
    }
    let mut branches = vec![Branch::default()];
    for (key, value) in map {
        let sub = if key == "$or" {
            parse_or(value, prefix, depth)?
        } else {
            let path = join(prefix, key);
            match value {
                Value::Object(inner) => parse_object(inner, &path, depth + 1)?,
                Value::Array(items) => vec![Branch {
                    conditions: vec![Condition {
                        path,
                        matchers: parse_field_values(items)?,
                    }],
                }],
                _ => {
                    return Err(PatternError::invalid(format!(
                        "\"{key}\" must be an object or an array"
                    )))
                }
            }
        };
        branches = cross(branches, sub)?;
    }
    Ok(branches)
}

fn parse_or(value: &Value, prefix: &str, depth: usize) -> Result<Vec<Branch>> {
    let Value::Array(items) = value else {
        return Err(PatternError::invalid(
            "It must be an Array followed with $or.",
        ));
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Object(obj) = item else {
            return Err(PatternError::invalid(
                "Only JSON object is allowed in array of $or relationship.",
            ));
        };
        out.extend(parse_object(obj, prefix, depth + 1)?);
        if out.len() > MAX_BRANCHES {
            return Err(PatternError::new(
                PatternErrorKind::TooComplex,
                format!("Rule is too complex - more than {MAX_BRANCHES} combinations of $or alternatives"),
            ));
        }
    }
    if items.len() < 2 {
        return Err(PatternError::invalid(
            "There must have at least 2 Objects in $or relationship.",
        ));
    }
    Ok(out)
}

fn literal(value: &Value) -> Option<Literal> {
    Some(match value {
        Value::String(s) => Literal::String(s.clone()),
        Value::Number(n) => Literal::Number(n.clone()),
        Value::Bool(b) => Literal::Bool(*b),
        Value::Null => Literal::Null,
        _ => return None,
    })
}

fn parse_field_values(items: &[Value]) -> Result<Vec<Matcher>> {
    if items.is_empty() {
        return Err(PatternError::invalid("Empty arrays are not allowed"));
    }
    items
        .iter()
        .map(|item| match item {
            Value::Object(obj) => parse_match_expression(obj),
            other => literal(other).map(Matcher::Exact).ok_or_else(|| {
                PatternError::invalid("Match value must be String, number, true, false, or null")
            }),
        })
        .collect()
}

fn single_key(obj: &Map<String, Value>) -> Result<(&String, &Value)> {
    let mut it = obj.iter();
    let Some(first) = it.next() else {
        return Err(PatternError::invalid("Match expression name not found"));
    };
    if it.next().is_some() {
        return Err(PatternError::invalid(
            "Only one key allowed in match expression",
        ));
    }
    Ok(first)
}

fn parse_match_expression(obj: &Map<String, Value>) -> Result<Matcher> {
    let (name, value) = single_key(obj)?;
    match name.as_str() {
        "prefix" | "suffix" => {
            let is_prefix = name == "prefix";
            let must = || PatternError::invalid(format!("{name} match pattern must be a string"));
            match value {
                Value::String(s) if is_prefix => Ok(Matcher::Prefix(s.clone())),
                Value::String(s) => Ok(Matcher::Suffix(s.clone())),
                Value::Object(inner) => {
                    let (op, v) = single_key(inner).map_err(|_| must())?;
                    match (op.as_str(), v) {
                        ("equals-ignore-case", Value::String(s)) if is_prefix => {
                            Ok(Matcher::PrefixIgnoreCase(s.to_lowercase()))
                        }
                        ("equals-ignore-case", Value::String(s)) => {
                            Ok(Matcher::SuffixIgnoreCase(s.to_lowercase()))
                        }
                        ("equals-ignore-case", _) => Err(PatternError::invalid(
                            "equals-ignore-case match pattern must be a string",
                        )),
                        (other, _) => Err(PatternError::invalid(format!(
                            "Unsupported {name} pattern: {other}"
                        ))),
                    }
                }
                _ => Err(must()),
            }
        }
        "equals-ignore-case" => match value {
            Value::String(s) => Ok(Matcher::EqualsIgnoreCase(s.to_lowercase())),
            _ => Err(PatternError::invalid(
                "equals-ignore-case match pattern must be a string",
            )),
        },
        "wildcard" => match value {
            Value::String(s) => Ok(Matcher::Wildcard(parse_wildcard(s)?)),
            _ => Err(PatternError::invalid(
                "wildcard match pattern must be a string",
            )),
        },
        "numeric" => match value {
            Value::Array(items) => Ok(Matcher::Numeric(parse_numeric(items)?)),
            _ => Err(PatternError::invalid("Value of numeric must be an array.")),
        },
        "exists" => match value {
            Value::Bool(b) => Ok(Matcher::Exists(*b)),
            _ => Err(PatternError::invalid(
                "exists match pattern must be either true or false.",
            )),
        },
        "cidr" => match value {
            Value::String(s) => Ok(Matcher::Cidr(parse_cidr(s)?)),
            _ => Err(PatternError::invalid(
                "prefix match pattern must be a string",
            )),
        },
        "anything-but" => Ok(Matcher::AnythingBut(parse_anything_but(value)?)),
        other => Err(PatternError::invalid(format!(
            "Unrecognized match type {other}"
        ))),
    }
}

const ANYTHING_BUT_SHAPE: &str =
    "Value of anything-but must be an array or single string/number value.";

fn parse_anything_but(value: &Value) -> Result<AnythingBut> {
    match value {
        Value::String(_) | Value::Number(_) => {
            Ok(AnythingBut::Values(literal(value).into_iter().collect()))
        }
        Value::Array(items) => {
            let mut values = Vec::with_capacity(items.len());
            let (mut strings, mut numbers) = (false, false);
            for item in items {
                match item {
                    Value::String(_) => strings = true,
                    Value::Number(_) => numbers = true,
                    _ => {
                        return Err(PatternError::invalid(
                            "Inside anything but list, start|null|boolean is not supported.",
                        ))
                    }
                }
                values.extend(literal(item));
            }
            if strings == numbers {
                return Err(PatternError::invalid(
                    "Inside anything but list, either all values are number or string, mixed type is not supported",
                ));
            }
            Ok(AnythingBut::Values(values))
        }
        Value::Object(obj) => {
            let Some((op, inner)) = obj.iter().next() else {
                return Err(PatternError::invalid(
                    "Anything-But expression name not found",
                ));
            };
            if obj.len() > 1 {
                return Err(PatternError::invalid(
                    "Only one key allowed in match expression",
                ));
            }
            match op.as_str() {
                "prefix" | "suffix" => {
                    let list =
                        string_or_list(inner, "prefix/suffix match pattern must be a string")?;
                    if list.iter().any(String::is_empty) {
                        return Err(PatternError::invalid("Null prefix/suffix not allowed"));
                    }
                    Ok(if op == "prefix" {
                        AnythingBut::Prefix(list)
                    } else {
                        AnythingBut::Suffix(list)
                    })
                }
                "equals-ignore-case" => {
                    let list = string_or_list(
                        inner,
                        "Inside anything-but/equals-ignore-case list, number|start|null|boolean is not supported.",
                    )?;
                    Ok(AnythingBut::EqualsIgnoreCase(
                        list.iter().map(|s| s.to_lowercase()).collect(),
                    ))
                }
                "wildcard" => {
                    let list = string_or_list(inner, "wildcard match pattern must be a string")?;
                    Ok(AnythingBut::Wildcard(
                        list.iter()
                            .map(|s| parse_wildcard(s))
                            .collect::<Result<_>>()?,
                    ))
                }
                other => Err(PatternError::invalid(format!(
                    "Unsupported anything-but pattern: {other}"
                ))),
            }
        }
        _ => Err(PatternError::invalid(ANYTHING_BUT_SHAPE)),
    }
}

/// A string or a non-empty array of strings; `wrong_type` for other members.
fn string_or_list(value: &Value, wrong_type: &str) -> Result<Vec<String>> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(PatternError::invalid("Empty arrays are not allowed"));
            }
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(PatternError::invalid(wrong_type)),
                })
                .collect()
        }
        Value::Object(_) => Err(PatternError::invalid(ANYTHING_BUT_SHAPE)),
        _ => Err(PatternError::invalid(wrong_type)),
    }
}

/// Parses a wildcard: `*` is a wildcard, `\*` and `\\` are literal; other escapes, `**` and
/// more than [`MAX_WILDCARD_STARS`] wildcards are rejected. Positions count UTF-8 bytes from 1,
/// as AWS reports them.
pub fn parse_wildcard(source: &str) -> Result<Wildcard> {
    let mut tokens = Vec::with_capacity(source.len());
    let mut stars = 0usize;
    let mut it = source.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            '*' => {
                if matches!(it.peek(), Some((_, '*'))) {
                    return Err(PatternError::invalid(format!(
                        "Consecutive wildcard characters at pos {}",
                        i + 1
                    )));
                }
                stars += 1;
                tokens.push(WildcardToken::Star);
            }
            '\\' => match it.peek() {
                Some(&(_, next @ ('*' | '\\'))) => {
                    tokens.push(WildcardToken::Char(next));
                    it.next();
                }
                _ => {
                    return Err(PatternError::invalid(format!(
                        "Invalid escape character at pos {}",
                        i + 1
                    )))
                }
            },
            other => tokens.push(WildcardToken::Char(other)),
        }
    }
    if stars > MAX_WILDCARD_STARS {
        return Err(PatternError::new(
            PatternErrorKind::TooComplex,
            "Rule is too complex - try using fewer wildcard characters or fewer repeating character sequences after a wildcard character",
        ));
    }
    Ok(Wildcard {
        source: source.to_owned(),
        tokens,
    })
}

fn number(value: Option<&Value>, op: &str) -> Result<f64> {
    match value {
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| PatternError::invalid(format!("Value of {op} must be numeric"))),
        _ => Err(PatternError::invalid(format!(
            "Value of {op} must be numeric"
        ))),
    }
}

fn parse_numeric(items: &[Value]) -> Result<NumericRange> {
    let op = match items.first() {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(PatternError::invalid(format!(
                "Invalid member in numeric match: {other}"
            )))
        }
        None => return Err(PatternError::invalid("Empty arrays are not allowed")),
    };
    let too_many = || PatternError::invalid("Too many elements in numeric expression");
    match op {
        "=" => {
            let v = number(items.get(1), "equals")?;
            if items.len() > 2 {
                return Err(too_many());
            }
            let b = Some(Bound {
                value: v,
                inclusive: true,
            });
            Ok(NumericRange { lower: b, upper: b })
        }
        "<" | "<=" => {
            let v = number(items.get(1), op)?;
            if items.len() > 2 {
                return Err(too_many());
            }
            Ok(NumericRange {
                lower: None,
                upper: Some(Bound {
                    value: v,
                    inclusive: op == "<=",
                }),
            })
        }
        ">" | ">=" => {
            let lower = Bound {
                value: number(items.get(1), op)?,
                inclusive: op == ">=",
            };
            let Some(second) = items.get(2) else {
                return Ok(NumericRange {
                    lower: Some(lower),
                    upper: None,
                });
            };
            let top_op = match second {
                Value::String(s) if s == "<" || s == "<=" => s.as_str(),
                Value::String(s) => {
                    return Err(PatternError::invalid(format!(
                        "Bad numeric range operator: {s}"
                    )))
                }
                other => {
                    return Err(PatternError::invalid(format!(
                        "Bad value in numeric range: {other}"
                    )))
                }
            };
            let top = number(items.get(3), top_op)?;
            if items.len() > 4 {
                return Err(PatternError::invalid(
                    "Too many terms in numeric range expression",
                ));
            }
            if lower.value >= top {
                return Err(PatternError::invalid("Bottom must be less than top"));
            }
            Ok(NumericRange {
                lower: Some(lower),
                upper: Some(Bound {
                    value: top,
                    inclusive: top_op == "<=",
                }),
            })
        }
        other => Err(PatternError::invalid(format!(
            "Unrecognized numeric range operator: {other}"
        ))),
    }
}

/// Parses `address/bits` for IPv4 or IPv6.
pub fn parse_cidr(text: &str) -> Result<Cidr> {
    let mut parts = text.split('/');
    let (Some(ip), Some(bits), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(PatternError::invalid("Malformed CIDR, one '/' required"));
    };
    let bits: u32 = bits
        .parse()
        .map_err(|_| PatternError::invalid("Malformed CIDR, mask bits must be an integer"))?;
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| PatternError::invalid(format!("Nonstandard IP address: {ip}")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(PatternError::invalid(format!(
            "Malformed CIDR, mask bits must be between 0 and {max}"
        )));
    }
    Ok(Cidr {
        addr,
        prefix_len: bits as u8,
    })
}
