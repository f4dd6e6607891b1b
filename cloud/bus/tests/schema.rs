//! The schema registry: discovery, versions, validation, registration, limits, persistence.

use outrider_bus::schema::{Limits, Origin, SchemaError, SchemaRegistry, DRAFT_2020_12};
use outrider_proto::Event;
use serde_json::{json, Value};

fn ev(source: &str, detail_type: &str, detail: Value) -> Event {
    Event {
        id: "e".into(),
        source: source.into(),
        detail_type: detail_type.into(),
        detail: detail.to_string(),
        ..Event::default()
    }
}

fn order(detail: Value) -> Event {
    ev("shop", "Order Placed", detail)
}

#[test]
fn discovers_and_versions_only_on_change() {
    let mut r = SchemaRegistry::new();
    assert_eq!(
        r.observe(
            &order(json!({"id": "o1", "qty": 2, "lines": [{"sku": "a"}]})),
            1000
        ),
        Some(1)
    );
    // Same shape, other values: no new version.
    assert_eq!(
        r.observe(
            &order(json!({"id": "o2", "qty": 5, "lines": [{"sku": "b"}, {"sku": "c"}]})),
            2000
        ),
        None
    );
    let v1 = r.latest("shop", "Order Placed").unwrap().clone();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.created_ms, 1000);
    assert_eq!(v1.origin, Origin::Discovered);
    assert_eq!(
        v1.schema,
        json!({
            "$schema": DRAFT_2020_12,
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "qty": {"type": "integer"},
                "lines": {"type": "array", "items": {
                    "type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}}
            },
            "required": ["id", "lines", "qty"]
        })
    );
    // qty becomes fractional, a new optional member, lines missing: version 2.
    assert_eq!(
        r.observe(&order(json!({"id": "o3", "qty": 1.5, "note": null})), 3000),
        Some(2)
    );
    let v2 = r.latest("shop", "Order Placed").unwrap();
    assert_eq!(v2.created_ms, 3000);
    assert_eq!(v2.schema["properties"]["qty"], json!({"type": "number"}));
    assert_eq!(v2.schema["properties"]["note"], json!({"type": "null"}));
    assert_eq!(v2.schema["required"], json!(["id", "qty"]));
    // Conflicting types: a union.
    assert_eq!(r.observe(&order(json!({"id": 7, "qty": 1})), 4000), Some(3));
    assert_eq!(
        r.latest("shop", "Order Placed").unwrap().schema["properties"]["id"],
        json!({"type": ["integer", "string"]})
    );
    assert_eq!(r.versions("shop", "Order Placed").len(), 3);
    assert_eq!(
        r.version("shop", "Order Placed", 1).unwrap().schema,
        v1.schema
    );
    // Other pairs are separate.
    assert_eq!(
        r.observe(&ev("shop", "Order Shipped", json!({})), 5000),
        Some(1)
    );
    assert_eq!(
        r.keys().collect::<Vec<_>>(),
        vec![("shop", "Order Placed"), ("shop", "Order Shipped")]
    );
    // A detail that is not JSON is not discovered.
    let mut bad = order(json!({}));
    bad.detail = "{not json".into();
    assert_eq!(r.observe(&bad, 6000), None);
}

#[test]
fn validates_against_the_latest_version_when_enabled() {
    let mut r = SchemaRegistry::new();
    r.observe(
        &order(json!({"id": "o1", "qty": 2, "lines": [{"sku": "a"}]})),
        1,
    );
    let wrong = order(json!({"id": "o1", "qty": "two", "lines": []}));
    // Off by default.
    assert!(r.validate(&wrong).is_ok());
    r.set_validation("shop", "Order Placed", true);
    assert!(r.validation_enabled("shop", "Order Placed"));
    let e = r.validate(&wrong).unwrap_err();
    assert_eq!(e.pointer, "/detail/qty");
    assert_eq!(e.expected, "type \"integer\"");
    assert_eq!(e.found, "string");
    assert_eq!(e.version, 1);
    assert!(e.to_string().contains("/detail/qty"), "{e}");

    let e = r
        .validate(&order(
            json!({"id": "o1", "qty": 1, "lines": [{"sku": "a"}, {"sku": 3}]}),
        ))
        .unwrap_err();
    assert_eq!(e.pointer, "/detail/lines/1/sku");
    let e = r
        .validate(&order(json!({"qty": 1, "lines": []})))
        .unwrap_err();
    assert_eq!(
        (e.pointer.as_str(), e.found.as_str()),
        ("/detail/id", "absent")
    );
    // Extra members are fine for a discovered schema; 3.0 is an integer.
    assert!(r
        .validate(&order(
            json!({"id": "x", "qty": 3.0, "lines": [], "extra": 1})
        ))
        .is_ok());
    // Unknown pairs and pairs without validation pass.
    assert!(r.validate(&ev("other", "x", json!({"a": 1}))).is_ok());
    let mut bad = order(json!({}));
    bad.detail = "nope".into();
    assert_eq!(r.validate(&bad).unwrap_err().pointer, "/detail");
    r.set_validation("shop", "Order Placed", false);
    assert!(r.validate(&wrong).is_ok());
}

#[test]
fn registered_schemas() {
    let mut r = SchemaRegistry::new();
    r.observe(&order(json!({"id": "o1"})), 1);
    let schema = json!({
        "$schema": DRAFT_2020_12, "title": "Order",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "total": {"type": ["number", "null"]}
        },
        "required": ["id", "total"],
        "additionalProperties": false
    });
    assert_eq!(r.register("shop", "Order Placed", &schema, 10), Ok(2));
    // The same again: no new version.
    assert_eq!(r.register("shop", "Order Placed", &schema, 11), Ok(2));
    let latest = r.latest("shop", "Order Placed").unwrap();
    assert_eq!((latest.origin, latest.created_ms), (Origin::Registered, 10));
    // Discovery stopped.
    assert_eq!(r.observe(&order(json!({"other": true})), 12), None);
    assert_eq!(r.latest("shop", "Order Placed").unwrap().version, 2);

    r.set_validation("shop", "Order Placed", true);
    assert!(r.validate(&order(json!({"id": "a", "total": 2}))).is_ok());
    assert!(r
        .validate(&order(json!({"id": "a", "total": null, "tags": ["x"]})))
        .is_ok());
    let e = r
        .validate(&order(json!({"id": "a", "total": 1, "more": 1})))
        .unwrap_err();
    assert_eq!(e.pointer, "/detail/more");
    assert!(
        e.expected.contains("additionalProperties"),
        "{}",
        e.expected
    );
    let e = r
        .validate(&order(json!({"id": "a", "total": 1, "tags": ["x", 2]})))
        .unwrap_err();
    assert_eq!(e.pointer, "/detail/tags/1");
    let e = r.validate(&order(json!({"id": "a"}))).unwrap_err();
    assert_eq!(e.pointer, "/detail/total");

    // Unsupported keywords are named.
    let err = r
        .register(
            "shop",
            "Order Placed",
            &json!({"type": "object", "properties": {"id": {"type": "string", "minLength": 1}}}),
            13,
        )
        .unwrap_err();
    assert_eq!(
        err,
        SchemaError::UnsupportedKeyword {
            pointer: "/properties/id".into(),
            keyword: "minLength".into()
        }
    );
    assert!(err.to_string().contains("minLength"));
    for kw in ["oneOf", "$ref", "enum", "const", "format", "pattern"] {
        let mut s = json!({"type": "string"});
        s[kw] = json!([]);
        match r.register("a", "b", &s, 0) {
            Err(SchemaError::UnsupportedKeyword { keyword, .. }) => assert_eq!(keyword, kw),
            other => panic!("{kw}: {other:?}"),
        }
    }
}

#[test]
fn limits() {
    let limits = Limits {
        max_properties: 3,
        max_depth: 2,
        max_versions: 2,
        max_schemas: 2,
    };
    let mut r = SchemaRegistry::with_limits(limits);
    r.observe(
        &order(json!({"a": 1, "b": {"c": {"d": {"e": 1}}, "f": 2}, "g": 3})),
        1,
    );
    let s = &r.latest("shop", "Order Placed").unwrap().schema;
    // Three members described (a, b, b.c); deeper than 2 levels: type only.
    assert_eq!(
        s["properties"],
        json!({"a": {"type": "integer"}, "b": {"type": "object", "properties": {
            "c": {"type": "object"}}, "required": ["c"]}})
    );
    assert_eq!(s["required"], json!(["a", "b"]));
    // Versions: only the last two are kept, numbering goes on.
    r.observe(&order(json!({"a": "x"})), 2);
    r.observe(&order(json!({"a": true})), 3);
    let versions: Vec<u32> = r
        .versions("shop", "Order Placed")
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, vec![2, 3]);
    // Pairs.
    assert_eq!(r.observe(&ev("s", "2", json!({})), 4), Some(1));
    assert_eq!(r.observe(&ev("s", "3", json!({})), 5), None);
    assert!(matches!(
        r.register("s", "3", &json!(true), 6),
        Err(SchemaError::Limit(_))
    ));
    // Registered schemas are bounded too.
    assert!(matches!(
        r.register(
            "s",
            "2",
            &json!({"properties": {"a": true, "b": true, "c": true, "d": true}}),
            7
        ),
        Err(SchemaError::Limit(_))
    ));
    assert!(matches!(
        r.register(
            "s",
            "2",
            &json!({"items": {"items": {"items": {"type": "string"}}}}),
            8
        ),
        Err(SchemaError::Limit(_))
    ));
}

#[test]
fn export_import_round_trip() {
    let mut r = SchemaRegistry::new();
    r.observe(&order(json!({"id": "o1", "qty": 2})), 1);
    r.observe(&order(json!({"id": "o2"})), 2);
    r.register(
        "shop",
        "Refund",
        &json!({"type": "object", "required": ["id"]}),
        3,
    )
    .unwrap();
    r.set_validation("shop", "Refund", true);

    let text = serde_json::to_string(&r.export()).unwrap();
    let mut back = SchemaRegistry::import(&serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(back.export(), r.export());
    assert!(back.validation_enabled("shop", "Refund"));
    assert!(back.validate(&ev("shop", "Refund", json!({}))).is_err());

    // Discovery goes on where it was: `qty` already optional, `id` still required.
    assert_eq!(back.observe(&order(json!({"id": "o3", "qty": 1})), 4), None);
    assert_eq!(r.observe(&order(json!({"id": "o3", "qty": 1})), 4), None);
    assert_eq!(back.observe(&order(json!({"qty": 1})), 5), Some(3));
    assert_eq!(r.observe(&order(json!({"qty": 1})), 5), Some(3));
    assert_eq!(back.export(), r.export());

    for bad in [
        json!({"format": 2, "limits": Limits::default(), "schemas": []}),
        json!({"format": 1}),
        json!("x"),
        json!({"format": 1, "limits": Limits::default(), "schemas": [{
            "source": "s", "detailType": "d", "validate": false,
            "versions": [{"version": 1, "createdMs": 0, "origin": "registered",
                          "schema": {"type": "object", "maxProperties": 1}}]}]}),
        json!({"format": 1, "limits": Limits::default(), "schemas": [{
            "source": "s", "detailType": "d", "validate": false,
            "versions": [
                {"version": 2, "createdMs": 0, "origin": "registered", "schema": true},
                {"version": 1, "createdMs": 0, "origin": "registered", "schema": true}]}]}),
    ] {
        assert!(SchemaRegistry::import(&bad).is_err(), "{bad}");
    }
}
