//! Schedule expressions against AWS's recorded behaviour.
//!
//! Reads LocalStack's AWS-validated snapshot `test_events_schedule.snapshot.json` from the
//! shared conformance directory at test time (not copied here; a missing file fails the test):
//!
//! * every `tests_put_rule_with_schedule_cron[EXPR]` expression, and every `ScheduleExpression`
//!   AWS listed back in any case, parses and keeps its text;
//! * every `tests_put_rule_with_invalid_schedule_cron[EXPR]` is refused with the message AWS
//!   recorded;
//! * `tests_put_rule_with_schedule_custom_event_bus`: a schedule on a custom bus is refused with
//!   AWS's message (the rule's expression is not in the snapshot; any valid one shows it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use outrider_bus::model::{RuleDef, RuleState};
use outrider_bus::schedule::Schedule;
use outrider_bus::BusError;
use serde_json::Value;

const PREFIX: &str = "tests/aws/services/events/test_events_schedule.py::";

fn snapshot() -> BTreeMap<String, Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/localstack/events/test_events_schedule.snapshot.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "conformance snapshot {} is missing or unreadable ({e}); this test needs the shared \
             conformance data next to the workspace",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("snapshot is JSON")
}

/// The pytest parameter of a case id: `name[param]` -> `param`.
fn param<'a>(key: &'a str, test: &str) -> Option<&'a str> {
    key.strip_prefix(PREFIX)?
        .strip_prefix(test)?
        .strip_prefix('[')?
        .strip_suffix(']')
}

fn collect_expressions(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("ScheduleExpression", Value::String(s)) => {
                        out.insert(s.clone());
                    }
                    _ => collect_expressions(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_expressions(v, out)),
        _ => {}
    }
}

#[test]
fn schedule_expressions_match_aws() {
    let snap = snapshot();
    let mut valid = BTreeSet::new();
    let mut invalid = Vec::new();
    for (key, case) in &snap {
        if let Some(expr) = param(key, "TestScheduleCron::tests_put_rule_with_schedule_cron") {
            valid.insert(expr.to_string());
        }
        if let Some(expr) = param(
            key,
            "TestScheduleCron::tests_put_rule_with_invalid_schedule_cron",
        ) {
            let err = &case["recorded-content"]["invalid-put-rule"]["Error"];
            assert_eq!(err["Code"], "ValidationException", "{key}");
            let msg = err["Message"].as_str().expect("message").to_string();
            invalid.push((expr.to_string(), msg));
        }
        collect_expressions(&case["recorded-content"], &mut valid);
    }
    assert!(
        valid.len() >= 17,
        "too few valid expressions found: {valid:?}"
    );
    assert!(
        invalid.len() >= 5,
        "too few invalid expressions found: {invalid:?}"
    );

    let mut failures = Vec::new();
    for expr in &valid {
        match Schedule::parse(expr) {
            Ok(s) => assert_eq!(s.as_str(), expr),
            Err(e) => failures.push(format!("{expr}: refused ({e}); AWS accepts it")),
        }
    }
    for (expr, aws) in &invalid {
        match Schedule::parse(expr) {
            Err(BusError::Validation(m)) if &m == aws => {}
            other => failures.push(format!("{expr}: ours {other:?}; AWS refuses with {aws:?}")),
        }
    }
    eprintln!(
        "schedule conformance: {} valid and {} invalid expressions checked, {} failed",
        valid.len(),
        invalid.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn schedule_only_on_the_default_bus() {
    let snap = snapshot();
    let key = format!("{PREFIX}TestScheduleRate::tests_put_rule_with_schedule_custom_event_bus");
    let err = &snap[&key]["recorded-content"]["put-rule-with-custom-event-bus-error"]["Error"];
    let aws = err["Message"].as_str().expect("message");
    let rule = RuleDef {
        name: "r".into(),
        event_bus_name: "custom".into(),
        event_pattern: None,
        schedule_expression: Some("rate(10 minutes)".into()),
        state: RuleState::Enabled,
        description: None,
        targets: vec![],
    };
    match rule.validate() {
        Err(BusError::Validation(m)) => assert_eq!(m, aws),
        other => panic!("ours {other:?}; AWS refuses with {aws:?}"),
    }
}
