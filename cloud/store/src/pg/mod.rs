//! [`PgStore`]: the PostgreSQL backend, for several stateless servers over one database.
//!
//! # Appends
//!
//! One append is one round trip, its own transaction. A single event appended to an existing
//! stream whose version admits it (the common case: an aggregate's `Exact(v)`) is one prepared
//! statement (`sql::APPEND_ONE`): an UPDATE that checks and moves the stream's version in
//! `streams` (locking its row: appends to one stream serialise, appends to different streams do
//! not) and an INSERT … ON CONFLICT of the event. Everything else — new streams, several events,
//! refusals, idempotent retries — is `SELECT … FROM outrider_append(stream, kind, expected, ids,
//! locals, payloads)`, a PL/pgSQL function (see `sql.rs`) that locks the stream's row, answers a
//! retry from the `(stream_id, event_id)` index, checks the expected version, takes positions
//! from a sequence and inserts the rows. A refused append writes nothing: the function returns
//! before inserting, and the fast statement writes nothing when the version does not match and
//! aborts (undoing its version move) when the event id is already there. Multi-stream batches with a watermark run the same function per
//! stream inside one explicit transaction, locking streams in name order (no deadlocks between
//! batches).
//!
//! # The global order and the sequence-gap problem
//!
//! A position from a sequence is taken when a transaction inserts, but becomes visible when it
//! commits. With several writers, transaction A can take position 10, transaction B position 11,
//! and B commit first: a reader that follows "position > last seen" reads 11, moves its cursor
//! past 10, and never sees A's event once A commits. Polling faster does not help; a "wait for
//! gaps to fill" timeout loses events whenever a transaction outlives the timeout, and rolled-back
//! transactions leave gaps that never fill.
//!
//! **Chosen: order by transaction, read only below the oldest running transaction.** Each row
//! stores `tx_id = pg_current_xact_id()` (xid8, 64-bit, never wraps). The global order is
//! `(tx_id, position)`, and `read_all` returns only rows with
//! `tx_id < pg_snapshot_xmin(pg_current_snapshot())`, in the same statement snapshot. Every
//! transaction whose id is below the snapshot's xmin has ended, so (a) every row it committed is
//! visible, and (b) any transaction still to commit has an id ≥ xmin and sorts after every row
//! already returned. The order is therefore append-only: a cursor (the position of the last event
//! read, whose `tx_id` the query looks up) never has anything inserted before it.
//!
//! **Why not a lock.** The alternative — serialising position assignment with a
//! transaction-scoped advisory lock held until commit — makes positions dense and visible in
//! order, but it serialises every append of every server through one lock held across the commit's
//! WAL flush: no group commit, throughput bounded by one fsync per append. The xid order keeps
//! appends to different streams fully concurrent (PostgreSQL's group commit still applies) and
//! costs readers a little latency: an event becomes readable when every transaction that started
//! before it ended. The price: a long-running *write* transaction anywhere in the cluster (xids
//! are cluster-wide) holds subscribers back until it ends (it never makes them skip), so keep long
//! write transactions away from the store's cluster, or bound them with
//! `idle_in_transaction_session_timeout`. Positions stay unique but are not dense (rolled-back
//! appends consume sequence values) and, across transactions, not monotonic in the global order.
//!
//! **Streams stay in version order.** Appends to one stream serialise on its row lock, so for
//! autocommit appends the later appender also has the larger transaction id. A transaction that
//! took its id earlier — by writing elsewhere first, as a batch or an explicit transaction does —
//! and then appends to a stream after a younger transaction did, would put the stream's later
//! version first in the global order. The append function refuses exactly that case with a
//! serialization failure: [`StoreError::TransactionConflict`]; the store retries its own appends
//! and batches (up to 5 attempts, each a new transaction with a new id), and callers of
//! [`PgStore::begin`] retry theirs. Tests: `an_older_transaction_cannot_append_after_a_younger_one`,
//! `batches_retry_so_streams_stay_in_version_order`.
//!
//! The test `concurrent_transaction_held_open_is_not_skipped` (tests/pg.rs) holds one append's
//! transaction open while later appends commit, checks that a naive position cursor would skip it,
//! and that a subscription delivers every event exactly once in the store's order.
//!
//! Live subscriptions learn of appends made through this `PgStore` at once and poll every
//! [`PgConfig::poll_interval`] for other servers' appends (no LISTEN/NOTIFY: a NOTIFY in the
//! append transaction takes a database-wide lock at commit and would serialise all appends).
//!
//! # Leases
//!
//! A row per consumer in `leases`: holder, fencing token, `expires_at` on the database's clock
//! (`clock_timestamp()`), the one clock every replica shares, so replicas' clock skew does not
//! matter. Acquire is one upsert that succeeds only when the lease is free, expired or already
//! the caller's; renew extends it only while it is still the caller's and unexpired; release
//! expires it at once. The token grows whenever the lease changes hands, and
//! `save_checkpoint(…, Some(&lease))` writes only while the lease row still carries that holder
//! and token (share-locking the row so it cannot change hands before the write commits).
//!
//! # Migrations
//!
//! At connect, in one transaction under `pg_advisory_xact_lock` (keyed by the schema name, so
//! concurrent starters wait for each other): create the schema and `schema_migrations` if
//! missing, then apply each migration not recorded there, in order, recording it. DDL is
//! transactional in PostgreSQL, so a failed migration leaves the schema as it was; a database
//! at a version newer than this build refuses to start ([`StoreError::SchemaTooNew`]).

mod pool;
mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outrider_runtime::{Clock, SystemClock};
use prost::Message;
use tokio_postgres::Row;

use crate::error::{Result, StoreError};
use crate::lease::{lost, Lease};
use crate::validate;
use crate::{
    AppendResult, Direction, Event, EventStore, ExpectedVersion, ReadStream, Snapshot,
    StreamAppend, StreamFrom, Watermark,
};
use pool::{Pool, Pooled};

/// Configuration of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// A libpq-style connection string (`host=… port=… user=… dbname=…`) or URL
    /// (`postgresql://user@host:port/db`). No TLS: use it on loopback or a private network.
    pub url: String,
    /// The schema that holds the store's tables (created if missing): `[a-z_][a-z0-9_]*`,
    /// at most 63 bytes. Several stores can share a database in different schemas.
    pub schema: String,
    /// Most connections open at once.
    pub pool_size: usize,
    /// How long a call waits for a free connection before [`StoreError::PoolExhausted`].
    pub acquire_timeout: Duration,
    pub connect_timeout: Duration,
    /// Stamped as `origin_node` on events appended without an origin.
    pub node_id: String,
    /// How often a waiting subscription polls for other servers' appends.
    pub poll_interval: Duration,
}

impl PgConfig {
    /// Defaults: schema `outrider`, 16 connections, node id `cloud`, 50 ms polling.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "outrider".into(),
            pool_size: 16,
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            node_id: "cloud".into(),
            poll_interval: Duration::from_millis(50),
        }
    }
}

fn validate_schema(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "schema {s:?}: must match [a-z_][a-z0-9_]* and be at most 63 bytes"
        )))
    }
}

/// The PostgreSQL event store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    schema: String,
    node_id: String,
    poll_interval: Duration,
    clock: Arc<dyn Clock>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.schema)
            .finish()
    }
}

/// An append the database refused, as the function reports it.
fn refused(
    stream: &str,
    expected: ExpectedVersion,
    status: i16,
    actual: Option<i64>,
    dup_id: Option<String>,
) -> StoreError {
    match status {
        2 => StoreError::WrongExpectedVersion {
            stream: stream.to_string(),
            expected,
            actual: actual.map(|a| a as u64),
        },
        _ => StoreError::PartialDuplicate {
            stream: stream.to_string(),
            id: dup_id.unwrap_or_default(),
        },
    }
}

/// How often the store retries an append or batch that hit a [`StoreError::TransactionConflict`].
const CONFLICT_ATTEMPTS: usize = 5;

/// A serialization failure or deadlock is a [`StoreError::TransactionConflict`].
fn append_error(stream: &str, e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            StoreError::TransactionConflict {
                stream: stream.to_string(),
                reason: e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_string()),
            }
        }
        _ => StoreError::Postgres {
            context: "appending",
            source: e,
        },
    }
}

fn kind(expected: ExpectedVersion) -> (i16, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        // Versions above i64::MAX cannot exist: such an expectation never matches.
        ExpectedVersion::Exact(v) => (3, i64::try_from(v).unwrap_or(-2)),
    }
}

/// An append encoded for the function.
struct Encoded {
    ids: Vec<String>,
    locals: Vec<bool>,
    payloads: Vec<Vec<u8>>,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Decodes an event row `(position, version, local, payload)` starting at column `at`.
fn decode_row(row: &Row, at: usize) -> Result<Event> {
    let col = |e: tokio_postgres::Error| StoreError::Postgres {
        context: "reading an event row",
        source: e,
    };
    let position: i64 = row.try_get(at).map_err(col)?;
    let version: i64 = row.try_get(at + 1).map_err(col)?;
    let local: bool = row.try_get(at + 2).map_err(col)?;
    let payload: &[u8] = row.try_get(at + 3).map_err(col)?;
    let mut e = Event::decode(payload).map_err(|err| StoreError::Corrupt {
        position: to_u64(position),
        reason: format!("undecodable event: {err}"),
    })?;
    e.position = to_u64(position);
    e.version = to_u64(version);
    if local {
        e.origin_seq = e.position;
    }
    Ok(e)
}

impl PgStore {
    /// Connects, migrates the schema (see the module docs) and opens the pool.
    pub async fn connect(cfg: PgConfig) -> Result<Self> {
        Self::connect_with_clock(cfg, Arc::new(SystemClock)).await
    }

    /// [`PgStore::connect`] with an injected clock for event times. (Lease expiry is always the
    /// database's clock.)
    pub async fn connect_with_clock(cfg: PgConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        validate_schema(&cfg.schema)?;
        if cfg.node_id.is_empty() || cfg.node_id.len() > 128 {
            return Err(StoreError::Config("node_id: must be 1..=128 bytes".into()));
        }
        let mut pg = tokio_postgres::Config::from_str(&cfg.url)
            .map_err(|e| StoreError::Config(format!("url: {e}")))?;
        pg.options(format!("-c search_path={}", cfg.schema));
        pg.connect_timeout(cfg.connect_timeout);
        pg.application_name("outrider-store");
        let mut client = pool::connect(&pg).await?;
        migrate(&mut client, &cfg.schema).await?;
        let pool = Pool::new(pg, cfg.pool_size, cfg.acquire_timeout);
        pool.put(client).await?;
        let (changes, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                schema: cfg.schema,
                node_id: cfg.node_id,
                poll_interval: cfg.poll_interval,
                clock,
                changes,
            }),
        })
    }

    /// The schema this store uses.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Runs `f` on a pooled connection's client (tests, benchmarks, operator queries). The
    /// connection's `search_path` is the store's schema.
    pub async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> T,
    ) -> Result<T> {
        let conn = self.inner.pool.get().await?;
        Ok(f(&conn.client).await)
    }

    /// Begins a transaction on its own connection: appends made through it become visible —
    /// and enter the global order — only when it commits. Dropping it uncommitted rolls it back.
    pub async fn begin(&self) -> Result<PgTransaction> {
        let mut conn = self.inner.pool.get().await?;
        conn.discard = true;
        conn.client
            .batch_execute("BEGIN")
            .await
            .map_err(StoreError::pg("beginning a transaction"))?;
        Ok(PgTransaction {
            store: self.clone(),
            conn,
        })
    }

    fn encode(&self, stream: &str, events: Vec<Event>) -> Result<Encoded> {
        let now = self.inner.clock.now_unix_nanos();
        let checked = validate::check_append(stream, events, &self.inner.node_id, now)?;
        let n = checked.events.len();
        let mut enc = Encoded {
            ids: Vec::with_capacity(n),
            locals: checked.local,
            payloads: Vec::with_capacity(n),
        };
        for (mut e, local) in checked.events.into_iter().zip(enc.locals.iter()) {
            if *local {
                e.origin_node.clone_from(&self.inner.node_id);
            }
            enc.payloads.push(e.encode_to_vec());
            enc.ids.push(e.id);
        }
        Ok(enc)
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Runs the append function on `client`; `Ok(Err(_))` is a refusal (nothing written).
    async fn run_append(
        conn: &Pooled,
        stream: &str,
        expected: ExpectedVersion,
        enc: &Encoded,
    ) -> Result<Result<AppendResult>> {
        let (k, v) = kind(expected);
        let row = conn
            .client
            .query_one(
                &conn.stmts.append,
                &[&stream, &k, &v, &enc.ids, &enc.locals, &enc.payloads],
            )
            .await
            .map_err(|e| append_error(stream, e))?;
        let get = |e| StoreError::Postgres {
            context: "reading an append's outcome",
            source: e,
        };
        let status: i16 = row.try_get(0).map_err(get)?;
        let actual: Option<i64> = row.try_get(1).map_err(get)?;
        if status == 0 || status == 1 {
            let positions: Vec<i64> = row.try_get(2).map_err(get)?;
            let versions: Vec<i64> = row.try_get(3).map_err(get)?;
            return Ok(Ok(AppendResult {
                positions: positions.into_iter().map(to_u64).collect(),
                versions: versions.into_iter().map(to_u64).collect(),
                next_expected_version: actual.map_or(0, to_u64),
                duplicate: status == 1,
            }));
        }
        let dup_id: Option<String> = row.try_get(4).map_err(get)?;
        Ok(Err(refused(stream, expected, status, actual, dup_id)))
    }

    /// The fast path of a single-event append (see `sql::APPEND_ONE`): `None` when it does not
    /// apply or wrote nothing, and the general function must answer.
    async fn append_one(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        enc: &Encoded,
    ) -> Result<Option<AppendResult>> {
        if enc.ids.len() != 1 || expected == ExpectedVersion::NoStream {
            return Ok(None);
        }
        let (k, v) = kind(expected);
        let conn = self.inner.pool.get().await?;
        let rows = match conn
            .client
            .query(
                &conn.stmts.append_one,
                &[
                    &stream,
                    &k,
                    &v,
                    &enc.ids[0],
                    &enc.locals[0],
                    &enc.payloads[0],
                ],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) if e.code().map(|c| c.code()) == Some(sql::FAST_APPEND_MISSED) => {
                return Ok(None)
            }
            Err(e) => return Err(append_error(stream, e)),
        };
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let ctx = StoreError::pg("reading an append's outcome");
        let position: i64 = row.try_get(0).map_err(ctx)?;
        let version: i64 = row
            .try_get(1)
            .map_err(StoreError::pg("reading an append's outcome"))?;
        Ok(Some(AppendResult {
            positions: vec![to_u64(position)],
            versions: vec![to_u64(version)],
            next_expected_version: to_u64(version),
            duplicate: false,
        }))
    }

    async fn exec(
        &self,
        stmt: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        context: &'static str,
    ) -> Result<u64> {
        let conn = self.inner.pool.get().await?;
        conn.client
            .execute(stmt, params)
            .await
            .map_err(StoreError::pg(context))
    }

    async fn query(
        &self,
        stmt: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        context: &'static str,
    ) -> Result<Vec<Row>> {
        let conn = self.inner.pool.get().await?;
        conn.client
            .query(stmt, params)
            .await
            .map_err(StoreError::pg(context))
    }
    /// One attempt at a batch (see [`EventStore::append_batch`]); `encoded` is in lock order.
    async fn try_batch(
        &self,
        encoded: &[(usize, String, ExpectedVersion, Encoded)],
        watermark: Option<&Watermark>,
    ) -> Result<Vec<AppendResult>> {
        let tx = self.begin().await?;
        let mut results: Vec<Option<AppendResult>> = vec![None; encoded.len()];
        for (i, stream, expected, enc) in encoded {
            match PgStore::run_append(&tx.conn, stream, *expected, enc).await {
                Ok(Ok(r)) => results[*i] = Some(r),
                Ok(Err(e)) | Err(e @ StoreError::TransactionConflict { .. }) => {
                    tx.rollback().await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(w) = watermark {
            let new = i64::try_from(w.new).map_err(|_| {
                StoreError::Config(format!("watermark {:?}: value over i64::MAX", w.name))
            })?;
            let moved = match w.expected {
                None => {
                    tx.conn
                        .client
                        .execute(sql::WATERMARK_INSERT, &[&w.name, &new])
                        .await
                }
                Some(exp) => {
                    let exp = i64::try_from(exp).unwrap_or(-1);
                    tx.conn
                        .client
                        .execute(sql::WATERMARK_CAS, &[&w.name, &new, &exp])
                        .await
                }
            }
            .map_err(StoreError::pg("moving a watermark"))?;
            if moved != 1 {
                let actual = tx
                    .conn
                    .client
                    .query_opt(sql::WATERMARK_GET, &[&w.name])
                    .await
                    .map_err(StoreError::pg("reading a watermark"))?
                    .map(|r| r.try_get::<_, i64>(0))
                    .transpose()
                    .map_err(StoreError::pg("reading a watermark"))?
                    .map(to_u64);
                tx.rollback().await?;
                return Err(StoreError::WatermarkConflict {
                    name: w.name.clone(),
                    expected: w.expected,
                    actual,
                });
            }
        }
        tx.commit().await?;
        Ok(results.into_iter().flatten().collect())
    }
}

/// An open transaction of a [`PgStore`] (see [`PgStore::begin`]).
pub struct PgTransaction {
    store: PgStore,
    conn: Pooled,
}

impl std::fmt::Debug for PgTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTransaction").finish()
    }
}

impl PgTransaction {
    /// Appends inside the transaction. A refusal leaves the transaction usable; an error of
    /// the database aborts it (commit then fails).
    pub async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult> {
        let enc = self.store.encode(stream, events)?;
        PgStore::run_append(&self.conn, stream, expected, &enc).await?
    }

    /// The client of the transaction's connection (to write read models in the same
    /// transaction, for instance).
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.conn.client
    }

    /// Commits; the appends become visible.
    pub async fn commit(mut self) -> Result<()> {
        self.conn
            .client
            .batch_execute("COMMIT")
            .await
            .map_err(StoreError::pg("committing"))?;
        self.conn.discard = false;
        self.store.changed();
        Ok(())
    }

    /// Rolls back; nothing of the transaction is written.
    pub async fn rollback(mut self) -> Result<()> {
        self.conn
            .client
            .batch_execute("ROLLBACK")
            .await
            .map_err(StoreError::pg("rolling back"))?;
        self.conn.discard = false;
        Ok(())
    }
}

/// Applies missing migrations in one transaction under an advisory lock (see the module docs).
async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<()> {
    let known = sql::MIGRATIONS.last().map_or(0, |m| m.0);
    let tx = client
        .transaction()
        .await
        .map_err(StoreError::pg("migrating: begin"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('outrider-store-migrate:' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(StoreError::pg("migrating: advisory lock"))?;
    // The schema name is checked by validate_schema: safe to interpolate.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema}; \
         CREATE TABLE IF NOT EXISTS schema_migrations ( \
             version int PRIMARY KEY, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(StoreError::pg("migrating: schema_migrations"))?;
    let applied: Vec<i32> = tx
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(StoreError::pg("migrating: applied versions"))?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()
        .map_err(StoreError::pg("migrating: applied versions"))?;
    if let Some(&found) = applied.iter().max() {
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
    }
    for &(version, name, ddl) in sql::MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let fail = |source| StoreError::Migration {
            version,
            name,
            source,
        };
        tx.batch_execute(ddl).await.map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(fail)?;
        tracing::info!(schema, version, name, "applied schema migration");
    }
    tx.commit()
        .await
        .map_err(StoreError::pg("migrating: commit"))?;
    Ok(())
}

#[async_trait]
impl EventStore for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult> {
        let enc = self.encode(stream, events)?;
        if let Some(r) = self.append_one(stream, expected, &enc).await? {
            self.changed();
            return Ok(r);
        }
        let mut attempt = 1;
        let r = loop {
            let conn = self.inner.pool.get().await?;
            match Self::run_append(&conn, stream, expected, &enc).await {
                Err(StoreError::TransactionConflict { .. }) if attempt < CONFLICT_ATTEMPTS => {
                    attempt += 1;
                }
                r => break r??,
            }
        };
        if !r.duplicate {
            self.changed();
        }
        Ok(r)
    }

    async fn append_batch(
        &self,
        appends: Vec<StreamAppend>,
        watermark: Option<Watermark>,
    ) -> Result<Vec<AppendResult>> {
        validate::check_batch_streams(appends.iter().map(|a| a.stream.as_str()))?;
        if let Some(w) = &watermark {
            validate::validate_name("watermark", &w.name)?;
        }
        let mut encoded = Vec::with_capacity(appends.len());
        for (i, a) in appends.into_iter().enumerate() {
            let enc = self.encode(&a.stream, a.events)?;
            encoded.push((i, a.stream, a.expected, enc));
        }
        // Lock streams in name order: concurrent batches never wait on each other in a cycle.
        encoded.sort_by(|a, b| a.1.cmp(&b.1));
        let mut attempt = 1;
        loop {
            match self.try_batch(&encoded, watermark.as_ref()).await {
                Err(StoreError::TransactionConflict { .. }) if attempt < CONFLICT_ATTEMPTS => {
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: StreamFrom,
        direction: Direction,
        max: usize,
    ) -> Result<ReadStream> {
        validate::validate_stream(stream)?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let conn = self.inner.pool.get().await?;
        let (stmt, from_v) = match (direction, from) {
            (Direction::Forwards, StreamFrom::Start) => (&conn.stmts.read_forwards, 0),
            (Direction::Forwards, StreamFrom::Version(v)) => (
                &conn.stmts.read_forwards,
                i64::try_from(v).unwrap_or(i64::MAX),
            ),
            (Direction::Forwards, StreamFrom::End) => (&conn.stmts.read_forwards, i64::MAX),
            (Direction::Backwards, StreamFrom::Start) => (&conn.stmts.read_backwards, 0),
            (Direction::Backwards, StreamFrom::Version(v)) => (
                &conn.stmts.read_backwards,
                i64::try_from(v).unwrap_or(i64::MAX),
            ),
            (Direction::Backwards, StreamFrom::End) => (&conn.stmts.read_backwards, i64::MAX),
        };
        let rows = conn
            .client
            .query(stmt, &[&stream, &from_v, &limit])
            .await
            .map_err(StoreError::pg("reading a stream"))?;
        let col = StoreError::pg("reading a stream");
        let Some(first) = rows.first() else {
            return Ok(ReadStream {
                events: vec![],
                end: true,
            });
        };
        let stream_version: i64 = first.try_get(0).map_err(col)?;
        if stream_version < 0 {
            return Ok(ReadStream {
                events: vec![],
                end: true,
            });
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let pos: Option<i64> = row.try_get(1).map_err(StoreError::pg("reading a stream"))?;
            if pos.is_some() {
                events.push(decode_row(row, 1)?);
            }
        }
        let last = to_u64(stream_version);
        let end = match direction {
            Direction::Forwards => {
                events.last().is_none_or(|e| e.version >= last)
                    || matches!(from, StreamFrom::End)
                    || matches!(from, StreamFrom::Version(v) if v > last)
            }
            Direction::Backwards => events.last().is_none_or(|e| e.version == 0),
        };
        Ok(ReadStream { events, end })
    }

    async fn read_all(&self, after: Option<u64>, max: usize) -> Result<Vec<Event>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let conn = self.inner.pool.get().await?;
        let ctx = "reading all events";
        let rows = match after {
            None => conn
                .client
                .query(&conn.stmts.read_all_start, &[&limit])
                .await
                .map_err(StoreError::pg(ctx))?,
            Some(p) => {
                let pos = i64::try_from(p).map_err(|_| StoreError::UnknownPosition(p))?;
                let rows = conn
                    .client
                    .query(&conn.stmts.read_all_after, &[&pos, &limit])
                    .await
                    .map_err(StoreError::pg(ctx))?;
                if rows.is_empty()
                    && conn
                        .client
                        .query_opt(&conn.stmts.position_exists, &[&pos])
                        .await
                        .map_err(StoreError::pg(ctx))?
                        .is_none()
                {
                    return Err(StoreError::UnknownPosition(p));
                }
                rows
            }
        };
        rows.iter().map(|r| decode_row(r, 0)).collect()
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        validate::validate_stream(stream)?;
        let conn = self.inner.pool.get().await?;
        let row = conn
            .client
            .query_opt(&conn.stmts.stream_version, &[&stream])
            .await
            .map_err(StoreError::pg("reading a stream version"))?;
        let v: Option<i64> = row
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(StoreError::pg("reading a stream version"))?;
        Ok(v.filter(|v| *v >= 0).map(to_u64))
    }

    async fn save_snapshot(&self, stream: &str, version: u64, payload: &[u8]) -> Result<()> {
        validate::validate_stream(stream)?;
        let v = i64::try_from(version).unwrap_or(i64::MAX);
        let rows = self
            .query(
                sql::SAVE_SNAPSHOT,
                &[&stream, &v, &payload],
                "saving a snapshot",
            )
            .await?;
        let actual: Option<i64> = match rows.first() {
            Some(r) => r.try_get(0).map_err(StoreError::pg("saving a snapshot"))?,
            None => None,
        };
        let actual = actual.filter(|a| *a >= 0).map(to_u64);
        if actual.is_none_or(|a| a < version) {
            return Err(StoreError::SnapshotBeyondStream {
                stream: stream.to_string(),
                version,
                actual,
            });
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        validate::validate_stream(stream)?;
        let rows = self
            .query(sql::LOAD_SNAPSHOT, &[&stream], "loading a snapshot")
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let ctx = StoreError::pg("loading a snapshot");
        let version: i64 = r.try_get(0).map_err(ctx)?;
        let payload: Vec<u8> = r.try_get(1).map_err(StoreError::pg("loading a snapshot"))?;
        Ok(Some(Snapshot {
            version: to_u64(version),
            payload,
        }))
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        position: u64,
        fence: Option<&Lease>,
    ) -> Result<()> {
        validate::validate_name("checkpoint", name)?;
        let pos = i64::try_from(position).map_err(|_| StoreError::UnknownPosition(position))?;
        match fence {
            None => {
                self.exec(sql::SAVE_CHECKPOINT, &[&name, &pos], "saving a checkpoint")
                    .await?;
            }
            Some(lease) => {
                let token = i64::try_from(lease.token).unwrap_or(-1);
                let n = self
                    .exec(
                        sql::SAVE_CHECKPOINT_FENCED,
                        &[&name, &pos, &lease.consumer, &lease.holder, &token],
                        "saving a checkpoint",
                    )
                    .await?;
                if n == 0 {
                    return Err(lost(lease));
                }
            }
        }
        Ok(())
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>> {
        validate::validate_name("checkpoint", name)?;
        let rows = self
            .query(sql::LOAD_CHECKPOINT, &[&name], "loading a checkpoint")
            .await?;
        match rows.first() {
            None => Ok(None),
            Some(r) => Ok(Some(to_u64(
                r.try_get(0)
                    .map_err(StoreError::pg("loading a checkpoint"))?,
            ))),
        }
    }

    async fn watermarks(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let rows = self
            .query(sql::WATERMARKS, &[&prefix], "reading watermarks")
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                let value: i64 = r.try_get(1)?;
                Ok((name, to_u64(value)))
            })
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(StoreError::pg("reading watermarks"))
    }

    async fn acquire_lease(
        &self,
        consumer: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        validate::validate_name("consumer", consumer)?;
        validate::validate_name("holder", holder)?;
        let ms = validate::check_ttl(ttl)?;
        let started = Instant::now();
        let rows = self
            .query(
                sql::ACQUIRE_LEASE,
                &[&consumer, &holder, &ms],
                "acquiring a lease",
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let token: i64 = r.try_get(0).map_err(StoreError::pg("acquiring a lease"))?;
        Ok(Some(Lease {
            consumer: consumer.to_string(),
            holder: holder.to_string(),
            token: to_u64(token),
            ttl,
            valid_until: started + ttl,
        }))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease> {
        let ms = validate::check_ttl(lease.ttl)?;
        let token = i64::try_from(lease.token).unwrap_or(-1);
        let started = Instant::now();
        let n = self
            .exec(
                sql::RENEW_LEASE,
                &[&lease.consumer, &lease.holder, &token, &ms],
                "renewing a lease",
            )
            .await?;
        if n == 0 {
            return Err(lost(lease));
        }
        Ok(Lease {
            valid_until: started + lease.ttl,
            ..lease.clone()
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let token = i64::try_from(lease.token).unwrap_or(-1);
        self.exec(
            sql::RELEASE_LEASE,
            &[&lease.consumer, &lease.holder, &token],
            "releasing a lease",
        )
        .await?;
        Ok(())
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(self.inner.poll_interval)
    }
}
