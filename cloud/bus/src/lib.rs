//! # outrider-bus
//!
//! An EventBridge-style event bus on Outrider's event store.

pub mod bridge;
pub mod bus;
pub mod error;
pub mod jsonpath;
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
