//! Target input (Input / InputPath / InputTransformer) against AWS's recorded behaviour.
//!
//! Reads LocalStack's AWS-validated snapshot `test_events_inputs.snapshot.json` from the shared
//! conformance directory at test time (it is not copied here; a missing file fails the test).
//! The snapshot holds AWS's outputs (the SQS message bodies and error messages); the inputs
//! (events, InputPaths, InputPathsMaps, templates) come from LocalStack's test source
//! `tests/aws/services/events/test_events_inputs.py` and `test_events.py`, encoded below.
//!
//! The snapshot's own placeholders (`<uuid:2>`, `date`, `<region>`, `<rule-name>` ...) are used
//! as the event's and rule's values, so that AWS's bodies compare exactly.
//!
//! Cases that cannot be checked:
//! * the four `test_input_transformer_nested_keys_replacement` parameters whose recording is
//!   empty (`<listsingle> single list item`, `<listmulti> multiple list items`,
//!   `{"singlelistitem": "<listsingle>", "multiplelistitems": "<listmulti>"}`,
//!   `{"singlelistitem": "<listsingle>"}`): AWS's output was not recorded;
//! * in the `{"originalEvent": <aws.events.event>, ...}` case, `originalEvent.time` is masked by
//!   the snapshot (`<ingestion-time>`), so it is compared as "a string" only.
//!
//! Cases whose inputs are INFERRED, not read: the test source of
//! `test_input_transformer_nested_keys_replacement` is not in the reference index (only an
//! older revision of the file, without that test, is). Its event is `SPECIAL_EVENT_DETAIL`
//! (read from `test_events.py`), but its InputPathsMap is inferred from the outputs:
//! `userId` = `$.detail.payload.acc_id`, `payload` = `$.detail.payload`,
//! `listsingle`/`listmulti` = `$.detail.listsingle`/`listmulti`, `systemstring` = a path that
//! is absent (AWS rendered it empty), and for `"Command is <valid>!"` a `valid` variable
//! selecting a boolean `true`. Those cases check the substitution rules against AWS's bodies,
//! not the reconstruction of LocalStack's inputs; they are counted separately.

use std::collections::BTreeMap;
use std::path::PathBuf;

use outrider_bus::model::{Destination, InputTransformerDef, TargetDef};
use outrider_bus::transform::{InputSpec, RenderContext};
use serde_json::{json, Value};

const PREFIX: &str = "tests/aws/services/events/test_events_inputs.py::";

fn snapshot() -> BTreeMap<String, Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/localstack/events/test_events_inputs.snapshot.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "conformance snapshot {} is missing or unreadable ({e}); this test needs the shared \
             conformance data next to the workspace",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("snapshot is JSON")
}

/// `test_events.py`'s EVENT_DETAIL / TEST_EVENT_DETAIL.
fn event_detail() -> Value {
    json!({"command": "update-account", "payload": {"acc_id": "0a787ecb-4015", "sf_id": "baz"}})
}

/// `test_events_inputs.py`'s EVENT_DETAIL_DUPLICATED_KEY.
fn event_detail_duplicated_key() -> Value {
    json!({"command": "update-account",
           "payload": {"acc_id": "0a787ecb-4015", "payload": {"message": "baz", "id": "123"}}})
}

/// `test_events.py`'s SPECIAL_EVENT_DETAIL.
fn special_event_detail() -> Value {
    json!({"command": "update-account", "payload": {"acc_id": "0a787ecb-4015", "sf_id": "baz"},
           "listsingle": ["HIGH"], "listmulti": ["ACTIVE", "INACTIVE"]})
}

/// The event AWS delivered for a PutEvents entry with TEST_EVENT_PATTERN's source and
/// detail-type, with the snapshot's placeholders for the generated values.
fn event(id: &str, detail: Value) -> Value {
    json!({
        "version": "0", "id": id,
        "detail-type": "core.update-account-command", "source": "core.update-account-command",
        "account": "111111111111", "time": "date", "region": "<region>", "resources": [],
        "detail": detail
    })
}

fn target() -> TargetDef {
    TargetDef {
        id: "<target-id>".into(),
        destination: Destination::Subscriber,
        input: None,
        input_path: None,
        input_transformer: None,
        retry_policy: Default::default(),
        dead_letter: true,
    }
}

fn with_path(p: &str) -> TargetDef {
    TargetDef {
        input_path: Some(p.into()),
        ..target()
    }
}

fn with_transformer(map: &[(&str, &str)], template: &str) -> TargetDef {
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

const CTX: RenderContext<'static> = RenderContext {
    rule_arn: "arn:<partition>:events:<region>:111111111111:rule/<bus-name>/<rule-name>",
    rule_name: "<rule-name>",
    ingestion_time: "date",
};

/// Renders `t` for `ev` and compares with one recorded SQS message body.
fn check_body(case: &str, t: &TargetDef, ev: &Value, recorded: &Value) -> Result<(), String> {
    let spec = InputSpec::from_target(t).map_err(|e| format!("{case}: refused: {e}"))?;
    let out = spec
        .render(ev, &CTX)
        .map_err(|e| format!("{case}: render: {e}"))?;
    let body = &recorded["Body"];
    match body {
        // LocalStack's snapshot parses bodies that are JSON objects or arrays; others are kept
        // as the text delivered.
        Value::String(text) => {
            if &out != text {
                return Err(format!("{case}:\n  ours: {out}\n  AWS:  {text}"));
            }
        }
        other => {
            let mut ours: Value = serde_json::from_str(&out)
                .map_err(|e| format!("{case}: ours is not JSON ({e}): {out}"))?;
            if let Some(masked) = ours.pointer_mut("/originalEvent/time") {
                // Masked by the snapshot (`<ingestion-time>`): only its presence is comparable.
                assert!(masked.is_string(), "{case}: originalEvent.time");
                *masked = json!("<ingestion-time>");
            }
            if &ours != other {
                return Err(format!("{case}:\n  ours: {ours}\n  AWS:  {other}"));
            }
        }
    }
    Ok(())
}

/// The recorded messages under `key` of a case: exactly one message expected.
fn one_message<'a>(snap: &'a BTreeMap<String, Value>, case: &str, key: &str) -> &'a Value {
    let content = &snap
        .get(&format!("{PREFIX}{case}"))
        .unwrap_or_else(|| panic!("snapshot has no case {case}"))["recorded-content"];
    let msgs = content[key]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: no messages under {key}"));
    assert_eq!(msgs.len(), 1, "{case}/{key}");
    &msgs[0]
}

fn recorded_error(snap: &BTreeMap<String, Value>, case: &str, key: &str) -> String {
    let v = &snap
        .get(&format!("{PREFIX}{case}"))
        .unwrap_or_else(|| panic!("snapshot has no case {case}"))["recorded-content"][key];
    assert_eq!(v["Error"]["Code"], "ValidationException", "{case}");
    v["Error"]["Message"].as_str().expect("message").to_string()
}

struct Tally {
    read: usize,
    inferred: usize,
    failures: Vec<String>,
    seen: Vec<String>,
}

impl Tally {
    fn record(&mut self, case: &str, inferred: bool, r: Result<(), String>) {
        self.seen.push(case.to_string());
        if inferred {
            self.inferred += 1;
        } else {
            self.read += 1;
        }
        if let Err(e) = r {
            self.failures.push(e);
        }
    }
}

#[test]
fn input_settings_match_aws() {
    let snap = snapshot();
    let mut tally = Tally {
        read: 0,
        inferred: 0,
        failures: Vec::new(),
        seen: Vec::new(),
    };

    // --- InputPath -------------------------------------------------------------------------
    for (case, path, detail) in [
        (
            "TestInputPath::test_put_events_with_input_path",
            "$.detail",
            event_detail(),
        ),
        (
            "TestInputPath::test_put_events_with_input_path_nested[event_detail0]",
            "$.detail.payload",
            event_detail(),
        ),
        (
            "TestInputPath::test_put_events_with_input_path_nested[event_detail1]",
            "$.detail.payload",
            event_detail_duplicated_key(),
        ),
        (
            "TestInputPath::test_put_events_with_input_path_max_level_depth",
            "$.detail.payload.sf_id",
            event_detail(),
        ),
    ] {
        let msg = one_message(&snap, case, "message");
        let r = check_body(case, &with_path(path), &event("<uuid:2>", detail), msg);
        tally.record(case, false, r);
    }
    {
        let case = "TestInputPath::test_put_events_with_input_path_multiple_targets";
        let ev = event("<uuid:3>", event_detail());
        let r1 = check_body(
            case,
            &with_path("$.detail"),
            &ev,
            one_message(&snap, case, "message-queue-1"),
        );
        let r2 = check_body(
            case,
            &target(),
            &ev,
            one_message(&snap, case, "message-queue-2"),
        );
        tally.record(case, false, r1.and(r2));
    }

    // --- InputTransformer: templates with the map of test_put_events_with_input_transformer_*
    let map_all = [
        ("detail-type", "$.detail-type"),
        ("timestamp", "$.time"),
        ("command", "$.detail.command"),
    ];
    let map_missing = [
        ("detail-type", "$.detail-type"),
        ("timestamp", "$.time"),
        ("command", "$.detail.notinmessage"),
    ];
    let string_template =
        "\"Event of <detail-type> type, at time <timestamp>, info extracted from detail <command>\"";
    let special_template =
        "\"{[/Check with special starting characters for event of <detail-type> type\"";
    let json_template =
        "{\"detailType\": <detail-type>,  \"time\": <timestamp>, \"command\": <command>}";
    for (case, template) in [
        (
            "TestInputTransformer::test_put_events_with_input_transformer_input_template_string"
                .to_string(),
            string_template,
        ),
        (
            format!("TestInputTransformer::test_put_events_with_input_transformer_input_template_string[{string_template}]"),
            string_template,
        ),
        (
            format!("TestInputTransformer::test_put_events_with_input_transformer_input_template_string[{special_template}]"),
            special_template,
        ),
        (
            "TestInputTransformer::test_put_events_with_input_transformer_input_template_json"
                .to_string(),
            json_template,
        ),
    ] {
        let ev = event("<uuid:3>", event_detail());
        let r1 = check_body(
            &case,
            &with_transformer(&map_all, template),
            &ev,
            one_message(&snap, &case, "custom-variables-match-all"),
        );
        let r2 = check_body(
            &case,
            &with_transformer(&map_missing, template),
            &ev,
            one_message(&snap, &case, "custom-variables-not-match-all"),
        );
        tally.record(&case, false, r1.and(r2));
    }

    // --- predefined variables (no InputPathsMap) ---------------------------------------------
    for template in [
        "\"Message containing all pre defined variables <aws.events.rule-arn> <aws.events.rule-name> <aws.events.event.ingestion-time>\"",
        "{\"originalEvent\": <aws.events.event>, \"originalEventJson\": <aws.events.event.json>}",
    ] {
        let case = format!(
            "TestInputTransformer::test_input_transformer_predefined_variables[{template}]"
        );
        let r = check_body(
            &case,
            &with_transformer(&[], template),
            &event("<uuid:2>", event_detail()),
            one_message(&snap, &case, "messages"),
        );
        tally.record(&case, false, r);
    }

    // --- validation errors ----------------------------------------------------------------
    {
        let case = "TestInputTransformer::test_put_events_with_input_transformer_missing_keys";
        let aws = recorded_error(&snap, case, "missing-key-exception-error");
        let t = with_transformer(
            &map_all,
            "\"Event of <detail-type> type, with not defined key <notdefinedkey>\"",
        );
        let r = match InputSpec::from_target(&t) {
            Err(outrider_bus::BusError::Validation(m)) if m == aws => Ok(()),
            other => Err(format!("{case}: ours {other:?}, AWS {aws}")),
        };
        tally.record(case, false, r);
    }
    {
        let case = "test_put_event_input_path_and_input_transformer";
        let aws = recorded_error(&snap, case, "duplicated-input-operations-error");
        let t = TargetDef {
            input_path: Some("$.detail".into()),
            ..with_transformer(&map_all, json_template)
        };
        let r = match InputSpec::from_target(&t) {
            Err(outrider_bus::BusError::Validation(m)) if m == aws => Ok(()),
            other => Err(format!("{case}: ours {other:?}, AWS {aws}")),
        };
        tally.record(case, false, r);
    }

    // --- nested keys replacement (InputPathsMap INFERRED, see the module doc) --------------
    let nested_map = [
        ("userId", "$.detail.payload.acc_id"),
        ("payload", "$.detail.payload"),
        ("listsingle", "$.detail.listsingle"),
        ("listmulti", "$.detail.listmulti"),
        ("systemstring", "$.detail.systemstring"),
    ];
    let nested_templates = [
        r#"{"method": "PUT", "path": "users-service/users/<userId>", "bod": <payload>}"#,
        r#""Payload of <payload> with path users-service/users/<userId> and <userId>""#,
        r#"{"method": "PUT", "path": "users-service/users/<userId>", "id": <userId>, "body": <payload>}"#,
        r#"{"method": "PUT", "path": "users-service/users/<userId>", "bod": [<userId>, "hardcoded"]}"#,
        r#"{"method": "PUT", "nested": {"level1": {"level2": {"level3": "users-service/users/<userId>"} } }, "bod": "<userId>"}"#,
        "\"<listsingle> single list item\"\n\"<listmulti> multiple list items\"\n\"<systemstring> system account id\"\n\"<payload> payload\"\n\"<userId> user id\"",
        r#"{"id" : <userId>}"#,
        r#""<listsingle> single list item""#,
        r#""<listmulti> multiple list items""#,
        r#"{"singlelistitem": <listsingle>}"#,
        r#""<listsingle> single list item <listmulti> multiple list items <systemstring> system account id <payload> payload <userId> user id""#,
        r#"{"multi_replacement": "users/<userId>/second/<userId>"}"#,
        r#"{"id" : "<userId>"}"#,
    ];
    for template in nested_templates {
        // pytest writes a newline of a parameter as `\n` in the test id.
        let id = template.replace('\n', "\\n");
        let case =
            format!("TestInputTransformer::test_input_transformer_nested_keys_replacement[{id}]");
        let r = check_body(
            &case,
            &with_transformer(&nested_map, template),
            &event("<uuid:2>", special_event_detail()),
            one_message(&snap, &case, "input-transformed-messages"),
        );
        tally.record(&case, true, r);
    }
    {
        let case =
            "TestInputTransformer::test_input_transformer_nested_keys_replacement[\"Command is <valid>!\"]";
        let mut detail = special_event_detail();
        detail["valid"] = json!(true);
        let r = check_body(
            case,
            &with_transformer(&[("valid", "$.detail.valid")], "\"Command is <valid>!\""),
            &event("<uuid:2>", detail),
            one_message(&snap, case, "input-transformed-messages"),
        );
        tally.record(case, true, r);
    }

    // Every snapshot case is either checked above or one of the four unrecorded ones.
    let unrecorded: Vec<&String> = snap
        .iter()
        .filter(|(_, v)| {
            v["recorded-content"]
                .as_object()
                .is_some_and(|o| o.is_empty())
        })
        .map(|(k, _)| k)
        .collect();
    assert_eq!(unrecorded.len(), 4, "unrecorded cases: {unrecorded:?}");
    for k in snap.keys() {
        let short = k.strip_prefix(PREFIX).unwrap_or(k);
        assert!(
            tally.seen.iter().any(|s| s == short) || unrecorded.contains(&k),
            "snapshot case not covered: {k}"
        );
    }
    eprintln!(
        "transform conformance: {} cases with inputs read from LocalStack's source, {} with an \
         inferred InputPathsMap, {} unrecorded; {} failed",
        tally.read,
        tally.inferred,
        unrecorded.len(),
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "{} case(s) differ from AWS:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
}
