//! Definitions: buses, rules, targets, archives — the shapes of EventBridge's API
//! (`PutRule`, `PutTargets`, `CreateArchive`, `StartReplay`), validated here.

use serde::{Deserialize, Serialize};

use crate::error::{BusError, Result};

/// Targets per rule, as EventBridge's default quota.
pub const MAX_TARGETS_PER_RULE: usize = 5;
/// Names of buses, rules, archives and replays: 1–64 of `[.\-_A-Za-z0-9]` (EventBridge's rule).
pub const MAX_NAME_LEN: usize = 64;
/// Target ids: 1–64 of `[.\-_A-Za-z0-9]`.
pub const MAX_TARGET_ID_LEN: usize = 64;
/// Input / InputTemplate at most 8192 characters.
pub const MAX_INPUT_LEN: usize = 8192;
/// Retry policy bounds (EventBridge's): attempts 0–185, age 60–86,400 s.
pub const MAX_RETRY_ATTEMPTS: u32 = 185;
pub const MIN_EVENT_AGE_SECS: u32 = 60;
pub const MAX_EVENT_AGE_SECS: u32 = 86_400;

/// Checks a bus, rule, archive or replay name.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(BusError::Validation(format!(
            "{what} name must be 1 to {MAX_NAME_LEN} characters, got {}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(BusError::Validation(format!(
            "{what} name {name:?} has {c:?}; only letters, digits, '.', '-' and '_' are allowed"
        )));
    }
    Ok(())
}

/// Whether a rule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RuleState {
    #[default]
    Enabled,
    Disabled,
}

/// A rule: an event pattern or a schedule (exactly one), and up to five targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuleDef {
    pub name: String,
    /// The bus the rule belongs to.
    #[serde(default = "default_bus")]
    pub event_bus_name: String,
    /// EventBridge pattern JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_pattern: Option<String>,
    /// `rate(5 minutes)` or `cron(0 12 * * ? *)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_expression: Option<String>,
    #[serde(default)]
    pub state: RuleState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub targets: Vec<TargetDef>,
}

pub fn default_bus() -> String {
    "default".to_string()
}

/// One target of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetDef {
    pub id: String,
    /// Where deliveries go.
    pub destination: Destination,
    /// Constant JSON sent instead of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// A JSONPath selecting the part of the event to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_transformer: Option<InputTransformerDef>,
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    /// Whether exhausted deliveries are kept in the target's dead-letter stream
    /// (`dlq/<bus>/<rule>/<target>`). On by default: an event is never silently dropped.
    #[serde(default = "yes")]
    pub dead_letter: bool,
}

fn yes() -> bool {
    true
}

/// EventBridge's InputTransformer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InputTransformerDef {
    /// Variable name → JSONPath into the event (at most 100 entries).
    #[serde(default)]
    pub input_paths_map: std::collections::BTreeMap<String, String>,
    pub input_template: String,
}

/// EventBridge's RetryPolicy: how long and how often a failing delivery is retried, with
/// exponential backoff, before it goes to the dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt (0–185; EventBridge's default 185).
    #[serde(default = "default_attempts")]
    pub maximum_retry_attempts: u32,
    /// Age of the event after which it is not retried (60–86,400 s; default 86,400).
    #[serde(default = "default_age")]
    pub maximum_event_age_in_seconds: u32,
}

fn default_attempts() -> u32 {
    MAX_RETRY_ATTEMPTS
}

fn default_age() -> u32 {
    MAX_EVENT_AGE_SECS
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            maximum_retry_attempts: MAX_RETRY_ATTEMPTS,
            maximum_event_age_in_seconds: MAX_EVENT_AGE_SECS,
        }
    }
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<()> {
        if self.maximum_retry_attempts > MAX_RETRY_ATTEMPTS {
            return Err(BusError::Validation(format!(
                "MaximumRetryAttempts must be 0 to {MAX_RETRY_ATTEMPTS}, got {}",
                self.maximum_retry_attempts
            )));
        }
        if !(MIN_EVENT_AGE_SECS..=MAX_EVENT_AGE_SECS).contains(&self.maximum_event_age_in_seconds) {
            return Err(BusError::Validation(format!(
                "MaximumEventAgeInSeconds must be {MIN_EVENT_AGE_SECS} to {MAX_EVENT_AGE_SECS}, got {}",
                self.maximum_event_age_in_seconds
            )));
        }
        Ok(())
    }
}

/// Where a target delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "Type")]
pub enum Destination {
    /// A durable stream that gRPC subscribers read with acknowledgements (consumer groups share
    /// it). Deliveries are appended to `sub/<bus>/<rule>/<target>`.
    Subscriber,
    /// HTTP POST of the payload, signed with HMAC-SHA256 (see `targets::webhook`).
    Webhook {
        #[serde(rename = "Url")]
        url: String,
        /// The name of the environment variable holding the signing secret (never the secret
        /// itself in a definition that is stored or listed).
        #[serde(rename = "SecretEnv", default, skip_serializing_if = "Option::is_none")]
        secret_env: Option<String>,
        #[serde(rename = "TimeoutMs", default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Kinesis PutRecords (see `targets::kinesis`).
    Kinesis {
        #[serde(rename = "StreamName")]
        stream_name: String,
        /// JSONPath into the event for the partition key (default: the event id).
        #[serde(
            rename = "PartitionKeyPath",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        partition_key_path: Option<String>,
    },
    /// Another bus of this server: the payload must be an event (it is put as one).
    Bus {
        #[serde(rename = "EventBusName")]
        event_bus_name: String,
    },
    /// Starts a saga execution with the payload as input (see `targets::saga`).
    Saga {
        #[serde(rename = "StateMachine")]
        state_machine: String,
    },
}

impl TargetDef {
    pub fn validate(&self) -> Result<()> {
        if self.id.is_empty() || self.id.len() > MAX_TARGET_ID_LEN {
            return Err(BusError::Validation(format!(
                "target Id must be 1 to {MAX_TARGET_ID_LEN} characters, got {}",
                self.id.len()
            )));
        }
        validate_name("target Id", &self.id)?;
        let set = [
            self.input.is_some(),
            self.input_path.is_some(),
            self.input_transformer.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set > 1 {
            return Err(BusError::Validation(format!(
                "Only one of Input, InputPath, or InputTransformer must be provided for target {}.",
                self.id
            )));
        }
        if let Some(input) = &self.input {
            if input.len() > MAX_INPUT_LEN {
                return Err(BusError::Validation(format!(
                    "Input of target {} is {} characters; at most {MAX_INPUT_LEN}",
                    self.id,
                    input.len()
                )));
            }
            if serde_json::from_str::<serde_json::Value>(input).is_err() {
                return Err(BusError::Validation(format!(
                    "Input of target {} is not valid JSON",
                    self.id
                )));
            }
        }
        self.retry_policy.validate()?;
        Ok(())
    }
}

impl RuleDef {
    /// Checks the rule as `PutRule` + `PutTargets` would: name, exactly one of pattern and
    /// schedule, pattern/schedule syntax, at most [`MAX_TARGETS_PER_RULE`] targets with
    /// distinct ids, each target's settings.
    pub fn validate(&self) -> Result<()> {
        validate_name("rule", &self.name)?;
        validate_name("event bus", &self.event_bus_name)?;
        match (&self.event_pattern, &self.schedule_expression) {
            (None, None) => {
                return Err(BusError::Validation(format!(
                    "rule {}: one of EventPattern and ScheduleExpression is required",
                    self.name
                )))
            }
            (Some(p), _) => {
                outrider_runtime::pattern::Pattern::parse(p)?;
            }
            (None, Some(s)) => {
                crate::schedule::Schedule::parse(s)?;
            }
        }
        if self.schedule_expression.is_some() && self.event_bus_name != "default" {
            return Err(BusError::Validation(
                "ScheduleExpression is supported only on the default event bus.".to_string(),
            ));
        }
        if self.targets.len() > MAX_TARGETS_PER_RULE {
            return Err(BusError::LimitExceeded(format!(
                "rule {} has {} targets; the limit is {MAX_TARGETS_PER_RULE}",
                self.name,
                self.targets.len()
            )));
        }
        let mut ids = std::collections::HashSet::new();
        for t in &self.targets {
            t.validate()?;
            if !ids.insert(t.id.as_str()) {
                return Err(BusError::Validation(format!(
                    "rule {} has two targets with Id {}",
                    self.name, t.id
                )));
            }
        }
        Ok(())
    }
}

/// An archive of a bus: every event that matches `event_pattern` (all events when `None`),
/// kept `retention_days` (0 = forever).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveDef {
    pub archive_name: String,
    /// The bus whose events are archived.
    #[serde(default = "default_bus")]
    pub event_bus_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_pattern: Option<String>,
    #[serde(default)]
    pub retention_days: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}
