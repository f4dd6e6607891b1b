//! The API over real HTTP (axum) and gRPC (tonic) on loopback ports, on both backends: commands,
//! state, history, read models, projection status and rebuild, and every bad input as a typed
//! error (HTTP 400/404/409/413 with a JSON body naming the problem; gRPC codes with the
//! `outrider-error-code` trailer) that writes nothing.

#[macro_use]
mod common;

both!(
    http_api_commands_queries_and_typed_errors,
    grpc_api_commands_queries_and_typed_errors
);

mod cases {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use outrider_cqrs::api::{grpc, http, Api};
    use outrider_cqrs::domains::banking::Account;
    use outrider_cqrs::domains::inventory::Product;
    use outrider_cqrs::domains::orders::{Order, OrdersProjection};
    use outrider_cqrs::{spawn_projection, ProjectionHandle, Repository};
    use outrider_proto::v1::cqrs_client::CqrsClient;
    use outrider_proto::v1::{
        CqrsAggregateRequest, CqrsCommandRequest, CqrsHistoryRequest, CqrsReadModelRequest,
    };
    use outrider_store::EventStore;
    use serde_json::{json, Value};
    use tokio::sync::oneshot;

    use crate::common::{dyn_store, poll_until, runner};

    struct Servers {
        http: SocketAddr,
        grpc: SocketAddr,
        stop: Vec<oneshot::Sender<()>>,
        projection: Arc<ProjectionHandle>,
    }

    async fn start<S: EventStore + Clone + 'static>(s: &S) -> Servers {
        let store = dyn_store(s);
        let projection = Arc::new(spawn_projection(
            store.clone(),
            Arc::new(OrdersProjection),
            runner("api"),
        ));
        let api = Api::new()
            .with_target(Arc::new(Repository::<Order, S>::new(s.clone())))
            .with_target(Arc::new(Repository::<Account, S>::new(s.clone())))
            .with_target(Arc::new(Repository::<Product, S>::new(s.clone())))
            .with_read_model(store.clone(), "orders")
            .with_projection(projection.clone());
        let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (hl.local_addr().unwrap(), gl.local_addr().unwrap());
        let (tx1, rx1) = oneshot::channel::<()>();
        let (tx2, rx2) = oneshot::channel::<()>();
        let a = api.clone();
        tokio::spawn(async move {
            http::serve(hl, a, async {
                let _ = rx1.await;
            })
            .await
            .unwrap()
        });
        tokio::spawn(async move {
            grpc::serve(gl, api, async {
                let _ = rx2.await;
            })
            .await
            .unwrap()
        });
        Servers {
            http: http_addr,
            grpc: grpc_addr,
            stop: vec![tx1, tx2],
            projection,
        }
    }

    async fn call(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("non-JSON body {:?}: {e}", String::from_utf8_lossy(&bytes)));
        (status, v)
    }

    async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
        call(addr, "POST", path, Some(body.to_string().into_bytes())).await
    }

    fn assert_err(r: &(u16, Value), status: u16, code: &str) {
        assert_eq!(r.0, status, "{r:?}");
        assert_eq!(r.1["error"]["code"], json!(code), "{r:?}");
        assert!(r.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    pub async fn http_api_commands_queries_and_typed_errors<S: EventStore + Clone + 'static>(s: S) {
        let srv = start(&s).await;
        let a = srv.http;
        let cmd = "/v1/aggregates/order/o1/commands";
        let r = post(
            a,
            cmd,
            json!({"command_id": "c1", "command": {"type": "CreateOrder", "customer_id": "zoe"}}),
        )
        .await;
        assert_eq!(r.0, 200, "{r:?}");
        assert_eq!(r.1["version"], json!(0));
        assert_eq!(r.1["duplicate"], json!(false));
        assert_eq!(r.1["events"][0]["type"], json!("OrderCreated"));
        assert_eq!(r.1["events"][0]["data"]["customer_id"], json!("zoe"));
        // Re-sent: the original outcome.
        let again = post(
            a,
            cmd,
            json!({"command_id": "c1", "command": {"type": "CreateOrder", "customer_id": "zoe"}}),
        )
        .await;
        assert_eq!(again.0, 200);
        assert_eq!(again.1["duplicate"], json!(true));
        assert_eq!(again.1["events"], r.1["events"]);
        let r = post(a, cmd, json!({"command_id": "c2", "expected_version": 0, "command": {"type": "AddItem", "sku": "k", "quantity": 2, "unit_price_cents": 300}})).await;
        assert_eq!((r.0, &r.1["version"]), (200, &json!(1)));
        // Bad input, each typed, nothing written.
        assert_err(
            &post(
                a,
                cmd,
                json!({"command_id": "c3", "command": {"type": "ShipOrder"}}),
            )
            .await,
            400,
            "unknown_command",
        );
        assert_err(
            &post(
                a,
                cmd,
                json!({"command_id": "c3", "command": {"type": "AddItem", "sku": 5}}),
            )
            .await,
            400,
            "malformed_command",
        );
        assert_err(
            &post(a, cmd, json!({"command_id": "c3", "command": "AddItem"})).await,
            400,
            "malformed_command",
        );
        assert_err(
            &call(a, "POST", cmd, Some(b"{not json".to_vec())).await,
            400,
            "malformed_request",
        );
        assert_err(
            &post(a, cmd, json!({"command": {"type": "ConfirmOrder"}})).await,
            400,
            "malformed_request",
        );
        assert_err(
            &post(
                a,
                cmd,
                json!({"command_id": "", "command": {"type": "ConfirmOrder"}}),
            )
            .await,
            400,
            "invalid_command_id",
        );
        let wrong = post(
            a,
            cmd,
            json!({"command_id": "c3", "expected_version": 7, "command": {"type": "ConfirmOrder"}}),
        )
        .await;
        assert_err(&wrong, 409, "wrong_expected_version");
        assert_eq!(wrong.1["error"]["actual_version"], json!(1));
        let rejected = post(
            a,
            "/v1/aggregates/order/o9/commands",
            json!({"command_id": "c4", "command": {"type": "ConfirmOrder"}}),
        )
        .await;
        assert_err(&rejected, 409, "rejected");
        assert_eq!(rejected.1["error"]["reason"], json!("not_found"));
        assert_err(&post(a, cmd, json!({"command_id": "c1", "command": {"type": "CreateOrder", "customer_id": "eve"}})).await, 409, "command_id_reused");
        let big = post(a, cmd, json!({"command_id": "c5", "command": {"type": "AddItem", "sku": "x".repeat(300 * 1024), "quantity": 1, "unit_price_cents": 1}})).await;
        assert_err(&big, 413, "event_too_large");
        assert!(big.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ItemAdded"));
        let huge = post(a, cmd, json!({"command_id": "c6", "command": {"type": "AddItem", "sku": "x".repeat(2 * 1024 * 1024), "quantity": 1, "unit_price_cents": 1}})).await;
        assert_err(&huge, 413, "request_too_large");
        assert_err(
            &post(
                a,
                "/v1/aggregates/ship/s1/commands",
                json!({"command_id": "c7", "command": {"type": "X"}}),
            )
            .await,
            404,
            "unknown_aggregate_type",
        );
        // State and audit trail: still version 1 after all that.
        let st = call(a, "GET", "/v1/aggregates/order/o1", None).await;
        assert_eq!(st.0, 200);
        assert_eq!(st.1["version"], json!(1));
        assert_eq!(st.1["state"]["status"], json!("Draft"));
        assert_eq!(st.1["state"]["total_cents"], json!(600));
        let h = call(
            a,
            "GET",
            "/v1/aggregates/order/o1/events?from=0&max=10",
            None,
        )
        .await;
        assert_eq!(h.0, 200);
        assert_eq!(h.1["events"].as_array().unwrap().len(), 2);
        assert_eq!(h.1["events"][1]["command_id"], json!("c2"));
        assert_eq!(h.1["end"], json!(true));
        let h1 = call(a, "GET", "/v1/aggregates/order/o1/events?from=1", None).await;
        assert_eq!(h1.1["events"][0]["type"], json!("ItemAdded"));
        assert_err(
            &call(a, "GET", "/v1/aggregates/order/o1/events?from=x", None).await,
            400,
            "malformed_request",
        );
        assert_err(
            &call(a, "GET", "/v1/aggregates/order/nope", None).await,
            404,
            "aggregate_not_found",
        );
        assert_err(
            &call(a, "GET", "/v1/aggregates/order/nope/events", None).await,
            404,
            "aggregate_not_found",
        );
        // Read models.
        let doc = poll_until(
            "order/o1 in the read model",
            Duration::from_secs(20),
            || async {
                let r = call(a, "GET", "/v1/read-models/orders/order/o1", None).await;
                (r.0 == 200 && r.1["item_count"] == json!(2)).then_some(r.1)
            },
        )
        .await;
        assert_eq!(doc["total_cents"], json!(600));
        let listing = call(a, "GET", "/v1/read-models/orders/customer/zoe", None).await;
        assert_eq!(listing.1["orders"]["o1"]["status"], json!("Draft"));
        assert_err(
            &call(a, "GET", "/v1/read-models/orders/order/none", None).await,
            404,
            "document_not_found",
        );
        assert_err(
            &call(a, "GET", "/v1/read-models/ledgers/x", None).await,
            404,
            "unknown_read_model",
        );
        // Projection status and rebuild with progress.
        let st = call(a, "GET", "/v1/projections/orders", None).await;
        assert_eq!((st.0, &st.1["leader"]), (200, &json!(true)));
        assert_err(
            &call(a, "GET", "/v1/projections/nope", None).await,
            404,
            "unknown_projection",
        );
        let rb = call(a, "POST", "/v1/projections/orders/rebuild", None).await;
        assert_eq!(rb.0, 202);
        let done = poll_until("the rebuild over HTTP", Duration::from_secs(20), || async {
            let r = call(a, "GET", "/v1/projections/orders", None).await;
            (r.1["rebuild"]["done"] == json!(true)).then_some(r.1)
        })
        .await;
        assert_eq!(done["generation"], json!(2));
        assert_eq!(done["rebuild"]["events_read"], json!(2));
        let doc2 = call(a, "GET", "/v1/read-models/orders/order/o1", None).await;
        assert_eq!(doc2.1, doc);
        for t in srv.stop {
            let _ = t.send(());
        }
        if let Ok(p) = Arc::try_unwrap(srv.projection) {
            p.stop().await;
        }
    }

    pub async fn grpc_api_commands_queries_and_typed_errors<S: EventStore + Clone + 'static>(s: S) {
        let srv = start(&s).await;
        let mut c = CqrsClient::connect(format!("http://{}", srv.grpc))
            .await
            .unwrap();
        let send = |id: &str, cmd_id: &str, cmd: Value, expected: Option<u64>| CqrsCommandRequest {
            aggregate_type: "account".into(),
            aggregate_id: id.into(),
            command_id: cmd_id.into(),
            command_json: cmd.to_string(),
            expected_version: expected,
        };
        let r = c
            .send_command(send(
                "a1",
                "open",
                json!({"type": "OpenAccount", "owner": "al"}),
                None,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.version, Some(0));
        assert!(!r.duplicate);
        let r = c
            .send_command(send(
                "a1",
                "d1",
                json!({"type": "Deposit", "amount_cents": 900}),
                Some(0),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.version, Some(1));
        assert_eq!(r.events[0].event_type, "Deposited");
        let dup = c
            .send_command(send(
                "a1",
                "d1",
                json!({"type": "Deposit", "amount_cents": 900}),
                Some(0),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(dup.duplicate);
        assert_eq!(dup.events, r.events);
        let expect =
            |res: Result<tonic::Response<_>, tonic::Status>, code: tonic::Code, name: &str| {
                let st = match res {
                    Ok(r) => panic!(
                        "expected {code:?}, got {:?}",
                        std::any::type_name_of_val(&r)
                    ),
                    Err(st) => st,
                };
                assert_eq!(st.code(), code, "{st:?}");
                assert_eq!(
                    st.metadata()
                        .get(grpc::ERROR_CODE_KEY)
                        .and_then(|v| v.to_str().ok()),
                    Some(name),
                    "{st:?}"
                );
            };
        expect(
            c.send_command(send("a1", "x1", json!({"type": "Steal"}), None))
                .await
                .map(|_| ())
                .map(tonic::Response::new),
            tonic::Code::InvalidArgument,
            "unknown_command",
        );
        expect(
            c.send_command(send(
                "a1",
                "x2",
                json!({"type": "Deposit", "amount_cents": -1}),
                None,
            ))
            .await
            .map(|_| ())
            .map(tonic::Response::new),
            tonic::Code::InvalidArgument,
            "malformed_command",
        );
        let mut bad = send("a1", "x3", json!({}), None);
        bad.command_json = "{oops".into();
        expect(
            c.send_command(bad)
                .await
                .map(|_| ())
                .map(tonic::Response::new),
            tonic::Code::InvalidArgument,
            "malformed_request",
        );
        expect(
            c.send_command(send(
                "a1",
                "x4",
                json!({"type": "Deposit", "amount_cents": 1}),
                Some(0),
            ))
            .await
            .map(|_| ())
            .map(tonic::Response::new),
            tonic::Code::Aborted,
            "wrong_expected_version",
        );
        expect(
            c.send_command(send(
                "a1",
                "x5",
                json!({"type": "Withdraw", "amount_cents": 5000}),
                None,
            ))
            .await
            .map(|_| ())
            .map(tonic::Response::new),
            tonic::Code::FailedPrecondition,
            "rejected",
        );
        expect(
            c.send_command(send(
                "a1",
                "d1",
                json!({"type": "Deposit", "amount_cents": 1}),
                None,
            ))
            .await
            .map(|_| ())
            .map(tonic::Response::new),
            tonic::Code::AlreadyExists,
            "command_id_reused",
        );
        let mut unknown = send("a1", "x6", json!({"type": "X"}), None);
        unknown.aggregate_type = "ship".into();
        expect(
            c.send_command(unknown)
                .await
                .map(|_| ())
                .map(tonic::Response::new),
            tonic::Code::NotFound,
            "unknown_aggregate_type",
        );
        let mut big = send("o1", "x7", json!({}), None);
        big.aggregate_type = "order".into();
        c.send_command(CqrsCommandRequest {
            command_id: "x7a".into(),
            command_json: json!({"type": "CreateOrder", "customer_id": "q"}).to_string(),
            ..big.clone()
        })
        .await
        .unwrap();
        big.command_json = json!({"type": "AddItem", "sku": "y".repeat(300 * 1024), "quantity": 1, "unit_price_cents": 1}).to_string();
        expect(
            c.send_command(big)
                .await
                .map(|_| ())
                .map(tonic::Response::new),
            tonic::Code::InvalidArgument,
            "event_too_large",
        );
        // Nothing was written by the failures.
        let st = c
            .get_aggregate(CqrsAggregateRequest {
                aggregate_type: "account".into(),
                aggregate_id: "a1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.version, 1);
        let state: Value = serde_json::from_str(&st.state_json).unwrap();
        assert_eq!(state["balance_cents"], json!(900));
        let h = c
            .get_history(CqrsHistoryRequest {
                aggregate_type: "account".into(),
                aggregate_id: "a1".into(),
                from_version: 0,
                max_count: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.events.len(), 2);
        assert!(h.end);
        assert_eq!(h.events[1].command_id, "d1");
        let data: Value = serde_json::from_str(&h.events[1].data_json).unwrap();
        assert_eq!(data["amount_cents"], json!(900));
        expect(
            c.get_aggregate(CqrsAggregateRequest {
                aggregate_type: "account".into(),
                aggregate_id: "zz".into(),
            })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
            tonic::Code::NotFound,
            "aggregate_not_found",
        );
        let doc = poll_until("order/o1 over gRPC", Duration::from_secs(20), || {
            let mut c = c.clone();
            async move {
                c.query_read_model(CqrsReadModelRequest {
                    read_model: "orders".into(),
                    key: "order/o1".into(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().document_json)
            }
        })
        .await;
        let doc: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc["customer_id"], json!("q"));
        expect(
            c.query_read_model(CqrsReadModelRequest {
                read_model: "nope".into(),
                key: "k".into(),
            })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
            tonic::Code::NotFound,
            "unknown_read_model",
        );
        for t in srv.stop {
            let _ = t.send(());
        }
        if let Ok(p) = Arc::try_unwrap(srv.projection) {
            p.stop().await;
        }
    }
}
