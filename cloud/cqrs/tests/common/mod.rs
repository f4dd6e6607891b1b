//! Helpers shared by the CQRS tests: backends on fresh storage (the PostgreSQL ones from
//! `$OUTRIDER_TEST_PG`, FAILING when it is unset, as outrider-store's tests), polling with
//! deadlines, and the `both!` macro that runs a generic case against sled and PostgreSQL.
#![allow(dead_code, unused_macros)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_cqrs::RunnerConfig;
use outrider_store::{EventStore, PgConfig, PgStore, SledConfig, SledStore};

pub const PG_ENV: &str = "OUTRIDER_TEST_PG";

pub fn pg_url() -> String {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "\n\n{PG_ENV} is not set: outrider-cqrs's PostgreSQL tests need a server.\n\
             Start a throwaway one and export its address with:\n\n    \
             eval \"$(cloud/store/scripts/pg-test.sh start)\"\n\n\
             (stop it with `cloud/store/scripts/pg-test.sh stop`), or point {PG_ENV} at any \
             PostgreSQL >= 13 where this user may create schemas.\n\n"
        ),
    }
}

/// A PostgreSQL store in its own fresh schema.
pub struct PgTestDb {
    pub store: PgStore,
    pub schema: String,
}

impl PgTestDb {
    pub async fn create() -> Self {
        let schema = format!("cq{}", uuid::Uuid::new_v4().simple());
        let mut cfg = PgConfig::new(pg_url());
        cfg.schema = schema.clone();
        cfg.pool_size = 8;
        cfg.poll_interval = Duration::from_millis(10);
        let store = PgStore::connect(cfg)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}={:?}: {e}", pg_url()));
        Self { store, schema }
    }

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

/// A sled store in a fresh temporary directory.
pub fn sled_store() -> (SledStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(SledConfig::new(dir.path())).expect("open sled store");
    (store, dir)
}

pub fn dyn_store<S: EventStore + Clone + 'static>(s: &S) -> Arc<dyn EventStore> {
    Arc::new(s.clone())
}

/// A runner config with a short lease (tests of takeover) and a unique holder.
pub fn runner(holder: &str) -> RunnerConfig {
    RunnerConfig {
        holder: format!("{holder}-{}", uuid::Uuid::new_v4().simple()),
        lease_ttl: Duration::from_millis(600),
        batch: 64,
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
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs each generic case `cases::NAME(store)` against sled and against PostgreSQL.
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sled_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let (store, _dir) = crate::common::sled_store();
                    crate::cases::$case(store).await;
                }
            )*
        }
        mod pg_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = crate::common::PgTestDb::create().await;
                    crate::cases::$case(db.store.clone()).await;
                    db.drop_schema().await;
                }
            )*
        }
    };
}
