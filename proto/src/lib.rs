//! Outrider's wire contract.
//!
//! * [`v1`]: generated prost/tonic code for the event envelope, the agent API and the sync protocol.
//! * [`eventbridge`] and [`cloudevents`]: lossless conversions between the envelope and EventBridge
//!   (delivered-event JSON and PutEvents entries) and CloudEvents 1.0 JSON.
//! * [`time`]: the RFC 3339 <-> `(seconds, nanos)` conversion they share.
//! * [`error`]: [`ConvertError`], the error every conversion returns.
//! * [`framing`]: length-delimited frames of the sync protocol on QUIC streams, with a size limit.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("outrider.v1");
}

pub mod cloudevents;
pub mod error;
pub mod eventbridge;
mod fields;
pub mod framing;
pub mod time;

pub use error::ConvertError;
pub use v1::Event;
