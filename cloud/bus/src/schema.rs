//! The schema registry: a JSON Schema per (source, detail-type), discovered from the `detail` of
//! the events seen or registered by a user, versioned, and used to validate events on put.
//!
//! # Schemas
//!
//! Schemas are JSON Schema (draft 2020-12) documents describing an event's `detail`, in the
//! subset this module reads and writes:
//!
//! * `type`: one name or an array of names (`null`, `boolean`, `integer`, `number`, `string`,
//!   `array`, `object`); `integer` is a number without a fractional part (`1.0` is one);
//! * `properties`, `required`, `additionalProperties` (a boolean or a schema), `items`
//!   (one schema for every element);
//! * the boolean schemas `true` and `false`;
//! * annotations, which are kept and not checked: `$schema`, `$id`, `title`, `description`.
//!
//! A registered schema using any other keyword is refused with
//! [`SchemaError::UnsupportedKeyword`], naming the keyword and where it is.
//!
//! # Discovery
//!
//! [`SchemaRegistry::observe`] merges an event's `detail` into what is known of its
//! (source, detail-type):
//!
//! * every JSON type seen at a place joins that place's `type` (conflicting types make a type
//!   union such as `["string", "null"]`; `integer` and `number` together are `number`);
//! * an object member is `required` only while every object seen at that place had it;
//! * array elements all merge into one `items` schema.
//!
//! A new version is made only when the discovered schema changes; versions are numbered from 1
//! without gaps, stamped with the time the caller passes. Once a user registers a schema for a
//! (source, detail-type), discovery stops for it: events no longer change it.
//!
//! # Bounds ([`Limits`])
//!
//! * `max_properties` members per schema (all levels together): members seen after that are not
//!   described (and, as no discovered schema sets `additionalProperties`, still allowed);
//! * `max_depth` levels of nesting: values deeper than that are described by their type only,
//!   without `properties` or `items`;
//! * `max_versions` per (source, detail-type): the oldest versions are dropped (numbers go on);
//! * `max_schemas` (source, detail-type) pairs: events of further pairs are not discovered
//!   ([`SchemaRegistry::observe`] returns `None`) and [`SchemaRegistry::register`] refuses.
//!
//! Registered schemas are held to the same `max_properties` and `max_depth`.
//!
//! # Validation
//!
//! [`SchemaRegistry::validate`] checks an event against the latest version of its
//! (source, detail-type) when validation is enabled for it
//! ([`SchemaRegistry::set_validation`]); otherwise every event passes. The first violation is
//! reported with its JSON pointer into the event (`/detail/items/0/id`) and what was expected.
//!
//! # Persistence
//!
//! [`SchemaRegistry::export`] writes the whole registry (versions, discovery state, settings)
//! as JSON; [`SchemaRegistry::import`] reads it back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use outrider_proto::Event;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `$schema` written into discovered schemas.
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// The keywords read by the validator.
pub const SUPPORTED_KEYWORDS: [&str; 5] = [
    "type",
    "properties",
    "required",
    "items",
    "additionalProperties",
];
/// Keywords kept as annotations.
pub const ANNOTATIONS: [&str; 4] = ["$schema", "$id", "title", "description"];

/// The export format's version.
const FORMAT: u32 = 1;

/// The registry's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Object members described per schema, all levels together.
    pub max_properties: usize,
    /// Levels of nesting described (the detail object is level 0).
    pub max_depth: usize,
    /// Versions kept per (source, detail-type).
    pub max_versions: usize,
    /// (source, detail-type) pairs.
    pub max_schemas: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_properties: 1000,
            max_depth: 32,
            max_versions: 100,
            max_schemas: 10_000,
        }
    }
}

/// Why a schema or an export was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The schema uses a keyword this registry does not support.
    #[error("schema keyword {keyword:?} at {pointer:?} is not supported (supported: type, properties, required, items, additionalProperties; annotations $schema, $id, title, description)")]
    UnsupportedKeyword {
        /// JSON pointer into the schema of the object holding the keyword.
        pointer: String,
        /// The keyword.
        keyword: String,
    },
    /// A supported keyword with a value it cannot have.
    #[error("schema at {pointer:?} is invalid: {reason}")]
    Invalid {
        /// JSON pointer into the schema.
        pointer: String,
        /// What is wrong.
        reason: String,
    },
    /// A bound of [`Limits`] was reached.
    #[error("schema limit reached: {0}")]
    Limit(String),
    /// [`SchemaRegistry::import`] could not read its input.
    #[error("schema registry export cannot be read: {0}")]
    Import(String),
}

/// Why an event does not conform to its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// JSON pointer into the event, `/detail/...`.
    pub pointer: String,
    /// What the schema expects there, e.g. `type "string"`, `member "id" (required)`.
    pub expected: String,
    /// What the event has there (`integer`, `absent` ...).
    pub found: String,
    /// The version of the schema checked against.
    pub version: u32,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event does not match schema version {}: at {} expected {}, found {}",
            self.version, self.pointer, self.expected, self.found
        )
    }
}

impl std::error::Error for SchemaViolation {}

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Made by [`SchemaRegistry::observe`].
    Discovered,
    /// Given to [`SchemaRegistry::register`].
    Registered,
}

/// One version of a schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaVersion {
    /// 1, 2, 3 ...
    pub version: u32,
    /// When it was made (Unix ms), as the caller said.
    pub created_ms: i64,
    /// Discovered or registered.
    pub origin: Origin,
    /// The JSON Schema document.
    pub schema: Value,
}

// ---------------------------------------------------------------------------------------------
// JSON types

const T_NULL: u8 = 1;
const T_BOOLEAN: u8 = 2;
const T_INTEGER: u8 = 4;
const T_NUMBER: u8 = 8;
const T_STRING: u8 = 16;
const T_ARRAY: u8 = 32;
const T_OBJECT: u8 = 64;
const TYPE_NAMES: [(u8, &str); 7] = [
    (T_ARRAY, "array"),
    (T_BOOLEAN, "boolean"),
    (T_INTEGER, "integer"),
    (T_NULL, "null"),
    (T_NUMBER, "number"),
    (T_OBJECT, "object"),
    (T_STRING, "string"),
];

fn type_of(v: &Value) -> u8 {
    match v {
        Value::Null => T_NULL,
        Value::Bool(_) => T_BOOLEAN,
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) {
                T_INTEGER
            } else {
                T_NUMBER
            }
        }
        Value::String(_) => T_STRING,
        Value::Array(_) => T_ARRAY,
        Value::Object(_) => T_OBJECT,
    }
}

fn type_name(t: u8) -> &'static str {
    TYPE_NAMES
        .iter()
        .find(|(b, _)| *b == t)
        .map_or("value", |(_, n)| n)
}

/// The `type` value for a set of types (`integer` folded into `number` when both).
fn type_value(mut types: u8) -> Option<Value> {
    if types & T_NUMBER != 0 {
        types &= !T_INTEGER;
    }
    let names: Vec<Value> = TYPE_NAMES
        .iter()
        .filter(|(b, _)| types & b != 0)
        .map(|(_, n)| Value::from(*n))
        .collect();
    match names.len() {
        0 => None,
        1 => names.into_iter().next(),
        _ => Some(Value::Array(names)),
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery state

/// What has been seen at one place of the detail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    /// Bit set of the JSON types seen.
    types: u8,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    properties: BTreeMap<String, Shape>,
    /// Members every object seen here had.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    required: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    items: Option<Box<Shape>>,
}

struct Budget {
    properties: usize,
    max_properties: usize,
    max_depth: usize,
}

impl Shape {
    fn count_properties(&self) -> usize {
        self.properties
            .values()
            .map(|p| 1 + p.count_properties())
            .sum::<usize>()
            + self.items.as_ref().map_or(0, |i| i.count_properties())
    }

    /// Merges `v` in; whether anything changed.
    fn merge(&mut self, v: &Value, depth: usize, budget: &mut Budget) -> bool {
        let t = type_of(v);
        let first_object = t == T_OBJECT && self.types & T_OBJECT == 0;
        let mut changed = self.types & t == 0;
        self.types |= t;
        if depth >= budget.max_depth {
            return changed;
        }
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    match self.properties.get_mut(k) {
                        Some(p) => changed |= p.merge(child, depth + 1, budget),
                        None => {
                            if budget.properties >= budget.max_properties {
                                continue;
                            }
                            budget.properties += 1;
                            let mut p = Shape::default();
                            p.merge(child, depth + 1, budget);
                            self.properties.insert(k.clone(), p);
                            changed = true;
                        }
                    }
                }
                if first_object {
                    self.required = m
                        .keys()
                        .filter(|k| self.properties.contains_key(*k))
                        .cloned()
                        .collect();
                } else {
                    let before = self.required.len();
                    self.required.retain(|k| m.contains_key(k));
                    changed |= self.required.len() != before;
                }
            }
            Value::Array(a) => {
                for item in a {
                    match &mut self.items {
                        Some(s) => changed |= s.merge(item, depth + 1, budget),
                        None => {
                            let mut s = Shape::default();
                            s.merge(item, depth + 1, budget);
                            self.items = Some(Box::new(s));
                            changed = true;
                        }
                    }
                }
            }
            _ => {}
        }
        changed
    }

    fn to_schema(&self) -> Value {
        let mut m = Map::new();
        if let Some(t) = type_value(self.types) {
            m.insert("type".into(), t);
        }
        if self.types & T_OBJECT != 0 && !self.properties.is_empty() {
            m.insert(
                "properties".into(),
                Value::Object(
                    self.properties
                        .iter()
                        .map(|(k, p)| (k.clone(), p.to_schema()))
                        .collect(),
                ),
            );
            if !self.required.is_empty() {
                m.insert(
                    "required".into(),
                    Value::Array(
                        self.required
                            .iter()
                            .map(|k| Value::from(k.as_str()))
                            .collect(),
                    ),
                );
            }
        }
        if self.types & T_ARRAY != 0 {
            if let Some(items) = &self.items {
                m.insert("items".into(), items.to_schema());
            }
        }
        Value::Object(m)
    }
}

fn discovered_document(shape: &Shape) -> Value {
    let mut doc = match shape.to_schema() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    doc.insert("$schema".into(), Value::from(DRAFT_2020_12));
    Value::Object(doc)
}

// ---------------------------------------------------------------------------------------------
// Compiled schemas

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// `true` or `{}`.
    Any,
    /// `false`.
    Never,
    Check(Box<Check>),
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Check {
    /// Bit set; `None`: any type.
    types: Option<u8>,
    properties: BTreeMap<String, Node>,
    required: Vec<String>,
    /// `None`: any member allowed.
    additional: Option<Node>,
    items: Option<Node>,
}

fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

struct Compiler {
    properties: usize,
    limits: Limits,
}

impl Compiler {
    fn compile(&mut self, v: &Value, pointer: &str, depth: usize) -> Result<Node, SchemaError> {
        let invalid = |reason: &str| SchemaError::Invalid {
            pointer: pointer.to_string(),
            reason: reason.to_string(),
        };
        if depth > self.limits.max_depth {
            return Err(SchemaError::Limit(format!(
                "schema at {pointer:?} is nested deeper than {} levels",
                self.limits.max_depth
            )));
        }
        let m = match v {
            Value::Bool(true) => return Ok(Node::Any),
            Value::Bool(false) => return Ok(Node::Never),
            Value::Object(m) => m,
            _ => return Err(invalid("a schema is an object or a boolean")),
        };
        let mut c = Check::default();
        for (k, val) in m {
            let at = format!("{pointer}/{}", escape_pointer(k));
            match k.as_str() {
                "type" => {
                    let mut bits = 0u8;
                    let names: Vec<&Value> = match val {
                        Value::Array(a) if !a.is_empty() => a.iter().collect(),
                        Value::String(_) => vec![val],
                        _ => {
                            return Err(invalid("type is a type name or a non-empty array of them"))
                        }
                    };
                    for n in names {
                        let name = n.as_str().unwrap_or("");
                        let bit = TYPE_NAMES
                            .iter()
                            .find(|(_, tn)| *tn == name)
                            .map(|(b, _)| *b)
                            .ok_or_else(|| invalid(&format!("unknown type {n}")))?;
                        bits |= bit;
                    }
                    if bits & T_NUMBER != 0 {
                        bits |= T_INTEGER;
                    }
                    c.types = Some(bits);
                }
                "properties" => {
                    let Value::Object(props) = val else {
                        return Err(invalid("properties is an object"));
                    };
                    for (name, sub) in props {
                        self.properties += 1;
                        if self.properties > self.limits.max_properties {
                            return Err(SchemaError::Limit(format!(
                                "schema has more than {} properties",
                                self.limits.max_properties
                            )));
                        }
                        let node = self.compile(
                            sub,
                            &format!("{at}/{}", escape_pointer(name)),
                            depth + 1,
                        )?;
                        c.properties.insert(name.clone(), node);
                    }
                }
                "required" => {
                    let Value::Array(names) = val else {
                        return Err(invalid("required is an array of member names"));
                    };
                    for n in names {
                        let n = n
                            .as_str()
                            .ok_or_else(|| invalid("required is an array of member names"))?;
                        if !c.required.iter().any(|r| r == n) {
                            c.required.push(n.to_string());
                        }
                    }
                }
                "items" => c.items = Some(self.compile(val, &at, depth + 1)?),
                "additionalProperties" => {
                    c.additional = Some(self.compile(val, &at, depth + 1)?);
                }
                k if ANNOTATIONS.contains(&k) => {}
                other => {
                    return Err(SchemaError::UnsupportedKeyword {
                        pointer: pointer.to_string(),
                        keyword: other.to_string(),
                    })
                }
            }
        }
        if c == Check::default() {
            return Ok(Node::Any);
        }
        Ok(Node::Check(Box::new(c)))
    }
}

fn compile(schema: &Value, limits: Limits) -> Result<Node, SchemaError> {
    Compiler {
        properties: 0,
        limits,
    }
    .compile(schema, "", 0)
}

fn describe(v: &Value) -> String {
    type_name(type_of(v)).to_string()
}

fn expected_types(bits: u8) -> String {
    match type_value(bits) {
        Some(v) => format!("type {v}"),
        None => "no value".to_string(),
    }
}

/// The first violation of `v` against `node`, `pointer` being where `v` is.
fn check(node: &Node, v: &Value, pointer: &mut String) -> Option<(String, String)> {
    let c = match node {
        Node::Any => return None,
        Node::Never => return Some(("nothing (schema false)".into(), describe(v))),
        Node::Check(c) => c,
    };
    if let Some(types) = c.types {
        let t = type_of(v);
        // an integer is also a number
        let ok = types & t != 0 || (t == T_INTEGER && types & T_NUMBER != 0);
        if !ok {
            return Some((expected_types(types), describe(v)));
        }
    }
    match v {
        Value::Object(m) => {
            for r in &c.required {
                if !m.contains_key(r) {
                    pointer.push('/');
                    pointer.push_str(&escape_pointer(r));
                    return Some(("a value (required member)".into(), "absent".into()));
                }
            }
            for (k, child) in m {
                let sub = match c.properties.get(k) {
                    Some(n) => n,
                    None => match &c.additional {
                        Some(n) => n,
                        None => continue,
                    },
                };
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape_pointer(k));
                if let Some(e) = check(sub, child, pointer) {
                    return Some(match (sub, c.properties.contains_key(k)) {
                        (Node::Never, false) => {
                            ("no such member (additionalProperties false)".into(), e.1)
                        }
                        _ => e,
                    });
                }
                pointer.truncate(len);
            }
        }
        Value::Array(a) => {
            if let Some(items) = &c.items {
                for (i, item) in a.iter().enumerate() {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&i.to_string());
                    if let Some(e) = check(items, item, pointer) {
                        return Some(e);
                    }
                    pointer.truncate(len);
                }
            }
        }
        _ => {}
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The registry

#[derive(Debug, Clone)]
struct Entry {
    validate: bool,
    /// Discovery state; `None` once a user registered a schema.
    shape: Option<Shape>,
    versions: Vec<SchemaVersion>,
    /// The latest version, compiled.
    compiled: Option<Node>,
    /// Members described by `shape`.
    described: usize,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            validate: false,
            shape: Some(Shape::default()),
            versions: Vec::new(),
            compiled: None,
            described: 0,
        }
    }

    fn next_version(&self) -> u32 {
        self.versions
            .last()
            .map_or(1, |v| v.version.saturating_add(1))
    }

    fn push(&mut self, v: SchemaVersion, node: Node, limits: &Limits) {
        self.versions.push(v);
        self.compiled = Some(node);
        let excess = self
            .versions
            .len()
            .saturating_sub(limits.max_versions.max(1));
        if excess > 0 {
            self.versions.drain(..excess);
        }
    }
}

/// Schemas per (source, detail-type). Pure: time is passed in; the engine persists it with
/// [`SchemaRegistry::export`].
#[derive(Debug, Clone, Default)]
pub struct SchemaRegistry {
    limits: Limits,
    entries: BTreeMap<(String, String), Entry>,
}

fn detail_value(event: &Event) -> Result<Value, ()> {
    if event.detail.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_str(&event.detail).map_err(|_| ())
}

impl SchemaRegistry {
    /// An empty registry with the default [`Limits`].
    pub fn new() -> SchemaRegistry {
        SchemaRegistry::default()
    }

    /// An empty registry with these bounds.
    pub fn with_limits(limits: Limits) -> SchemaRegistry {
        SchemaRegistry {
            limits,
            entries: BTreeMap::new(),
        }
    }

    /// The registry's bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn entry_mut(&mut self, source: &str, detail_type: &str) -> Option<&mut Entry> {
        let key = (source.to_string(), detail_type.to_string());
        if !self.entries.contains_key(&key) && self.entries.len() >= self.limits.max_schemas {
            return None;
        }
        Some(self.entries.entry(key).or_insert_with(Entry::new))
    }

    /// Merges an event's `detail` into its discovered schema; the number of the new version when
    /// the schema changed. `None` also when the detail is not JSON, a user registered this
    /// (source, detail-type)'s schema, or `max_schemas` is reached.
    pub fn observe(&mut self, event: &Event, now_ms: i64) -> Option<u32> {
        let detail = detail_value(event).ok()?;
        self.observe_detail(&event.source, &event.detail_type, &detail, now_ms)
    }

    /// [`SchemaRegistry::observe`] for a detail already parsed.
    pub fn observe_detail(
        &mut self,
        source: &str,
        detail_type: &str,
        detail: &Value,
        now_ms: i64,
    ) -> Option<u32> {
        let limits = self.limits;
        let entry = self.entry_mut(source, detail_type)?;
        let shape = entry.shape.as_mut()?;
        let mut budget = Budget {
            properties: entry.described,
            max_properties: limits.max_properties,
            max_depth: limits.max_depth,
        };
        let changed = shape.merge(detail, 0, &mut budget);
        entry.described = budget.properties;
        if !changed && !entry.versions.is_empty() {
            return None;
        }
        let doc = discovered_document(shape);
        if entry.versions.last().is_some_and(|v| v.schema == doc) {
            return None;
        }
        // A discovered schema is within the limits by construction.
        let node = compile(&doc, limits).ok()?;
        let version = entry.next_version();
        entry.push(
            SchemaVersion {
                version,
                created_ms: now_ms,
                origin: Origin::Discovered,
                schema: doc,
            },
            node,
            &limits,
        );
        Some(version)
    }

    /// Registers a user's schema for (source, detail-type): a new version unless it equals the
    /// latest one; discovery stops for this pair. Returns the latest version number.
    pub fn register(
        &mut self,
        source: &str,
        detail_type: &str,
        schema: &Value,
        now_ms: i64,
    ) -> Result<u32, SchemaError> {
        let limits = self.limits;
        let node = compile(schema, limits)?;
        let entry = self.entry_mut(source, detail_type).ok_or_else(|| {
            SchemaError::Limit(format!(
                "the registry holds {} schemas already",
                limits.max_schemas
            ))
        })?;
        entry.shape = None;
        if let Some(last) = entry.versions.last() {
            if &last.schema == schema {
                return Ok(last.version);
            }
        }
        let version = entry.next_version();
        entry.push(
            SchemaVersion {
                version,
                created_ms: now_ms,
                origin: Origin::Registered,
                schema: schema.clone(),
            },
            node,
            &limits,
        );
        Ok(version)
    }

    /// Turns validation on or off for (source, detail-type).
    pub fn set_validation(&mut self, source: &str, detail_type: &str, enabled: bool) {
        if let Some(e) = self.entry_mut(source, detail_type) {
            e.validate = enabled;
        }
    }

    /// Whether events of (source, detail-type) are validated.
    pub fn validation_enabled(&self, source: &str, detail_type: &str) -> bool {
        self.get(source, detail_type).is_some_and(|e| e.validate)
    }

    fn get(&self, source: &str, detail_type: &str) -> Option<&Entry> {
        self.entries
            .get(&(source.to_string(), detail_type.to_string()))
    }

    /// The latest version of (source, detail-type)'s schema.
    pub fn latest(&self, source: &str, detail_type: &str) -> Option<&SchemaVersion> {
        self.get(source, detail_type)?.versions.last()
    }

    /// One version of (source, detail-type)'s schema, if kept.
    pub fn version(&self, source: &str, detail_type: &str, version: u32) -> Option<&SchemaVersion> {
        self.get(source, detail_type)?
            .versions
            .iter()
            .find(|v| v.version == version)
    }

    /// The kept versions of (source, detail-type)'s schema, oldest first.
    pub fn versions(&self, source: &str, detail_type: &str) -> &[SchemaVersion] {
        self.get(source, detail_type)
            .map_or(&[], |e| e.versions.as_slice())
    }

    /// The (source, detail-type) pairs known, in order.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.keys().map(|(s, d)| (s.as_str(), d.as_str()))
    }

    /// Checks an event against the latest version of its schema when validation is enabled for
    /// its (source, detail-type); passes otherwise (also when there is no schema yet).
    pub fn validate(&self, event: &Event) -> Result<(), SchemaViolation> {
        let Some(entry) = self.get(&event.source, &event.detail_type) else {
            return Ok(());
        };
        if !entry.validate {
            return Ok(());
        }
        let (Some(node), Some(latest)) = (&entry.compiled, entry.versions.last()) else {
            return Ok(());
        };
        let detail = detail_value(event).map_err(|()| SchemaViolation {
            pointer: "/detail".into(),
            expected: "JSON".into(),
            found: "text that is not JSON".into(),
            version: latest.version,
        })?;
        let mut pointer = String::from("/detail");
        match check(node, &detail, &mut pointer) {
            None => Ok(()),
            Some((expected, found)) => Err(SchemaViolation {
                pointer,
                expected,
                found,
                version: latest.version,
            }),
        }
    }

    /// The whole registry as JSON.
    pub fn export(&self) -> Value {
        let schemas: Vec<ExportEntry> = self
            .entries
            .iter()
            .map(|((source, detail_type), e)| ExportEntry {
                source: source.clone(),
                detail_type: detail_type.clone(),
                validate: e.validate,
                discovery: e.shape.clone(),
                versions: e.versions.clone(),
            })
            .collect();
        serde_json::to_value(Export {
            format: FORMAT,
            limits: self.limits,
            schemas,
        })
        .unwrap_or(Value::Null)
    }

    /// Reads what [`SchemaRegistry::export`] wrote.
    pub fn import(v: &Value) -> Result<SchemaRegistry, SchemaError> {
        let ex = Export::deserialize(v).map_err(|e| SchemaError::Import(e.to_string()))?;
        if ex.format != FORMAT {
            return Err(SchemaError::Import(format!(
                "format {} (this registry reads {FORMAT})",
                ex.format
            )));
        }
        let mut reg = SchemaRegistry::with_limits(ex.limits);
        for s in ex.schemas {
            let mut prev = 0;
            for v in &s.versions {
                if v.version <= prev {
                    return Err(SchemaError::Import(format!(
                        "versions of {}/{} are not increasing",
                        s.source, s.detail_type
                    )));
                }
                prev = v.version;
            }
            let compiled = match s.versions.last() {
                Some(v) => Some(compile(&v.schema, ex.limits)?),
                None => None,
            };
            let described = s.discovery.as_ref().map_or(0, Shape::count_properties);
            reg.entries.insert(
                (s.source, s.detail_type),
                Entry {
                    described,
                    validate: s.validate,
                    shape: s.discovery,
                    versions: s.versions,
                    compiled,
                },
            );
        }
        Ok(reg)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Export {
    format: u32,
    limits: Limits,
    schemas: Vec<ExportEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportEntry {
    source: String,
    detail_type: String,
    validate: bool,
    /// Discovery state; absent once a user registered a schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    discovery: Option<Shape>,
    versions: Vec<SchemaVersion>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_and_unions() {
        let mut s = Shape::default();
        let mut b = Budget {
            properties: 0,
            max_properties: 100,
            max_depth: 10,
        };
        s.merge(&json!({"a": 1, "b": "x", "c": [1, 2]}), 0, &mut b);
        assert_eq!(
            s.to_schema(),
            json!({"type": "object", "required": ["a", "b", "c"], "properties": {
                "a": {"type": "integer"}, "b": {"type": "string"},
                "c": {"type": "array", "items": {"type": "integer"}}}})
        );
        s.merge(&json!({"a": 1.5, "b": null, "c": [1, "x"]}), 0, &mut b);
        assert_eq!(
            s.to_schema(),
            json!({"type": "object", "required": ["a", "b", "c"], "properties": {
                "a": {"type": "number"}, "b": {"type": ["null", "string"]},
                "c": {"type": "array", "items": {"type": ["integer", "string"]}}}})
        );
        s.merge(&json!({"a": 2, "d": true}), 0, &mut b);
        let v = s.to_schema();
        assert_eq!(v["required"], json!(["a"]));
        assert_eq!(v["properties"]["d"], json!({"type": "boolean"}));
        // 1.0 is an integer.
        assert_eq!(type_of(&json!(1.0)), T_INTEGER);
    }

    #[test]
    fn compiles_only_what_it_supports() {
        let l = Limits::default();
        assert!(compile(
            &json!({"type": "object", "$schema": DRAFT_2020_12, "title": "t"}),
            l
        )
        .is_ok());
        assert_eq!(
            compile(
                &json!({"properties": {"a": {"type": "string", "pattern": "x"}}}),
                l
            ),
            Err(SchemaError::UnsupportedKeyword {
                pointer: "/properties/a".into(),
                keyword: "pattern".into()
            })
        );
        assert!(matches!(
            compile(&json!({"type": "text"}), l),
            Err(SchemaError::Invalid { .. })
        ));
        assert!(matches!(
            compile(&json!({"required": "a"}), l),
            Err(SchemaError::Invalid { .. })
        ));
        assert!(matches!(
            compile(&json!(3), l),
            Err(SchemaError::Invalid { .. })
        ));
    }
}
