//! HTTP API (axum): the AWS JSON 1.1 protocol EventBridge speaks, so the AWS CLI and SDKs work
//! against the bus with `--endpoint-url` / `endpoint_url`.
//!
//! Every call is `POST /` with `X-Amz-Target: AWSEvents.<Action>` and
//! `Content-Type: application/x-amz-json-1.1` (`application/json` is accepted too), a JSON
//! object body (an empty body is `{}`), and a JSON object answer in EventBridge's shapes.
//! Requests are not authenticated (put the API behind one that is); signature headers are
//! ignored.
//!
//! | action | request members used | answer |
//! | --- | --- | --- |
//! | `PutEvents` | `Entries` (1–10; each as `outrider_proto::eventbridge::entry_to_event` reads it, at most 256 KiB) | `{"FailedEntryCount", "Entries": [{"EventId"} \| {"ErrorCode", "ErrorMessage"}]}` |
//! | `PutRule` | `Name`, `EventBusName`, `EventPattern`, `ScheduleExpression`, `State`, `Description` (the rule's targets are kept) | `{"RuleArn"}` |
//! | `PutTargets` | `Rule`, `EventBusName`, `Targets` (`Id`, `Arn`, `Input`, `InputPath`, `InputTransformer`, `RetryPolicy`, `DeadLetterConfig`, `KinesisParameters`, `OutriderDestination`) | `{"FailedEntryCount", "FailedEntries"}` |
//! | `RemoveTargets` | `Rule`, `EventBusName`, `Ids` | `{"FailedEntryCount", "FailedEntries"}` |
//! | `ListRules` | `EventBusName`, `NamePrefix`, `Limit`, `NextToken` | `{"Rules", "NextToken"?}` |
//! | `ListTargetsByRule` | `Rule`, `EventBusName` | `{"Targets"}` |
//! | `DescribeRule` | `Name`, `EventBusName` | the rule |
//! | `DeleteRule` | `Name`, `EventBusName` (its targets must be removed first) | `{}` |
//! | `CreateEventBus` / `DeleteEventBus` / `DescribeEventBus` | `Name` | `{"EventBusArn"}` / `{}` / `{"Name", "Arn"}` |
//! | `ListEventBuses` | `NamePrefix`, `Limit`, `NextToken` | `{"EventBuses", "NextToken"?}` |
//! | `CreateArchive` | `ArchiveName`, `EventSourceArn`, `EventPattern`, `RetentionDays`, `Description` | `{"ArchiveArn", "State", "CreationTime"}` |
//! | `DeleteArchive` | `ArchiveName` | `{}` |
//! | `StartReplay` | `ReplayName`, `EventSourceArn` (the archive), `EventStartTime`, `EventEndTime`, `Destination` (`Arn`, `FilterArns`) | `{"ReplayArn", "State", "ReplayStartTime"}` |
//! | `DescribeReplay` / `CancelReplay` | `ReplayName` | the replay / `{"ReplayArn", "State"}` |
//! | `TestEventPattern` | `EventPattern`, `Event` | `{"Result"}` |
//!
//! Target ARNs map to destinations: `arn:aws:kinesis:…:stream/NAME` → Kinesis (with
//! `KinesisParameters.PartitionKeyPath`), `arn:aws:events:…:event-bus/NAME` → another bus,
//! `arn:aws:states:…:stateMachine:NAME` → a saga, `arn:outrider:subscriber` → a Subscriber
//! target (read with the gRPC Subscribe); any destination, webhooks included, can be given as
//! the `OutriderDestination` member instead (a [`Destination`] in its JSON form, e.g.
//! `{"Type": "Webhook", "Url": "https://…"}`). Deliveries that exhaust their retries always go
//! to the target's dead-letter stream (`DeadLetterConfig` is accepted and not needed).
//!
//! Errors are AWS JSON protocol errors: HTTP 400 (500 for the server's faults) with the header
//! `x-amzn-ErrorType` and the body `{"__type": "<Exception>", "message": "…"}` — the engine's
//! errors map by [`super::exception`]; an unknown action is `UnknownOperationException`, a body
//! that is not a JSON object `SerializationException`, a body over [`MAX_BODY_BYTES`] HTTP 413
//! `RequestEntityTooLargeException`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::bus::{bus_of, BusEngine, PutOutcome, ReplayDef, ReplayState};
use crate::error::BusError;
use crate::model::{
    ArchiveDef, Destination, InputTransformerDef, RetryPolicy, RuleDef, RuleState, TargetDef,
};
use crate::names;

/// The largest request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The content type of requests and answers.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The prefix of `X-Amz-Target`.
pub const TARGET_PREFIX: &str = "AWSEvents.";
/// The most items a List call returns per page.
pub const MAX_LIMIT: usize = 100;
/// The ARN of a Subscriber target.
pub const SUBSCRIBER_ARN: &str = "arn:outrider:subscriber";
/// The ARN listed for a webhook target (its URL is in `OutriderDestination`).
pub const WEBHOOK_ARN: &str = "arn:outrider:webhook";

/// An AWS JSON protocol error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// The exception name (`__type`).
    pub kind: &'static str,
    pub status: u16,
    pub message: String,
}

impl AwsError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            kind,
            status: 400,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }

    fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = json!({"__type": self.kind, "message": self.message}).to_string();
        let mut r = (status, body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        r.headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(self.kind));
        r
    }
}

impl From<BusError> for AwsError {
    fn from(e: BusError) -> Self {
        let (kind, status) = super::exception(&e);
        AwsError {
            kind,
            status,
            message: super::message(&e),
        }
    }
}

type Answer = Result<Value, AwsError>;

/// The API's router.
pub fn router(engine: BusEngine) -> Router {
    Router::new()
        .route("/", post(handle))
        .fallback(|| async {
            let mut e = AwsError::new(
                "UnknownOperationException",
                "EventBridge's API is POST / with X-Amz-Target: AWSEvents.<Action>",
            );
            e.status = 404;
            e.response()
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(engine)
}

/// Serves the router on a bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: BusEngine,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn handle(
    State(engine): State<BusEngine>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match call(&engine, &headers, body).await {
        Ok(v) => {
            let mut r = (StatusCode::OK, v.to_string()).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        Err(e) => e.response(),
    }
}

async fn call(
    engine: &BusEngine,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(AwsError {
                kind: "RequestEntityTooLargeException",
                status: 413,
                message: format!("the request body is over {MAX_BODY_BYTES} bytes"),
            });
        }
        Err(r) => return Err(AwsError::new("SerializationException", r.body_text())),
    };
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(action) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(AwsError::new(
            "UnknownOperationException",
            format!("X-Amz-Target must be AWSEvents.<Action>, got {target:?}"),
        ));
    };
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        if !(ct.starts_with("application/x-amz-json") || ct.starts_with("application/json")) {
            return Err(AwsError {
                kind: "UnsupportedMediaTypeException",
                status: 415,
                message: format!("Content-Type must be {CONTENT_TYPE}, got {ct:?}"),
            });
        }
    }
    let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AwsError::new("SerializationException", e.to_string()))?
    };
    if !req.is_object() {
        return Err(AwsError::new(
            "SerializationException",
            "the request body must be a JSON object",
        ));
    }
    let r = Req(&req);
    match action {
        "PutEvents" => put_events(engine, &r).await,
        "PutRule" => put_rule(engine, &r).await,
        "PutTargets" => put_targets(engine, &r).await,
        "RemoveTargets" => remove_targets(engine, &r).await,
        "ListRules" => list_rules(engine, &r),
        "ListTargetsByRule" => list_targets(engine, &r),
        "DescribeRule" => describe_rule(engine, &r),
        "DeleteRule" => delete_rule(engine, &r).await,
        "CreateEventBus" => {
            let arn = engine.create_bus(&r.required("Name")?).await?;
            Ok(json!({ "EventBusArn": arn }))
        }
        "DeleteEventBus" => {
            engine.delete_bus(&r.required("Name")?).await?;
            Ok(json!({}))
        }
        "DescribeEventBus" => describe_bus(engine, &r),
        "ListEventBuses" => list_buses(engine, &r),
        "CreateArchive" => create_archive(engine, &r).await,
        "DeleteArchive" => {
            engine.delete_archive(&r.required("ArchiveName")?).await?;
            Ok(json!({}))
        }
        "StartReplay" => start_replay(engine, &r).await,
        "DescribeReplay" => describe_replay(engine, &r).await,
        "CancelReplay" => {
            let name = r.required("ReplayName")?;
            engine.cancel_replay(&name).await?;
            Ok(json!({"ReplayArn": replay_arn(engine, &name), "State": "CANCELLING"}))
        }
        "TestEventPattern" => test_event_pattern(&r),
        other => Err(AwsError::new(
            "UnknownOperationException",
            format!("Unknown operation AWSEvents.{other}"),
        )),
    }
}

/// Typed access to the request's members.
struct Req<'a>(&'a Value);

impl Req<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, AwsError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(AwsError::new(
                "SerializationException",
                format!("{key} must be a string"),
            )),
        }
    }

    fn required(&self, key: &str) -> Result<String, AwsError> {
        self.string(key)?
            .ok_or_else(|| AwsError::validation(format!("Parameter {key} is required.")))
    }

    fn bus(&self) -> Result<String, AwsError> {
        Ok(self
            .string("EventBusName")?
            .map_or_else(|| "default".to_string(), |b| bus_of(&b).to_string()))
    }

    fn limit(&self) -> Result<usize, AwsError> {
        match self.get("Limit") {
            None => Ok(MAX_LIMIT),
            Some(v) => v
                .as_u64()
                .filter(|l| (1..=MAX_LIMIT as u64).contains(l))
                .map(|l| l as usize)
                .ok_or_else(|| AwsError::validation(format!("Limit must be 1 to {MAX_LIMIT}"))),
        }
    }
}

/// One page of names: those with `prefix`, after the token (the last name of the page before).
fn page<'a>(
    names: impl Iterator<Item = &'a String>,
    prefix: Option<&str>,
    token: Option<&str>,
    limit: usize,
) -> (Vec<&'a String>, Option<String>) {
    let mut all: Vec<&String> = names
        .filter(|n| prefix.is_none_or(|p| n.starts_with(p)))
        .filter(|n| token.is_none_or(|t| n.as_str() > t))
        .collect();
    all.sort();
    let more = all.len() > limit;
    all.truncate(limit);
    let next = if more {
        all.last().map(|n| (*n).clone())
    } else {
        None
    };
    (all, next)
}

async fn put_events(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let entries = match r.get("Entries") {
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(AwsError::new(
                "SerializationException",
                "Entries must be an array",
            ));
        }
        None => return Err(AwsError::validation("Parameter Entries is required.")),
    };
    let max = outrider_proto::eventbridge::MAX_ENTRIES;
    if entries.is_empty() || entries.len() > max {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value at 'entries' failed to satisfy constraint: Member must have length between 1 and {max} (got {})",
            entries.len()
        )));
    }
    let checked = entries
        .iter()
        .map(|e| {
            outrider_proto::eventbridge::entry_to_event(e).map_err(|err| super::entry_failure(&err))
        })
        .collect();
    let out = super::put_checked(engine, checked).await;
    let failed = out
        .iter()
        .filter(|o| matches!(o, PutOutcome::Failed { .. }))
        .count();
    let entries: Vec<Value> = out
        .into_iter()
        .map(|o| match o {
            PutOutcome::Accepted { event_id } => json!({ "EventId": event_id }),
            PutOutcome::Failed { code, message } => {
                json!({"ErrorCode": code, "ErrorMessage": message})
            }
        })
        .collect();
    Ok(json!({"FailedEntryCount": failed, "Entries": entries}))
}

fn rule_state(s: Option<String>) -> Result<RuleState, AwsError> {
    match s.as_deref() {
        None | Some("ENABLED") | Some("ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS") => {
            Ok(RuleState::Enabled)
        }
        Some("DISABLED") => Ok(RuleState::Disabled),
        Some(other) => Err(AwsError::validation(format!(
            "State must be ENABLED or DISABLED, got {other:?}"
        ))),
    }
}

fn existing_rule(engine: &BusEngine, bus: &str, name: &str) -> Option<RuleDef> {
    engine.definitions().rule(bus, name).map(|r| r.def.clone())
}

fn require_rule(engine: &BusEngine, bus: &str, name: &str) -> Result<RuleDef, AwsError> {
    if !engine.definitions().buses.contains_key(bus) {
        return Err(AwsError::from(BusError::NotFound(format!(
            "Event bus {bus} does not exist."
        ))));
    }
    existing_rule(engine, bus, name).ok_or_else(|| {
        AwsError::from(BusError::NotFound(format!(
            "Rule {name} does not exist on EventBus {bus}."
        )))
    })
}

async fn put_rule(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r.required("Name")?;
    let bus = r.bus()?;
    let targets = existing_rule(engine, &bus, &name).map_or_else(Vec::new, |d| d.targets);
    let def = RuleDef {
        name,
        event_bus_name: bus,
        event_pattern: r.string("EventPattern")?,
        schedule_expression: r.string("ScheduleExpression")?,
        state: rule_state(r.string("State")?)?,
        description: r.string("Description")?,
        targets,
    };
    let arn = engine.put_rule(def).await?;
    Ok(json!({ "RuleArn": arn }))
}

/// The parts of an ARN: (service, resource).
fn arn_parts(arn: &str) -> Option<(&str, &str)> {
    let mut it = arn.splitn(6, ':');
    let (scheme, _partition, service, _region, _account, resource) = (
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
    );
    (scheme == "arn").then_some((service, resource))
}

/// The destination of a `PutTargets` target.
fn destination(t: &Req<'_>) -> Result<Destination, String> {
    if let Some(d) = t.get("OutriderDestination") {
        return serde_json::from_value(d.clone())
            .map_err(|e| format!("OutriderDestination is not a destination: {e}"));
    }
    let arn = t
        .string("Arn")
        .map_err(|e| e.message)?
        .ok_or_else(|| "Parameter Arn is required.".to_string())?;
    if arn == SUBSCRIBER_ARN || arn.starts_with("arn:outrider:subscriber:") {
        return Ok(Destination::Subscriber);
    }
    let unsupported = || {
        format!(
            "Target ARN {arn} is not supported here (Kinesis streams, event buses, state machines, {SUBSCRIBER_ARN}, or OutriderDestination)"
        )
    };
    let (service, resource) = arn_parts(&arn).ok_or_else(unsupported)?;
    match service {
        "kinesis" => {
            let stream = resource.strip_prefix("stream/").ok_or_else(unsupported)?;
            let partition_key_path = t
                .get("KinesisParameters")
                .and_then(|k| k.get("PartitionKeyPath"))
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok(Destination::Kinesis {
                stream_name: stream.to_string(),
                partition_key_path,
            })
        }
        "events" => {
            let bus = resource
                .strip_prefix("event-bus/")
                .ok_or_else(unsupported)?;
            Ok(Destination::Bus {
                event_bus_name: bus.to_string(),
            })
        }
        "states" => {
            let sm = resource
                .strip_prefix("stateMachine:")
                .ok_or_else(unsupported)?;
            Ok(Destination::Saga {
                state_machine: sm.to_string(),
            })
        }
        _ => Err(unsupported()),
    }
}

/// A `PutTargets` target: its Id, and its definition or why it is refused.
fn target_def(v: &Value) -> (String, Result<TargetDef, (String, String)>) {
    let t = Req(v);
    let id = t.string("Id").ok().flatten().unwrap_or_default();
    let parse = || -> Result<TargetDef, (String, String)> {
        if !v.is_object() {
            return Err((
                "ValidationException".into(),
                "a target must be an object".into(),
            ));
        }
        let invalid = |e: AwsError| ("ValidationException".to_string(), e.message);
        let destination = destination(&t).map_err(|m| ("ValidationException".to_string(), m))?;
        let input_transformer = match t.get("InputTransformer") {
            None => None,
            Some(x) => Some(
                serde_json::from_value::<InputTransformerDef>(x.clone()).map_err(|e| {
                    (
                        "ValidationException".to_string(),
                        format!("InputTransformer is not valid: {e}"),
                    )
                })?,
            ),
        };
        let retry_policy = match t.get("RetryPolicy") {
            None => RetryPolicy::default(),
            Some(x) => serde_json::from_value::<RetryPolicy>(x.clone()).map_err(|e| {
                (
                    "ValidationException".to_string(),
                    format!("RetryPolicy is not valid: {e}"),
                )
            })?,
        };
        Ok(TargetDef {
            id: t.required("Id").map_err(invalid)?,
            destination,
            input: t.string("Input").map_err(invalid)?,
            input_path: t.string("InputPath").map_err(invalid)?,
            input_transformer,
            retry_policy,
            dead_letter: true,
        })
    };
    (id, parse())
}

fn failed_entries(failed: Vec<Value>) -> Value {
    json!({"FailedEntryCount": failed.len(), "FailedEntries": failed})
}

async fn put_targets(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r.required("Rule")?;
    let bus = r.bus()?;
    let targets = match r.get("Targets") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => {
            return Err(AwsError::validation(
                "Parameter Targets is required (a non-empty array).",
            ));
        }
    };
    let mut rule = require_rule(engine, &bus, &name)?;
    let mut failed = Vec::new();
    for t in targets {
        match target_def(t) {
            (_, Ok(def)) => match rule.targets.iter_mut().find(|x| x.id == def.id) {
                Some(slot) => *slot = def,
                None => rule.targets.push(def),
            },
            (id, Err((code, message))) => failed.push(json!({
                "TargetId": id, "ErrorCode": code, "ErrorMessage": message
            })),
        }
    }
    if failed.len() < targets.len() {
        engine.put_rule(rule).await?;
    }
    Ok(failed_entries(failed))
}

async fn remove_targets(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r.required("Rule")?;
    let bus = r.bus()?;
    let ids: Vec<String> = match r.get("Ids") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| AwsError::new("SerializationException", "Ids must be strings"))?,
        _ => {
            return Err(AwsError::validation(
                "Parameter Ids is required (a non-empty array).",
            ));
        }
    };
    let mut rule = require_rule(engine, &bus, &name)?;
    let before = rule.targets.len();
    rule.targets.retain(|t| !ids.contains(&t.id));
    if rule.targets.len() != before {
        engine.put_rule(rule).await?;
    }
    Ok(failed_entries(Vec::new()))
}

fn rule_json(engine: &BusEngine, d: &RuleDef) -> Value {
    let cfg = engine.config();
    let mut m = Map::new();
    m.insert("Name".into(), json!(d.name));
    m.insert(
        "Arn".into(),
        json!(names::rule_arn(
            &cfg.region,
            &cfg.account,
            &d.event_bus_name,
            &d.name
        )),
    );
    if let Some(p) = &d.event_pattern {
        m.insert("EventPattern".into(), json!(p));
    }
    if let Some(s) = &d.schedule_expression {
        m.insert("ScheduleExpression".into(), json!(s));
    }
    m.insert(
        "State".into(),
        json!(match d.state {
            RuleState::Enabled => "ENABLED",
            RuleState::Disabled => "DISABLED",
        }),
    );
    if let Some(s) = &d.description {
        m.insert("Description".into(), json!(s));
    }
    m.insert("EventBusName".into(), json!(d.event_bus_name));
    Value::Object(m)
}

fn list_rules(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let bus = r.bus()?;
    let rules = engine.list_rules(&bus)?;
    let by_name: std::collections::BTreeMap<&String, &RuleDef> =
        rules.iter().map(|d| (&d.name, d)).collect();
    let (names, next) = page(
        by_name.keys().copied(),
        r.string("NamePrefix")?.as_deref(),
        r.string("NextToken")?.as_deref(),
        r.limit()?,
    );
    let rules: Vec<Value> = names
        .into_iter()
        .filter_map(|n| by_name.get(n).map(|d| rule_json(engine, d)))
        .collect();
    let mut out = json!({ "Rules": rules });
    if let Some(t) = next {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

fn describe_rule(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r.required("Name")?;
    let bus = r.bus()?;
    let d = require_rule(engine, &bus, &name)?;
    let mut out = rule_json(engine, &d);
    out["CreatedBy"] = json!(engine.config().account);
    Ok(out)
}

fn target_json(engine: &BusEngine, t: &TargetDef) -> Value {
    let cfg = engine.config();
    let (region, account) = (&cfg.region, &cfg.account);
    let mut m = Map::new();
    m.insert("Id".into(), json!(t.id));
    let arn = match &t.destination {
        Destination::Subscriber => SUBSCRIBER_ARN.to_string(),
        Destination::Webhook { .. } => WEBHOOK_ARN.to_string(),
        Destination::Kinesis {
            stream_name,
            partition_key_path,
        } => {
            if let Some(p) = partition_key_path {
                m.insert("KinesisParameters".into(), json!({ "PartitionKeyPath": p }));
            }
            format!("arn:aws:kinesis:{region}:{account}:stream/{stream_name}")
        }
        Destination::Bus { event_bus_name } => names::bus_arn(region, account, event_bus_name),
        Destination::Saga { state_machine } => {
            format!("arn:aws:states:{region}:{account}:stateMachine:{state_machine}")
        }
    };
    m.insert("Arn".into(), json!(arn));
    if let Ok(d) = serde_json::to_value(&t.destination) {
        m.insert("OutriderDestination".into(), d);
    }
    if let Some(i) = &t.input {
        m.insert("Input".into(), json!(i));
    }
    if let Some(p) = &t.input_path {
        m.insert("InputPath".into(), json!(p));
    }
    if let Some(x) = &t.input_transformer {
        if let Ok(v) = serde_json::to_value(x) {
            m.insert("InputTransformer".into(), v);
        }
    }
    if let Ok(v) = serde_json::to_value(t.retry_policy) {
        m.insert("RetryPolicy".into(), v);
    }
    Value::Object(m)
}

fn list_targets(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r.required("Rule")?;
    let bus = r.bus()?;
    let d = require_rule(engine, &bus, &name)?;
    let targets: Vec<Value> = d.targets.iter().map(|t| target_json(engine, t)).collect();
    Ok(json!({ "Targets": targets }))
}

async fn delete_rule(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r.required("Name")?;
    let bus = r.bus()?;
    let d = require_rule(engine, &bus, &name)?;
    if !d.targets.is_empty() {
        return Err(AwsError::validation(
            "Rule can't be deleted since it has targets.",
        ));
    }
    engine.delete_rule(&bus, &name).await?;
    Ok(json!({}))
}

fn describe_bus(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r
        .string("Name")?
        .map_or_else(|| "default".to_string(), |n| bus_of(&n).to_string());
    if !engine.definitions().buses.contains_key(&name) {
        return Err(BusError::NotFound(format!("Event bus {name} does not exist.")).into());
    }
    let cfg = engine.config();
    Ok(json!({"Name": name, "Arn": names::bus_arn(&cfg.region, &cfg.account, &name)}))
}

fn list_buses(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let defs = engine.definitions();
    let (names, next) = page(
        defs.buses.keys(),
        r.string("NamePrefix")?.as_deref(),
        r.string("NextToken")?.as_deref(),
        r.limit()?,
    );
    let cfg = engine.config();
    let buses: Vec<Value> = names
        .into_iter()
        .map(|n| json!({"Name": n, "Arn": names::bus_arn(&cfg.region, &cfg.account, n)}))
        .collect();
    let mut out = json!({ "EventBuses": buses });
    if let Some(t) = next {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// An AWS JSON timestamp (seconds since the epoch, maybe fractional, or RFC 3339) in ms.
fn timestamp_ms(r: &Req<'_>, key: &str) -> Result<i64, AwsError> {
    let bad = || AwsError::validation(format!("Parameter {key} is not a valid timestamp."));
    match r.get(key) {
        None => Err(AwsError::validation(format!(
            "Parameter {key} is required."
        ))),
        Some(Value::Number(n)) => {
            let s = n.as_f64().ok_or_else(bad)?;
            if !s.is_finite() || s.abs() > 1e14 {
                return Err(bad());
            }
            Ok((s * 1000.0).round() as i64)
        }
        Some(Value::String(s)) => {
            let (secs, nanos) = outrider_proto::time::parse_rfc3339(s).map_err(|_| bad())?;
            Ok(secs.saturating_mul(1000) + i64::from(nanos / 1_000_000))
        }
        Some(_) => Err(bad()),
    }
}

async fn create_archive(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r.required("ArchiveName")?;
    let source = r.required("EventSourceArn")?;
    let retention_days = match r.get("RetentionDays") {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .ok_or_else(|| AwsError::validation("RetentionDays must be a non-negative integer"))?,
    };
    let def = ArchiveDef {
        archive_name: name,
        event_bus_name: bus_of(&source).to_string(),
        event_pattern: r.string("EventPattern")?,
        retention_days,
        description: r.string("Description")?,
    };
    let arn = engine.create_archive(def).await?;
    Ok(json!({
        "ArchiveArn": arn,
        "State": "ENABLED",
        "CreationTime": seconds(engine_now_ms()),
    }))
}

fn engine_now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

fn replay_arn(engine: &BusEngine, name: &str) -> String {
    let cfg = engine.config();
    names::replay_arn(&cfg.region, &cfg.account, name)
}

fn last_segment(arn: &str) -> &str {
    arn.rsplit(['/', ':']).next().unwrap_or(arn)
}

async fn start_replay(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r.required("ReplayName")?;
    let source = r.required("EventSourceArn")?;
    let archive = match source.rsplit_once(":archive/") {
        Some((_, a)) => a.to_string(),
        None => source.clone(),
    };
    let dest = r
        .get("Destination")
        .ok_or_else(|| AwsError::validation("Parameter Destination is required."))?;
    let dest = Req(dest);
    let destination_bus = dest.string("Arn")?.map(|a| bus_of(&a).to_string());
    let filter_rules = match dest.get("FilterArns") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(|s| last_segment(s).to_string()))
            .collect::<Option<_>>()
            .ok_or_else(|| AwsError::new("SerializationException", "FilterArns must be strings"))?,
        Some(_) => {
            return Err(AwsError::new(
                "SerializationException",
                "FilterArns must be an array",
            ));
        }
    };
    let def = ReplayDef {
        replay_name: name,
        archive_name: archive,
        event_start_time_ms: timestamp_ms(r, "EventStartTime")?,
        event_end_time_ms: timestamp_ms(r, "EventEndTime")?,
        destination_bus,
        filter_rules,
    };
    let arn = engine.start_replay(def).await?;
    Ok(json!({
        "ReplayArn": arn,
        "State": "STARTING",
        "ReplayStartTime": seconds(engine_now_ms()),
    }))
}

fn replay_state(s: ReplayState) -> &'static str {
    match s {
        ReplayState::Starting => "STARTING",
        ReplayState::Running => "RUNNING",
        ReplayState::Cancelled => "CANCELLED",
        ReplayState::Completed => "COMPLETED",
        ReplayState::Failed => "FAILED",
    }
}

async fn describe_replay(engine: &BusEngine, r: &Req<'_>) -> Answer {
    let name = r.required("ReplayName")?;
    let status = engine.describe_replay(&name).await?;
    let cfg = engine.config();
    let mut out = json!({
        "ReplayName": status.name,
        "ReplayArn": replay_arn(engine, &name),
        "State": replay_state(status.state),
        "EventSourceArn": names::archive_arn(&cfg.region, &cfg.account, &status.archive),
        "ReplayStartTime": seconds(status.started_ms),
    });
    if let Some(reason) = status.state_reason {
        out["StateReason"] = json!(reason);
    }
    if let Some(ms) = status.event_last_replayed_ms {
        out["EventLastReplayedTime"] = json!(seconds(ms));
    }
    if let Some(d) = engine.definitions().replays.get(&name) {
        let dest = d.def.destination_bus.clone().unwrap_or_else(|| {
            engine
                .definitions()
                .archives
                .get(&d.def.archive_name)
                .map_or_else(|| "default".into(), |a| a.def.event_bus_name.clone())
        });
        let filters: Vec<String> = d
            .def
            .filter_rules
            .iter()
            .map(|rule| names::rule_arn(&cfg.region, &cfg.account, &dest, rule))
            .collect();
        out["EventStartTime"] = json!(seconds(d.def.event_start_time_ms));
        out["EventEndTime"] = json!(seconds(d.def.event_end_time_ms));
        out["Destination"] = json!({
            "Arn": names::bus_arn(&cfg.region, &cfg.account, &dest),
            "FilterArns": filters,
        });
    }
    out["Outrider"] = json!({
        "Replayed": status.replayed,
        "Scanned": status.scanned,
        "Total": status.total,
    });
    Ok(out)
}

fn test_event_pattern(r: &Req<'_>) -> Answer {
    let pattern = r.required("EventPattern")?;
    let event = r.required("Event")?;
    let pattern = outrider_runtime::pattern::Pattern::parse(&pattern).map_err(BusError::from)?;
    let event: Value = serde_json::from_str(&event)
        .map_err(|e| AwsError::validation(format!("Parameter Event is not valid JSON: {e}")))?;
    if !event.is_object() {
        return Err(AwsError::validation(
            "Parameter Event is not valid: it must be a JSON object.",
        ));
    }
    Ok(json!({ "Result": pattern.matches(&event) }))
}
