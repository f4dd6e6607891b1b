//! The query/command API: one [`Api`] (aggregate types, read models, projections by name) served
//! over HTTP/JSON ([`http`], axum) and gRPC ([`grpc`], tonic, `outrider.v1.Cqrs`).

pub mod grpc;
pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use outrider_store::EventStore;
use serde::Serialize;

use crate::aggregate::{type_tag, Aggregate};
use crate::error::{CqrsError, HandleError, Result};
use crate::projection::{ProjectionHandle, ProjectionStatus, ReadModels};
use crate::repository::{rejected, Outcome, RecordedEvent, Repository};

/// An aggregate's state as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    pub aggregate_type: String,
    pub id: String,
    pub version: u64,
    pub state: serde_json::Value,
}

/// A type-erased aggregate type: what the API needs of a [`Repository`].
#[async_trait]
pub trait CommandTarget: Send + Sync {
    fn aggregate_type(&self) -> &'static str;
    /// Handles a command given as JSON (`{"type": "...", ...}`).
    async fn send(
        &self,
        id: &str,
        command_id: &str,
        expected: Option<u64>,
        command: serde_json::Value,
    ) -> Result<Outcome>;
    async fn state(&self, id: &str) -> Result<StateView>;
    async fn history(&self, id: &str, from: u64, max: usize) -> Result<(Vec<RecordedEvent>, bool)>;
}

#[async_trait]
impl<A: Aggregate, S: EventStore + Clone + 'static> CommandTarget for Repository<A, S> {
    fn aggregate_type(&self) -> &'static str {
        A::TYPE
    }

    async fn send(
        &self,
        id: &str,
        command_id: &str,
        expected: Option<u64>,
        command: serde_json::Value,
    ) -> Result<Outcome> {
        let name = match type_tag(&command) {
            Some(t) => t.to_string(),
            None => {
                return Err(CqrsError::MalformedCommand {
                    aggregate_type: A::TYPE.to_string(),
                    command: String::new(),
                    reason: "a command is a JSON object with a string field \"type\"".into(),
                })
            }
        };
        if !A::COMMANDS.contains(&name.as_str()) {
            return Err(CqrsError::UnknownCommand {
                aggregate_type: A::TYPE.to_string(),
                command: name,
                known: A::COMMANDS.join(", "),
            });
        }
        let cmd: A::Command =
            serde_json::from_value(command).map_err(|e| CqrsError::MalformedCommand {
                aggregate_type: A::TYPE.to_string(),
                command: name.clone(),
                reason: e.to_string(),
            })?;
        match self.handle(id, command_id, expected, &cmd).await {
            Ok(o) => Ok(o),
            Err(HandleError::Domain(e)) => Err(rejected::<A>(&e)),
            Err(HandleError::Cqrs(e)) => Err(e),
        }
    }

    async fn state(&self, id: &str) -> Result<StateView> {
        let loaded = self.load(id).await?;
        match loaded.version {
            Some(version) if loaded.state.exists() => Ok(StateView {
                aggregate_type: A::TYPE.to_string(),
                id: id.to_string(),
                version,
                state: serde_json::to_value(&loaded.state).map_err(|e| CqrsError::Corrupt {
                    what: "state",
                    stream: A::stream(id),
                    version,
                    reason: e.to_string(),
                })?,
            }),
            _ => Err(CqrsError::AggregateNotFound {
                aggregate_type: A::TYPE.to_string(),
                id: id.to_string(),
            }),
        }
    }

    async fn history(&self, id: &str, from: u64, max: usize) -> Result<(Vec<RecordedEvent>, bool)> {
        let (events, end) = Repository::history(self, id, from, max).await?;
        if events.is_empty() && from == 0 {
            return Err(CqrsError::AggregateNotFound {
                aggregate_type: A::TYPE.to_string(),
                id: id.to_string(),
            });
        }
        Ok((events, end))
    }
}

/// Everything the API serves. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    targets: Arc<BTreeMap<String, Arc<dyn CommandTarget>>>,
    read_models: Arc<BTreeMap<String, ReadModels>>,
    projections: Arc<BTreeMap<String, Arc<ProjectionHandle>>>,
    /// The largest request body accepted over HTTP.
    pub max_body_bytes: usize,
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

impl Api {
    pub fn new() -> Self {
        Self {
            targets: Arc::new(BTreeMap::new()),
            read_models: Arc::new(BTreeMap::new()),
            projections: Arc::new(BTreeMap::new()),
            max_body_bytes: 1024 * 1024,
        }
    }

    /// Serves an aggregate type.
    pub fn with_target(mut self, t: Arc<dyn CommandTarget>) -> Self {
        Arc::make_mut(&mut self.targets).insert(t.aggregate_type().to_string(), t);
        self
    }

    /// Serves read model `name` (a projection's documents) from `store`.
    pub fn with_read_model(mut self, store: Arc<dyn EventStore>, name: &str) -> Self {
        Arc::make_mut(&mut self.read_models).insert(name.to_string(), ReadModels::new(store));
        self
    }

    /// Serves a running projection's status and rebuild.
    pub fn with_projection(mut self, p: Arc<ProjectionHandle>) -> Self {
        Arc::make_mut(&mut self.projections).insert(p.name().to_string(), p);
        self
    }

    fn target(&self, aggregate_type: &str) -> Result<&Arc<dyn CommandTarget>> {
        self.targets
            .get(aggregate_type)
            .ok_or_else(|| CqrsError::UnknownAggregateType(aggregate_type.to_string()))
    }

    pub async fn send(
        &self,
        aggregate_type: &str,
        id: &str,
        command_id: &str,
        expected: Option<u64>,
        command: serde_json::Value,
    ) -> Result<Outcome> {
        self.target(aggregate_type)?
            .send(id, command_id, expected, command)
            .await
    }

    pub async fn state(&self, aggregate_type: &str, id: &str) -> Result<StateView> {
        self.target(aggregate_type)?.state(id).await
    }

    pub async fn history(
        &self,
        aggregate_type: &str,
        id: &str,
        from: u64,
        max: usize,
    ) -> Result<(Vec<RecordedEvent>, bool)> {
        self.target(aggregate_type)?.history(id, from, max).await
    }

    pub async fn read_model(&self, name: &str, key: &str) -> Result<serde_json::Value> {
        let rm = self
            .read_models
            .get(name)
            .ok_or_else(|| CqrsError::UnknownReadModel(name.to_string()))?;
        rm.get(name, key)
            .await?
            .ok_or_else(|| CqrsError::DocumentNotFound {
                read_model: name.to_string(),
                key: key.to_string(),
            })
    }

    pub fn projection_status(&self, name: &str) -> Result<ProjectionStatus> {
        self.projections
            .get(name)
            .map(|p| p.status())
            .ok_or_else(|| CqrsError::UnknownProjection(name.to_string()))
    }

    pub async fn rebuild(&self, name: &str) -> Result<()> {
        match self.projections.get(name) {
            Some(p) => p.rebuild().await,
            None => Err(CqrsError::UnknownProjection(name.to_string())),
        }
    }
}
