//! PostgreSQL-only behaviour: the global order under concurrent transactions (the sequence-gap
//! problem), several servers over one database, migrations, transactions. Needs
//! `$OUTRIDER_TEST_PG` (these tests FAIL when it is unset; see tests/common).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ev, fresh_schema, pg_config, poll_until, PgTestDb};
use outrider_store::{
    EventStore, ExpectedVersion as EV, PgStore, StoreError, StreamAppend, Subscription,
};
use serde_json::json;

/// Collects `n` events from a subscription, failing at the deadline.
async fn collect<S: EventStore>(sub: &mut Subscription<S>, n: usize) -> Vec<outrider_store::Event> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let b = tokio::time::timeout(left, sub.next_batch(64))
            .await
            .unwrap_or_else(|_| panic!("subscription stalled at {} of {n} events", out.len()))
            .unwrap();
        out.extend(b.events);
    }
    out
}

async fn naive_positions(s: &PgStore) -> Vec<i64> {
    s.with_client(async |c| {
        c.query("SELECT position FROM events ORDER BY position", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transaction_held_open_is_not_skipped() {
    let db = PgTestDb::create().await;
    let s = db.store.clone();
    let other = db.another_server().await;
    let mut sub = Subscription::new(s.clone(), None, None);
    assert!(sub.next_batch(10).await.unwrap().caught_up);

    // A slow transaction takes a position and stays open...
    let mut slow = s.begin().await.unwrap();
    let p_slow = slow
        .append("slow", EV::Any, vec![ev("slow-1", json!({}))])
        .await
        .unwrap()
        .positions[0];
    // ...while a later append, on another server, commits with a larger position.
    let p_fast = other
        .append("fast", EV::Any, vec![ev("fast-1", json!({}))])
        .await
        .unwrap()
        .positions[0];
    assert!(p_fast > p_slow, "the later append took the later position");
    // The hazard is real: by position, a reader now sees p_fast and not p_slow; a cursor
    // "position > last seen" would move past p_slow and never read it.
    assert_eq!(naive_positions(&s).await, vec![p_fast as i64]);
    // The store hands out nothing that an open transaction could still precede.
    assert!(s.read_all(None, 10).await.unwrap().is_empty());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next_batch(10))
            .await
            .is_err(),
        "nothing may be delivered while an earlier transaction is still open"
    );
    let p_fast2 = s
        .append("fast", EV::Any, vec![ev("fast-2", json!({}))])
        .await
        .unwrap()
        .positions[0];
    slow.commit().await.unwrap();

    // Every event exactly once, the slow one first: its transaction began first.
    let got = collect(&mut sub, 3).await;
    let ids: Vec<_> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec!["slow-1", "fast-1", "fast-2"]);
    assert_eq!(
        got.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![p_slow, p_fast, p_fast2]
    );
    // read_all agrees, and a cursor at the slow event continues with the fast ones.
    let all = s.read_all(None, 10).await.unwrap();
    assert_eq!(all, got);
    let after_slow = s.read_all(Some(p_slow), 10).await.unwrap();
    assert_eq!(after_slow, got[1..].to_vec());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sub.next_batch(10))
            .await
            .is_err()
    );
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_on_two_servers_subscribers_see_every_event_once_in_order() {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 60;
    // Per writer: every third round is a transaction with two appends (2 events), others 1.
    const PER_WRITER: usize = ROUNDS / 3 * 2 + (ROUNDS - ROUNDS / 3);
    const SLOW: usize = 3;
    const TOTAL: usize = WRITERS * PER_WRITER + SLOW;

    let db = PgTestDb::create().await;
    let servers = [db.store.clone(), db.another_server().await];
    let committed = Arc::new(AtomicUsize::new(0));
    let max_committed_position = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let subscribers: Vec<_> = servers
        .iter()
        .map(|s| {
            let mut sub = Subscription::new(s.clone(), None, None);
            tokio::spawn(async move { collect(&mut sub, TOTAL).await })
        })
        .collect();

    // A slow transaction on server 1: one append, then it waits until 100 later events have
    // committed, appends twice more and commits.
    let slow = {
        let s = servers[1].clone();
        let committed = committed.clone();
        let max_pos = max_committed_position.clone();
        tokio::spawn(async move {
            let mut tx = s.begin().await.unwrap();
            let first = tx
                .append("slow-a", EV::NoStream, vec![ev("slow-1", json!({}))])
                .await
                .unwrap()
                .positions[0];
            poll_until("100 later commits", Duration::from_secs(60), || {
                let n = committed.load(Ordering::SeqCst);
                async move { (n >= 100).then_some(()) }
            })
            .await;
            tx.append(
                "slow-b",
                EV::Any,
                vec![ev("slow-2", json!({})), ev("slow-3", json!({}))],
            )
            .await
            .unwrap();
            let overtaken = max_pos.load(Ordering::SeqCst);
            tx.commit().await.unwrap();
            (first, overtaken)
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let s = servers[w % 2].clone();
            let committed = committed.clone();
            let max_pos = max_committed_position.clone();
            tokio::spawn(async move {
                for i in 0..ROUNDS {
                    let stream = format!("w{w}");
                    let positions = if i % 3 == 0 {
                        let mut tx = s.begin().await.unwrap();
                        let mut p = tx
                            .append(&stream, EV::Any, vec![ev(&format!("{w}-{i}"), json!({}))])
                            .await
                            .unwrap()
                            .positions;
                        tokio::task::yield_now().await;
                        p.extend(
                            tx.append(
                                &format!("{stream}-side"),
                                EV::Any,
                                vec![ev(&format!("{w}-{i}-side"), json!({}))],
                            )
                            .await
                            .unwrap()
                            .positions,
                        );
                        tx.commit().await.unwrap();
                        p
                    } else {
                        s.append(&stream, EV::Any, vec![ev(&format!("{w}-{i}"), json!({}))])
                            .await
                            .unwrap()
                            .positions
                    };
                    committed.fetch_add(positions.len(), Ordering::SeqCst);
                    for p in positions {
                        max_pos.fetch_max(p, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let (slow_first, overtaken) = slow.await.unwrap();
    assert!(
        slow_first < overtaken,
        "the slow transaction's position {slow_first} was overtaken by commits up to {overtaken}"
    );

    let mut orders = Vec::new();
    let mut first_got = Vec::new();
    for sub in subscribers {
        let got = sub.await.unwrap();
        assert_eq!(got.len(), TOTAL);
        let ids: HashSet<_> = got.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), TOTAL, "no event twice");
        assert!(ids.contains("slow-1") && ids.contains("slow-3"));
        orders.push(got.iter().map(|e| e.position).collect::<Vec<_>>());
        if first_got.is_empty() {
            first_got = got;
        }
    }
    // Both servers' subscribers saw the store's one global order, which read_all repeats.
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = servers[0].read_all(after, 100).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        all.extend(page.iter().map(|e| e.position));
    }
    assert_eq!(orders[0], all);
    assert_eq!(orders[1], all);
    // One transaction's events are contiguous in the global order, in their append order.
    let at = first_got
        .iter()
        .position(|e| e.id == "slow-1")
        .expect("slow-1 delivered");
    let ids: Vec<_> = first_got[at..at + 3]
        .iter()
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(ids, vec!["slow-1", "slow-2", "slow-3"]);
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_versioned_idempotent_and_safe_for_concurrent_starters() {
    let schema = fresh_schema();
    let starters: Vec<_> = (0..4)
        .map(|_| {
            let cfg = pg_config(&schema, |_| {});
            tokio::spawn(async move { PgStore::connect(cfg).await })
        })
        .collect();
    let mut stores = Vec::new();
    for s in starters {
        stores.push(s.await.unwrap().expect("every concurrent starter succeeds"));
    }
    let versions = |s: PgStore| async move {
        s.with_client(async |c| {
            c.query(
                "SELECT version, name FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };
    assert_eq!(
        versions(stores[0].clone()).await,
        vec![(1, "event store".to_string())]
    );
    // Starting again applies nothing.
    let again = PgStore::connect(pg_config(&schema, |_| {})).await.unwrap();
    assert_eq!(
        versions(again.clone()).await,
        vec![(1, "event store".to_string())]
    );
    again
        .append("s", EV::Any, vec![ev("a", json!({}))])
        .await
        .unwrap();
    assert_eq!(stores[3].stream_version("s").await.unwrap(), Some(0));
    // A database migrated by a newer build refuses this one.
    again
        .with_client(async |c| {
            c.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')",
                &[],
            )
            .await
            .unwrap()
        })
        .await
        .unwrap();
    match PgStore::connect(pg_config(&schema, |_| {})).await {
        Err(StoreError::SchemaTooNew { found, known }) => assert_eq!((found, known), (999, 1)),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let db = PgTestDb {
        store: again,
        schema,
    };
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_holder_among_racing_servers() {
    let db = PgTestDb::create().await;
    let mut servers = vec![db.store.clone()];
    for _ in 0..2 {
        servers.push(db.another_server().await);
    }
    for round in 0..5 {
        let consumer = format!("bus-target-{round}");
        let racers: Vec<_> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.clone();
                let consumer = consumer.clone();
                tokio::spawn(async move {
                    s.acquire_lease(&consumer, &format!("server-{i}"), Duration::from_secs(30))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = Vec::new();
        for r in racers {
            if let Some(l) = r.await.unwrap() {
                winners.push(l);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one server holds {consumer}");
        assert_eq!(winners[0].token, 1);
    }
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_roll_back_on_drop_and_on_request() {
    let db = PgTestDb::create().await;
    let s = db.store.clone();
    let mut tx = s.begin().await.unwrap();
    tx.append("t", EV::NoStream, vec![ev("a", json!({}))])
        .await
        .unwrap();
    // A refusal inside a transaction leaves it usable.
    assert!(matches!(
        tx.append("t", EV::NoStream, vec![ev("b", json!({}))]).await,
        Err(StoreError::WrongExpectedVersion {
            actual: Some(0),
            ..
        })
    ));
    tx.rollback().await.unwrap();
    assert_eq!(s.stream_version("t").await.unwrap(), None);

    let mut tx = s.begin().await.unwrap();
    tx.append("t", EV::NoStream, vec![ev("c", json!({}))])
        .await
        .unwrap();
    drop(tx);
    assert_eq!(s.stream_version("t").await.unwrap(), None);
    let r = s
        .append("t", EV::NoStream, vec![ev("d", json!({}))])
        .await
        .unwrap();
    // Readable once the dropped connection's transaction is gone.
    let all = poll_until("the append to be readable", Duration::from_secs(20), || {
        let s = s.clone();
        async move {
            let all = s.read_all(None, 10).await.unwrap();
            (!all.is_empty()).then_some(all)
        }
    })
    .await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].position, r.positions[0]);
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_named() {
    let mut cfg = pg_config("x", |_| {});
    cfg.schema = "Robert'); DROP TABLE".into();
    assert!(matches!(
        PgStore::connect(cfg).await,
        Err(StoreError::Config(m)) if m.contains("schema")
    ));
    let mut cfg = pg_config("x", |_| {});
    cfg.url = "host=127.0.0.1 port=notaport".into();
    assert!(matches!(
        PgStore::connect(cfg).await,
        Err(StoreError::Config(m)) if m.contains("url")
    ));
}

/// Waits until some transaction waits for a stream's row lock in this store's schema.
async fn until_someone_waits_on_a_stream(s: &PgStore) {
    poll_until(
        "a transaction to wait for a stream lock",
        Duration::from_secs(20),
        || {
            let s = s.clone();
            async move {
                let n: i64 = s
                    .with_client(async |c| {
                        c.query_one(
                            "SELECT count(*) FROM pg_locks \
                         WHERE locktype = 'tuple' AND relation = 'streams'::regclass",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0)
                    })
                    .await
                    .unwrap();
                (n > 0).then_some(())
            }
        },
    )
    .await;
}

/// In the global order, each stream's events must come in version order.
async fn assert_streams_in_version_order(s: &PgStore) {
    let all = poll_until("everything to be readable", Duration::from_secs(20), || {
        let s = s.clone();
        async move {
            let all = s.read_all(None, 1000).await.unwrap();
            let n: i64 = s
                .with_client(async |c| {
                    c.query_one("SELECT count(*) FROM events", &[])
                        .await
                        .unwrap()
                        .get(0)
                })
                .await
                .unwrap();
            (all.len() as i64 == n).then_some(all)
        }
    })
    .await;
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    for e in &all {
        if let Some(prev) = last.insert(e.stream.clone(), e.version) {
            assert_eq!(
                e.version,
                prev + 1,
                "stream {} out of version order in the global order: {:?}",
                e.stream,
                all.iter()
                    .map(|e| (&e.stream, e.version))
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_transaction_cannot_append_after_a_younger_one() {
    let db = PgTestDb::create().await;
    let s = db.store.clone();
    s.append("b", EV::NoStream, vec![ev("b0", json!({}))])
        .await
        .unwrap();
    // The older transaction gets its id first (by writing to "a")...
    let mut older = s.begin().await.unwrap();
    older
        .append("a", EV::Any, vec![ev("a0", json!({}))])
        .await
        .unwrap();
    // ...the younger one appends to "b" and holds it...
    let mut younger = s.begin().await.unwrap();
    younger
        .append("b", EV::Any, vec![ev("b1", json!({}))])
        .await
        .unwrap();
    // ...the older one waits for "b", and the younger commits first.
    let waiting = tokio::spawn(async move {
        let r = older.append("b", EV::Any, vec![ev("b2", json!({}))]).await;
        (older, r)
    });
    until_someone_waits_on_a_stream(&s).await;
    younger.commit().await.unwrap();
    let (older, r) = waiting.await.unwrap();
    match r {
        Err(StoreError::TransactionConflict { stream, .. }) => assert_eq!(stream, "b"),
        other => panic!("expected a transaction conflict, got {other:?}"),
    }
    older.rollback().await.unwrap();
    // Retried as a new transaction, it goes through.
    let mut retry = s.begin().await.unwrap();
    retry
        .append("a", EV::Any, vec![ev("a0", json!({}))])
        .await
        .unwrap();
    let r = retry
        .append("b", EV::Any, vec![ev("b2", json!({}))])
        .await
        .unwrap();
    assert_eq!(r.versions, vec![2]);
    retry.commit().await.unwrap();
    assert_streams_in_version_order(&s).await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_retry_so_streams_stay_in_version_order() {
    let db = PgTestDb::create().await;
    let s = db.store.clone();
    for stream in ["0first", "a", "b"] {
        s.append(
            stream,
            EV::NoStream,
            vec![ev(&format!("{stream}-0"), json!({}))],
        )
        .await
        .unwrap();
    }
    let mut blocker = s.begin().await.unwrap();
    blocker
        .append("a", EV::Any, vec![ev("a-blocker", json!({}))])
        .await
        .unwrap();
    // The batch locks "0first" (taking its transaction id), then waits for "a".
    let batch = {
        let s = s.clone();
        tokio::spawn(async move {
            let one = |stream: &str| StreamAppend {
                stream: stream.into(),
                expected: EV::Any,
                events: vec![ev(&format!("{stream}-batch"), json!({}))],
            };
            s.append_batch(vec![one("b"), one("a"), one("0first")], None)
                .await
        })
    };
    until_someone_waits_on_a_stream(&s).await;
    // A younger transaction appends to "b" and commits before the batch gets there.
    let mut younger = s.begin().await.unwrap();
    younger
        .append("b", EV::Any, vec![ev("b-younger", json!({}))])
        .await
        .unwrap();
    younger.commit().await.unwrap();
    blocker.commit().await.unwrap();
    let r = batch
        .await
        .unwrap()
        .expect("the batch succeeds after a retry");
    // Results in request order: b, a, 0first.
    assert_eq!(r[0].versions, vec![2], "after b-younger");
    assert_eq!(r[1].versions, vec![2], "after a-blocker");
    assert_eq!(r[2].versions, vec![1]);
    assert_streams_in_version_order(&s).await;
    db.drop_schema().await;
}
