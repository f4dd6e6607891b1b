//! The reference domains on both backends: orders, banking (transfers as a process manager,
//! fraud checks, snapshots every 100 events), inventory (no overselling with 50 concurrent
//! reservers, low stock).

#[macro_use]
mod common;

both!(
    order_state_machine_and_read_models,
    banking_balances_audit_trail_fraud_and_snapshots,
    banking_transfers_complete_or_are_refunded_idempotently,
    fifty_concurrent_reservers_never_oversell,
    inventory_multi_warehouse_sales_releases_and_low_stock,
);

mod cases {
    use std::sync::Arc;
    use std::time::Duration;

    use outrider_cqrs::domains::banking::{
        spawn_transfer_manager, Account, AccountCommand as AC, AccountStatus, BankError,
        BankingProjection,
    };
    use outrider_cqrs::domains::inventory::{
        InventoryCommand as IC, InventoryError, InventoryProjection, Product,
    };
    use outrider_cqrs::domains::orders::{
        Order, OrderCommand as OC, OrderError, OrderStatus, OrdersProjection,
    };
    use outrider_cqrs::{spawn_projection, HandleError, ReadModels, Repository};
    use outrider_store::EventStore;
    use serde_json::json;

    use crate::common::{dyn_store, poll_until, runner};

    fn domain<E: std::fmt::Debug>(r: Result<outrider_cqrs::Outcome, HandleError<E>>) -> E {
        match r {
            Err(HandleError::Domain(e)) => e,
            other => panic!("expected a domain error, got {other:?}"),
        }
    }

    pub async fn order_state_machine_and_read_models<S: EventStore + Clone + 'static>(s: S) {
        let orders: Repository<Order, S> = Repository::new(s.clone());
        let p = spawn_projection(dyn_store(&s), Arc::new(OrdersProjection), runner("o"));
        let add = |sku: &str, q: u32| OC::AddItem {
            sku: sku.into(),
            quantity: q,
            unit_price_cents: 250,
        };
        assert_eq!(
            domain(orders.handle("o1", "1", None, &add("a", 1)).await),
            OrderError::NotFound
        );
        assert_eq!(
            domain(orders.handle("o1", "2", None, &OC::ConfirmOrder).await),
            OrderError::NotFound
        );
        orders
            .handle(
                "o1",
                "3",
                None,
                &OC::CreateOrder {
                    customer_id: "bob".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            domain(
                orders
                    .handle(
                        "o1",
                        "4",
                        None,
                        &OC::CreateOrder {
                            customer_id: "bob".into()
                        }
                    )
                    .await
            ),
            OrderError::AlreadyExists
        );
        assert_eq!(
            domain(orders.handle("o1", "5", None, &OC::ConfirmOrder).await),
            OrderError::Empty
        );
        assert!(matches!(
            domain(orders.handle("o1", "6", None, &add("a", 0)).await),
            OrderError::Invalid(_)
        ));
        orders.handle("o1", "7", None, &add("a", 2)).await.unwrap();
        orders.handle("o1", "8", None, &add("b", 1)).await.unwrap();
        orders
            .handle("o1", "9", None, &OC::ConfirmOrder)
            .await
            .unwrap();
        assert_eq!(
            domain(orders.handle("o1", "10", None, &add("c", 1)).await),
            OrderError::NotDraft(OrderStatus::Confirmed)
        );
        assert_eq!(
            domain(orders.handle("o1", "11", None, &OC::ConfirmOrder).await),
            OrderError::NotDraft(OrderStatus::Confirmed)
        );
        orders
            .handle(
                "o1",
                "12",
                None,
                &OC::CancelOrder {
                    reason: "changed mind".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            domain(
                orders
                    .handle(
                        "o1",
                        "13",
                        None,
                        &OC::CancelOrder {
                            reason: String::new()
                        }
                    )
                    .await
            ),
            OrderError::AlreadyCancelled
        );
        let st = orders.load("o1").await.unwrap();
        assert_eq!(st.state.status, OrderStatus::Cancelled);
        assert_eq!(st.state.total_cents, 750);
        assert_eq!(st.version, Some(4));
        orders
            .handle(
                "o2",
                "14",
                None,
                &OC::CreateOrder {
                    customer_id: "bob".into(),
                },
            )
            .await
            .unwrap();
        let rm = ReadModels::new(dyn_store(&s));
        let listing = poll_until("bob's listing", Duration::from_secs(20), || async {
            let d = rm.get("orders", "customer/bob").await.unwrap()?;
            (d["order_count"] == json!(2)).then_some(d)
        })
        .await;
        assert_eq!(listing["orders"]["o1"]["status"], json!("Cancelled"));
        assert_eq!(listing["orders"]["o1"]["total_cents"], json!(750));
        assert_eq!(listing["orders"]["o2"]["status"], json!("Draft"));
        let summary = rm.get("orders", "order/o1").await.unwrap().unwrap();
        assert_eq!(summary["item_count"], json!(3));
        assert_eq!(summary["status"], json!("Cancelled"));
        assert_eq!(summary["version"], json!(4));
        p.stop().await;
    }

    pub async fn banking_balances_audit_trail_fraud_and_snapshots<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let accounts: Repository<Account, S> = Repository::new(s.clone());
        assert_eq!(
            domain(
                accounts
                    .handle("a", "0", None, &AC::Deposit { amount_cents: 5 })
                    .await
            ),
            BankError::NotOpen
        );
        accounts
            .handle(
                "a",
                "1",
                None,
                &AC::OpenAccount {
                    owner: "ann".into(),
                },
            )
            .await
            .unwrap();
        accounts
            .handle("a", "2", None, &AC::Deposit { amount_cents: 1000 })
            .await
            .unwrap();
        assert_eq!(
            domain(
                accounts
                    .handle("a", "3", None, &AC::Withdraw { amount_cents: 1001 })
                    .await
            ),
            BankError::InsufficientFunds {
                balance_cents: 1000,
                requested_cents: 1001
            }
        );
        assert_eq!(
            domain(
                accounts
                    .handle("a", "3b", None, &AC::Withdraw { amount_cents: 0 })
                    .await
            ),
            BankError::InvalidAmount
        );
        // Velocity: the 4th withdrawal within the window is suspicious (it still happens).
        for i in 0..4 {
            accounts
                .handle(
                    "a",
                    &format!("w{i}"),
                    None,
                    &AC::Withdraw { amount_cents: 100 },
                )
                .await
                .unwrap();
        }
        let (trail, end) = accounts.history("a", 0, 1000).await.unwrap();
        assert!(end);
        let types: Vec<&str> = trail.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "AccountOpened",
                "Deposited",
                "Withdrawn",
                "Withdrawn",
                "Withdrawn",
                "Withdrawn",
                "FraudSuspected"
            ]
        );
        assert!(trail[6].data["reason"]
            .as_str()
            .unwrap()
            .starts_with("velocity"));
        assert_eq!(trail[6].command_id, "w3");
        // A large amount is suspicious on its own.
        accounts
            .handle("big", "big-1", None, &AC::OpenAccount { owner: "b".into() })
            .await
            .unwrap();
        accounts
            .handle(
                "big",
                "big-2",
                None,
                &AC::Deposit {
                    amount_cents: 5_000_000,
                },
            )
            .await
            .unwrap();
        let o = accounts
            .handle(
                "big",
                "big-3",
                None,
                &AC::Withdraw {
                    amount_cents: 2_000_000,
                },
            )
            .await
            .unwrap();
        assert_eq!(o.events.len(), 2);
        assert_eq!(o.events[1].event_type, "FraudSuspected");
        assert!(o.events[1].data["reason"]
            .as_str()
            .unwrap()
            .starts_with("amount"));
        // Closing needs a zero balance.
        assert_eq!(
            domain(accounts.handle("a", "c1", None, &AC::CloseAccount).await),
            BankError::BalanceNotZero(600)
        );
        accounts
            .handle("a", "c2", None, &AC::Withdraw { amount_cents: 600 })
            .await
            .unwrap();
        accounts
            .handle("a", "c3", None, &AC::CloseAccount)
            .await
            .unwrap();
        assert_eq!(
            accounts.load("a").await.unwrap().state.status,
            AccountStatus::Closed
        );
        // Snapshots every 100 events: 150 events → a snapshot at version 99, 50 replayed.
        accounts
            .handle("s", "open", None, &AC::OpenAccount { owner: "s".into() })
            .await
            .unwrap();
        for i in 0..149 {
            accounts
                .handle(
                    "s",
                    &format!("d{i}"),
                    None,
                    &AC::Deposit { amount_cents: 1 },
                )
                .await
                .unwrap();
        }
        let l = accounts.load("s").await.unwrap();
        assert_eq!(
            (l.snapshot_version, l.replayed, l.version),
            (Some(99), 50, Some(149))
        );
        assert_eq!(l.state.balance_cents, 149);
        // The fraud read model lists the alerts.
        let p = spawn_projection(dyn_store(&s), Arc::new(BankingProjection), runner("b"));
        let rm = ReadModels::new(dyn_store(&s));
        // The 4th withdrawal and the closing one (the 5th within the window).
        let f = poll_until("both fraud alerts", Duration::from_secs(20), || async {
            let d = rm.get("banking", "fraud/a").await.unwrap()?;
            (d["alerts"].as_array().map(Vec::len) == Some(2)).then_some(d)
        })
        .await;
        assert!(f["alerts"][1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("velocity"));
        let acc = poll_until("account s", Duration::from_secs(20), || async {
            let d = rm.get("banking", "account/s").await.unwrap()?;
            (d["version"] == json!(149)).then_some(d)
        })
        .await;
        assert_eq!(acc["balance_cents"], json!(149));
        p.stop().await;
    }

    pub async fn banking_transfers_complete_or_are_refunded_idempotently<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let accounts: Repository<Account, S> = Repository::new(s.clone());
        for (id, amount) in [("src", 1000u64), ("dst", 0), ("gone", 0)] {
            accounts
                .handle(
                    id,
                    &format!("open-{id}"),
                    None,
                    &AC::OpenAccount { owner: id.into() },
                )
                .await
                .unwrap();
            if amount > 0 {
                accounts
                    .handle(
                        id,
                        &format!("dep-{id}"),
                        None,
                        &AC::Deposit {
                            amount_cents: amount,
                        },
                    )
                    .await
                    .unwrap();
            }
        }
        accounts
            .handle("gone", "close-gone", None, &AC::CloseAccount)
            .await
            .unwrap();
        let pm = spawn_transfer_manager(s.clone(), runner("pm"));
        let p = spawn_projection(dyn_store(&s), Arc::new(BankingProjection), runner("bp"));
        let rm = ReadModels::new(dyn_store(&s));
        // A transfer that cannot debit is refused at once.
        assert!(matches!(
            domain(
                accounts
                    .handle(
                        "src",
                        "t0",
                        None,
                        &AC::Transfer {
                            transfer_id: "t0".into(),
                            to_account: "dst".into(),
                            amount_cents: 5000
                        }
                    )
                    .await
            ),
            BankError::InsufficientFunds { .. }
        ));
        // t1: src → dst completes.
        accounts
            .handle(
                "src",
                "t1",
                None,
                &AC::Transfer {
                    transfer_id: "t1".into(),
                    to_account: "dst".into(),
                    amount_cents: 300,
                },
            )
            .await
            .unwrap();
        // t2: src → a closed account is refunded.
        accounts
            .handle(
                "src",
                "t2",
                None,
                &AC::Transfer {
                    transfer_id: "t2".into(),
                    to_account: "gone".into(),
                    amount_cents: 200,
                },
            )
            .await
            .unwrap();
        // t3: src → an account that never existed is refunded too.
        accounts
            .handle(
                "src",
                "t3",
                None,
                &AC::Transfer {
                    transfer_id: "t3".into(),
                    to_account: "nobody".into(),
                    amount_cents: 100,
                },
            )
            .await
            .unwrap();
        for (t, status) in [("t1", "completed"), ("t2", "refunded"), ("t3", "refunded")] {
            poll_until(
                &format!("transfer {t} {status}"),
                Duration::from_secs(20),
                || async {
                    let d = rm.get("banking", &format!("transfer/{t}")).await.unwrap()?;
                    (d["status"] == json!(status)).then_some(())
                },
            )
            .await;
        }
        // The source's pending transfers settle too (the read model may run ahead of them).
        poll_until("src settled", Duration::from_secs(20), || async {
            let l = accounts.load("src").await.unwrap();
            l.state.pending_transfers.is_empty().then_some(())
        })
        .await;
        let src = accounts.load("src").await.unwrap().state;
        let dst = accounts.load("dst").await.unwrap().state;
        let gone = accounts.load("gone").await.unwrap().state;
        assert_eq!(
            (src.balance_cents, dst.balance_cents, gone.balance_cents),
            (700, 300, 0)
        );
        // Idempotent by transfer id: the same transfer sent again (another command id) does
        // nothing, and so do re-sent process-manager steps.
        let again = accounts
            .handle(
                "src",
                "t1-again",
                None,
                &AC::Transfer {
                    transfer_id: "t1".into(),
                    to_account: "dst".into(),
                    amount_cents: 300,
                },
            )
            .await
            .unwrap();
        assert!(again.events.is_empty());
        let credit = accounts
            .handle(
                "dst",
                "replayed-credit",
                None,
                &AC::CreditTransfer {
                    transfer_id: "t1".into(),
                    from_account: "src".into(),
                    amount_cents: 300,
                },
            )
            .await
            .unwrap();
        assert!(credit.events.is_empty());
        assert_eq!(accounts.load("dst").await.unwrap().state.balance_cents, 300);
        // The audit trail of the source shows the whole story.
        let (trail, _) = accounts.history("src", 0, 100).await.unwrap();
        let types: Vec<&str> = trail.iter().map(|e| e.event_type.as_str()).collect();
        for t in ["TransferDebited", "TransferCompleted", "TransferRefunded"] {
            assert!(types.contains(&t), "{types:?}");
        }
        // A restarted process manager resumes from its checkpoint and re-does nothing.
        let handled = pm.status().events_handled;
        assert!(handled > 0);
        pm.stop().await;
        let before = s.stream_version("account-src").await.unwrap();
        let pm2 = spawn_transfer_manager(s.clone(), runner("pm2"));
        let mut w = pm2.watch();
        tokio::time::timeout(
            Duration::from_secs(20),
            w.wait_for(|st| st.caught_up && st.leader),
        )
        .await
        .expect("pm2 catches up")
        .unwrap();
        assert_eq!(s.stream_version("account-src").await.unwrap(), before);
        pm2.stop().await;
        p.stop().await;
    }

    pub async fn fifty_concurrent_reservers_never_oversell<S: EventStore + Clone + 'static>(s: S) {
        let skus: Repository<Product, S> = Repository::new(s.clone());
        skus.handle(
            "k",
            "add",
            None,
            &IC::AddProduct {
                name: "widget".into(),
                low_stock_threshold: 10,
            },
        )
        .await
        .unwrap();
        skus.handle(
            "k",
            "stock",
            None,
            &IC::AdjustStock {
                warehouse: "w1".into(),
                delta: 100,
                reason: "receipt".into(),
            },
        )
        .await
        .unwrap();
        let (stock, qty) = (100u64, 3u64);
        let mut tasks = Vec::new();
        for i in 0..50 {
            let skus = skus.clone();
            tasks.push(tokio::spawn(async move {
                skus.handle(
                    "k",
                    &format!("reserve-{i}"),
                    None,
                    &IC::ReserveStock {
                        reservation_id: format!("r{i}"),
                        warehouse: "w1".into(),
                        quantity: qty,
                    },
                )
                .await
            }));
        }
        let (mut ok, mut out) = (0u64, 0u64);
        for t in tasks {
            match t.await.unwrap() {
                Ok(o) => {
                    assert!(!o.duplicate);
                    ok += 1;
                }
                Err(HandleError::Domain(InventoryError::OutOfStock {
                    warehouse,
                    requested,
                    available,
                })) => {
                    assert_eq!((warehouse.as_str(), requested), ("w1", qty));
                    assert!(available < qty);
                    out += 1;
                }
                Err(e) => panic!("expected success or OutOfStock, got {e:?}"),
            }
        }
        assert_eq!(
            ok,
            stock / qty,
            "exactly floor(stock/qty) reservations succeed"
        );
        assert_eq!(out, 50 - stock / qty);
        let l = skus.load("k").await.unwrap();
        let w = l.state.warehouses["w1"];
        assert_eq!((w.on_hand, w.reserved, w.available()), (100, 99, 1));
        assert_eq!(l.state.reservations.len() as u64, ok);
        // LowStock appeared exactly once, when available crossed below 10.
        let (trail, _) = skus.history("k", 0, 1000).await.unwrap();
        let lows: Vec<_> = trail
            .iter()
            .filter(|e| e.event_type == "LowStock")
            .collect();
        assert_eq!(lows.len(), 1);
        assert!(lows[0].data["available"].as_u64().unwrap() < 10);
    }

    pub async fn inventory_multi_warehouse_sales_releases_and_low_stock<
        S: EventStore + Clone + 'static,
    >(
        s: S,
    ) {
        let skus: Repository<Product, S> = Repository::new(s.clone());
        assert_eq!(
            domain(
                skus.handle(
                    "p",
                    "0",
                    None,
                    &IC::ReserveStock {
                        reservation_id: "r".into(),
                        warehouse: "w".into(),
                        quantity: 1
                    }
                )
                .await
            ),
            InventoryError::UnknownProduct
        );
        skus.handle(
            "p",
            "1",
            None,
            &IC::AddProduct {
                name: "gizmo".into(),
                low_stock_threshold: 5,
            },
        )
        .await
        .unwrap();
        skus.handle(
            "p",
            "2",
            None,
            &IC::AdjustStock {
                warehouse: "east".into(),
                delta: 4,
                reason: String::new(),
            },
        )
        .await
        .unwrap();
        skus.handle(
            "p",
            "3",
            None,
            &IC::AdjustStock {
                warehouse: "west".into(),
                delta: 6,
                reason: String::new(),
            },
        )
        .await
        .unwrap();
        // Availability is per warehouse.
        assert!(matches!(
            domain(
                skus.handle(
                    "p",
                    "4",
                    None,
                    &IC::ReserveStock {
                        reservation_id: "r1".into(),
                        warehouse: "east".into(),
                        quantity: 5
                    }
                )
                .await
            ),
            InventoryError::OutOfStock { available: 4, .. }
        ));
        skus.handle(
            "p",
            "5",
            None,
            &IC::ReserveStock {
                reservation_id: "r1".into(),
                warehouse: "west".into(),
                quantity: 5,
            },
        )
        .await
        .unwrap();
        // total available 10 → 5: not below 5 yet. Reserving 1 more crosses: LowStock.
        let o = skus
            .handle(
                "p",
                "6",
                None,
                &IC::ReserveStock {
                    reservation_id: "r2".into(),
                    warehouse: "east".into(),
                    quantity: 1,
                },
            )
            .await
            .unwrap();
        let types: Vec<&str> = o.events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["StockReserved", "LowStock"]);
        // Writing off reserved stock is refused.
        assert!(matches!(
            domain(
                skus.handle(
                    "p",
                    "7",
                    None,
                    &IC::AdjustStock {
                        warehouse: "west".into(),
                        delta: -2,
                        reason: String::new()
                    }
                )
                .await
            ),
            InventoryError::InsufficientOnHand { .. }
        ));
        skus.handle(
            "p",
            "8",
            None,
            &IC::RecordSale {
                reservation_id: "r1".into(),
            },
        )
        .await
        .unwrap();
        skus.handle(
            "p",
            "9",
            None,
            &IC::ReleaseStock {
                reservation_id: "r2".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            domain(
                skus.handle(
                    "p",
                    "10",
                    None,
                    &IC::ReleaseStock {
                        reservation_id: "r2".into()
                    }
                )
                .await
            ),
            InventoryError::UnknownReservation("r2".into())
        );
        let st = skus.load("p").await.unwrap().state;
        assert_eq!(st.warehouses["west"].on_hand, 1);
        assert_eq!(st.warehouses["east"].available(), 4);
        assert_eq!(st.available(), 5);
        let p = spawn_projection(dyn_store(&s), Arc::new(InventoryProjection), runner("i"));
        let rm = ReadModels::new(dyn_store(&s));
        let doc = poll_until("sku/p", Duration::from_secs(20), || async {
            let d = rm.get("inventory", "sku/p").await.unwrap()?;
            (d["version"] == json!(7)).then_some(d)
        })
        .await;
        assert_eq!(doc["available"], json!(5));
        assert_eq!(doc["warehouses"]["west"]["on_hand"], json!(1));
        assert_eq!(doc["warehouses"]["east"]["reserved"], json!(0));
        // Back at the threshold: no longer low.
        assert_eq!(doc["low_stock"], json!(false));
        let low = rm.get("inventory", "low-stock").await.unwrap().unwrap();
        assert_eq!(low["skus"], json!({}));
        p.stop().await;
    }
}
