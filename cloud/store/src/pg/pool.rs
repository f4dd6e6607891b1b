//! A small connection pool: up to `size` connections, opened on demand, each with the store's
//! statements prepared once. A connection that broke, or was handed back in the middle of a
//! transaction, is dropped instead of reused.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

use crate::error::{Result, StoreError};

/// The store's prepared statements (SQL in `super::sql`).
pub(crate) struct Stmts {
    pub(crate) append: Statement,
    pub(crate) append_one: Statement,
    pub(crate) read_all_start: Statement,
    pub(crate) read_all_after: Statement,
    pub(crate) position_exists: Statement,
    pub(crate) read_forwards: Statement,
    pub(crate) read_backwards: Statement,
    pub(crate) stream_version: Statement,
}

pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) stmts: Stmts,
}

pub(crate) struct Pool {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
}

/// A connection taken from the pool; goes back on drop unless it broke or was marked.
pub(crate) struct Pooled {
    pool: Arc<Pool>,
    conn: Option<Conn>,
    /// Set while a transaction is open: dropping then discards the connection (the server
    /// rolls the transaction back when it goes).
    pub(crate) discard: bool,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Pooled {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        // Only `Drop` takes the connection out.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !self.discard && !conn.client.is_closed() {
                self.pool.idle.lock().push(conn);
            }
        }
    }
}

/// Opens one connection; its driver runs on a tokio task until the client is dropped.
pub(crate) async fn connect(config: &tokio_postgres::Config) -> Result<Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(StoreError::pg("connecting"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

async fn prepare(client: &Client) -> Result<Stmts> {
    use super::sql;
    let p = |q: &'static str| async move {
        client
            .prepare(q)
            .await
            .map_err(StoreError::pg("preparing statements"))
    };
    Ok(Stmts {
        append: p(sql::APPEND).await?,
        append_one: p(sql::APPEND_ONE).await?,
        read_all_start: p(sql::READ_ALL_START).await?,
        read_all_after: p(sql::READ_ALL_AFTER).await?,
        position_exists: p(sql::POSITION_EXISTS).await?,
        read_forwards: p(sql::READ_FORWARDS).await?,
        read_backwards: p(sql::READ_BACKWARDS).await?,
        stream_version: p(sql::STREAM_VERSION).await?,
    })
}

impl Pool {
    pub(crate) fn new(
        config: tokio_postgres::Config,
        size: usize,
        acquire_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
            acquire_timeout,
        })
    }

    /// Adds an already open client (the one that ran the migrations).
    pub(crate) async fn put(self: &Arc<Self>, client: Client) -> Result<()> {
        let stmts = prepare(&client).await?;
        self.idle.lock().push(Conn { client, stmts });
        Ok(())
    }

    /// Takes a connection, opening one if none is idle; waits at most the acquire timeout.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Pooled> {
        let permit =
            tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| StoreError::PoolExhausted {
                    waited: self.acquire_timeout,
                })?
                .map_err(|_| StoreError::Closed)?;
        loop {
            let idle = self.idle.lock().pop();
            match idle {
                Some(conn) if conn.client.is_closed() => continue,
                Some(conn) => {
                    return Ok(Pooled {
                        pool: self.clone(),
                        conn: Some(conn),
                        discard: false,
                        _permit: permit,
                    })
                }
                None => break,
            }
        }
        let client = connect(&self.config).await?;
        let stmts = prepare(&client).await?;
        Ok(Pooled {
            pool: self.clone(),
            conn: Some(Conn { client, stmts }),
            discard: false,
            _permit: permit,
        })
    }
}
