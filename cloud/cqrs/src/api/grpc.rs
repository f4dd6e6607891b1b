//! gRPC API (tonic): the `outrider.v1.Cqrs` service of `proto/outrider/v1/cqrs.proto`.
//!
//! Errors are statuses with [`CqrsError::grpc_code`] and the trailer `outrider-error-code`
//! carrying [`CqrsError::code`].

use outrider_proto::v1::cqrs_server::{Cqrs, CqrsServer};
use outrider_proto::v1::{
    CqrsAggregateRequest, CqrsAggregateResponse, CqrsCommandRequest, CqrsCommandResponse,
    CqrsHistoryRequest, CqrsHistoryResponse, CqrsReadModelRequest, CqrsReadModelResponse,
    CqrsRecordedEvent,
};
use tonic::{Request, Response, Status};

use super::Api;
use crate::error::CqrsError;
use crate::repository::RecordedEvent;

/// The metadata key naming the problem of an error status.
pub const ERROR_CODE_KEY: &str = "outrider-error-code";

/// The status of an error.
pub fn status(e: &CqrsError) -> Status {
    let mut s = Status::new(e.grpc_code(), e.to_string());
    if let Ok(v) = e.code().parse() {
        s.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    s
}

fn to_proto(e: RecordedEvent) -> CqrsRecordedEvent {
    CqrsRecordedEvent {
        stream: e.stream,
        version: e.version,
        position: e.position,
        id: e.id,
        event_type: e.event_type,
        time: e.time,
        command_id: e.command_id,
        data_json: e.data.to_string(),
    }
}

/// The tonic service over an [`Api`].
#[derive(Clone)]
pub struct CqrsService {
    api: Api,
}

impl CqrsService {
    pub fn new(api: Api) -> Self {
        Self { api }
    }

    /// The service ready to add to a tonic `Server`, with messages limited to the API's
    /// body limit.
    pub fn server(api: Api) -> CqrsServer<Self> {
        let limit = api.max_body_bytes;
        CqrsServer::new(Self::new(api))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(8 * 1024 * 1024)
    }
}

#[tonic::async_trait]
impl Cqrs for CqrsService {
    async fn send_command(
        &self,
        req: Request<CqrsCommandRequest>,
    ) -> Result<Response<CqrsCommandResponse>, Status> {
        let r = req.into_inner();
        let command: serde_json::Value = serde_json::from_str(&r.command_json).map_err(|e| {
            status(&CqrsError::MalformedRequest(format!(
                "command_json is not JSON: {e}"
            )))
        })?;
        let o = self
            .api
            .send(
                &r.aggregate_type,
                &r.aggregate_id,
                &r.command_id,
                r.expected_version,
                command,
            )
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(CqrsCommandResponse {
            version: o.version,
            events: o.events.into_iter().map(to_proto).collect(),
            duplicate: o.duplicate,
        }))
    }

    async fn get_aggregate(
        &self,
        req: Request<CqrsAggregateRequest>,
    ) -> Result<Response<CqrsAggregateResponse>, Status> {
        let r = req.into_inner();
        let s = self
            .api
            .state(&r.aggregate_type, &r.aggregate_id)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(CqrsAggregateResponse {
            version: s.version,
            state_json: s.state.to_string(),
        }))
    }

    async fn get_history(
        &self,
        req: Request<CqrsHistoryRequest>,
    ) -> Result<Response<CqrsHistoryResponse>, Status> {
        let r = req.into_inner();
        let max = if r.max_count == 0 {
            100
        } else {
            r.max_count as usize
        };
        let (events, end) = self
            .api
            .history(&r.aggregate_type, &r.aggregate_id, r.from_version, max)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(CqrsHistoryResponse {
            events: events.into_iter().map(to_proto).collect(),
            end,
        }))
    }

    async fn query_read_model(
        &self,
        req: Request<CqrsReadModelRequest>,
    ) -> Result<Response<CqrsReadModelResponse>, Status> {
        let r = req.into_inner();
        let doc = self
            .api
            .read_model(&r.read_model, &r.key)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(CqrsReadModelResponse {
            document_json: doc.to_string(),
        }))
    }
}

/// Serves the gRPC API on a bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // No Nagle: small unary replies would otherwise wait for the client's delayed ACK (~40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(CqrsService::server(api))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
