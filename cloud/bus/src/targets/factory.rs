//! The server's [`TargetFactory`]: builds each destination's target from the rule's
//! definition and the server's settings (secrets by environment variable name, the Kinesis
//! region/endpoint/credentials, the webhook CA, the saga engine).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::kinesis::{KinesisConfig, KinesisTarget, StaticCredentials};
use super::saga::{SagaStarter, SagaTarget};
use super::webhook::{WebhookConfig, WebhookTarget};
use crate::bus::{BusEngine, TargetFactory};
use crate::error::{BusError, Result};
use crate::model::{Destination, RuleDef, TargetDef};
use crate::target::{Delivery, DeliveryError, DynTarget, Target};

/// Server-wide settings the targets need.
#[derive(Clone, Default)]
pub struct FactoryConfig {
    /// Kinesis region (the SDK's default chain when `None`).
    pub kinesis_region: Option<String>,
    /// Kinesis endpoint override (LocalStack, moto, a VPC endpoint).
    pub kinesis_endpoint: Option<String>,
    /// Static Kinesis credentials (the SDK's default chain when `None`).
    pub kinesis_credentials: Option<StaticCredentials>,
    /// CA certificates (PEM) trusted for `https` webhooks.
    pub webhook_ca_file: Option<PathBuf>,
    /// The saga engine; saga targets are refused without one.
    pub saga: Option<Arc<dyn SagaStarter>>,
}

impl std::fmt::Debug for FactoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactoryConfig")
            .field("kinesis_region", &self.kinesis_region)
            .field("kinesis_endpoint", &self.kinesis_endpoint)
            .field("webhook_ca_file", &self.webhook_ca_file)
            .field("saga", &self.saga.is_some())
            .finish()
    }
}

/// Builds webhook, Kinesis, bus and saga targets; subscriber targets need none.
#[derive(Debug, Default)]
pub struct DefaultFactory {
    cfg: FactoryConfig,
}

impl DefaultFactory {
    pub fn new(cfg: FactoryConfig) -> Self {
        DefaultFactory { cfg }
    }
}

impl TargetFactory for DefaultFactory {
    fn build(
        &self,
        engine: &BusEngine,
        _bus: &str,
        rule: &RuleDef,
        t: &TargetDef,
    ) -> Result<Option<DynTarget>> {
        let bad = |why: String| {
            BusError::Validation(format!("rule {} target {}: {why}", rule.name, t.id))
        };
        match &t.destination {
            Destination::Subscriber => Ok(None),
            Destination::Webhook { secret_env, .. } => {
                let var = secret_env
                    .as_deref()
                    .ok_or_else(|| bad("a webhook needs SecretEnv, the environment variable holding its signing secret".into()))?;
                let secret = std::env::var(var).map_err(|_| {
                    bad(format!("environment variable {var} (SecretEnv) is not set"))
                })?;
                let mut cfg = WebhookConfig::from_destination(&t.destination, secret.into_bytes())
                    .map_err(|e| bad(e.to_string()))?;
                if let Some(ca) = &self.cfg.webhook_ca_file {
                    cfg = cfg.with_ca_file(ca).map_err(|e| bad(e.to_string()))?;
                }
                Ok(Some(Arc::new(
                    WebhookTarget::new(cfg).map_err(|e| bad(e.to_string()))?,
                )))
            }
            Destination::Kinesis { .. } => {
                let mut cfg = KinesisConfig::from_destination(&t.destination)
                    .map_err(|e| bad(e.to_string()))?;
                if let Some(r) = &self.cfg.kinesis_region {
                    cfg = cfg.with_region(r.clone());
                }
                if let Some(u) = &self.cfg.kinesis_endpoint {
                    cfg = cfg.with_endpoint_url(u.clone());
                }
                cfg.credentials.clone_from(&self.cfg.kinesis_credentials);
                Ok(Some(Arc::new(LazyKinesis {
                    cfg,
                    target: OnceCell::new(),
                })))
            }
            Destination::Bus { event_bus_name } => Ok(Some(Arc::new(BusTarget {
                engine: engine.clone(),
                bus: event_bus_name.clone(),
            }))),
            Destination::Saga { state_machine } => {
                let starter = self
                    .cfg
                    .saga
                    .clone()
                    .ok_or_else(|| bad("no saga engine is configured on this server".into()))?;
                Ok(Some(Arc::new(SagaTarget::new(
                    starter,
                    state_machine.clone(),
                ))))
            }
        }
    }
}

/// Another bus of this server as a target.
pub struct BusTarget {
    engine: BusEngine,
    bus: String,
}

impl BusTarget {
    pub fn new(engine: BusEngine, bus: impl Into<String>) -> Self {
        BusTarget {
            engine,
            bus: bus.into(),
        }
    }
}

#[async_trait]
impl Target for BusTarget {
    fn kind(&self) -> &'static str {
        "bus"
    }

    fn max_batch(&self) -> usize {
        10
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Result<(), DeliveryError>> {
        super::bus::deliver_to_bus(&self.engine, &self.bus, batch).await
    }
}

/// A Kinesis target whose SDK client is made on first use (loading the SDK's configuration is
/// asynchronous; building targets is not).
struct LazyKinesis {
    cfg: KinesisConfig,
    target: OnceCell<KinesisTarget>,
}

#[async_trait]
impl Target for LazyKinesis {
    fn kind(&self) -> &'static str {
        "kinesis"
    }

    fn max_batch(&self) -> usize {
        500
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Result<(), DeliveryError>> {
        let target = self
            .target
            .get_or_try_init(|| KinesisTarget::connect(self.cfg.clone()))
            .await;
        match target {
            Ok(t) => t.deliver(batch).await,
            Err(e) => batch
                .iter()
                .map(|_| {
                    Err(DeliveryError::permanent(
                        "InvalidConfiguration",
                        e.to_string(),
                    ))
                })
                .collect(),
        }
    }
}
