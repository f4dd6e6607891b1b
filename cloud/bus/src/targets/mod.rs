//! Target implementations.

pub mod bus;
pub mod kinesis;
pub mod webhook;
