//! HTTP/JSON API (axum).
//!
//! | method and path | what |
//! | --- | --- |
//! | `POST /v1/aggregates/{type}/{id}/commands` | body `{"command_id", "expected_version"?, "command": {"type", ...}}` → `{"version", "events", "duplicate"}` |
//! | `GET /v1/aggregates/{type}/{id}` | `{"aggregate_type", "id", "version", "state"}` |
//! | `GET /v1/aggregates/{type}/{id}/events?from=&max=` | the audit trail: `{"events": [...], "end"}` |
//! | `GET /v1/read-models/{name}/{*key}` | a read-model document |
//! | `GET /v1/projections/{name}` | the projection's status (with rebuild progress) |
//! | `POST /v1/projections/{name}/rebuild` | starts a rebuild from position zero (202) |
//!
//! Errors: the status of [`CqrsError::http_status`] (400 bad input, 404 unknown, 409 conflict or
//! rejection, 413 too large) with `{"error": {"code": "...", "message": "..."}}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::Api;
use crate::error::CqrsError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    command_id: String,
    #[serde(default)]
    expected_version: Option<u64>,
    command: serde_json::Value,
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(e: &CqrsError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut err = json!({"code": e.code(), "message": e.to_string()});
    if let CqrsError::Rejected { code, .. } = e {
        err["reason"] = json!(code);
    }
    if let CqrsError::WrongExpectedVersion { actual, .. } = e {
        err["actual_version"] = json!(actual);
    }
    json_response(status, &json!({ "error": err }))
}

fn ok<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(&CqrsError::MalformedRequest(e.to_string())),
    }
}

/// The API's router (mount it or serve it with [`serve`]).
pub fn router(api: Api) -> Router {
    let limit = api.max_body_bytes;
    Router::new()
        .route("/v1/aggregates/{ty}/{id}/commands", post(send_command))
        .route("/v1/aggregates/{ty}/{id}", get(get_state))
        .route("/v1/aggregates/{ty}/{id}/events", get(get_history))
        .route("/v1/read-models/{name}/{*key}", get(get_read_model))
        .route("/v1/projections/{name}", get(get_projection))
        .route("/v1/projections/{name}/rebuild", post(rebuild))
        .fallback(|| async {
            error_response(&CqrsError::MalformedRequest(
                "no such route (see outrider_cqrs::api::http)".into(),
            ))
            .into_response()
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}

/// Serves the router on a bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn send_command(
    State(api): State<Api>,
    Path((ty, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error_response(&CqrsError::RequestTooLarge {
                limit: api.max_body_bytes,
            })
        }
        Err(r) => return error_response(&CqrsError::MalformedRequest(r.body_text())),
    };
    let req: CommandBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(&CqrsError::MalformedRequest(format!(
                "the body must be {{\"command_id\": string, \"expected_version\"?: number, \"command\": object}}: {e}"
            )))
        }
    };
    match api
        .send(&ty, &id, &req.command_id, req.expected_version, req.command)
        .await
    {
        Ok(o) => ok(&json!({
            "version": o.version,
            "events": o.events,
            "duplicate": o.duplicate,
        })),
        Err(e) => error_response(&e),
    }
}

async fn get_state(State(api): State<Api>, Path((ty, id)): Path<(String, String)>) -> Response {
    match api.state(&ty, &id).await {
        Ok(s) => ok(&s),
        Err(e) => error_response(&e),
    }
}

fn query_u64(query: Option<&str>, key: &str) -> Result<Option<u64>, CqrsError> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return v.parse().map(Some).map_err(|_| {
                CqrsError::MalformedRequest(format!(
                    "query parameter {key:?} must be a non-negative integer, got {v:?}"
                ))
            });
        }
    }
    Ok(None)
}

async fn get_history(
    State(api): State<Api>,
    Path((ty, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let parsed = query_u64(q.as_deref(), "from")
        .and_then(|f| query_u64(q.as_deref(), "max").map(|m| (f, m)));
    let (from, max) = match parsed {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let max = usize::try_from(max.unwrap_or(100)).unwrap_or(1000);
    match api.history(&ty, &id, from.unwrap_or(0), max).await {
        Ok((events, end)) => ok(&json!({ "events": events, "end": end })),
        Err(e) => error_response(&e),
    }
}

async fn get_read_model(
    State(api): State<Api>,
    Path((name, key)): Path<(String, String)>,
) -> Response {
    match api.read_model(&name, &key).await {
        Ok(doc) => json_response(StatusCode::OK, &doc),
        Err(e) => error_response(&e),
    }
}

async fn get_projection(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.projection_status(&name) {
        Ok(s) => ok(&s),
        Err(e) => error_response(&e),
    }
}

async fn rebuild(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.rebuild(&name).await {
        Ok(()) => json_response(StatusCode::ACCEPTED, &json!({"rebuild": "started"})),
        Err(e) => error_response(&e),
    }
}
