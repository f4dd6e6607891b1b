//! CQRS benchmarks: loading a 100K-event aggregate with and without snapshots, and projection
//! catch-up throughput beside a bare subscription over the same events.
//!
//! ```text
//! cargo bench -p outrider-cqrs --bench cqrs -- [--events N] [--runs N] [--system sled|pg|all]
//! ```
//! (`pg`/`all` need `OUTRIDER_TEST_PG`, e.g. `eval "$(cloud/store/scripts/pg-test.sh start)"`.)
//!
//! * Load: one `account` aggregate of `--events` events (default 100,000: an OpenAccount and
//!   Deposits, ~150 B each) written straight into the store in appends of 1,000. `Repository::load`
//!   is timed (median of `--runs`, default 5) with no snapshot (a full replay), with a snapshot at
//!   the head (no tail), and with a snapshot and a 99-event tail (the worst case of a snapshot
//!   every 100 events).
//! * Catch-up: 20,000 orders × 5 events (100 customers) in the store, then the `orders`
//!   projection from position zero until caught up (documents and watermark committed per batch
//!   of 1,000 events), beside a bare `Subscription` over the same store (read + filter only, no
//!   decode into domain events, no writes). And the `banking` projection over the 100K-event
//!   account: one document rewritten per batch, so mostly the framework's own cost. Last, a
//!   rebuild of `orders` from position zero (a new generation) in batches of 10,000.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_cqrs::domains::banking::{Account, AccountEvent, BankingProjection};
use outrider_cqrs::domains::orders::{Order, OrderEvent, OrdersProjection};
use outrider_cqrs::repository::encode_event;
use outrider_cqrs::{spawn_projection, Repository, RunnerConfig};
use outrider_store::{
    EventStore, ExpectedVersion, PgConfig, PgStore, SledConfig, SledStore, StreamFilter,
    Subscription,
};

struct Opts {
    events: u64,
    runs: usize,
    sled: bool,
    pg: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        events: 100_000,
        runs: 5,
        sled: true,
        pg: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let next = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--events" => {
                o.events = next.parse().unwrap_or(o.events).max(2);
                i += 1;
            }
            "--runs" => {
                o.runs = next.parse().unwrap_or(o.runs).max(1);
                i += 1;
            }
            "--system" => {
                (o.sled, o.pg) = match next.as_str() {
                    "pg" => (false, true),
                    "all" => (true, true),
                    _ => (true, false),
                };
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    o
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn fill_account<S: EventStore>(s: &S, n: u64) {
    let mut batch = Vec::new();
    let mut balance = 0u64;
    for i in 0..n {
        let ev = if i == 0 {
            AccountEvent::AccountOpened {
                owner: "bench".into(),
            }
        } else {
            balance += 1;
            AccountEvent::Deposited {
                amount_cents: 1,
                balance_cents: balance,
            }
        };
        batch.push(encode_event::<Account>("bench", &format!("fill-{i}"), 0, &ev).expect("encode"));
        if batch.len() == 1000 || i + 1 == n {
            s.append(
                "account-bench",
                ExpectedVersion::Any,
                std::mem::take(&mut batch),
            )
            .await
            .expect("append");
        }
    }
}

async fn time_load<S: EventStore + Clone + 'static>(
    repo: &Repository<Account, S>,
    runs: usize,
) -> (Duration, usize, Option<u64>) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let l = repo.load("bench").await.expect("load");
        times.push(t.elapsed());
        last = Some(l);
    }
    let l = last.expect("at least one run");
    (median(times), l.replayed, l.version)
}

async fn fill_orders<S: EventStore>(s: &S, orders: u64) -> u64 {
    let mut n = 0;
    for o in 0..orders {
        let id = format!("b{o}");
        let evs = [
            OrderEvent::OrderCreated {
                customer_id: format!("cust{}", o % 100),
            },
            OrderEvent::ItemAdded {
                sku: "a".into(),
                quantity: 1,
                unit_price_cents: 100,
            },
            OrderEvent::ItemAdded {
                sku: "b".into(),
                quantity: 2,
                unit_price_cents: 50,
            },
            OrderEvent::ItemAdded {
                sku: "c".into(),
                quantity: 1,
                unit_price_cents: 10,
            },
            OrderEvent::OrderConfirmed { total_cents: 210 },
        ];
        let batch = evs
            .iter()
            .enumerate()
            .map(|(i, e)| encode_event::<Order>(&id, &format!("{id}-fill"), i, e).expect("encode"))
            .collect::<Vec<_>>();
        n += batch.len() as u64;
        s.append(&format!("order-{id}"), ExpectedVersion::NoStream, batch)
            .await
            .expect("append");
    }
    n
}

async fn bench<S: EventStore + Clone + 'static>(name: &str, s: S, o: &Opts) {
    eprintln!("[{name}] writing a {}-event aggregate", o.events);
    fill_account(&s, o.events).await;
    let repo: Repository<Account, S> = Repository::new(s.clone());
    let (full, replayed, v) = time_load(&repo, o.runs).await;
    println!(
        "| {name} | load, no snapshot (full replay) | {replayed} | {:.3} ms | version {v:?} |",
        full.as_secs_f64() * 1e3
    );
    repo.snapshot("bench").await.expect("snapshot");
    let (snap, replayed, v) = time_load(&repo, o.runs).await;
    println!(
        "| {name} | load, snapshot at the head | {replayed} | {:.3} ms | version {v:?} |",
        snap.as_secs_f64() * 1e3
    );
    let tail = (0..99u64)
        .map(|i| {
            encode_event::<Account>(
                "bench",
                &format!("tail-{i}"),
                0,
                &AccountEvent::Deposited {
                    amount_cents: 1,
                    balance_cents: o.events + i,
                },
            )
            .expect("encode")
        })
        .collect();
    s.append("account-bench", ExpectedVersion::Any, tail)
        .await
        .expect("append");
    let (snap_tail, replayed, v) = time_load(&repo, o.runs).await;
    println!(
        "| {name} | load, snapshot + 99-event tail | {replayed} | {:.3} ms | version {v:?} |",
        snap_tail.as_secs_f64() * 1e3
    );

    // Catch-up of a projection with one hot document (the account): the framework's cost.
    let store: Arc<dyn EventStore> = Arc::new(s.clone());
    let cfg = RunnerConfig {
        batch: 1000,
        ..RunnerConfig::default()
    };
    let t = Instant::now();
    let p = spawn_projection(store.clone(), Arc::new(BankingProjection), cfg);
    let st = p
        .wait_for(Duration::from_secs(600), |s| s.caught_up)
        .await
        .expect("projection catches up");
    let secs = t.elapsed().as_secs_f64();
    p.stop().await;
    println!(
        "| {name} | projection `banking` catch-up (1 account: 1 document per batch) | {} events | {:.0} events/s | |",
        st.events_applied,
        st.events_applied as f64 / secs
    );

    eprintln!("[{name}] writing 20,000 orders");
    let n = fill_orders(&s, 20_000).await;
    let store: Arc<dyn EventStore> = Arc::new(s.clone());
    // Bare subscription: read + filter only.
    let t = Instant::now();
    let mut sub = Subscription::new(
        store.clone(),
        None,
        Some(StreamFilter::Prefix("order-".into())),
    );
    let mut seen = 0u64;
    loop {
        let b = sub.next_batch(1000).await.expect("batch");
        if b.caught_up {
            break;
        }
        seen += b.events.len() as u64;
    }
    let bare = t.elapsed();
    let cfg = RunnerConfig {
        batch: 1000,
        ..RunnerConfig::default()
    };
    let t = Instant::now();
    let p = spawn_projection(store.clone(), Arc::new(OrdersProjection), cfg);
    let st = p
        .wait_for(Duration::from_secs(600), |s| s.caught_up)
        .await
        .expect("projection catches up");
    let proj = t.elapsed();
    p.stop().await;
    println!(
        "| {name} | projection `orders` catch-up (20K orders, 100 customers) | {} events | {:.0} events/s | bare subscription over the same store: {seen} events, {:.0} events/s ({:.2}×) |",
        st.events_applied,
        st.events_applied as f64 / proj.as_secs_f64(),
        seen as f64 / bare.as_secs_f64(),
        (st.events_applied as f64 / proj.as_secs_f64()) / (seen as f64 / bare.as_secs_f64()),
    );
    assert_eq!(st.events_applied, n);

    // Rebuild from position zero with batches of 10,000 (fewer rewrites of the listings).
    let cfg = RunnerConfig {
        batch: 10_000,
        ..RunnerConfig::default()
    };
    let p = spawn_projection(store.clone(), Arc::new(OrdersProjection), cfg);
    p.wait_for(Duration::from_secs(600), |s| s.caught_up)
        .await
        .expect("projection catches up");
    let t = Instant::now();
    p.rebuild().await.expect("rebuild");
    let st = p
        .wait_for(Duration::from_secs(600), |s| {
            s.rebuild.as_ref().is_some_and(|r| r.done)
        })
        .await
        .expect("rebuild finishes");
    let secs = t.elapsed().as_secs_f64();
    p.stop().await;
    let read = st.rebuild.map_or(0, |r| r.events_read);
    println!(
        "| {name} | projection `orders` rebuild from zero, batches of 10,000 | {read} events | {:.0} events/s | generation {} |",
        read as f64 / secs,
        st.generation
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = opts();
    println!("| backend | what | events | time / rate | note |");
    println!("| --- | --- | ---: | ---: | --- |");
    if o.sled {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStore::open(SledConfig::new(dir.path())).expect("open sled");
        bench("sled", s, &o).await;
    }
    if o.pg {
        let url = std::env::var("OUTRIDER_TEST_PG")
            .expect("OUTRIDER_TEST_PG must name a PostgreSQL server for --system pg|all");
        let mut cfg = PgConfig::new(url);
        cfg.schema = format!("cqrs_bench_{}", std::process::id());
        let s = PgStore::connect(cfg.clone()).await.expect("connect");
        bench("postgres", s.clone(), &o).await;
        let schema = cfg.schema.clone();
        let _ = s
            .with_client(async |c| {
                c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                    .await
            })
            .await;
    }
}
