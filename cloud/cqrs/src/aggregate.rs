//! The [`Aggregate`] trait: command → events (or a typed domain error), event → state.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A domain's refusal of a command, with a short stable code for the API (`out_of_stock`, ...).
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> &'static str;
}

/// What a command is decided with besides the state.
#[derive(Debug, Clone)]
pub struct CommandContext<'a> {
    pub aggregate_id: &'a str,
    pub command_id: &'a str,
    /// Wall-clock time of the decision, milliseconds since the Unix epoch.
    pub now_ms: i64,
}

/// An event-sourced aggregate. The state is a fold of its events ([`Aggregate::apply`]); a
/// command is decided on the current state ([`Aggregate::decide`]) into new events or a typed
/// domain error. Commands and events are serde enums tagged by `"type"`
/// (`#[serde(tag = "type")]`): the tag is the event's `detail-type` in the store and the command
/// name of the API.
///
/// The state is serialized with serde_json into snapshots tagged with
/// [`Aggregate::SCHEMA_VERSION`]; a snapshot of another schema version is ignored (the state is
/// rebuilt from the events and a new snapshot written), so bump it whenever the state's shape
/// changes incompatibly.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The aggregate type's name: the API's path segment and the stream category
    /// (`<TYPE>-<id>`).
    const TYPE: &'static str;
    /// The command names ([`Aggregate::Command`]'s tags), for typed "unknown command" errors.
    const COMMANDS: &'static [&'static str];
    /// The schema version of the serialized state (snapshots).
    const SCHEMA_VERSION: u32 = 1;
    /// A snapshot every this many events (0: never); overridable per repository.
    const SNAPSHOT_EVERY: u64 = 100;

    type Command: Serialize + DeserializeOwned + Send + Sync + Debug;
    type Event: Serialize + DeserializeOwned + Clone + Send + Sync + Debug;
    type Error: DomainError;

    /// The stream of the aggregate with this id.
    fn stream(id: &str) -> String {
        format!("{}-{}", Self::TYPE, id)
    }

    /// Decides a command on the current state: the events to append (empty: nothing to do), or
    /// the domain's refusal. Must be pure: it is re-run on a fresh state after a lost race.
    fn decide(
        &self,
        command: &Self::Command,
        ctx: &CommandContext<'_>,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Whether the aggregate exists (has been created); the default: it has a version.
    fn exists(&self) -> bool {
        true
    }
}

/// The `"type"` tag of a serialized command or event (`None` when it is not a tagged object).
pub fn type_tag(value: &serde_json::Value) -> Option<&str> {
    value.get("type").and_then(serde_json::Value::as_str)
}
