//! Target input: what a target receives for an event, following EventBridge's rules.
//!
//! A target sends one of:
//!
//! * the whole event (its EventBridge JSON), when none of the settings below is given;
//! * `Input`: constant JSON text, sent as written;
//! * `InputPath`: the part of the event a JSONPath selects ([`crate::jsonpath`]), as JSON text;
//! * `InputTransformer`: an `InputPathsMap` (at most [`MAX_INPUT_PATHS`] variables, each a
//!   JSONPath) and an `InputTemplate` (at most [`MAX_INPUT_LEN`] characters) in which every
//!   `<variable>` is replaced by the value its path selects.
//!
//! # Templates
//!
//! A template is parsed once, when the target is defined ([`InputSpec::from_target`]), into text
//! and placeholder segments; rendering an event only looks the paths up and concatenates.
//!
//! A placeholder is `<name>` where `name` is 1+ of `[A-Za-z0-9_.-]`; any other `<` is text. A
//! placeholder that names neither a variable of the map nor a predefined variable is refused
//! with AWS's message (`InputTemplate for target ID contains invalid placeholder NAME.`).
//!
//! Where a placeholder stands decides how its value is written, as in EventBridge:
//!
//! * **inside a JSON string** (`"path/<id>"`, `"<id>"`): as text. A string is written without
//!   its quotes (JSON-escaped, so the string stays valid); any other value as its JSON text with
//!   every `"` removed (`{acc_id:0a78,sf_id:baz}`, `[ACTIVE,INACTIVE]`, `true`, `12`) — this is
//!   what AWS delivers. A missing path writes nothing.
//! * **outside strings, in a JSON template** (`{"id": <id>}`): as JSON (`"0a78"`, `{"a":1}`,
//!   `["HIGH"]`). A missing path writes `""` (AWS's recorded behaviour, not `null`).
//! * **outside strings, in a string template** (a template that is not JSON once its
//!   placeholders are filled, such as `<instance> is in state <state>` or several quoted lines):
//!   as text, like inside a string but without escaping.
//!
//! A template is a JSON template when, with every placeholder outside strings replaced by `null`
//! and every one inside strings by nothing, it parses as JSON.
//!
//! # Predefined variables
//!
//! * `<aws.events.rule-arn>`, `<aws.events.rule-name>`: the rule's ARN and name;
//! * `<aws.events.event.ingestion-time>`: when the bus received the event (RFC 3339);
//! * `<aws.events.event>`: the event without its `detail`, with `detail-type` written as
//!   `detailType` — the shape AWS delivers (see the conformance snapshot);
//! * `<aws.events.event.json>`: the full event as JSON; inside a string, as escaped JSON text.
//!
//! They need no entry in the map, and a map key cannot define them (keys are
//! `[A-Za-z0-9_-]`, 1–256 characters, and may not start with `AWS`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::error::{BusError, Result};
use crate::jsonpath::JsonPath;
use crate::model::{InputTransformerDef, TargetDef, MAX_INPUT_LEN};

/// Most entries of an InputPathsMap (EventBridge's limit).
pub const MAX_INPUT_PATHS: usize = 100;
/// Longest InputPathsMap key.
pub const MAX_VARIABLE_NAME_LEN: usize = 256;

/// The predefined variable of the rule's ARN.
pub const VAR_RULE_ARN: &str = "aws.events.rule-arn";
/// The predefined variable of the rule's name.
pub const VAR_RULE_NAME: &str = "aws.events.rule-name";
/// The predefined variable of the event's ingestion time.
pub const VAR_INGESTION_TIME: &str = "aws.events.event.ingestion-time";
/// The predefined variable of the event without its detail.
pub const VAR_EVENT: &str = "aws.events.event";
/// The predefined variable of the whole event as JSON.
pub const VAR_EVENT_JSON: &str = "aws.events.event.json";

/// Why an input could not be made for one event. Raised per delivery, not at definition time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The target's `InputPath` selects nothing in this event.
    #[error("InputPath {0} selects nothing in the event")]
    InputPathNoMatch(String),
}

/// What the bus knows about a delivery beyond the event: the values of the predefined
/// variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderContext<'a> {
    /// `arn:aws:events:REGION:ACCOUNT:rule/[BUS/]RULE`.
    pub rule_arn: &'a str,
    /// The rule's name.
    pub rule_name: &'a str,
    /// When the bus received the event, RFC 3339.
    pub ingestion_time: &'a str,
}

/// A target's input settings, checked and compiled.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSpec {
    /// The whole event.
    Event,
    /// `Input`: this text, whatever the event.
    Constant(String),
    /// `InputPath`.
    Path(JsonPath),
    /// `InputTransformer`.
    Transformer(Template),
}

impl InputSpec {
    /// Checks and compiles a target's Input / InputPath / InputTransformer as `PutTargets` does.
    pub fn from_target(target: &TargetDef) -> Result<InputSpec> {
        let id = &target.id;
        let given = usize::from(target.input.is_some())
            + usize::from(target.input_path.is_some())
            + usize::from(target.input_transformer.is_some());
        if given > 1 {
            return Err(BusError::Validation(format!(
                "Only one of Input, InputPath, or InputTransformer must be provided for target {id}."
            )));
        }
        if let Some(input) = &target.input {
            if input.chars().count() > MAX_INPUT_LEN {
                return Err(BusError::Validation(format!(
                    "Input for target {id} is longer than {MAX_INPUT_LEN} characters."
                )));
            }
            if serde_json::from_str::<Value>(input).is_err() {
                return Err(BusError::Validation(format!(
                    "Input for target {id} is not valid JSON text."
                )));
            }
            return Ok(InputSpec::Constant(input.clone()));
        }
        if let Some(path) = &target.input_path {
            return Ok(InputSpec::Path(JsonPath::parse(path)?));
        }
        if let Some(t) = &target.input_transformer {
            return Ok(InputSpec::Transformer(Template::compile(id, t)?));
        }
        Ok(InputSpec::Event)
    }

    /// The payload for one event. `event_json` is the event's EventBridge JSON
    /// (`outrider_proto::eventbridge::to_json`).
    pub fn render(
        &self,
        event_json: &Value,
        ctx: &RenderContext<'_>,
    ) -> std::result::Result<String, TransformError> {
        match self {
            InputSpec::Event => Ok(event_json.to_string()),
            InputSpec::Constant(text) => Ok(text.clone()),
            InputSpec::Path(path) => path
                .select(event_json)
                .map(Value::to_string)
                .ok_or_else(|| TransformError::InputPathNoMatch(path.as_str().to_string())),
            InputSpec::Transformer(t) => Ok(t.render(event_json, ctx)),
        }
    }
}

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    /// Index into [`Template::paths`].
    User(usize),
    RuleArn,
    RuleName,
    IngestionTime,
    Event,
    EventJson,
}

/// How a placeholder's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Inside a JSON string: text, escaped.
    InString,
    /// Outside strings of a JSON template: JSON.
    Json,
    /// Outside strings of a string template: text, unescaped.
    Text,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Var(Var, Context),
}

/// A compiled InputTransformer.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The map's variables, in key order.
    paths: Vec<(String, JsonPath)>,
    segments: Vec<Segment>,
    /// Whether the template is JSON once filled.
    json: bool,
}

fn is_placeholder_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn predefined(name: &str) -> Option<Var> {
    Some(match name {
        VAR_RULE_ARN => Var::RuleArn,
        VAR_RULE_NAME => Var::RuleName,
        VAR_INGESTION_TIME => Var::IngestionTime,
        VAR_EVENT => Var::Event,
        VAR_EVENT_JSON => Var::EventJson,
        _ => return None,
    })
}

impl Template {
    /// Checks and compiles an InputTransformer of target `target_id`.
    pub fn compile(target_id: &str, def: &InputTransformerDef) -> Result<Template> {
        let bad = |msg: String| BusError::Validation(msg);
        if def.input_paths_map.len() > MAX_INPUT_PATHS {
            return Err(bad(format!(
                "InputPathsMap for target {target_id} has {} entries; at most {MAX_INPUT_PATHS} are allowed.",
                def.input_paths_map.len()
            )));
        }
        let mut index = BTreeMap::new();
        let mut paths = Vec::with_capacity(def.input_paths_map.len());
        for (key, path) in &def.input_paths_map {
            if key.starts_with("aws.") || key.starts_with("AWS") {
                return Err(bad(format!(
                    "InputPathsMap key {key} of target {target_id} is reserved: keys may not start with AWS, and the predefined aws.events.* variables cannot be redefined."
                )));
            }
            if key.is_empty()
                || key.len() > MAX_VARIABLE_NAME_LEN
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad(format!(
                    "InputPathsMap key {key:?} of target {target_id} is not valid: 1 to {MAX_VARIABLE_NAME_LEN} of [A-Za-z0-9_-]."
                )));
            }
            let parsed = JsonPath::parse(path).map_err(|e| {
                bad(format!(
                    "InputPathsMap value of {key} for target {target_id} is not valid: {e}"
                ))
            })?;
            index.insert(key.as_str(), paths.len());
            paths.push((key.clone(), parsed));
        }
        let template = def.input_template.as_str();
        if template.chars().count() > MAX_INPUT_LEN {
            return Err(bad(format!(
                "InputTemplate for target {target_id} is longer than {MAX_INPUT_LEN} characters."
            )));
        }

        // Split into text and placeholders, tracking JSON strings.
        let mut segments: Vec<Segment> = Vec::new();
        let mut text = String::new();
        let mut in_string = false;
        let mut escaped = false;
        let mut rest = template;
        while let Some(c) = rest.chars().next() {
            if c == '<' {
                if let Some(end) = rest[1..].find('>') {
                    let name = &rest[1..1 + end];
                    if !name.is_empty() && name.chars().all(is_placeholder_char) {
                        let var = match index.get(name) {
                            Some(i) => Var::User(*i),
                            None => predefined(name).ok_or_else(|| {
                                bad(format!(
                                    "InputTemplate for target {target_id} contains invalid placeholder {name}."
                                ))
                            })?,
                        };
                        if !text.is_empty() {
                            segments.push(Segment::Text(std::mem::take(&mut text)));
                        }
                        let ctx = if in_string {
                            Context::InString
                        } else {
                            Context::Json
                        };
                        segments.push(Segment::Var(var, ctx));
                        escaped = false;
                        rest = &rest[name.len() + 2..];
                        continue;
                    }
                }
            }
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if c == '"' {
                in_string = true;
            }
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !text.is_empty() {
            segments.push(Segment::Text(text));
        }

        // A JSON template or a string template?
        let mut probe = String::with_capacity(template.len());
        for s in &segments {
            match s {
                Segment::Text(t) => probe.push_str(t),
                Segment::Var(_, Context::Json) => probe.push_str("null"),
                Segment::Var(..) => {}
            }
        }
        let json = serde_json::from_str::<Value>(&probe).is_ok();
        if !json {
            for s in &mut segments {
                if let Segment::Var(_, ctx @ Context::Json) = s {
                    *ctx = Context::Text;
                }
            }
        }
        Ok(Template {
            paths,
            segments,
            json,
        })
    }

    /// Whether the template produces JSON (else plain text).
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// The variables of the InputPathsMap, in key order.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &JsonPath)> {
        self.paths.iter().map(|(k, p)| (k.as_str(), p))
    }

    /// Fills the template for one event.
    pub fn render(&self, event: &Value, ctx: &RenderContext<'_>) -> String {
        let mut out = String::with_capacity(self.segments.len() * 16);
        let mut event_no_detail: Option<Value> = None;
        for seg in &self.segments {
            let (var, how) = match seg {
                Segment::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Segment::Var(v, c) => (*v, *c),
            };
            match var {
                Var::User(i) => match self.paths.get(i).and_then(|(_, p)| p.select(event)) {
                    Some(v) => write_value(&mut out, v, how),
                    None => {
                        if how == Context::Json {
                            out.push_str("\"\"");
                        }
                    }
                },
                Var::RuleArn => write_str(&mut out, ctx.rule_arn, how),
                Var::RuleName => write_str(&mut out, ctx.rule_name, how),
                Var::IngestionTime => write_str(&mut out, ctx.ingestion_time, how),
                Var::Event => {
                    let v = event_no_detail.get_or_insert_with(|| event_without_detail(event));
                    write_value(&mut out, v, how);
                }
                Var::EventJson => {
                    let text = event.to_string();
                    match how {
                        Context::InString => escape_into(&mut out, &text),
                        Context::Json | Context::Text => out.push_str(&text),
                    }
                }
            }
        }
        out
    }
}

/// `<aws.events.event>`: the event without `detail`, `detail-type` as `detailType`.
fn event_without_detail(event: &Value) -> Value {
    match event {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "detail")
                .map(|(k, v)| {
                    let k = if k == "detail-type" {
                        "detailType".to_string()
                    } else {
                        k.clone()
                    };
                    (k, v.clone())
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn write_str(out: &mut String, s: &str, how: Context) {
    match how {
        Context::InString => escape_into(out, s),
        Context::Text => out.push_str(s),
        Context::Json => {
            out.push('"');
            escape_into(out, s);
            out.push('"');
        }
    }
}

fn write_value(out: &mut String, v: &Value, how: Context) {
    match (v, how) {
        (Value::String(s), _) => write_str(out, s, how),
        (_, Context::Json) => {
            let _ = write!(out, "{v}");
        }
        (_, Context::InString | Context::Text) => {
            // AWS writes a non-string value in text as its JSON with the quotes removed.
            let text = v.to_string();
            out.extend(text.chars().filter(|c| *c != '"'));
        }
    }
}

/// Appends `s` escaped as the inside of a JSON string.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Destination;
    use serde_json::json;

    fn target() -> TargetDef {
        TargetDef {
            id: "t1".into(),
            destination: Destination::Subscriber,
            input: None,
            input_path: None,
            input_transformer: None,
            retry_policy: Default::default(),
            dead_letter: true,
        }
    }

    fn transformer(map: &[(&str, &str)], template: &str) -> TargetDef {
        TargetDef {
            input_transformer: Some(InputTransformerDef {
                input_paths_map: map
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                input_template: template.into(),
            }),
            ..target()
        }
    }

    fn event() -> Value {
        json!({
            "version": "0", "id": "e1", "detail-type": "Order Placed", "source": "shop",
            "account": "123", "time": "2024-01-01T00:00:00Z", "region": "eu-west-1",
            "resources": [],
            "detail": {"id": "o-1", "qty": 3, "ok": true, "none": null,
                       "tags": ["a", "b"], "obj": {"k": "v"}, "quote": "say \"hi\""}
        })
    }

    const CTX: RenderContext<'static> = RenderContext {
        rule_arn: "arn:aws:events:eu-west-1:123:rule/r",
        rule_name: "r",
        ingestion_time: "2024-01-01T00:00:01Z",
    };

    fn render(t: &TargetDef) -> String {
        InputSpec::from_target(t)
            .unwrap()
            .render(&event(), &CTX)
            .unwrap()
    }

    #[test]
    fn default_constant_and_path() {
        assert_eq!(render(&target()), event().to_string());
        let t = TargetDef {
            input: Some("{\"a\": 1}".into()),
            ..target()
        };
        assert_eq!(render(&t), "{\"a\": 1}");
        let t = TargetDef {
            input_path: Some("$.detail.tags".into()),
            ..target()
        };
        assert_eq!(render(&t), "[\"a\",\"b\"]");
        let t = TargetDef {
            input_path: Some("$.detail.missing".into()),
            ..target()
        };
        let spec = InputSpec::from_target(&t).unwrap();
        assert_eq!(
            spec.render(&event(), &CTX),
            Err(TransformError::InputPathNoMatch("$.detail.missing".into()))
        );
    }

    #[test]
    fn refuses_bad_settings() {
        let e = |t: &TargetDef| InputSpec::from_target(t).unwrap_err().to_string();
        let both = TargetDef {
            input: Some("1".into()),
            input_path: Some("$".into()),
            ..target()
        };
        assert_eq!(
            e(&both),
            "ValidationException: Only one of Input, InputPath, or InputTransformer must be provided for target t1."
        );
        let bad_json = TargetDef {
            input: Some("{".into()),
            ..target()
        };
        assert!(e(&bad_json).contains("not valid JSON"));
        let long = TargetDef {
            input: Some(format!("\"{}\"", "x".repeat(MAX_INPUT_LEN))),
            ..target()
        };
        assert!(e(&long).contains("longer than 8192"));
        assert!(e(&transformer(&[], &"x".repeat(MAX_INPUT_LEN + 1))).contains("longer than"));
        assert_eq!(
            e(&transformer(&[("a", "$.id")], "\"<a> <b>\"")),
            "ValidationException: InputTemplate for target t1 contains invalid placeholder b."
        );
        assert!(e(&transformer(&[("AWSX", "$.id")], "\"<AWSX>\"")).contains("reserved"));
        assert!(e(&transformer(&[(VAR_RULE_ARN, "$.id")], "1")).contains("reserved"));
        assert!(e(&transformer(&[("a b", "$.id")], "1")).contains("not valid"));
        assert!(e(&transformer(&[("a", "detail")], "1")).contains("invalid JSONPath"));
        let many: Vec<(String, String)> = (0..=MAX_INPUT_PATHS)
            .map(|i| (format!("v{i}"), "$.id".to_string()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert!(e(&transformer(&many, "1")).contains("at most 100"));
        // exactly 100 is fine
        assert!(InputSpec::from_target(&transformer(&many[..MAX_INPUT_PATHS], "1")).is_ok());
    }

    #[test]
    fn json_template_values() {
        let map = [
            ("id", "$.detail.id"),
            ("qty", "$.detail.qty"),
            ("ok", "$.detail.ok"),
            ("none", "$.detail.none"),
            ("tags", "$.detail.tags"),
            ("obj", "$.detail.obj"),
            ("missing", "$.detail.missing"),
            ("quote", "$.detail.quote"),
        ];
        let out = render(&transformer(
            &map,
            r#"{"id": <id>, "qty": <qty>, "ok": <ok>, "none": <none>, "tags": <tags>, "obj": <obj>, "missing": <missing>, "path": "o/<id>/<qty>", "q": "<quote>", "q2": <quote>, "t": "<tags>", "o": "<obj>", "m": "x<missing>y"}"#,
        ));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"id": "o-1", "qty": 3, "ok": true, "none": null, "tags": ["a", "b"],
                   "obj": {"k": "v"}, "missing": "", "path": "o/o-1/3",
                   "q": "say \"hi\"", "q2": "say \"hi\"", "t": "[a,b]", "o": "{k:v}", "m": "xy"})
        );
    }

    #[test]
    fn string_templates() {
        let map = [("id", "$.detail.id"), ("tags", "$.detail.tags")];
        assert_eq!(
            render(&transformer(&map, "\"Order <id> has <tags>\"")),
            "\"Order o-1 has [a,b]\""
        );
        // Not JSON once filled: text everywhere.
        assert_eq!(
            render(&transformer(&map, "<id> is tagged <tags>")),
            "o-1 is tagged [a,b]"
        );
        assert_eq!(
            render(&transformer(&map, "\"<id>\"\n\"<tags>\"")),
            "\"o-1\"\n\"[a,b]\""
        );
        // `<` that is not a placeholder is text; escaped quotes do not end a string.
        assert_eq!(
            render(&transformer(&map, r#"{"a": "1 < 2 \" <id>", "b": <id>}"#)),
            r#"{"a": "1 < 2 \" o-1", "b": "o-1"}"#
        );
    }

    #[test]
    fn predefined_variables() {
        let out = render(&transformer(
            &[],
            r#"{"arn": <aws.events.rule-arn>, "name": "<aws.events.rule-name>", "at": <aws.events.event.ingestion-time>, "e": <aws.events.event>, "j": <aws.events.event.json>, "s": "<aws.events.event.json>"}"#,
        ));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["arn"], json!(CTX.rule_arn));
        assert_eq!(v["name"], json!("r"));
        assert_eq!(v["at"], json!(CTX.ingestion_time));
        assert_eq!(v["j"], event());
        let s: Value = serde_json::from_str(v["s"].as_str().unwrap()).unwrap();
        assert_eq!(s, event());
        let e = &v["e"];
        assert_eq!(e["detailType"], json!("Order Placed"));
        assert!(e.get("detail").is_none() && e.get("detail-type").is_none());
        assert_eq!(e["id"], json!("e1"));
    }

    #[test]
    fn renders_the_envelope_json() {
        let e = outrider_proto::Event {
            id: "id-1".into(),
            source: "shop".into(),
            detail_type: "Order Placed".into(),
            time_seconds: 1_700_000_000,
            detail: r#"{"n":1}"#.into(),
            ..Default::default()
        };
        let json = outrider_proto::eventbridge::to_json(&e).unwrap();
        let whole = InputSpec::from_target(&target()).unwrap();
        assert_eq!(
            whole.render(&json, &CTX).unwrap(),
            outrider_proto::eventbridge::to_json_string(&e).unwrap()
        );
        let t = transformer(
            &[("n", "$.detail.n"), ("t", "$.time")],
            r#"{"n": <n>, "at": "<t>"}"#,
        );
        let out = InputSpec::from_target(&t)
            .unwrap()
            .render(&json, &CTX)
            .unwrap();
        assert_eq!(out, r#"{"n": 1, "at": "2023-11-14T22:13:20Z"}"#);
    }

    #[test]
    fn json_mode_detection() {
        let t = |tpl: &str| match InputSpec::from_target(&transformer(&[("a", "$.id")], tpl)) {
            Ok(InputSpec::Transformer(t)) => t.is_json(),
            other => panic!("{other:?}"),
        };
        assert!(t("{\"a\": <a>}"));
        assert!(t("\"<a>\""));
        assert!(t("[<a>, 1]"));
        assert!(!t("<a> text"));
        assert!(!t("\"x\"\n\"<a>\""));
    }
}
