//! JSON views of what the agent returns.

use outrider_proto::Event;
use serde_json::{json, Value};

/// An event as EventBridge delivers it (with Outrider's fields under `"outrider"`); events that
/// view cannot express (e.g. a detail that is not a JSON object) get a plain rendering of their
/// fields instead.
pub fn event_json(e: &Event) -> Value {
    outrider_proto::eventbridge::to_json(e).unwrap_or_else(|_| plain_event_json(e))
}

fn plain_event_json(e: &Event) -> Value {
    let detail =
        serde_json::from_str::<Value>(&e.detail).unwrap_or_else(|_| Value::from(e.detail.as_str()));
    json!({
        "id": e.id,
        "source": e.source,
        "detail-type": e.detail_type,
        "time_seconds": e.time_seconds,
        "time_nanos": e.time_nanos,
        "account": e.account,
        "region": e.region,
        "resources": e.resources,
        "detail": detail,
        "outrider": {
            "stream": e.stream,
            "version": e.version,
            "position": e.position,
            "node": e.origin_node,
            "seq": e.origin_seq,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render_as_eventbridge_json() {
        let e = Event {
            id: "e1".into(),
            source: "shop".into(),
            detail_type: "OrderPlaced".into(),
            detail: r#"{"n":1}"#.into(),
            stream: "orders".into(),
            version: 3,
            position: 9,
            ..Default::default()
        };
        let v = event_json(&e);
        assert_eq!(v["detail-type"], "OrderPlaced");
        assert_eq!(v["detail"]["n"], 1);
        assert_eq!(v["outrider"]["stream"], "orders");
        assert_eq!(v["outrider"]["position"], 9);
    }

    #[test]
    fn non_object_details_still_render() {
        let e = Event {
            id: "e1".into(),
            detail: "[1,2]".into(),
            ..Default::default()
        };
        let v = event_json(&e);
        assert_eq!(v["detail"], json!([1, 2]));
        assert_eq!(v["id"], "e1");
    }
}
