//! # outrider-bus
//!
//! An EventBridge-style event bus on Outrider's event store.

pub mod api;
pub mod bridge;
pub mod bus;
pub mod client;
pub mod error;
pub mod group;
pub mod jsonpath;
pub mod metrics;
pub mod model;
pub mod names;
pub mod retry;
pub mod schedule;
pub mod schema;
pub mod target;
pub mod targets;
pub mod transform;

pub use error::{BusError, Result};
pub use target::{Delivery, DeliveryError, DynTarget, Target};
