//! `RuleSet::matches_json_bytes` (the scanner over event text) must answer exactly as the
//! reference: the text parsed into a `serde_json::Value`, then `Pattern::matches` per rule.
//! Events are written by hand here, so they carry what serde_json never writes: numbers in other
//! spellings (`1.0`, `10E-1`, `-0`, big integers), escapes (`\u0061`, `\/`, surrogate pairs),
//! duplicate keys (the last wins), dotted keys, arrays of objects and whitespace.

use outrider_runtime::pattern::{Pattern, RuleSet};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const KEYS: &[&str] = &["a", "b", "c", "a.b", "é", "k\"q", ""];

const STRINGS: &[&str] = &[
    "x",
    "xy",
    "XY",
    "zy",
    "",
    "10.1.2.3",
    "2001:db8::1",
    "é",
    "Éxy",
    "x\ny",
    "x\"y",
    "\u{1F600}",
    "ǅ",
    "İx",
    "ß",
    "x/y",
];

/// Spellings of numbers (several of the same value).
const NUMBERS: &[&str] = &[
    "1",
    "1.0",
    "1e0",
    "10E-1",
    "0.1e+1",
    "0",
    "-0",
    "0.0",
    "-0.0",
    "2",
    "2.00",
    "3",
    "3e0",
    "0.5",
    "5e-1",
    "-1",
    "100",
    "1E2",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "123456789012345678901234567890",
    "1.5",
];

fn matcher() -> impl Strategy<Value = Value> {
    let literal = prop_oneof![
        proptest::sample::select(STRINGS).prop_map(|s| json!(s)),
        proptest::sample::select(NUMBERS)
            .prop_filter_map("finite", |n| { serde_json::from_str::<Value>(n).ok() }),
        Just(json!(true)),
        Just(json!(false)),
        Just(json!(null)),
    ];
    let operator = prop_oneof![
        Just(json!({"prefix": "x"})),
        Just(json!({"prefix": ""})),
        Just(json!({"prefix": "É"})),
        Just(json!({"suffix": "y"})),
        Just(json!({"prefix": {"equals-ignore-case": "X"}})),
        Just(json!({"suffix": {"equals-ignore-case": "Y"}})),
        Just(json!({"equals-ignore-case": "xY"})),
        Just(json!({"equals-ignore-case": "éXY"})),
        Just(json!({"equals-ignore-case": "ǅ"})),
        Just(json!({"wildcard": "x*"})),
        Just(json!({"wildcard": "*y"})),
        Just(json!({"anything-but": "x"})),
        Just(json!({"anything-but": [1, 2]})),
        Just(json!({"anything-but": {"prefix": "x"}})),
        Just(json!({"anything-but": {"equals-ignore-case": "XY"}})),
        Just(json!({"numeric": [">", 1]})),
        Just(json!({"numeric": ["<=", 2]})),
        Just(json!({"numeric": [">=", 0, "<", 3]})),
        Just(json!({"numeric": ["=", 1]})),
        Just(json!({"numeric": ["=", 0]})),
        Just(json!({"exists": true})),
        Just(json!({"exists": false})),
        Just(json!({"cidr": "10.0.0.0/8"})),
        Just(json!({"cidr": "2001:db8::/32"})),
    ];
    prop_oneof![literal, operator]
}

fn pattern() -> impl Strategy<Value = Value> {
    let leaf = proptest::collection::vec(matcher(), 1..3).prop_map(Value::Array);
    let field = leaf.prop_recursive(2, 8, 3, |inner| {
        proptest::collection::vec((proptest::sample::select(KEYS), inner), 1..3).prop_map(
            |fields| {
                Value::Object(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            },
        )
    });
    let object = proptest::collection::vec((proptest::sample::select(KEYS), field), 1..4).prop_map(
        |fields| {
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<String, Value>>()
        },
    );
    (
        object.clone(),
        proptest::option::of(proptest::collection::vec(object, 2..3)),
    )
        .prop_map(|(mut obj, or)| {
            if let Some(alternatives) = or {
                obj.insert(
                    "$or".into(),
                    Value::Array(alternatives.into_iter().map(Value::Object).collect()),
                );
            }
            Value::Object(obj)
        })
}

/// An event as written: every choice of spelling is part of the tree.
#[derive(Debug, Clone)]
enum Json {
    /// The string and how to escape it (0: only what must be, 1: everything as `\u`, 2: `/`
    /// and every other character).
    Str(String, u8),
    Num(&'static str),
    Bool(bool),
    Null,
    Arr(Vec<Json>),
    /// Keys may repeat; each key has its escape mode.
    Obj(Vec<((String, u8), Json)>),
}

fn key() -> impl Strategy<Value = (String, u8)> {
    (proptest::sample::select(KEYS), 0..3u8).prop_map(|(k, e)| (k.to_string(), e))
}

fn json_value() -> impl Strategy<Value = Json> {
    let scalar = prop_oneof![
        (proptest::sample::select(STRINGS), 0..3u8).prop_map(|(s, e)| Json::Str(s.into(), e)),
        proptest::sample::select(NUMBERS).prop_map(Json::Num),
        any::<bool>().prop_map(Json::Bool),
        Just(Json::Null),
    ];
    scalar.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Arr),
            proptest::collection::vec((key(), inner), 0..4).prop_map(Json::Obj),
        ]
    })
}

fn event() -> impl Strategy<Value = (Json, bool)> {
    (
        proptest::collection::vec((key(), json_value()), 0..5).prop_map(Json::Obj),
        any::<bool>(),
    )
}

fn write_str(out: &mut String, s: &str, mode: u8) {
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        let escape_all = mode == 1 || (mode == 2 && i % 2 == 0);
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if mode == 2 => out.push_str("\\/"),
            '\n' if mode == 0 => out.push_str("\\n"),
            c if escape_all || (c as u32) < 0x20 => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write(out: &mut String, v: &Json, spaced: bool) {
    let gap = if spaced { " \n\t" } else { "" };
    match v {
        Json::Str(s, mode) => write_str(out, s, *mode),
        Json::Num(n) => out.push_str(n),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Null => out.push_str("null"),
        Json::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(gap);
                write(out, item, spaced);
            }
            out.push_str(gap);
            out.push(']');
        }
        Json::Obj(fields) => {
            out.push('{');
            for (i, ((k, mode), value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(gap);
                write_str(out, k, *mode);
                out.push_str(gap);
                out.push(':');
                out.push_str(gap);
                write(out, value, spaced);
            }
            out.push_str(gap);
            out.push('}');
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn text_scanner_answers_as_each_pattern_alone(
        patterns in proptest::collection::vec(pattern(), 1..10),
        events in proptest::collection::vec(event(), 1..6),
    ) {
        let rules: Vec<(String, Pattern)> = patterns
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((format!("r{i}"), Pattern::from_value(p).ok()?)))
            .collect();
        let mut set = RuleSet::new();
        for (id, p) in &rules {
            set.add_rule(id.clone(), p.clone());
        }
        for (event, spaced) in &events {
            let mut text = String::new();
            write(&mut text, event, *spaced);
            let value: Value = serde_json::from_str(&text).expect("the writer writes JSON");
            let expected: Vec<&str> = rules
                .iter()
                .filter(|(_, p)| p.matches(&value))
                .map(|(id, _)| id.as_str())
                .collect();
            let got = set.matches_json_bytes(text.as_bytes()).expect("valid JSON");
            prop_assert_eq!(&got, &expected, "event {}", text);
            let owned = set.matching_rules_json(&text).expect("valid JSON");
            prop_assert_eq!(owned, expected, "event {}", text);
        }
    }
}

#[test]
fn duplicate_keys_keep_the_last_value() {
    let mut set = RuleSet::new();
    set.add_rule_json("x", r#"{"a": ["x"]}"#).unwrap();
    set.add_rule_json("y", r#"{"a": {"b": ["y"]}}"#).unwrap();
    let text = br#"{"a": "x", "a": {"b": "y"}}"#;
    assert_eq!(set.matches_json_bytes(text).unwrap(), vec!["y"]);
    let text = br#"{"a": {"b": "y"}, "\u0061": "x"}"#;
    assert_eq!(set.matches_json_bytes(text).unwrap(), vec!["x"]);
}

#[test]
fn errors_are_serde_json_errors() {
    let mut set = RuleSet::new();
    set.add_rule_json("x", r#"{"a": ["x"]}"#).unwrap();
    for bad in [
        &br#"{"a": "x""#[..],
        br#"{"a": "x"} x"#,
        br#"{"a": "\ud800"}"#,
        br#"{"a": 01}"#,
        br#"{"a": 1e400}"#,
        b"{\"a\": \"x\xff\"}",
        br#"{"a": "x",}"#,
    ] {
        let err = set.matches_json_bytes(bad).unwrap_err();
        assert!(!err.to_string().is_empty());
    }
    // Not objects: no match, as for `matching_rules`.
    for text in [&b"[1]"[..], b"\"a\"", b"null", b" 1 "] {
        assert!(set.matches_json_bytes(text).unwrap().is_empty());
    }
    // A number out of range in a field no rule looks at is skipped, as serde_json does there.
    assert_eq!(
        set.matches_json_bytes(br#"{"z": 1e400, "a": "x"}"#)
            .unwrap(),
        vec!["x"]
    );
}
