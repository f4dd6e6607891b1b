//! `outrider status`.

use std::io::Write;

use outrider_proto::v1::{StatusRequest, StatusResponse};
use serde_json::{json, Value};

use crate::client::connect;

/// Prints the agent's status as JSON.
pub async fn status(agent: &str) -> anyhow::Result<()> {
    let mut client = connect(agent).await?;
    let s = client.status(StatusRequest {}).await?.into_inner();
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{}",
        serde_json::to_string_pretty(&status_json(&s))?
    )?;
    Ok(())
}

/// The JSON view of a status response.
pub fn status_json(s: &StatusResponse) -> Value {
    let classes: Vec<Value> = s
        .classes
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "pending_events": c.pending_events,
                "pending_bytes": c.pending_bytes,
                "dropped_events": c.dropped_events,
                "dropped_bytes": c.dropped_bytes,
                "rejected_events": c.rejected_events,
            })
        })
        .collect();
    let destinations: Vec<Value> = s
        .destinations
        .iter()
        .map(|d| {
            // Sorted, so the output is stable.
            let acked: std::collections::BTreeMap<_, _> = d.acked.iter().collect();
            json!({ "name": d.name, "acked": acked })
        })
        .collect();
    json!({
        "node_id": s.node_id,
        "head_position": s.head_position,
        "durable_position": s.durable_position,
        "classes": classes,
        "destinations": destinations,
    })
}
