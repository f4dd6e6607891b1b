//! Outrider's wire contract.
//!
//! * [`v1`]: generated prost/tonic code for the event envelope, the agent API and the sync protocol.
//! * [`eventbridge`] and [`cloudevents`]: lossless conversions between the envelope and EventBridge
//!   (delivered-event JSON and PutEvents entries) and CloudEvents 1.0 JSON.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("outrider.v1");
}

pub use v1::Event;
