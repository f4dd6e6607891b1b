//! Target implementations.

pub mod bus;
pub mod factory;
pub mod kinesis;
pub mod saga;
pub mod webhook;
