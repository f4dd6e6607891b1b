//! Append and catch-up throughput of outrider-store's backends, with a bare-INSERT baseline on
//! the same PostgreSQL in the same run.
//!
//! ```text
//! eval "$(cloud/store/scripts/pg-test.sh start)"      # or any OUTRIDER_TEST_PG
//! cargo bench -p outrider-store --bench store -- [--secs S] [--runs N] [--sled-writers N,..]
//!     [--pg-writers N,..] [--system sled|pg|all]
//! ```
//!
//! * Append rows: N writer tasks (tokio, 2 worker threads), each on its own stream, append ONE
//!   event per call with `ExpectedVersion::Exact(v)` (`NoStream` first), as an aggregate
//!   repository does. A 0.5 s warm-up, then a `--secs` window (default 3 s) counting the appends
//!   completed inside it; the table shows the median of `--runs` runs (default 3), the systems
//!   of a row interleaved run by run (store, bare, bare + indexes, store, ...) so that load from
//!   elsewhere on the machine hits them alike. Events: ~256 B (a 200-byte JSON detail), ids
//!   assigned by the store.
//! * sled: the embedded store in durable mode (group commit, fdatasync before acknowledging),
//!   beside the runtime's `Log` alone under the same load (what the wrapper costs), each on a
//!   fresh directory.
//! * PostgreSQL: `PgStore` with a pool of N connections, beside two baselines over N connections
//!   of their own, each writer one prepared statement: **bare INSERT** — the same row (the
//!   store's encoded payload, stream id, version, event id, local flag) into a table with only a
//!   primary key — and **bare INSERT + indexes** — the same table with the store's four indexes.
//!   Autocommit, so each INSERT is one transaction as each append is.
//! * Catch-up: a `Subscription` from the beginning over everything the append rows wrote, in
//!   pages of 1,000, until caught up: events/s delivered (decoded). For PostgreSQL beside it, a
//!   bare keyset scan (`position > $1 ORDER BY position LIMIT 1000`, same decode).
//! * Scratch: a temporary directory for sled, a fresh schema `bench_<pid>` for PostgreSQL (dropped
//!   at the end). Results: a Markdown table on stdout; progress on stderr.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_store::{
    Event, EventStore, ExpectedVersion, PgConfig, PgStore, SledConfig, SledStore, Subscription,
};
use prost::Message;

const WARMUP: Duration = Duration::from_millis(500);
const PAGE: usize = 1000;

struct Opts {
    secs: f64,
    runs: usize,
    sled_writers: Vec<usize>,
    pg_writers: Vec<usize>,
    sled: bool,
    pg: bool,
}

fn parse_list(s: &str) -> Vec<usize> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn opts() -> Opts {
    let mut o = Opts {
        secs: 3.0,
        runs: 3,
        sled_writers: vec![256],
        pg_writers: vec![4, 16],
        sled: true,
        pg: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let next = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--secs" => {
                o.secs = next.parse().unwrap_or(o.secs);
                i += 1;
            }
            "--runs" => {
                o.runs = next.parse().unwrap_or(o.runs).max(1);
                i += 1;
            }
            "--sled-writers" => {
                o.sled_writers = parse_list(&next);
                i += 1;
            }
            "--pg-writers" => {
                o.pg_writers = parse_list(&next);
                i += 1;
            }
            "--system" => {
                o.sled = next == "sled" || next == "all";
                o.pg = next == "pg" || next == "all";
                i += 1;
            }
            // cargo bench passes --bench; ignore anything else.
            _ => {}
        }
        i += 1;
    }
    o
}

fn event() -> Event {
    Event {
        source: "bench".into(),
        detail_type: "OrderPlaced".into(),
        detail: format!("{{\"pad\":\"{}\"}}", "x".repeat(190)),
        ..Default::default()
    }
}

/// Runs `writers` tasks calling `op(writer, seq)` until stopped; returns completed calls per
/// second inside the measuring window.
async fn measure<F, Fut>(writers: usize, secs: f64, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (op, done, stop) = (op.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(w, seq).await;
                    seq += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, t1) = (done.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// Single-event appends with Exact expected versions, one stream per writer.
async fn store_appends<S: EventStore + Clone + 'static>(
    store: S,
    tag: &str,
    writers: usize,
    secs: f64,
) -> f64 {
    let tag = tag.to_string();
    measure(writers, secs, move |w, seq| {
        let store = store.clone();
        let stream = format!("{tag}-{w}");
        async move {
            let expected = if seq == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(seq - 1)
            };
            if let Err(e) = store.append(&stream, expected, vec![event()]).await {
                panic!("append failed: {e}");
            }
        }
    })
    .await
}

/// Subscribes from the beginning until caught up: (events, events/s).
async fn catch_up<S: EventStore>(store: S) -> (u64, f64) {
    let mut sub = Subscription::new(store, None, None);
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        let b = match sub.next_batch(PAGE).await {
            Ok(b) => b,
            Err(e) => panic!("catch-up failed: {e}"),
        };
        if b.caught_up {
            break;
        }
        n += b.events.len() as u64;
    }
    (n, n as f64 / t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}K", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn pg_url() -> String {
    match std::env::var("OUTRIDER_TEST_PG") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => {
            eprintln!(
                "OUTRIDER_TEST_PG is not set: start a server with\n    \
                 eval \"$(cloud/store/scripts/pg-test.sh start)\"\n\
                 or pass `-- --system sled` to benchmark sled alone."
            );
            std::process::exit(2);
        }
    }
}

const BARE_TABLES: &str = "
CREATE TABLE bench_bare (
    position bigserial PRIMARY KEY, tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream_id bigint NOT NULL, version bigint NOT NULL, event_id text COLLATE \"C\" NOT NULL,
    local boolean NOT NULL, payload bytea NOT NULL);
CREATE TABLE bench_bare_idx (LIKE bench_bare INCLUDING DEFAULTS);
ALTER TABLE bench_bare_idx ADD PRIMARY KEY (position);
ALTER TABLE bench_bare_idx ADD UNIQUE (stream_id, version);
ALTER TABLE bench_bare_idx ADD UNIQUE (stream_id, event_id);
CREATE INDEX ON bench_bare_idx (tx_id, position);
CREATE SEQUENCE bench_bare_idx_seq OWNED BY bench_bare_idx.position;
ALTER TABLE bench_bare_idx ALTER position SET DEFAULT nextval('bench_bare_idx_seq');
";

/// The bare-INSERT baseline: `writers` connections of its own, one prepared INSERT each.
async fn bare_inserts(
    url: &str,
    schema: &str,
    table: &'static str,
    row: usize,
    writers: usize,
    secs: f64,
) -> f64 {
    let mut cfg = match tokio_postgres::Config::from_str(url) {
        Ok(c) => c,
        Err(e) => panic!("OUTRIDER_TEST_PG: {e}"),
    };
    cfg.options(format!("-c search_path={schema}"));
    let mut clients = Vec::new();
    for _ in 0..writers {
        let (client, conn) = match cfg.connect(tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        };
        tokio::spawn(conn);
        let stmt = match client
            .prepare(&format!(
                "INSERT INTO {table} (stream_id, version, event_id, local, payload) \
                 VALUES ($1, $2, $3, $4, $5)"
            ))
            .await
        {
            Ok(s) => s,
            Err(e) => panic!("prepare: {e}"),
        };
        clients.push(Arc::new((client, stmt)));
    }
    // The payload the store would write for such an event.
    let mut e = event();
    e.origin_node = "cloud".into();
    e.time_seconds = 1_700_000_000;
    let payload = Arc::new(e.encode_to_vec());
    let clients = Arc::new(clients);
    measure(writers, secs, move |w, seq| {
        let (clients, payload) = (clients.clone(), payload.clone());
        async move {
            let (client, stmt) = &*clients[w];
            let id = uuid::Uuid::now_v7().to_string();
            // A stream per writer and row, as the store's rows use.
            let (sid, version, local) = ((row * 10_000 + w) as i64, seq as i64, true);
            if let Err(e) = client
                .execute(stmt, &[&sid, &version, &id, &local, &*payload])
                .await
            {
                panic!("insert: {e:?}");
            }
        }
    })
    .await
}

/// A keyset scan over `events` by position, decoding as the store does: (events, events/s).
async fn bare_scan(store: &PgStore) -> (u64, f64) {
    let r = store
        .with_client(async |c| {
            let stmt = c
                .prepare(
                    "SELECT position, version, local, payload FROM events \
                     WHERE position > $1 ORDER BY position LIMIT 1000",
                )
                .await?;
            let t = Instant::now();
            let (mut after, mut n) = (-1i64, 0u64);
            loop {
                let rows = c.query(&stmt, &[&after]).await?;
                let Some(last) = rows.last() else { break };
                after = last.get(0);
                for r in &rows {
                    let payload: &[u8] = r.get(3);
                    let mut e = Event::decode(payload).unwrap_or_default();
                    e.position = r.get::<_, i64>(0) as u64;
                    e.version = r.get::<_, i64>(1) as u64;
                    std::hint::black_box(&e);
                    n += 1;
                }
            }
            Ok::<_, tokio_postgres::Error>((n, n as f64 / t.elapsed().as_secs_f64()))
        })
        .await;
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("scan: {e}"),
        Err(e) => panic!("scan: {e}"),
    }
}

fn main() {
    let o = opts();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    rt.block_on(run(o));
}

async fn run(o: Opts) {
    println!(
        "Machine: nproc {}; median of {} run(s), each a {} s window after a {:?} warm-up; single-event appends with Exact expected versions, ~256 B events.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.runs,
        o.secs,
        WARMUP
    );
    println!();
    println!(
        "| backend | writers | appends/s | baseline | baseline/s | store ÷ baseline | target |"
    );
    println!("| --- | ---: | ---: | --- | ---: | ---: | --- |");
    let mut catchups = Vec::new();
    let mut sled_diag = Vec::new();

    if o.sled {
        // Each run gets a fresh store (as the runtime-alone baseline gets a fresh log); the
        // last one stays open for the catch-up.
        let mut dirs = Vec::new();
        let mut store: Option<SledStore> = None;
        for (i, &w) in o.sled_writers.iter().enumerate() {
            let mut runs = Vec::new();
            let (mut groups, mut events, mut syncs, mut sync_secs) = (0u64, 0u64, 0u64, 0f64);
            for run in 0..o.runs {
                let dir = match tempfile::tempdir() {
                    Ok(d) => d,
                    Err(e) => panic!("tempdir: {e}"),
                };
                if let Some(old) = store.take() {
                    let _ = old.close();
                    dirs.clear();
                }
                let s = match SledStore::open(SledConfig::new(dir.path())) {
                    Ok(s) => s,
                    Err(e) => panic!("sled: {e}"),
                };
                dirs.push(dir);
                eprintln!("sled: {w} writers, run {run}...");
                let tag = format!("sled{i}r{run}");
                runs.push(store_appends(s.clone(), &tag, w, o.secs).await);
                eprintln!("  {}", fmt_rate(runs[run]));
                let m = s.log().metrics();
                groups += m.commit_groups.load(Ordering::Relaxed);
                events += m.events_appended.load(Ordering::Relaxed);
                let f = m.fsync_seconds.snapshot();
                syncs += f.count;
                sync_secs += f.sum_seconds;
                store = Some(s);
            }
            sled_diag.push(format!(
                "sled, {w} writers: {:.0} events per commit group, {:.2} ms per flush + fdatasync ({syncs} syncs)",
                events as f64 / groups.max(1) as f64,
                sync_secs * 1e3 / syncs.max(1) as f64,
            ));
            let r = median(runs);
            // The runtime's Log alone, same workload, its own fresh directory: what the wrapper
            // costs.
            let mut raw = Vec::new();
            for run in 0..o.runs {
                eprintln!("runtime Log alone: {w} writers, run {run}...");
                let rdir = match tempfile::tempdir() {
                    Ok(d) => d,
                    Err(e) => panic!("tempdir: {e}"),
                };
                let mut cfg = outrider_runtime::LogConfig::new(rdir.path());
                cfg.cache_capacity_bytes = 64 * 1024 * 1024;
                let log = match outrider_runtime::Log::open(cfg) {
                    Ok((l, _)) => l,
                    Err(e) => panic!("log: {e}"),
                };
                let l2 = log.clone();
                raw.push(
                    measure(w, o.secs, move |w, seq| {
                        let log = l2.clone();
                        async move {
                            let expected = if seq == 0 {
                                ExpectedVersion::NoStream
                            } else {
                                ExpectedVersion::Exact(seq - 1)
                            };
                            let stream = format!("raw-{w}");
                            if let Err(e) = log
                                .append_async(&stream, expected, vec![event()], None)
                                .await
                            {
                                panic!("append failed: {e}");
                            }
                        }
                    })
                    .await,
                );
                eprintln!("  {}", fmt_rate(raw[run]));
                let _ = log.close();
            }
            let raw = median(raw);
            let verdict = if r >= 100_000.0 { "PASS" } else { "MISS" };
            println!(
                "| sled (sync, group commit) | {w} | {} | the runtime's `Log::append_async` alone | {} | {:.2}× | ≥ 100K/s: **{verdict}** |",
                fmt_rate(r),
                fmt_rate(raw),
                r / raw
            );
        }
        if let Some(store) = store {
            eprintln!("sled: catch-up...");
            let (n, r) = catch_up(store.clone()).await;
            catchups.push(format!("| sled | {n} | {} | — | — | — |", fmt_rate(r)));
            let _ = store.close();
        }
        drop(dirs);
    }

    if o.pg {
        let url = pg_url();
        let schema = format!("bench_{}", std::process::id());
        let max_w = o.pg_writers.iter().copied().max().unwrap_or(1);
        let mut cfg = PgConfig::new(url.clone());
        cfg.schema.clone_from(&schema);
        cfg.pool_size = max_w;
        let store = match PgStore::connect(cfg).await {
            Ok(s) => s,
            Err(e) => panic!("postgres: {e}"),
        };
        if let Ok(Err(e)) = store
            .with_client(async |c| c.batch_execute(BARE_TABLES).await)
            .await
        {
            panic!("bare tables: {e}");
        }
        for (i, &w) in o.pg_writers.iter().enumerate() {
            let (mut rs, mut bares, mut idxs) = (Vec::new(), Vec::new(), Vec::new());
            for run in 0..o.runs {
                let row = i * o.runs + run;
                eprintln!("postgres: {w} writers, run {run}: store, bare, bare + indexes...");
                rs.push(store_appends(store.clone(), &format!("pg{row}"), w, o.secs).await);
                bares.push(bare_inserts(&url, &schema, "bench_bare", row, w, o.secs).await);
                idxs.push(bare_inserts(&url, &schema, "bench_bare_idx", row, w, o.secs).await);
                eprintln!(
                    "  {} / {} / {}",
                    fmt_rate(rs[run]),
                    fmt_rate(bares[run]),
                    fmt_rate(idxs[run])
                );
            }
            let (r, bare, bare_idx) = (median(rs), median(bares), median(idxs));
            let ratio = r / bare;
            let verdict = if ratio >= 0.5 { "PASS" } else { "MISS" };
            println!(
                "| postgres (PgStore) | {w} | {} | bare INSERT | {} | {:.2}× | ≥ 0.50×: **{verdict}** |",
                fmt_rate(r),
                fmt_rate(bare),
                ratio
            );
            println!(
                "| postgres (PgStore) | {w} | {} | bare INSERT + the store's indexes | {} | {:.2}× |  |",
                fmt_rate(r),
                fmt_rate(bare_idx),
                r / bare_idx
            );
        }
        eprintln!("postgres: catch-up...");
        let (n, r) = catch_up(store.clone()).await;
        let (bn, br) = bare_scan(&store).await;
        catchups.push(format!(
            "| postgres | {n} | {} | keyset scan by position | {} ({bn} events) | {:.2}× |",
            fmt_rate(r),
            fmt_rate(br),
            r / br
        ));
        let _ = store
            .with_client(async |c| {
                c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                    .await
            })
            .await;
    }

    for d in sled_diag {
        println!();
        println!("Diagnostics: {d} (whole run, warm-ups included).");
    }
    println!();
    println!("| catch-up (Subscription from the start, pages of {PAGE}) | events | events/s | baseline | baseline events/s | store ÷ baseline |");
    println!("| --- | ---: | ---: | --- | ---: | ---: |");
    for c in catchups {
        println!("{c}");
    }
}
