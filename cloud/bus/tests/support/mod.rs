//! What the bus's engine tests share: recording targets behind the real `Target` trait, a
//! factory, definitions and stores.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outrider_bus::bus::{BusConfig, BusEngine, PutOutcome, TargetFactory};
use outrider_bus::model::{Destination, RetryPolicy, RuleDef, RuleState, TargetDef};
use outrider_bus::retry::Backoff;
use outrider_bus::{Delivery, DeliveryError, DynTarget, Result, Target};
use outrider_proto::Event;
use outrider_store::{Direction, EventStore, SledConfig, SledStore, StreamFrom};
use parking_lot::Mutex;
use serde_json::Value;

pub type Script = Box<dyn Fn(&Delivery) -> std::result::Result<(), DeliveryError> + Send + Sync>;

/// A target that records every attempt and answers by a script.
pub struct Recorder {
    pub attempts: Mutex<Vec<Delivery>>,
    script: Script,
    changed: tokio::sync::Notify,
}

impl Recorder {
    pub fn new(script: Script) -> Arc<Self> {
        Arc::new(Recorder {
            attempts: Mutex::new(Vec::new()),
            script,
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn ok() -> Arc<Self> {
        Self::new(Box::new(|_| Ok(())))
    }

    pub fn succeeded(&self) -> Vec<Delivery> {
        self.attempts
            .lock()
            .iter()
            .filter(|d| (self.script)(d).is_ok())
            .cloned()
            .collect()
    }

    pub async fn wait_for(&self, what: &str, cond: impl Fn(&[Delivery]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.changed.notified();
            if cond(&self.attempts.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {what}; attempts: {:#?}",
                    self.attempts.lock().len()
                );
            }
        }
    }
}

#[async_trait]
impl Target for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }
    fn max_batch(&self) -> usize {
        4
    }
    async fn deliver(&self, batch: &[Delivery]) -> Vec<std::result::Result<(), DeliveryError>> {
        let out = batch.iter().map(|d| (self.script)(d)).collect();
        self.attempts.lock().extend(batch.iter().cloned());
        self.changed.notify_waiters();
        out
    }
}

/// Resolves targets by id to recorders; `Bus` destinations put into the named bus.
#[derive(Default)]
pub struct Factory {
    pub targets: Mutex<HashMap<String, Arc<Recorder>>>,
}

pub struct ToBus {
    engine: BusEngine,
    bus: String,
}

#[async_trait]
impl Target for ToBus {
    fn kind(&self) -> &'static str {
        "bus"
    }
    async fn deliver(&self, batch: &[Delivery]) -> Vec<std::result::Result<(), DeliveryError>> {
        outrider_bus::targets::bus::deliver_to_bus(&self.engine, &self.bus, batch).await
    }
}

impl TargetFactory for Factory {
    fn build(
        &self,
        engine: &BusEngine,
        _bus: &str,
        _rule: &RuleDef,
        t: &TargetDef,
    ) -> Result<Option<DynTarget>> {
        Ok(match &t.destination {
            Destination::Subscriber => None,
            Destination::Bus { event_bus_name } => Some(Arc::new(ToBus {
                engine: engine.clone(),
                bus: event_bus_name.clone(),
            })),
            _ => self
                .targets
                .lock()
                .get(&t.id)
                .cloned()
                .map(|r| r as DynTarget),
        })
    }
}

pub fn fast() -> BusConfig {
    BusConfig {
        backoff: Backoff {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(20),
        },
        schedule_tick: Duration::from_millis(10),
        ..BusConfig::default()
    }
}

pub fn rule(name: &str, pattern: Value, targets: Vec<TargetDef>) -> RuleDef {
    RuleDef {
        name: name.into(),
        event_bus_name: "default".into(),
        event_pattern: Some(pattern.to_string()),
        schedule_expression: None,
        state: RuleState::Enabled,
        description: None,
        targets,
    }
}

pub fn target(id: &str) -> TargetDef {
    TargetDef {
        id: id.into(),
        destination: Destination::Webhook {
            url: "http://unused.invalid/".into(),
            secret_env: None,
            timeout_ms: None,
        },
        input: None,
        input_path: None,
        input_transformer: None,
        retry_policy: RetryPolicy::default(),
        dead_letter: true,
    }
}

pub fn entry(source: &str, detail: Value) -> Event {
    Event {
        source: source.into(),
        detail_type: "ride".into(),
        detail: detail.to_string(),
        ..Event::default()
    }
}

pub fn open(dir: &std::path::Path) -> Arc<dyn EventStore> {
    Arc::new(SledStore::open(SledConfig::new(dir)).unwrap())
}

pub async fn stream(store: &Arc<dyn EventStore>, name: &str) -> Vec<Event> {
    store
        .read_stream(name, StreamFrom::Start, Direction::Forwards, 100_000)
        .await
        .unwrap()
        .events
}

pub fn accepted(out: &[PutOutcome]) -> Vec<String> {
    out.iter()
        .map(|o| match o {
            PutOutcome::Accepted { event_id } => event_id.clone(),
            PutOutcome::Failed { code, message } => panic!("refused: {code}: {message}"),
        })
        .collect()
}
