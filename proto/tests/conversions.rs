//! Round trips and error cases of the EventBridge and CloudEvents conversions.

use std::collections::HashMap;

use outrider_proto::time::{self, TimeError, MAX_SECONDS, MIN_SECONDS};
use outrider_proto::{cloudevents, eventbridge, ConvertError, Event};
use proptest::prelude::*;
use serde_json::{json, Value};

/// `0001-01-01T00:00:00Z`.
const YEAR_1: i64 = -62_135_596_800;

fn extensions(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// An event with every field set.
fn full_event() -> Event {
    Event {
        id: "0f6b8f4e-5a1c-4e0b-9d55-3f1d2e9c7a10".into(),
        source: "com.example.orders".into(),
        detail_type: "OrderPlaced".into(),
        time_seconds: 1_575_313_371,
        time_nanos: 500_000_000,
        account: "123456789012".into(),
        region: "eu-west-1".into(),
        resources: vec!["arn:aws:s3:::bucket".into(), "urn:order:42".into()],
        detail: r#"{"items":[{"qty":2,"sku":"A-1"}],"order":42,"total":12.5}"#.into(),
        stream: "order-42".into(),
        version: 3,
        position: 18_446_744_073_709_551_615,
        origin_node: "edge-7".into(),
        origin_seq: 99,
        event_bus_name: "orders-bus".into(),
        trace_header: "Root=1-5759e988-bd862e3fe1be46a994272793".into(),
        replay_name: "replay-2024".into(),
        subject: "order/42".into(),
        dataschema: "https://example.com/schemas/order.json".into(),
        datacontenttype: "application/json".into(),
        extensions: extensions(&[
            ("comexampleextension1", r#""value""#),
            ("comexampleothervalue", "5"),
            (
                "traceparent",
                r#""00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01""#,
            ),
            ("nested", r#"{"a":[true,null]}"#),
        ]),
    }
}

// ---------------------------------------------------------------------------------------------
// time

#[test]
fn time_formats_canonically() {
    assert_eq!(
        time::format_rfc3339(1_575_313_371, 0).unwrap(),
        "2019-12-02T19:02:51Z"
    );
    assert_eq!(
        time::format_rfc3339(1_575_313_371, 500_000_000).unwrap(),
        "2019-12-02T19:02:51.5Z"
    );
    assert_eq!(
        time::format_rfc3339(1_575_313_371, 1).unwrap(),
        "2019-12-02T19:02:51.000000001Z"
    );
    assert_eq!(
        time::format_rfc3339(1_575_313_371, 120_000_000).unwrap(),
        "2019-12-02T19:02:51.12Z"
    );
    assert_eq!(time::format_rfc3339(0, 0).unwrap(), "1970-01-01T00:00:00Z");
    assert_eq!(
        time::format_rfc3339(MIN_SECONDS, 0).unwrap(),
        "0000-01-01T00:00:00Z"
    );
    assert_eq!(
        time::format_rfc3339(MAX_SECONDS, 999_999_999).unwrap(),
        "9999-12-31T23:59:59.999999999Z"
    );
    assert_eq!(
        time::format_rfc3339(YEAR_1, 0).unwrap(),
        "0001-01-01T00:00:00Z"
    );
}

#[test]
fn time_rejects_unformattable_values() {
    assert_eq!(
        time::format_rfc3339(0, 1_000_000_000),
        Err(TimeError::NanosOutOfRange)
    );
    assert_eq!(
        time::format_rfc3339(MAX_SECONDS + 1, 0),
        Err(TimeError::OutOfRange)
    );
    assert_eq!(
        time::format_rfc3339(MIN_SECONDS - 1, 0),
        Err(TimeError::OutOfRange)
    );
}

#[test]
fn time_parses_any_offset_and_normalizes_to_utc() {
    let expected = (1_575_313_371, 500_000_000);
    for text in [
        "2019-12-02T19:02:51.5Z",
        "2019-12-02t19:02:51.5z",
        "2019-12-02 19:02:51.5Z",
        "2019-12-02T19:02:51.500000000Z",
        "2019-12-02T19:02:51.5000000001Z",
        "2019-12-02T20:02:51.5+01:00",
        "2019-12-02T13:32:51.5-05:30",
        "2019-12-02T19:02:51.5-00:00",
    ] {
        assert_eq!(time::parse_rfc3339(text), Ok(expected), "{text}");
    }
    // A leap second reads as the last nanosecond before it.
    assert_eq!(
        time::parse_rfc3339("2016-12-31T23:59:60Z"),
        Ok((1_483_228_799, 999_999_999))
    );
}

#[test]
fn time_rejects_invalid_text() {
    for text in [
        "",
        "2019-12-02",
        "2019-12-02T19:02:51",
        "2019-12-02X19:02:51Z",
        "2019-13-02T19:02:51Z",
        "2019-12-02T19:02:51+24:00",
        "2019-12-02T19:02:51Z trailing",
        "1575313371",
    ] {
        assert!(
            matches!(time::parse_rfc3339(text), Err(TimeError::Syntax(_))),
            "{text}"
        );
    }
    // Valid RFC 3339 locally, but outside years 0000..=9999 once in UTC.
    assert_eq!(
        time::parse_rfc3339("9999-12-31T23:00:00-02:00"),
        Err(TimeError::OutOfRange)
    );
    assert_eq!(
        time::parse_rfc3339("0000-01-01T00:30:00+01:00"),
        Err(TimeError::OutOfRange)
    );
}

#[test]
fn time_parses_epoch_seconds_exactly() {
    assert_eq!(
        time::parse_epoch_seconds("1575313371"),
        Ok((1_575_313_371, 0))
    );
    assert_eq!(
        time::parse_epoch_seconds("1575313371.123"),
        Ok((1_575_313_371, 123_000_000))
    );
    assert_eq!(
        time::parse_epoch_seconds("1.5753133715e9"),
        Ok((1_575_313_371, 500_000_000))
    );
    assert_eq!(
        time::parse_epoch_seconds("1.5753133715e+9"),
        Ok((1_575_313_371, 500_000_000))
    );
    assert_eq!(time::parse_epoch_seconds("15E-1"), Ok((1, 500_000_000)));
    assert_eq!(time::parse_epoch_seconds("1e-9"), Ok((0, 1)));
    assert_eq!(time::parse_epoch_seconds("1e-10"), Ok((0, 0)));
    assert_eq!(time::parse_epoch_seconds("-1.5"), Ok((-2, 500_000_000)));
    assert_eq!(time::parse_epoch_seconds("-2"), Ok((-2, 0)));
    assert_eq!(time::parse_epoch_seconds("-0.0"), Ok((0, 0)));
    assert_eq!(time::parse_epoch_seconds("0e2147483647"), Ok((0, 0)));
    for text in [
        "1e20",
        "1e2147483647",
        "99999999999999999999",
        "253402300800",
    ] {
        assert_eq!(
            time::parse_epoch_seconds(text),
            Err(TimeError::OutOfRange),
            "{text}"
        );
    }
    for text in ["", "-", ".5", "1.", "1.2.3", "1e", "abc", "+1", "1_000"] {
        assert_eq!(
            time::parse_epoch_seconds(text),
            Err(TimeError::NotANumber),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// EventBridge delivered events

/// An EC2 state-change notification as EventBridge delivers it.
fn ec2_state_change() -> Value {
    json!({
        "version": "0",
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2015-11-11T21:29:54Z",
        "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
        "detail": {"instance-id": "i-abcd1111", "state": "pending"}
    })
}

#[test]
fn eventbridge_ec2_sample_round_trips_exactly() {
    let sample = ec2_state_change();
    let e = eventbridge::from_json(&sample).unwrap();
    assert_eq!(e.id, "7bf73129-1428-4cd3-a780-95db273d1602");
    assert_eq!(e.source, "aws.ec2");
    assert_eq!(e.detail_type, "EC2 Instance State-change Notification");
    assert_eq!(e.account, "123456789012");
    assert_eq!(e.region, "us-east-1");
    assert_eq!((e.time_seconds, e.time_nanos), (1_447_277_394, 0));
    assert_eq!(
        e.resources,
        ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"]
    );
    assert_eq!(e.detail, sample["detail"].to_string());
    assert_eq!(
        serde_json::from_str::<Value>(&e.detail).unwrap(),
        sample["detail"]
    );
    assert!(e.replay_name.is_empty());
    assert_eq!(eventbridge::to_json(&e).unwrap(), sample);
    // No Outrider fields, no "outrider" member.
    assert!(eventbridge::to_json(&e).unwrap().get("outrider").is_none());
}

#[test]
fn eventbridge_replayed_sample_round_trips_exactly() {
    let sample = json!({
        "version": "0",
        "id": "2b4c1c5e-6a5f-4b1e-a1ab-6f0a5b2c9d3e",
        "detail-type": "Order Created",
        "source": "com.example.orders",
        "account": "111122223333",
        "time": "2023-03-09T08:15:30Z",
        "region": "us-west-2",
        "resources": [],
        "detail": {"orderId": "o-1", "amount": 12.75, "lines": [{"sku": "x", "n": 1}], "gift": false, "note": null},
        "replay-name": "replay-orders-archive"
    });
    let e = eventbridge::from_json(&sample).unwrap();
    assert_eq!(e.replay_name, "replay-orders-archive");
    assert!(e.resources.is_empty());
    assert_eq!(eventbridge::to_json(&e).unwrap(), sample);
    let text = eventbridge::to_json_string(&e).unwrap();
    assert_eq!(eventbridge::from_json_str(&text).unwrap(), e);
}

#[test]
fn eventbridge_outrider_member_round_trips_exactly() {
    let sample = json!({
        "version": "0",
        "id": "a",
        "detail-type": "t",
        "source": "s",
        "account": "",
        "time": "2024-02-29T12:00:00.000001Z",
        "region": "",
        "resources": [],
        "detail": {},
        "outrider": {
            "stream": "order-42",
            "version": 3,
            "position": 18_446_744_073_709_551_615_u64,
            "node": "edge-7",
            "seq": 99,
            "event-bus-name": "orders-bus",
            "trace-header": "Root=1",
            "subject": "order/42",
            "dataschema": "https://example.com/s.json",
            "datacontenttype": "application/json",
            "extensions": {"comexampleothervalue": 5, "flag": true, "name": "x"}
        }
    });
    let e = eventbridge::from_json(&sample).unwrap();
    assert_eq!(e.time_nanos, 1_000);
    assert_eq!(e.position, u64::MAX);
    assert_eq!(e.origin_node, "edge-7");
    assert_eq!(e.origin_seq, 99);
    assert_eq!(
        e.extensions,
        extensions(&[
            ("comexampleothervalue", "5"),
            ("flag", "true"),
            ("name", r#""x""#)
        ])
    );
    assert_eq!(eventbridge::to_json(&e).unwrap(), sample);
}

#[test]
fn eventbridge_full_event_round_trips() {
    let e = full_event();
    let json = eventbridge::to_json(&e).unwrap();
    assert_eq!(json["time"], "2019-12-02T19:02:51.5Z");
    assert_eq!(json["replay-name"], "replay-2024");
    assert_eq!(json["outrider"]["position"], json!(u64::MAX));
    assert_eq!(
        json["outrider"]["extensions"]["nested"],
        json!({"a": [true, null]})
    );
    assert_eq!(eventbridge::from_json(&json).unwrap(), e);
    let text = eventbridge::to_json_string(&e).unwrap();
    assert_eq!(eventbridge::from_json_str(&text).unwrap(), e);
}

#[test]
fn eventbridge_defaults_and_nulls() {
    // Only the required members; `detail` absent means `{}`, `null` means absent.
    let e = eventbridge::from_json(&json!({
        "id": "a", "source": "s", "detail-type": "t", "region": null, "replay-name": null,
        "future-member": {"ignored": true}
    }))
    .unwrap();
    assert_eq!(e.detail, "{}");
    assert_eq!((e.time_seconds, e.time_nanos), (0, 0));
    assert!(e.region.is_empty() && e.replay_name.is_empty());

    // Zero and empty Outrider fields are left out; all of them default drops the member.
    let e = Event {
        detail: String::new(),
        ..Event::default()
    };
    let json = eventbridge::to_json(&e).unwrap();
    assert_eq!(json["detail"], json!({}));
    assert_eq!(json["time"], "1970-01-01T00:00:00Z");
    assert!(json.get("outrider").is_none() && json.get("replay-name").is_none());
    let e = Event {
        version: 1,
        ..Event::default()
    };
    assert_eq!(
        eventbridge::to_json(&e).unwrap()["outrider"],
        json!({"version": 1})
    );
}

#[test]
fn eventbridge_detail_is_stored_compact() {
    let pretty = r#"{
        "version": "0", "id": "a", "source": "s", "detail-type": "t",
        "detail": { "z" : [ 1 , 2 ],
                    "a" : { "nested" : "yes" } }
    }"#;
    let e = eventbridge::from_json_str(pretty).unwrap();
    let detail: Value = serde_json::from_str(&e.detail).unwrap();
    assert_eq!(detail, json!({"z": [1, 2], "a": {"nested": "yes"}}));
    assert_eq!(e.detail, detail.to_string());
    assert!(!e.detail.contains(' '));
}

// ---------------------------------------------------------------------------------------------
// PutEvents entries

#[test]
fn put_events_request_sample() {
    let request = json!({
        "Entries": [
            {
                "Source": "com.mycompany.myapp",
                "DetailType": "myDetailType",
                "Detail": "{ \"key1\": \"value1\", \"key2\": \"value2\" }",
                "Resources": ["resource1", "resource2"],
                "Time": "2019-12-02T19:02:51Z",
                "EventBusName": "my-bus",
                "TraceHeader": "Root=1-63441c4a-abcdef012345678912345678"
            },
            {
                "Source": "com.mycompany.myapp",
                "DetailType": "myDetailType",
                "Detail": "{}",
                "Time": 1575313371.25
            }
        ],
        "EndpointId": "abcde.veo"
    });
    let events = eventbridge::put_events_request_to_events(&request).unwrap();
    assert_eq!(events.len(), 2);
    let first = &events[0];
    assert_eq!(first.source, "com.mycompany.myapp");
    assert_eq!(first.detail_type, "myDetailType");
    assert_eq!(first.detail, r#"{"key1":"value1","key2":"value2"}"#);
    assert_eq!(first.resources, ["resource1", "resource2"]);
    assert_eq!((first.time_seconds, first.time_nanos), (1_575_313_371, 0));
    assert_eq!(first.event_bus_name, "my-bus");
    assert_eq!(
        first.trace_header,
        "Root=1-63441c4a-abcdef012345678912345678"
    );
    assert!(first.id.is_empty() && first.account.is_empty() && first.region.is_empty());
    assert_eq!(
        (events[1].time_seconds, events[1].time_nanos),
        (1_575_313_371, 250_000_000)
    );

    // Back to an entry: Detail compact, Time canonical.
    let entry = eventbridge::event_to_entry(first).unwrap();
    assert_eq!(
        entry,
        json!({
            "Source": "com.mycompany.myapp",
            "DetailType": "myDetailType",
            "Detail": r#"{"key1":"value1","key2":"value2"}"#,
            "Resources": ["resource1", "resource2"],
            "Time": "2019-12-02T19:02:51Z",
            "EventBusName": "my-bus",
            "TraceHeader": "Root=1-63441c4a-abcdef012345678912345678"
        })
    );
    assert_eq!(eventbridge::entry_to_event(&entry).unwrap(), *first);
}

#[test]
fn entry_round_trips_the_fields_it_carries() {
    let full = full_event();
    let subset = Event {
        source: full.source.clone(),
        detail_type: full.detail_type.clone(),
        time_seconds: full.time_seconds,
        time_nanos: full.time_nanos,
        resources: full.resources.clone(),
        detail: full.detail.clone(),
        event_bus_name: full.event_bus_name.clone(),
        trace_header: full.trace_header.clone(),
        ..Event::default()
    };
    // The fields an entry has no place for are dropped.
    let entry = eventbridge::event_to_entry(&full).unwrap();
    assert_eq!(eventbridge::entry_to_event(&entry).unwrap(), subset);

    // Unset time, resources, bus and trace header are left out.
    let minimal = Event {
        source: "s".into(),
        detail_type: "t".into(),
        detail: "{}".into(),
        ..Event::default()
    };
    let entry = eventbridge::event_to_entry(&minimal).unwrap();
    assert_eq!(
        entry,
        json!({"Source": "s", "DetailType": "t", "Detail": "{}"})
    );
    assert_eq!(eventbridge::entry_to_event(&entry).unwrap(), minimal);
}

#[test]
fn entry_size_limit_follows_aws_formula() {
    let limit = eventbridge::MAX_ENTRY_SIZE;
    // Source + DetailType + Detail + Resources + 14 for Time, exactly at the limit: accepted.
    let padding = limit - 1 - 1 - 14 - "r".len() - r#"{"p":""}"#.len();
    let detail = format!(r#"{{"p":"{}"}}"#, "x".repeat(padding));
    let mut entry = json!({
        "Source": "s", "DetailType": "t", "Detail": detail, "Resources": ["r"],
        "Time": "2019-12-02T19:02:51Z", "TraceHeader": "not counted", "EventBusName": "not counted"
    });
    let e = eventbridge::entry_to_event(&entry).unwrap();
    assert_eq!(
        eventbridge::event_to_entry(&e).unwrap()["Detail"],
        entry["Detail"]
    );

    // One multi-byte character more: rejected, both ways.
    entry["Source"] = json!("sé");
    assert_eq!(
        eventbridge::entry_to_event(&entry),
        Err(ConvertError::TooLarge {
            size: limit + 2,
            limit
        })
    );
    let too_large = Event {
        source: "sé".into(),
        ..e
    };
    assert_eq!(
        eventbridge::event_to_entry(&too_large),
        Err(ConvertError::TooLarge {
            size: limit + 2,
            limit
        })
    );
}

// ---------------------------------------------------------------------------------------------
// CloudEvents

#[test]
fn cloudevents_spec_sample_with_extensions() {
    // From the CloudEvents JSON format spec (§3.2).
    let sample = json!({
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "subject": null,
        "id" : "C234-1234-1234",
        "time" : "2018-04-05T17:31:00Z",
        "comexampleextension1" : "value",
        "comexampleothervalue" : 5,
        "datacontenttype" : "application/json",
        "data" : {
            "appinfoA" : "abc",
            "appinfoB" : 123,
            "appinfoC" : true
        }
    });
    let e = cloudevents::from_json(&sample).unwrap();
    assert_eq!(e.id, "C234-1234-1234");
    assert_eq!(e.source, "/mycontext");
    assert_eq!(e.detail_type, "com.example.someevent");
    assert_eq!((e.time_seconds, e.time_nanos), (1_522_949_460, 0));
    assert!(e.subject.is_empty());
    assert_eq!(e.datacontenttype, "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&e.detail).unwrap(),
        sample["data"]
    );
    assert_eq!(
        e.extensions,
        extensions(&[
            ("comexampleextension1", r#""value""#),
            ("comexampleothervalue", "5")
        ])
    );
    // The `null` subject means unset, so it does not come back.
    let mut expected = sample.clone();
    expected.as_object_mut().unwrap().remove("subject");
    assert_eq!(cloudevents::to_json(&e).unwrap(), expected);
}

#[test]
fn cloudevents_sample_with_subject_and_dataschema_round_trips_exactly() {
    let sample = json!({
        "specversion": "1.0",
        "type": "com.github.pull_request.opened",
        "source": "https://github.com/cloudevents/spec/pull",
        "subject": "123",
        "id": "A234-1234-1234",
        "time": "2018-04-05T17:31:00.123456Z",
        "dataschema": "https://example.com/schemas/pr.json",
        "datacontenttype": "application/vnd.github+json; charset=utf-8",
        "comexampleextension1": "value",
        "data": ["an", "array", 1, null]
    });
    let e = cloudevents::from_json(&sample).unwrap();
    assert_eq!(e.subject, "123");
    assert_eq!(e.dataschema, "https://example.com/schemas/pr.json");
    assert_eq!(e.time_nanos, 123_456_000);
    assert_eq!(e.detail, r#"["an","array",1,null]"#);
    assert_eq!(cloudevents::to_json(&e).unwrap(), sample);
}

#[test]
fn cloudevents_data_string_null_and_absent() {
    // Spec sample: a literal JSON string as data, no datacontenttype.
    let sample = json!({
        "specversion" : "1.0", "type" : "com.example.someevent", "source" : "/mycontext",
        "id" : "D234-1234-1234", "time" : "2018-04-05T17:31:00Z",
        "data" : "I'm just a string"
    });
    let e = cloudevents::from_json(&sample).unwrap();
    assert_eq!(e.detail, r#""I'm just a string""#);
    assert!(e.datacontenttype.is_empty());
    assert_eq!(cloudevents::to_json(&e).unwrap(), sample);

    let minimal = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
    let e = cloudevents::from_json(&minimal).unwrap();
    assert_eq!(e.detail, "");
    assert_eq!((e.time_seconds, e.time_nanos), (0, 0));
    assert_eq!(cloudevents::to_json(&e).unwrap(), minimal);

    let mut explicit_null = minimal.clone();
    explicit_null["data"] = Value::Null;
    let e = cloudevents::from_json(&explicit_null).unwrap();
    assert_eq!(e.detail, "null");
    assert_eq!(cloudevents::to_json(&e).unwrap(), explicit_null);

    // `null` extension attributes mean unset.
    let mut unset = minimal.clone();
    unset["unsetextension"] = Value::Null;
    assert!(cloudevents::from_json(&unset)
        .unwrap()
        .extensions
        .is_empty());
}

#[test]
fn cloudevents_full_event_round_trips() {
    let e = full_event();
    let json = cloudevents::to_json(&e).unwrap();
    assert_eq!(json["type"], "OrderPlaced");
    assert_eq!(json["time"], "2019-12-02T19:02:51.5Z");
    assert_eq!(json["account"], "123456789012");
    assert_eq!(
        json["resources"],
        json!(["arn:aws:s3:::bucket", "urn:order:42"])
    );
    assert_eq!(json["outriderposition"], "18446744073709551615");
    assert_eq!(json["outriderversion"], "3");
    assert_eq!(json["outriderbus"], "orders-bus");
    assert_eq!(json["replayname"], "replay-2024");
    assert_eq!(json["comexampleothervalue"], 5);
    assert_eq!(cloudevents::from_json(&json).unwrap(), e);
    let text = cloudevents::to_json_string(&e).unwrap();
    assert_eq!(cloudevents::from_json_str(&text).unwrap(), e);

    // u64 attributes are also accepted as JSON numbers.
    let mut numbers = json;
    numbers["outriderseq"] = json!(99);
    numbers["outriderposition"] = json!(u64::MAX);
    assert_eq!(cloudevents::from_json(&numbers).unwrap(), e);
}

#[test]
fn cloudevents_accepts_json_content_types() {
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "text/json",
        "application/cloudevents+json",
        "application/vnd.api+json;v=2",
    ] {
        let json = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                          "datacontenttype": content_type, "data": {}});
        let e = cloudevents::from_json(&json).unwrap();
        assert_eq!(e.datacontenttype, content_type);
        assert_eq!(cloudevents::to_json(&e).unwrap(), json);
    }
}

#[test]
fn cloudevents_to_eventbridge_and_back() {
    let e = full_event();
    let via_eventbridge = eventbridge::from_json(&eventbridge::to_json(&e).unwrap()).unwrap();
    let via_cloudevents =
        cloudevents::from_json(&cloudevents::to_json(&via_eventbridge).unwrap()).unwrap();
    assert_eq!(via_cloudevents, e);
}

// ---------------------------------------------------------------------------------------------
// Errors

fn assert_wrong_type(result: Result<impl std::fmt::Debug, ConvertError>, expected_field: &str) {
    match result {
        Err(ConvertError::WrongType { field, .. }) => assert_eq!(field, expected_field),
        other => panic!("expected WrongType on {expected_field}, got {other:?}"),
    }
}

fn assert_invalid_json(result: Result<impl std::fmt::Debug, ConvertError>, expected_field: &str) {
    match result {
        Err(ConvertError::InvalidJson { field, .. }) => assert_eq!(field, expected_field),
        other => panic!("expected InvalidJson on {expected_field}, got {other:?}"),
    }
}

fn minimal_cloudevent() -> Value {
    json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"})
}

fn minimal_entry() -> Value {
    json!({"Source": "s", "DetailType": "t", "Detail": "{}"})
}

#[test]
fn missing_fields_are_named() {
    let mut ec2 = ec2_state_change();
    ec2.as_object_mut().unwrap().remove("detail-type");
    assert_eq!(
        eventbridge::from_json(&ec2),
        Err(ConvertError::MissingField("detail-type"))
    );
    ec2["detail-type"] = Value::Null;
    assert_eq!(
        eventbridge::from_json(&ec2),
        Err(ConvertError::MissingField("detail-type"))
    );

    for field in ["Source", "DetailType", "Detail"] {
        let mut entry = minimal_entry();
        entry.as_object_mut().unwrap().remove(field);
        assert_eq!(
            eventbridge::entry_to_event(&entry),
            Err(ConvertError::MissingField(field))
        );
    }
    assert_eq!(
        eventbridge::put_events_request_to_events(&json!({})),
        Err(ConvertError::MissingField("Entries"))
    );

    for field in ["specversion", "id", "source", "type"] {
        let mut event = minimal_cloudevent();
        event.as_object_mut().unwrap().remove(field);
        assert_eq!(
            cloudevents::from_json(&event),
            Err(ConvertError::MissingField(field))
        );
    }
}

#[test]
fn wrong_types_are_named() {
    // EventBridge detail must be an object, on input and output.
    let mut ec2 = ec2_state_change();
    ec2["detail"] = json!([1, 2]);
    assert_wrong_type(eventbridge::from_json(&ec2), "detail");
    ec2["detail"] = json!("{}");
    assert_wrong_type(eventbridge::from_json(&ec2), "detail");
    let array_detail = Event {
        detail: "[1,2]".into(),
        ..Event::default()
    };
    assert_wrong_type(eventbridge::to_json(&array_detail), "detail");
    assert_wrong_type(eventbridge::event_to_entry(&array_detail), "detail");

    let mut ec2 = ec2_state_change();
    ec2["resources"] = json!(["ok", 5]);
    assert_wrong_type(eventbridge::from_json(&ec2), "resources");
    let mut ec2 = ec2_state_change();
    ec2["outrider"] = json!({"version": -1});
    assert_wrong_type(eventbridge::from_json(&ec2), "outrider.version");
    ec2["outrider"] = json!({"stream": 7});
    assert_wrong_type(eventbridge::from_json(&ec2), "outrider.stream");
    ec2["outrider"] = json!({"extensions": []});
    assert_wrong_type(eventbridge::from_json(&ec2), "outrider.extensions");
    ec2["outrider"] = json!("x");
    assert_wrong_type(eventbridge::from_json(&ec2), "outrider");
    assert_wrong_type(eventbridge::from_json(&json!([])), "event");

    // Entries: Detail is a string holding an object; Time a string or number.
    let mut entry = minimal_entry();
    entry["Detail"] = json!({"a": 1});
    assert_wrong_type(eventbridge::entry_to_event(&entry), "Detail");
    entry["Detail"] = json!("[1]");
    assert_wrong_type(eventbridge::entry_to_event(&entry), "Detail");
    let mut entry = minimal_entry();
    entry["Time"] = json!(true);
    assert_wrong_type(eventbridge::entry_to_event(&entry), "Time");
    assert_wrong_type(
        eventbridge::put_events_request_to_events(&json!({"Entries": {}})),
        "Entries",
    );

    // CloudEvents.
    let mut event = minimal_cloudevent();
    event["specversion"] = json!(1.0);
    assert_wrong_type(cloudevents::from_json(&event), "specversion");
    let mut event = minimal_cloudevent();
    event["outriderseq"] = json!("-1");
    assert_wrong_type(cloudevents::from_json(&event), "outriderseq");
    event["outriderseq"] = json!(1.5);
    assert_wrong_type(cloudevents::from_json(&event), "outriderseq");
    let mut event = minimal_cloudevent();
    event["resources"] = json!("arn");
    assert_wrong_type(cloudevents::from_json(&event), "resources");

    // A null extension value would read back as unset.
    let null_extension = Event {
        extensions: extensions(&[("gone", "null")]),
        ..Event::default()
    };
    assert_wrong_type(cloudevents::to_json(&null_extension), "extensions.gone");
    assert_wrong_type(eventbridge::to_json(&null_extension), "extensions.gone");
}

#[test]
fn invalid_json_is_named() {
    let bad_detail = Event {
        detail: "{".into(),
        ..Event::default()
    };
    assert_invalid_json(eventbridge::to_json(&bad_detail), "detail");
    assert_invalid_json(eventbridge::event_to_entry(&bad_detail), "detail");
    assert_invalid_json(cloudevents::to_json(&bad_detail), "detail");

    let bad_extension = Event {
        extensions: extensions(&[("broken", "{")]),
        ..Event::default()
    };
    assert_invalid_json(cloudevents::to_json(&bad_extension), "extensions.broken");
    assert_invalid_json(eventbridge::to_json(&bad_extension), "extensions.broken");

    let mut entry = minimal_entry();
    entry["Detail"] = json!("{not json}");
    assert_invalid_json(eventbridge::entry_to_event(&entry), "Detail");
    entry["Detail"] = json!("");
    assert_invalid_json(eventbridge::entry_to_event(&entry), "Detail");

    assert_invalid_json(eventbridge::from_json_str("{\"id\":"), "event");
    assert_invalid_json(cloudevents::from_json_str("nope"), "event");
}

#[test]
fn invalid_times_are_named() {
    let mut ec2 = ec2_state_change();
    ec2["time"] = json!("yesterday");
    match eventbridge::from_json(&ec2) {
        Err(ConvertError::InvalidTime {
            field,
            value,
            reason: TimeError::Syntax(_),
        }) => assert_eq!((field.as_str(), value.as_str()), ("time", "yesterday")),
        other => panic!("{other:?}"),
    }

    let mut entry = minimal_entry();
    entry["Time"] = json!(1e20);
    assert_eq!(
        eventbridge::entry_to_event(&entry),
        Err(ConvertError::InvalidTime {
            field: "Time".into(),
            value: "1e+20".into(), // serde_json writes the exponent sign
            reason: TimeError::OutOfRange,
        })
    );
    entry["Time"] = json!("2019-12-02");
    assert!(matches!(
        eventbridge::entry_to_event(&entry),
        Err(ConvertError::InvalidTime { field, .. }) if field == "Time"
    ));

    let mut event = minimal_cloudevent();
    event["time"] = json!("10000-01-01T00:00:00Z");
    assert!(matches!(
        cloudevents::from_json(&event),
        Err(ConvertError::InvalidTime { field, .. }) if field == "time"
    ));

    let bad_nanos = Event {
        time_nanos: 1_000_000_000,
        ..Event::default()
    };
    let expected = ConvertError::InvalidTime {
        field: "time_nanos".into(),
        value: "1000000000".into(),
        reason: TimeError::NanosOutOfRange,
    };
    assert_eq!(eventbridge::to_json(&bad_nanos), Err(expected.clone()));
    assert_eq!(cloudevents::to_json(&bad_nanos), Err(expected.clone()));
    assert_eq!(eventbridge::event_to_entry(&bad_nanos), Err(expected));

    let bad_seconds = Event {
        time_seconds: i64::MAX,
        ..Event::default()
    };
    assert_eq!(
        eventbridge::to_json(&bad_seconds),
        Err(ConvertError::InvalidTime {
            field: "time_seconds".into(),
            value: i64::MAX.to_string(),
            reason: TimeError::OutOfRange,
        })
    );
}

#[test]
fn too_many_entries() {
    let entries: Vec<Value> = (0..11).map(|_| minimal_entry()).collect();
    assert_eq!(
        eventbridge::put_events_request_to_events(&json!({ "Entries": entries })),
        Err(ConvertError::TooManyEntries {
            count: 11,
            limit: eventbridge::MAX_ENTRIES
        })
    );
    let entries: Vec<Value> = (0..10).map(|_| minimal_entry()).collect();
    assert_eq!(
        eventbridge::put_events_request_to_events(&json!({ "Entries": entries }))
            .unwrap()
            .len(),
        10
    );
}

#[test]
fn invalid_entry_is_located() {
    let request = json!({"Entries": [minimal_entry(), {"DetailType": "t", "Detail": "{}"}]});
    assert_eq!(
        eventbridge::put_events_request_to_events(&request),
        Err(ConvertError::InvalidEntry {
            index: 1,
            error: Box::new(ConvertError::MissingField("Source")),
        })
    );
    assert_eq!(
        eventbridge::put_events_request_to_events(&request)
            .unwrap_err()
            .to_string(),
        "Entries[1]: missing required field `Source`"
    );
}

#[test]
fn unknown_fields_are_named() {
    let mut entry = minimal_entry();
    entry["Detail-Type"] = json!("typo");
    assert_eq!(
        eventbridge::entry_to_event(&entry),
        Err(ConvertError::UnknownField("Detail-Type".into()))
    );
    assert_eq!(
        eventbridge::put_events_request_to_events(&json!({"Entries": [], "Extra": 1})),
        Err(ConvertError::UnknownField("Extra".into()))
    );
    let mut ec2 = ec2_state_change();
    ec2["outrider"] = json!({"stream": "s", "bogus": 1});
    assert_eq!(
        eventbridge::from_json(&ec2),
        Err(ConvertError::UnknownField("outrider.bogus".into()))
    );
}

#[test]
fn unsupported_spec_version() {
    let mut event = minimal_cloudevent();
    event["specversion"] = json!("0.3");
    assert_eq!(
        cloudevents::from_json(&event),
        Err(ConvertError::UnsupportedSpecVersion("0.3".into()))
    );
}

#[test]
fn binary_data_is_unsupported() {
    // The spec's binary sample.
    let sample = json!({
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "id" : "A234-1234-1234",
        "time" : "2018-04-05T17:31:00Z",
        "comexampleextension1" : "value",
        "comexampleothervalue" : 5,
        "datacontenttype" : "application/vnd.apache.thrift.binary",
        "data_base64" : "... base64 encoded string ..."
    });
    assert_eq!(
        cloudevents::from_json(&sample),
        Err(ConvertError::BinaryDataUnsupported)
    );
}

#[test]
fn invalid_extension_names() {
    for name in ["Upper", "with-dash", "with_underscore", "ünï"] {
        let mut event = minimal_cloudevent();
        event[name] = json!("x");
        assert_eq!(
            cloudevents::from_json(&event),
            Err(ConvertError::InvalidExtensionName(name.into())),
            "{name}"
        );
    }
    // Names the conversion maps itself, or empty, cannot be Event extensions.
    for name in ["", "account", "outriderseq", "subject", "data"] {
        let e = Event {
            extensions: extensions(&[(name, "1")]),
            ..Event::default()
        };
        let expected = Err(ConvertError::InvalidExtensionName(name.into()));
        assert_eq!(cloudevents::to_json(&e), expected, "{name:?}");
        assert_eq!(eventbridge::to_json(&e), expected, "{name:?}");
    }
    let mut ec2 = ec2_state_change();
    ec2["outrider"] = json!({"extensions": {"region": "x"}});
    assert_eq!(
        eventbridge::from_json(&ec2),
        Err(ConvertError::InvalidExtensionName("region".into()))
    );
}

#[test]
fn unsupported_content_types() {
    let mut xml = minimal_cloudevent();
    xml["datacontenttype"] = json!("application/xml");
    xml["data"] = json!("<much wow=\"xml\"/>");
    assert_eq!(
        cloudevents::from_json(&xml),
        Err(ConvertError::UnsupportedContentType(
            "application/xml".into()
        ))
    );
    for content_type in [
        "",
        "json",
        "text/plain",
        "application/jsonx",
        "application/+json",
    ] {
        let e = Event {
            datacontenttype: content_type.into(),
            ..Event::default()
        };
        let expected = ConvertError::UnsupportedContentType(content_type.into());
        if !content_type.is_empty() {
            assert_eq!(
                cloudevents::to_json(&e).unwrap_err(),
                expected,
                "{content_type:?}"
            );
            assert_eq!(
                eventbridge::to_json(&e).unwrap_err(),
                expected,
                "{content_type:?}"
            );
        }
        let mut event = minimal_cloudevent();
        event["datacontenttype"] = json!(content_type);
        assert_eq!(
            cloudevents::from_json(&event).unwrap_err(),
            expected,
            "{content_type:?}"
        );
        let mut ec2 = ec2_state_change();
        ec2["outrider"] = json!({ "datacontenttype": content_type });
        assert_eq!(
            eventbridge::from_json(&ec2).unwrap_err(),
            expected,
            "{content_type:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Attribute names the CloudEvents conversion maps itself.
const MAPPED: [&str; 20] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "dataschema",
    "datacontenttype",
    "data",
    "account",
    "region",
    "resources",
    "outriderstream",
    "outriderversion",
    "outriderposition",
    "outridernode",
    "outriderseq",
    "outriderbus",
    "outridertrace",
    "replayname",
];

/// Any JSON value whose compact text `serde_json` reads back to the same value. Decimals have few
/// digits: without its `float_roundtrip` feature `serde_json` may misread the last bit of
/// 17-digit decimals.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (any::<i32>(), 0..7_i32).prop_map(|(m, k)| Value::from(f64::from(m) / 10_f64.powi(k))),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Compact JSON text of an object, as `serde_json` prints it.
fn detail_object() -> impl Strategy<Value = String> {
    prop::collection::btree_map(any::<String>(), json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()).to_string())
}

/// Compact JSON text of any value, or empty (no data).
fn cloudevents_detail() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        json_value().prop_map(|v| v.to_string())
    ]
}

fn extension_map() -> impl Strategy<Value = HashMap<String, String>> {
    let name = "[a-z0-9]{1,20}".prop_filter("mapped attribute", |n| !MAPPED.contains(&n.as_str()));
    let value = json_value()
        .prop_filter("null means unset", |v| !v.is_null())
        .prop_map(|v| v.to_string());
    prop::collection::hash_map(name, value, 0..5)
}

/// Times RFC 3339 can write from year 1 on, with the unset time (0, 0) now and then.
fn event_time() -> impl Strategy<Value = (i64, u32)> {
    prop_oneof![
        1 => Just((0, 0)),
        9 => (YEAR_1..=MAX_SECONDS, 0..1_000_000_000_u32),
    ]
}

fn content_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("application/json".to_owned()),
        Just("text/json; charset=utf-8".to_owned()),
        Just("application/cloudevents+json".to_owned()),
    ]
}

/// Any event whose detail comes from `detail`.
fn event(detail: impl Strategy<Value = String>) -> impl Strategy<Value = Event> {
    let envelope = (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        event_time(),
        any::<String>(),
        any::<String>(),
        prop::collection::vec(any::<String>(), 0..4),
        detail,
    );
    let log = (
        any::<String>(),
        any::<u64>(),
        any::<u64>(),
        any::<String>(),
        any::<u64>(),
    );
    let rest = (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
        content_type(),
        extension_map(),
    );
    (envelope, log, rest).prop_map(
        |(
            (
                id,
                source,
                detail_type,
                (time_seconds, time_nanos),
                account,
                region,
                resources,
                detail,
            ),
            (stream, version, position, origin_node, origin_seq),
            (
                event_bus_name,
                trace_header,
                replay_name,
                subject,
                dataschema,
                datacontenttype,
                extensions,
            ),
        )| Event {
            id,
            source,
            detail_type,
            time_seconds,
            time_nanos,
            account,
            region,
            resources,
            detail,
            stream,
            version,
            position,
            origin_node,
            origin_seq,
            event_bus_name,
            trace_header,
            replay_name,
            subject,
            dataschema,
            datacontenttype,
            extensions,
        },
    )
}

proptest! {
    #[test]
    fn time_round_trips(seconds in MIN_SECONDS..=MAX_SECONDS, nanos in 0..1_000_000_000_u32) {
        let text = time::format_rfc3339(seconds, nanos).unwrap();
        prop_assert!(text.ends_with('Z'));
        prop_assert_eq!(time::parse_rfc3339(&text), Ok((seconds, nanos)));
    }

    #[test]
    fn eventbridge_round_trips(e in event(detail_object())) {
        let json = eventbridge::to_json(&e).unwrap();
        prop_assert_eq!(&eventbridge::from_json(&json).unwrap(), &e);
        let text = eventbridge::to_json_string(&e).unwrap();
        prop_assert_eq!(&eventbridge::from_json_str(&text).unwrap(), &e);
        // JSON -> Event -> JSON is exact too.
        let back = eventbridge::to_json(&eventbridge::from_json(&json).unwrap()).unwrap();
        prop_assert_eq!(back, json);
    }

    #[test]
    fn cloudevents_round_trips(e in event(cloudevents_detail())) {
        let json = cloudevents::to_json(&e).unwrap();
        prop_assert_eq!(&cloudevents::from_json(&json).unwrap(), &e);
        let text = cloudevents::to_json_string(&e).unwrap();
        prop_assert_eq!(&cloudevents::from_json_str(&text).unwrap(), &e);
    }

    #[test]
    fn entry_round_trips(
        source in any::<String>(),
        detail_type in any::<String>(),
        (time_seconds, time_nanos) in event_time(),
        resources in prop::collection::vec(any::<String>(), 0..4),
        detail in detail_object(),
        event_bus_name in any::<String>(),
        trace_header in any::<String>(),
    ) {
        let e = Event {
            source,
            detail_type,
            time_seconds,
            time_nanos,
            resources,
            detail,
            event_bus_name,
            trace_header,
            ..Event::default()
        };
        let entry = eventbridge::event_to_entry(&e).unwrap();
        prop_assert_eq!(eventbridge::entry_to_event(&entry).unwrap(), e);
    }

    #[test]
    fn eventbridge_and_cloudevents_agree(e in event(detail_object())) {
        let via_cloudevents = cloudevents::from_json(&cloudevents::to_json(&e).unwrap()).unwrap();
        let via_both = eventbridge::from_json(&eventbridge::to_json(&via_cloudevents).unwrap()).unwrap();
        prop_assert_eq!(via_both, e);
    }
}
