//! The framework on both backends: idempotency by command id, expected versions, snapshots,
//! oversized events, projections (durable, leased, fenced, rebuilt with progress).

#[macro_use]
mod common;

both!(
    resending_a_command_id_returns_the_original_outcome,
    concurrent_copies_of_a_command_append_once,
    wrong_expected_version_is_typed_and_writes_nothing,
    snapshots_every_n_events_and_schema_mismatch_replays,
    oversized_event_is_typed_and_writes_nothing,
    projection_is_durable_across_restarts_and_leased,
    rebuild_from_zero_reports_progress_and_switches_generation,
);

mod cases {
    use std::sync::Arc;
    use std::time::Duration;

    use outrider_cqrs::domains::banking::{Account, AccountCommand};
    use outrider_cqrs::domains::orders::{Order, OrderCommand, OrdersProjection};
    use outrider_cqrs::{
        spawn_projection, CqrsError, HandleError, ReadModels, Repository, RepositoryConfig,
    };
    use outrider_store::{EventStore, StreamFrom};
    use serde_json::json;

    use crate::common::{dyn_store, poll_until, runner};

    async fn stream_len<S: EventStore>(s: &S, stream: &str) -> usize {
        s.read_stream(
            stream,
            StreamFrom::Start,
            outrider_store::Direction::Forwards,
            10_000,
        )
        .await
        .unwrap()
        .events
        .len()
    }

    pub async fn resending_a_command_id_returns_the_original_outcome<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let orders: Repository<Order, S> = Repository::new(s.clone());
        let create = OrderCommand::CreateOrder {
            customer_id: "c1".into(),
        };
        let first = orders.handle("o1", "cmd-1", None, &create).await.unwrap();
        assert!(!first.duplicate);
        assert_eq!(first.version, Some(0));
        assert_eq!(first.events.len(), 1);
        assert_eq!(first.events[0].event_type, "OrderCreated");
        assert_eq!(first.events[0].command_id, "cmd-1");
        // Re-sent: the original outcome, nothing appended (not even a domain error, although
        // deciding CreateOrder again would be AlreadyExists).
        let again = orders.handle("o1", "cmd-1", None, &create).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.version, Some(0));
        assert_eq!(again.events, first.events);
        assert_eq!(stream_len(&s, "order-o1").await, 1);
        // The same id for another payload or another aggregate is refused.
        let other = OrderCommand::CreateOrder {
            customer_id: "c2".into(),
        };
        match orders.handle("o1", "cmd-1", None, &other).await {
            Err(HandleError::Cqrs(CqrsError::CommandIdReused { command_id, .. })) => {
                assert_eq!(command_id, "cmd-1")
            }
            r => panic!("expected CommandIdReused, got {r:?}"),
        }
        assert!(matches!(
            orders.handle("o2", "cmd-1", None, &create).await,
            Err(HandleError::Cqrs(CqrsError::CommandIdReused { .. }))
        ));
        assert_eq!(stream_len(&s, "order-o2").await, 0);
        // A rejected command records nothing: its id can be used again.
        let confirm = OrderCommand::ConfirmOrder;
        assert!(matches!(
            orders.handle("o1", "cmd-2", None, &confirm).await,
            Err(HandleError::Domain(
                outrider_cqrs::domains::orders::OrderError::Empty
            ))
        ));
        // Bad ids are typed errors.
        assert!(matches!(
            orders.handle("", "cmd-3", None, &create).await,
            Err(HandleError::Cqrs(CqrsError::InvalidAggregateId { .. }))
        ));
        assert!(matches!(
            orders.handle("o3", "bad\nid", None, &create).await,
            Err(HandleError::Cqrs(CqrsError::InvalidCommandId { .. }))
        ));
    }

    pub async fn concurrent_copies_of_a_command_append_once<S: EventStore + Clone + 'static>(s: S) {
        let accounts: Repository<Account, S> = Repository::new(s.clone());
        accounts
            .handle(
                "a",
                "open",
                None,
                &AccountCommand::OpenAccount { owner: "x".into() },
            )
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let accounts = accounts.clone();
            tasks.push(tokio::spawn(async move {
                accounts
                    .handle(
                        "a",
                        "dep-1",
                        None,
                        &AccountCommand::Deposit { amount_cents: 500 },
                    )
                    .await
            }));
        }
        let mut fresh = 0;
        let mut versions = Vec::new();
        for t in tasks {
            let o = t.await.unwrap().unwrap();
            if !o.duplicate {
                fresh += 1;
            }
            versions.push(o.version);
        }
        assert_eq!(fresh, 1, "exactly one copy appends");
        assert!(versions.iter().all(|v| *v == Some(1)), "{versions:?}");
        let loaded = accounts.load("a").await.unwrap();
        assert_eq!(loaded.state.balance_cents, 500);
        assert_eq!(stream_len(&s, "account-a").await, 2);
    }

    pub async fn wrong_expected_version_is_typed_and_writes_nothing<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let accounts: Repository<Account, S> = Repository::new(s.clone());
        accounts
            .handle(
                "a",
                "open",
                Some(0).filter(|_| false),
                &AccountCommand::OpenAccount { owner: "x".into() },
            )
            .await
            .unwrap();
        let dep = AccountCommand::Deposit { amount_cents: 1 };
        match accounts.handle("a", "d1", Some(5), &dep).await {
            Err(HandleError::Cqrs(CqrsError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            })) => assert_eq!(
                (stream.as_str(), expected, actual),
                ("account-a", 5, Some(0))
            ),
            r => panic!("expected WrongExpectedVersion, got {r:?}"),
        }
        assert_eq!(stream_len(&s, "account-a").await, 1);
        // The right version goes through; the command id was not burnt by the failure.
        let o = accounts.handle("a", "d1", Some(0), &dep).await.unwrap();
        assert_eq!(o.version, Some(1));
        // Expecting a version of a missing aggregate.
        assert!(matches!(
            accounts.handle("nope", "d2", Some(0), &dep).await,
            Err(HandleError::Cqrs(CqrsError::WrongExpectedVersion {
                actual: None,
                ..
            }))
        ));
    }

    pub async fn snapshots_every_n_events_and_schema_mismatch_replays<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let cfg = RepositoryConfig {
            snapshot_every: 10,
            ..RepositoryConfig::for_aggregate::<Account>()
        };
        let accounts: Repository<Account, S> = Repository::with_config(s.clone(), cfg);
        accounts
            .handle(
                "a",
                "open",
                None,
                &AccountCommand::OpenAccount { owner: "x".into() },
            )
            .await
            .unwrap();
        for i in 0..24 {
            accounts
                .handle(
                    "a",
                    &format!("d{i}"),
                    None,
                    &AccountCommand::Deposit { amount_cents: 10 },
                )
                .await
                .unwrap();
        }
        // 25 events (versions 0..=24): snapshots at versions 9 and 19.
        let snap = s.load_snapshot("account-a").await.unwrap().unwrap();
        assert_eq!(snap.version, 19);
        let payload: serde_json::Value = serde_json::from_slice(&snap.payload).unwrap();
        assert_eq!(payload["schema"], json!(1));
        assert_eq!(payload["type"], json!("account"));
        let loaded = accounts.load("a").await.unwrap();
        assert_eq!(loaded.snapshot_version, Some(19));
        assert_eq!(loaded.replayed, 5);
        assert_eq!(loaded.version, Some(24));
        assert_eq!(loaded.state.balance_cents, 240);
        // A snapshot of another schema version is ignored: full replay, same state.
        let foreign = json!({"schema": 99, "type": "account", "state": {"whatever": true}});
        s.save_snapshot("account-a", 24, foreign.to_string().as_bytes())
            .await
            .unwrap();
        let replayed = accounts.load("a").await.unwrap();
        assert_eq!(replayed.snapshot_version, None);
        assert_eq!(replayed.replayed, 25);
        assert_eq!(replayed.state, loaded.state);
        // Snapshotting on demand brings it back.
        assert_eq!(accounts.snapshot("a").await.unwrap(), Some(24));
        assert_eq!(accounts.load("a").await.unwrap().replayed, 0);
    }

    pub async fn oversized_event_is_typed_and_writes_nothing<S: EventStore + Clone + 'static>(
        s: S,
    ) {
        let orders: Repository<Order, S> = Repository::new(s.clone());
        orders
            .handle(
                "o",
                "c",
                None,
                &OrderCommand::CreateOrder {
                    customer_id: "c".into(),
                },
            )
            .await
            .unwrap();
        let huge = OrderCommand::AddItem {
            sku: "x".repeat(300 * 1024),
            quantity: 1,
            unit_price_cents: 1,
        };
        match orders.handle("o", "big", None, &huge).await {
            Err(HandleError::Cqrs(CqrsError::EventTooLarge {
                event_type,
                size,
                limit,
            })) => {
                assert_eq!(event_type, "ItemAdded");
                assert!(size > limit);
            }
            r => panic!("expected EventTooLarge, got {r:?}"),
        }
        assert_eq!(stream_len(&s, "order-o").await, 1);
        assert_eq!(stream_len(&s, "$cmd-order-big").await, 0);
    }

    pub async fn projection_is_durable_across_restarts_and_leased<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let orders: Repository<Order, S> = Repository::new(s.clone());
        let store = dyn_store(&s);
        for o in 0..5 {
            let id = format!("o{o}");
            orders
                .handle(
                    &id,
                    &format!("{id}-c"),
                    None,
                    &OrderCommand::CreateOrder {
                        customer_id: "alice".into(),
                    },
                )
                .await
                .unwrap();
            orders
                .handle(
                    &id,
                    &format!("{id}-a"),
                    None,
                    &OrderCommand::AddItem {
                        sku: "k".into(),
                        quantity: 2,
                        unit_price_cents: 150,
                    },
                )
                .await
                .unwrap();
        }
        let a = spawn_projection(store.clone(), Arc::new(OrdersProjection), runner("a"));
        let b = spawn_projection(store.clone(), Arc::new(OrdersProjection), runner("b"));
        let rm = ReadModels::new(store.clone());
        poll_until("the listing of alice", Duration::from_secs(20), || async {
            let d = rm.get("orders", "customer/alice").await.unwrap()?;
            (d["order_count"] == json!(5)).then_some(())
        })
        .await;
        // Exactly one leader.
        let leaders = [a.status().leader, b.status().leader];
        assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");
        let (leader, follower) = if leaders[0] { (a, b) } else { (b, a) };
        // The fenced checkpoint follows the committed position.
        let st = leader
            .wait_for(Duration::from_secs(10), |s| s.position.is_some())
            .await
            .unwrap();
        assert_eq!(
            s.load_checkpoint("$proj/orders").await.unwrap(),
            st.position
        );
        // The leader stops: the follower takes over and continues without re-applying.
        leader.stop().await;
        orders
            .handle(
                "o0",
                "o0-b",
                None,
                &OrderCommand::AddItem {
                    sku: "k".into(),
                    quantity: 1,
                    unit_price_cents: 100,
                },
            )
            .await
            .unwrap();
        orders
            .handle("o0", "o0-x", None, &OrderCommand::ConfirmOrder)
            .await
            .unwrap();
        let doc = poll_until("o0 confirmed", Duration::from_secs(20), || async {
            let d = rm.get("orders", "order/o0").await.unwrap()?;
            (d["status"] == json!("Confirmed")).then_some(d)
        })
        .await;
        assert!(follower.status().leader);
        // Counters were applied exactly once across the handover.
        assert_eq!(doc["item_count"], json!(3));
        assert_eq!(doc["total_cents"], json!(400));
        assert_eq!(doc["customer_id"], json!("alice"));
        let listing = rm.get("orders", "customer/alice").await.unwrap().unwrap();
        assert_eq!(listing["orders"]["o0"]["status"], json!("Confirmed"));
        assert_eq!(listing["orders"]["o1"]["status"], json!("Draft"));
        follower.stop().await;
        // A third runner resumes from the durable position: nothing is applied twice.
        let c = spawn_projection(store.clone(), Arc::new(OrdersProjection), runner("c"));
        c.wait_for(Duration::from_secs(20), |s| s.leader && s.caught_up)
            .await
            .unwrap();
        let doc = rm.get("orders", "order/o0").await.unwrap().unwrap();
        assert_eq!(doc["item_count"], json!(3));
        assert_eq!(
            c.status().events_applied,
            0,
            "resumed after the last commit"
        );
        c.stop().await;
    }

    pub async fn rebuild_from_zero_reports_progress_and_switches_generation<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let orders: Repository<Order, S> = Repository::new(s.clone());
        let store = dyn_store(&s);
        for o in 0..40 {
            let id = format!("r{o}");
            orders
                .handle(
                    &id,
                    &format!("{id}-c"),
                    None,
                    &OrderCommand::CreateOrder {
                        customer_id: format!("cust{}", o % 4),
                    },
                )
                .await
                .unwrap();
        }
        let p = spawn_projection(store.clone(), Arc::new(OrdersProjection), runner("p"));
        let rm = ReadModels::new(store.clone());
        p.wait_for(Duration::from_secs(20), |s| s.caught_up)
            .await
            .unwrap();
        let before = rm.get("orders", "customer/cust1").await.unwrap().unwrap();
        assert_eq!(before["order_count"], json!(10));
        let mut progress = p.watch();
        p.rebuild().await.unwrap();
        let mut seen_partial = Vec::new();
        let done = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                progress.changed().await.unwrap();
                let st = progress.borrow_and_update().clone();
                if let Some(r) = st.rebuild {
                    if r.done {
                        return (st.generation, r);
                    }
                    seen_partial.push(r.events_read);
                }
            }
        })
        .await
        .expect("the rebuild finishes");
        let (generation, r) = done;
        assert_eq!(generation, 2);
        assert_eq!(r.generation, 2);
        assert_eq!(
            r.events_read, 40,
            "every order event replayed from position zero"
        );
        assert!(r.events_per_sec > 0.0);
        assert!(
            seen_partial.windows(2).all(|w| w[0] <= w[1]),
            "{seen_partial:?}"
        );
        let after = rm.get("orders", "customer/cust1").await.unwrap().unwrap();
        assert_eq!(after, before);
        // The new generation keeps following live events.
        orders
            .handle(
                "r1",
                "r1-a",
                None,
                &OrderCommand::AddItem {
                    sku: "k".into(),
                    quantity: 1,
                    unit_price_cents: 5,
                },
            )
            .await
            .unwrap();
        poll_until(
            "r1 updated in generation 2",
            Duration::from_secs(20),
            || async {
                let d = rm.get("orders", "order/r1").await.unwrap()?;
                (d["item_count"] == json!(1)).then_some(())
            },
        )
        .await;
        p.stop().await;
    }
}
