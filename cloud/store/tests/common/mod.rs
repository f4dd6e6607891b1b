//! Helpers shared by the store's integration tests: backends on fresh storage, events.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use outrider_store::{Event, PgConfig, PgStore, SledConfig, SledStore};

/// The environment variable that names the test PostgreSQL server.
pub const PG_ENV: &str = "OUTRIDER_TEST_PG";

/// The connection string of the test server. Unset: the test FAILS (never skips), saying how
/// to start one.
pub fn pg_url() -> String {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "\n\n{PG_ENV} is not set: outrider-store's PostgreSQL tests need a server.\n\
             Start a throwaway one and export its address with:\n\n    \
             eval \"$(cloud/store/scripts/pg-test.sh start)\"\n\n\
             (stop it with `cloud/store/scripts/pg-test.sh stop`), or point {PG_ENV} at any \
             PostgreSQL >= 13 where this user may create schemas, e.g.\n    \
             export {PG_ENV}='host=127.0.0.1 port=5432 user=postgres dbname=postgres'\n\n"
        ),
    }
}

/// A fresh schema name, unique across processes and tests.
pub fn fresh_schema() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// A PostgreSQL store in its own fresh schema (so tests run in parallel).
pub struct PgTestDb {
    pub store: PgStore,
    pub schema: String,
}

impl PgTestDb {
    pub async fn create() -> Self {
        Self::create_with(|_| {}).await
    }

    pub async fn create_with(tweak: impl FnOnce(&mut PgConfig)) -> Self {
        let schema = fresh_schema();
        let store = PgStore::connect(pg_config(&schema, tweak))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}={:?}: {e}", pg_url()));
        Self { store, schema }
    }

    /// Another store (another "server") over the same schema.
    pub async fn another_server(&self) -> PgStore {
        PgStore::connect(pg_config(&self.schema, |_| {}))
            .await
            .expect("second server")
    }

    /// Drops the schema (best effort; a failed test leaves it for inspection).
    pub async fn drop_schema(self) {
        let schema = self.schema.clone();
        let _ = self
            .store
            .with_client(async |c| {
                c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
            })
            .await;
    }
}

pub fn pg_config(schema: &str, tweak: impl FnOnce(&mut PgConfig)) -> PgConfig {
    let mut cfg = PgConfig::new(pg_url());
    cfg.schema = schema.to_string();
    cfg.pool_size = 8;
    cfg.poll_interval = Duration::from_millis(10);
    tweak(&mut cfg);
    cfg
}

/// A sled store in a fresh temporary directory.
pub fn sled_store() -> (SledStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(SledConfig::new(dir.path())).expect("open sled store");
    (store, dir)
}

pub fn ev(id: &str, detail: serde_json::Value) -> Event {
    Event {
        id: id.to_string(),
        source: "test".into(),
        detail_type: "Thing".into(),
        detail: detail.to_string(),
        ..Default::default()
    }
}

/// Polls `f` until it returns `Some`, failing the test at the deadline.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
