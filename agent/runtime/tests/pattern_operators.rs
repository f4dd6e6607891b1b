//! One test per operator of the EventBridge pattern language, plus validation and limits.

use outrider_runtime::pattern::{Pattern, PatternErrorKind};
use serde_json::{json, Value};

fn m(pattern: &str, event: Value) -> bool {
    Pattern::parse(pattern)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .matches(&event)
}

fn reason(pattern: &str) -> String {
    match Pattern::parse(pattern) {
        Ok(_) => panic!("{pattern} should be invalid"),
        Err(e) => e.reason().to_string(),
    }
}

#[test]
fn exact_strings_are_character_by_character() {
    assert!(m(r#"{"a": ["x"]}"#, json!({"a": "x"})));
    assert!(!m(r#"{"a": ["x"]}"#, json!({"a": "X"})));
    assert!(!m(r#"{"a": ["x"]}"#, json!({"a": "x "})));
    assert!(m(r#"{"a": [""]}"#, json!({"a": ""})));
    assert!(!m(r#"{"a": [""]}"#, json!({})));
    assert!(!m(r#"{"A": ["x"]}"#, json!({"a": "x"})));
    assert!(!m(r#"{"a": ["1"]}"#, json!({"a": 1})));
    assert!(!m(r#"{"a": ["true"]}"#, json!({"a": true})));
}

#[test]
fn numbers_compare_numerically() {
    for event in [
        r#"{"a": 3}"#,
        r#"{"a": 3.0}"#,
        r#"{"a": 300e-2}"#,
        r#"{"a": 0.3e1}"#,
    ] {
        assert!(
            m(r#"{"a": [3]}"#, serde_json::from_str(event).unwrap()),
            "{event}"
        );
        assert!(
            m(r#"{"a": [300e-2]}"#, serde_json::from_str(event).unwrap()),
            "{event}"
        );
    }
    assert!(!m(r#"{"a": [3]}"#, json!({"a": 3.000001})));
    assert!(!m(r#"{"a": [3]}"#, json!({"a": "3"})));
    // Large integers are compared exactly, not through f64.
    assert!(!m(
        r#"{"a": [9007199254740993]}"#,
        json!({"a": 9007199254740992u64})
    ));
    assert!(m(
        r#"{"a": [18446744073709551615]}"#,
        json!({"a": u64::MAX})
    ));
    assert!(m(r#"{"a": [-0.0]}"#, json!({"a": 0})));
}

#[test]
fn booleans_and_null() {
    assert!(m(r#"{"a": [true]}"#, json!({"a": true})));
    assert!(!m(r#"{"a": [true]}"#, json!({"a": false})));
    assert!(m(r#"{"a": [null]}"#, json!({"a": null})));
    assert!(!m(r#"{"a": [null]}"#, json!({"a": "null"})));
    assert!(!m(r#"{"a": [null]}"#, json!({})));
    assert!(!m(r#"{"a": [null]}"#, json!({"a": []})));
}

#[test]
fn pattern_arrays_are_or_and_event_arrays_intersect() {
    assert!(m(r#"{"a": ["x", "y"]}"#, json!({"a": "y"})));
    assert!(m(r#"{"a": ["x", "y"]}"#, json!({"a": ["z", "y"]})));
    assert!(!m(r#"{"a": ["x", "y"]}"#, json!({"a": ["z", "w"]})));
    assert!(m(r#"{"a": [1]}"#, json!({"a": [[0, [1]]]})));
}

#[test]
fn prefix_suffix_and_their_ignore_case_forms() {
    assert!(m(r#"{"a": [{"prefix": "ab"}]}"#, json!({"a": "abc"})));
    assert!(!m(r#"{"a": [{"prefix": "ab"}]}"#, json!({"a": "ABc"})));
    assert!(m(r#"{"a": [{"prefix": ""}]}"#, json!({"a": "anything"})));
    assert!(!m(r#"{"a": [{"prefix": "1"}]}"#, json!({"a": 12})));
    assert!(m(r#"{"a": [{"suffix": ".png"}]}"#, json!({"a": "i.png"})));
    assert!(!m(r#"{"a": [{"suffix": ".png"}]}"#, json!({"a": "i.PNG"})));
    assert!(m(
        r#"{"a": [{"prefix": {"equals-ignore-case": "AB"}}]}"#,
        json!({"a": "aBc"})
    ));
    assert!(m(
        r#"{"a": [{"suffix": {"equals-ignore-case": ".PnG"}}]}"#,
        json!({"a": "i.png"})
    ));
    assert!(!m(
        r#"{"a": [{"suffix": {"equals-ignore-case": ".png"}}]}"#,
        json!({"a": "i.jpg"})
    ));
    assert!(m(r#"{"a": [{"prefix": "é"}]}"#, json!({"a": "été"})));
    assert_eq!(
        reason(r#"{"a": [{"prefix": 1}]}"#),
        "prefix match pattern must be a string"
    );
    assert_eq!(
        reason(r#"{"a": [{"suffix": ["x"]}]}"#),
        "suffix match pattern must be a string"
    );
}

#[test]
fn equals_ignore_case() {
    assert!(m(
        r#"{"a": [{"equals-ignore-case": "HeLLo"}]}"#,
        json!({"a": "hello"})
    ));
    assert!(!m(
        r#"{"a": [{"equals-ignore-case": "hello"}]}"#,
        json!({"a": "hello!"})
    ));
    assert!(!m(
        r#"{"a": [{"equals-ignore-case": "1"}]}"#,
        json!({"a": 1})
    ));
    assert_eq!(
        reason(r#"{"a": [{"equals-ignore-case": ["x"]}]}"#),
        "equals-ignore-case match pattern must be a string"
    );
}

#[test]
fn wildcards_with_escapes() {
    let w = |p: &str, s: &str| {
        m(
            &json!({"a": [{"wildcard": p}]}).to_string(),
            json!({ "a": s }),
        )
    };
    assert!(w("*", ""));
    assert!(w("a*c", "ac"));
    assert!(w("a*c", "abbbc"));
    assert!(!w("a*c", "abbbcd"));
    assert!(w("*/dir/*", "x/dir/y"));
    assert!(w("/u/*/d/d/doc", "/u/x/d/d/d/d/doc"));
    assert!(w(r"a\*", "a*"));
    assert!(!w(r"a\*", "ab"));
    assert!(w(r"a\\*", r"a\bc"));
    assert!(!w("", "x"));
    assert!(w("", ""));
    assert!(w("é*", "été"));
    assert!(!m(r#"{"a": [{"wildcard": "*"}]}"#, json!({"a": 1})));
    assert_eq!(
        reason(r#"{"a": [{"wildcard": "a**"}]}"#),
        "Consecutive wildcard characters at pos 2"
    );
    assert_eq!(
        reason(r#"{"a": [{"wildcard": "a\\b"}]}"#),
        "Invalid escape character at pos 2"
    );
    assert_eq!(
        reason(r#"{"a": [{"wildcard": "a\\"}]}"#),
        "Invalid escape character at pos 2"
    );
    assert!(reason(r#"{"a": [{"wildcard": "*a*b*c*d*e*"}]}"#).starts_with("Rule is too complex"));
    assert!(Pattern::parse(r#"{"a": [{"wildcard": "*a*b*c*d*e"}]}"#).is_ok());
}

#[test]
fn anything_but_forms() {
    let ab = r#"{"a": [{"anything-but": "x"}]}"#;
    assert!(m(ab, json!({"a": "y"})));
    assert!(!m(ab, json!({"a": "x"})));
    assert!(m(ab, json!({"a": null})));
    assert!(m(ab, json!({"a": 1})));
    assert!(!m(ab, json!({})));
    assert!(m(ab, json!({"a": ["x", "y"]})));
    let nums = r#"{"a": [{"anything-but": [1, 2.5]}]}"#;
    assert!(!m(nums, json!({"a": 1.0})));
    assert!(!m(nums, json!({"a": 25e-1})));
    assert!(m(nums, json!({"a": 3})));
    assert!(m(nums, json!({"a": "1"})));
    let pre = r#"{"a": [{"anything-but": {"prefix": ["in", "te"]}}]}"#;
    assert!(m(pre, json!({"a": "post"})));
    assert!(!m(pre, json!({"a": "test"})));
    assert!(m(pre, json!({"a": 12})));
    let suf = r#"{"a": [{"anything-but": {"suffix": ".txt"}}]}"#;
    assert!(!m(suf, json!({"a": "f.txt"})));
    assert!(m(suf, json!({"a": "f.txt.bak"})));
    let ic = r#"{"a": [{"anything-but": {"equals-ignore-case": ["Stop", "run"]}}]}"#;
    assert!(!m(ic, json!({"a": "STOP"})));
    assert!(m(ic, json!({"a": "pending"})));
    let wc = r#"{"a": [{"anything-but": {"wildcard": "*/init/*"}}]}"#;
    assert!(!m(wc, json!({"a": "d/init/f"})));
    assert!(m(wc, json!({"a": "d/post/f"})));
    assert_eq!(
        reason(r#"{"a": [{"anything-but": null}]}"#),
        "Value of anything-but must be an array or single string/number value."
    );
    assert_eq!(
        reason(r#"{"a": [{"anything-but": ["x", 1]}]}"#),
        "Inside anything but list, either all values are number or string, mixed type is not supported"
    );
    assert_eq!(
        reason(r#"{"a": [{"anything-but": {"prefix": ""}}]}"#),
        "Null prefix/suffix not allowed"
    );
    assert_eq!(
        reason(r#"{"a": [{"anything-but": {"numeric": [">", 1]}}]}"#),
        "Unsupported anything-but pattern: numeric"
    );
}

#[test]
fn numeric_ranges() {
    let r = r#"{"a": [{"numeric": [">", 0, "<=", 5]}]}"#;
    assert!(!m(r, json!({"a": 0})));
    assert!(m(r, json!({"a": 0.0001})));
    assert!(m(r, json!({"a": 5})));
    assert!(!m(r, json!({"a": 5.0001})));
    assert!(!m(r, json!({"a": "3"})));
    assert!(!m(r, json!({"a": null})));
    assert!(m(
        r#"{"a": [{"numeric": ["=", 3.018e2]}]}"#,
        json!({"a": 301.8})
    ));
    assert!(m(
        r#"{"a": [{"numeric": [">=", -1, "<", 1]}]}"#,
        json!({"a": -1})
    ));
    assert!(m(r#"{"a": [{"numeric": ["<", 0]}]}"#, json!({"a": -1e300})));
    assert_eq!(
        reason(r#"{"a": [{"numeric": [">", 0, ">", 0]}]}"#),
        "Bad numeric range operator: >"
    );
    assert_eq!(
        reason(r#"{"a": [{"numeric": [">", 0, "<"]}]}"#),
        "Value of < must be numeric"
    );
    assert_eq!(
        reason(r#"{"a": [{"numeric": [">", 5, "<", 1]}]}"#),
        "Bottom must be less than top"
    );
    assert_eq!(
        reason(r#"{"a": [{"numeric": ["!=", 5]}]}"#),
        "Unrecognized numeric range operator: !="
    );
    assert_eq!(
        reason(r#"{"a": [{"numeric": ["<", 5, ">", 1]}]}"#),
        "Too many elements in numeric expression"
    );
    assert_eq!(
        reason(r#"{"a": [{"numeric": 5}]}"#),
        "Value of numeric must be an array."
    );
}

#[test]
fn exists_is_about_leaf_fields() {
    assert!(m(r#"{"a": [{"exists": true}]}"#, json!({"a": null})));
    assert!(m(r#"{"a": [{"exists": true}]}"#, json!({"a": ["x"]})));
    assert!(!m(r#"{"a": [{"exists": true}]}"#, json!({"a": []})));
    assert!(!m(r#"{"a": [{"exists": true}]}"#, json!({"a": {"b": 1}})));
    assert!(m(r#"{"a": [{"exists": false}]}"#, json!({"b": 1})));
    assert!(!m(r#"{"a": [{"exists": false}]}"#, json!({"a": 1})));
    assert!(m(r#"{"a": {"b": [{"exists": false}]}}"#, json!({"c": 1})));
    assert!(m(
        r#"{"a": [{"anything-but": "x"}, {"exists": false}]}"#,
        json!({})
    ));
    assert_eq!(
        reason(r#"{"a": [{"exists": "yes"}]}"#),
        "exists match pattern must be either true or false."
    );
}

#[test]
fn cidr_v4_and_v6() {
    let v4 = r#"{"ip": [{"cidr": "10.0.0.0/24"}]}"#;
    assert!(m(v4, json!({"ip": "10.0.0.255"})));
    assert!(!m(v4, json!({"ip": "10.0.1.0"})));
    assert!(!m(v4, json!({"ip": "10.0.0.256"})));
    assert!(!m(v4, json!({"ip": 10})));
    assert!(!m(v4, json!({"ip": "::ffff:10.0.0.1"})));
    assert!(m(
        r#"{"ip": [{"cidr": "10.1.2.3/8"}]}"#,
        json!({"ip": "10.9.9.9"})
    ));
    assert!(m(
        r#"{"ip": [{"cidr": "0.0.0.0/0"}]}"#,
        json!({"ip": "1.2.3.4"})
    ));
    assert!(m(
        r#"{"ip": [{"cidr": "1.2.3.4/32"}]}"#,
        json!({"ip": "1.2.3.4"})
    ));
    let v6 = r#"{"ip": [{"cidr": "2001:db8:1234:1a00::/64"}]}"#;
    assert!(m(
        v6,
        json!({"ip": "2001:0db8:1234:1a00:0000:0000:0000:0001"})
    ));
    assert!(!m(v6, json!({"ip": "2001:db8:1234:1a01::"})));
    assert_eq!(
        reason(r#"{"ip": [{"cidr": "10.0.0.0"}]}"#),
        "Malformed CIDR, one '/' required"
    );
    assert_eq!(
        reason(r#"{"ip": [{"cidr": "10.0.0.0/x"}]}"#),
        "Malformed CIDR, mask bits must be an integer"
    );
    assert_eq!(
        reason(r#"{"ip": [{"cidr": "1.2.3/8"}]}"#),
        "Nonstandard IP address: 1.2.3"
    );
    assert!(reason(r#"{"ip": [{"cidr": "10.0.0.0/33"}]}"#).starts_with("Malformed CIDR"));
}

#[test]
fn or_at_any_level() {
    let p = r#"{"source": ["s"], "detail": {"$or": [{"a": [1]}, {"b": [{"prefix": "x"}]}, {"c": {"$or": [{"d": [1]}, {"e": [2]}]}}]}}"#;
    assert!(m(p, json!({"source": "s", "detail": {"a": 1}})));
    assert!(m(p, json!({"source": "s", "detail": {"b": "xy"}})));
    assert!(m(p, json!({"source": "s", "detail": {"c": {"e": 2}}})));
    assert!(!m(p, json!({"source": "t", "detail": {"a": 1}})));
    assert!(!m(p, json!({"source": "s", "detail": {"c": {"d": 2}}})));
    assert_eq!(
        reason(r#"{"$or": [{"a": [1]}]}"#),
        "There must have at least 2 Objects in $or relationship."
    );
    assert_eq!(
        reason(r#"{"$or": {"a": [1]}}"#),
        "It must be an Array followed with $or."
    );
    assert_eq!(
        reason(r#"{"$or": [{"a": [1]}, 2]}"#),
        "Only JSON object is allowed in array of $or relationship."
    );
}

#[test]
fn nested_fields_and_dotted_keys() {
    assert!(m(r#"{"a": {"b": ["x"]}}"#, json!({"a": {"b": "x"}})));
    assert!(m(r#"{"a.b": ["x"]}"#, json!({"a": {"b": "x"}})));
    assert!(m(r#"{"a": {"b": ["x"]}}"#, json!({"a.b": "x"})));
    assert!(!m(r#"{"a": {"b": ["x"]}}"#, json!({"a": "{\"b\": \"x\"}"})));
    assert!(m(
        r#"{"a": {"b": ["x"]}}"#,
        json!({"a": [{"c": 1}, {"b": "x"}]})
    ));
}

#[test]
fn array_consistency_within_one_element() {
    let p = r#"{"items": {"name": ["a"], "size": [2]}}"#;
    assert!(m(
        p,
        json!({"items": [{"name": "a", "size": 2}, {"name": "b", "size": 3}]})
    ));
    assert!(!m(
        p,
        json!({"items": [{"name": "a", "size": 3}, {"name": "b", "size": 2}]})
    ));
    assert!(m(
        p,
        json!({"items": [{"name": "a", "size": 3}, {"name": "a", "size": 2}]})
    ));
    // Nested arrays: the inner element must be shared too.
    let nested = r#"{"a": {"b": {"c": [1], "d": [2]}}}"#;
    assert!(!m(nested, json!({"a": [{"b": [{"c": 1}, {"d": 2}]}]})));
    assert!(m(nested, json!({"a": [{"b": [{"c": 1, "d": 2}]}]})));
    // exists: false is judged in the element the other conditions matched in.
    let absent = r#"{"items": {"name": ["a"], "size": [{"exists": false}]}}"#;
    assert!(m(
        absent,
        json!({"items": [{"name": "a"}, {"name": "b", "size": 1}]})
    ));
    assert!(!m(
        absent,
        json!({"items": [{"name": "a", "size": 1}, {"name": "b"}]})
    ));
    assert!(!m(absent, json!({"items": {"name": "a", "size": 2}})));
    assert!(m(absent, json!({"items": {"name": "a"}})));
    let outside = r#"{"items": {"name": ["a"]}, "flag": [{"exists": false}]}"#;
    assert!(!m(
        outside,
        json!({"items": [{"name": "a"}], "flag": [true]})
    ));
    assert!(m(
        outside,
        json!({"items": [{"name": "a"}], "other": [true]})
    ));
    // Fields outside the array combine with any element.
    let outer = r#"{"k": ["v"], "items": {"name": ["a"]}}"#;
    assert!(m(
        outer,
        json!({"k": "v", "items": [{"name": "b"}, {"name": "a"}]})
    ));
}

#[test]
fn structural_errors() {
    assert_eq!(
        reason(r#"{"a": "x"}"#),
        r#""a" must be an object or an array"#
    );
    assert_eq!(reason(r#"{"a": []}"#), "Empty arrays are not allowed");
    assert_eq!(reason(r#"["a"]"#), "Filter is not an object");
    assert_eq!(
        reason(r#"{"a": [{"EXISTS": true}]}"#),
        "Unrecognized match type EXISTS"
    );
    assert_eq!(
        reason(r#"{"a": [{"prefix": "x", "suffix": "y"}]}"#),
        "Only one key allowed in match expression"
    );
    assert_eq!(reason(r#"{"a": [{}]}"#), "Match expression name not found");
    assert_eq!(
        reason(r#"{"a": [[1]]}"#),
        "Match value must be String, number, true, false, or null"
    );
    let e = Pattern::parse("{nope").unwrap_err();
    assert_eq!(e.kind(), PatternErrorKind::Json);
    assert!(e
        .to_string()
        .starts_with("Event pattern is not valid. Reason: "));
    // Duplicate keys: the last wins.
    assert!(m(r#"{"a": ["x"], "a": ["y"]}"#, json!({"a": "y"})));
    // The empty pattern matches every event.
    assert!(m("{}", json!({"a": 1})));
    assert!(!m("{}", json!([1])));
}

#[test]
fn deep_nesting_is_rejected_or_ignored_without_panicking() {
    let mut deep_pattern = json!(["x"]);
    for _ in 0..200 {
        deep_pattern = json!({ "k": deep_pattern });
    }
    let e = Pattern::from_value(&deep_pattern).unwrap_err();
    assert_eq!(e.kind(), PatternErrorKind::TooComplex);
    let text = "{\"k\":".repeat(5000) + "[1]" + &"}".repeat(5000);
    assert!(Pattern::parse(&text).is_err());

    let mut deep_event = json!("x");
    for _ in 0..1000 {
        deep_event = json!({ "k": [deep_event] });
    }
    let p = Pattern::parse(r#"{"k": {"k": [{"exists": true}]}}"#).unwrap();
    assert!(!p.matches(&deep_event));
    let p = Pattern::parse(r#"{"other": [{"exists": false}]}"#).unwrap();
    assert!(p.matches(&deep_event));
}

#[test]
fn many_or_combinations_are_rejected() {
    let alt = r#"{"$or": [{"a": [1]}, {"b": [1]}, {"c": [1]}, {"d": [1]}]}"#;
    let text =
        format!(r#"{{"w": {alt}, "x": {alt}, "y": {alt}, "z": {alt}, "v": {alt}, "u": {alt}}}"#);
    assert_eq!(
        Pattern::parse(&text).unwrap_err().kind(),
        PatternErrorKind::TooComplex
    );
}

#[test]
fn matches_json_parses_the_event() {
    let p = Pattern::parse(r#"{"a": [1]}"#).unwrap();
    assert!(p.matches_json(r#"{"a": 1.0}"#).unwrap());
    assert!(!p.matches_json(r#""a""#).unwrap());
    assert!(p.matches_json("{").is_err());
    assert!(!p.matches_json("[1]").unwrap());
    assert!(!p.matches_json("1").unwrap());
    assert!(p
        .matches_json(r#"{"b": [{"x": "\u0041"}], "a\u0041": 2, "a": [0, 1]}"#)
        .unwrap());
    let dotted = Pattern::parse(r#"{"a": {"b": ["\"x\""]}}"#).unwrap();
    assert!(dotted.matches_json(r#"{"a.b": "\"x\""}"#).unwrap());
    assert!(dotted
        .matches_json(r#"{"a": {"c": {"d": 1}, "b": "\"x\""}}"#)
        .unwrap());
    assert!(!dotted
        .matches_json(r#"{"a": {"b": {"c": "\"x\""}}}"#)
        .unwrap());
    assert!(p.matches_json(r#"{"a": 1} x"#).is_err());
}
