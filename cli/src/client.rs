//! Connecting to the agent's gRPC API.

use std::time::Duration;

use anyhow::Context as _;
use outrider_proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

/// Largest response the CLI accepts (the agent keeps its responses under 4 MiB).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Connects to the agent at `url` (e.g. `http://127.0.0.1:7400`).
pub async fn connect(url: &str) -> anyhow::Result<AgentClient<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid agent URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the agent at {url}"))?;
    Ok(AgentClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// The canonical name of a gRPC status code, e.g. `FAILED_PRECONDITION`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
