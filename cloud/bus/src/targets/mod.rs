//! Target implementations.

pub mod kinesis;
pub mod webhook;
