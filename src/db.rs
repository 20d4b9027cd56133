//! Postgres access that stays correct behind PgBouncer in transaction pooling mode.
//!
//! Measured (docs/pgbouncer.md, shared/reference/pgbouncer.md): sqlx's named statements and
//! un-pinned unnamed statements break or — worse — return another client's results through
//! PgBouncer 1.18 in transaction mode. The one safe shape is: **non-persistent statements
//! inside an explicit transaction**. [`Db`] makes it the only shape reachable: its sole entry
//! point is [`Db::begin`], and every query method of [`Tx`] forces `.persistent(false)`.
//! No `PgPool` leaves this module.

use std::str::FromStr;

use sqlx::{
    ConnectOptions, Connection, Executor, FromRow, IntoArguments, PgConnection, Postgres,
    pool::PoolConnection,
    postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow},
    query::{Query, QueryAs, QueryScalar},
};

use crate::config::DatabaseSettings;

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// A URL in the configuration is malformed.
    #[error("database url `{key}`: {source}")]
    Url {
        /// Which key.
        key: &'static str,
        /// Why.
        source: sqlx::Error,
    },
    /// A query or connection failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    /// Postgres (or PgBouncer in front of it) is unreachable or refusing work for now; the
    /// same statement would succeed after the outage.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Sqlx(e) => is_outage(e),
            _ => false,
        }
    }
}

/// See [`DbError::is_outage`]: connection failures, pool timeouts, and the SQLSTATEs of a
/// server going away (class 08, 57P01–57P03, 53300) — PgBouncer reports a lost server as 08P01.
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// The runtime database handle (through PgBouncer). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: sqlx::PgPool,
}

fn options(
    url: &str,
    key: &'static str,
    password: Option<&str>,
) -> Result<PgConnectOptions, DbError> {
    let mut opts =
        PgConnectOptions::from_str(url).map_err(|source| DbError::Url { key, source })?;
    if let Some(pw) = password {
        opts = opts.password(pw);
    }
    Ok(opts
        .application_name("finworker")
        // PgBouncer rejects this startup parameter unless told to ignore it.
        .extra_float_digits(None)
        // No named statements are ever created (sqlx#4328: capacity 0 alone is not enough,
        // hence also persistent(false) on every query in Tx).
        .statement_cache_capacity(0)
        .log_statements(tracing::log::LevelFilter::Trace))
}

impl Db {
    /// A pool through PgBouncer. Connections are opened lazily, so a daemon starts (and
    /// reports not-ready) while Postgres is down.
    pub fn connect_lazy(
        settings: &DatabaseSettings,
        password: Option<&str>,
    ) -> Result<Self, DbError> {
        let opts = options(&settings.url, "database.url", password)?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // A fresh connection after a PgBouncer restart beats a stale one.
            .test_before_acquire(false)
            .connect_lazy_with(opts);
        Ok(Self { pool })
    }

    /// Opens a transaction: the only way to run statements.
    ///
    /// Cancellation-safe, like every [`Tx`] operation: sqlx 0.8 counts a transaction only once
    /// BEGIN's answer is read, and a statement future dropped half-way can leave answers
    /// unread on the connection. Either way the pooled connection would go back to the pool
    /// inside a transaction nobody owns, or out of step with its answers — the next caller
    /// then warns "there is already a transaction in progress" and runs inside it, or reads
    /// another statement's answer. So BEGIN runs in a task of its own (a cancelled caller's
    /// transaction is still finished, then dropped), and a `Tx` whose operation was cut short
    /// closes its connection instead of returning it (tests in `tests/it/pgbouncer.rs`).
    pub async fn begin(&self) -> Result<Tx, DbError> {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let conn = pool.acquire().await?;
            let mut tx = Tx {
                conn: Some(conn),
                busy: false,
                done: false,
            };
            tx.simple("BEGIN").await?;
            Ok(tx)
        })
        .await
        .map_err(|e| DbError::Sqlx(sqlx::Error::Io(std::io::Error::other(e))))?
    }

    /// `SELECT 1` in a transaction, for readiness checks.
    pub async fn ping(&self) -> Result<(), DbError> {
        let mut tx = self.begin().await?;
        let one: i32 = tx.scalar(sqlx::query_scalar("SELECT 1")).await?;
        debug_assert_eq!(one, 1);
        tx.commit().await
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One open transaction. Dropping it without [`Tx::commit`] rolls back; dropping it while
/// one of its operations was under way (a cancelled future) closes its connection, so no
/// half-read connection ever returns to the pool.
#[derive(Debug)]
pub struct Tx {
    conn: Option<PoolConnection<Postgres>>,
    /// An operation started and has not finished: the connection's state is unknown.
    busy: bool,
    /// Committed.
    done: bool,
}

impl Tx {
    fn conn(&mut self) -> &mut PgConnection {
        // Present until Drop.
        self.conn
            .as_deref_mut()
            .expect("a Tx holds its connection until dropped")
    }

    async fn simple(&mut self, sql: &'static str) -> Result<(), DbError> {
        self.busy = true;
        self.conn().execute(sql).await?;
        self.busy = false;
        Ok(())
    }

    /// Runs a statement and returns how many rows it touched.
    pub async fn execute<'q, A>(&mut self, q: Query<'q, Postgres, A>) -> Result<u64, DbError>
    where
        A: IntoArguments<'q, Postgres> + 'q,
    {
        self.busy = true;
        let r: PgQueryResult = q.persistent(false).execute(self.conn()).await?;
        self.busy = false;
        Ok(r.rows_affected())
    }

    /// All rows of a query, mapped.
    pub async fn fetch_all<'q, O>(
        &mut self,
        q: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> Result<Vec<O>, DbError>
    where
        O: Send + Unpin + for<'r> FromRow<'r, PgRow>,
    {
        self.busy = true;
        let r = q.persistent(false).fetch_all(self.conn()).await?;
        self.busy = false;
        Ok(r)
    }

    /// Exactly one row.
    pub async fn fetch_one<'q, O>(
        &mut self,
        q: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> Result<O, DbError>
    where
        O: Send + Unpin + for<'r> FromRow<'r, PgRow>,
    {
        self.busy = true;
        let r = q.persistent(false).fetch_one(self.conn()).await?;
        self.busy = false;
        Ok(r)
    }

    /// At most one row.
    pub async fn fetch_optional<'q, O>(
        &mut self,
        q: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> Result<Option<O>, DbError>
    where
        O: Send + Unpin + for<'r> FromRow<'r, PgRow>,
    {
        self.busy = true;
        let r = q.persistent(false).fetch_optional(self.conn()).await?;
        self.busy = false;
        Ok(r)
    }

    /// Exactly one scalar.
    pub async fn scalar<'q, O>(
        &mut self,
        q: QueryScalar<'q, Postgres, O, PgArguments>,
    ) -> Result<O, DbError>
    where
        O: Send + Unpin,
        (O,): for<'r> FromRow<'r, PgRow>,
    {
        self.busy = true;
        let r = q.persistent(false).fetch_one(self.conn()).await?;
        self.busy = false;
        Ok(r)
    }

    /// A parameterless statement (DDL such as temp tables).
    pub async fn execute_raw(&mut self, sql: &str) -> Result<(), DbError> {
        self.execute(sqlx::query(sql)).await.map(|_| ())
    }

    /// `COPY ... FROM STDIN` with the given bytes (works through PgBouncer).
    pub async fn copy_in(&mut self, statement: &str, data: &[u8]) -> Result<u64, DbError> {
        self.busy = true;
        let mut copy = self.conn().copy_in_raw(statement).await?;
        copy.send(data).await?;
        let n = copy.finish().await?;
        self.busy = false;
        Ok(n)
    }

    /// Commits.
    pub async fn commit(mut self) -> Result<(), DbError> {
        self.simple("COMMIT").await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.done {
            return; // committed: back to the pool
        }
        let handle = tokio::runtime::Handle::try_current();
        match handle {
            // Not committed, nothing under way: roll back, then the connection is reusable.
            Ok(rt) if !self.busy => {
                rt.spawn(async move {
                    if conn.execute("ROLLBACK").await.is_err() {
                        conn.close_on_drop();
                    }
                });
            }
            // Cut short mid-operation (or no runtime to roll back on): close it; the server
            // aborts the transaction with the connection.
            _ => conn.close_on_drop(),
        }
    }
}

/// Applies `migrations/` over the direct (non-pooled) connection: migrations take an
/// advisory lock that needs a session, which transaction pooling does not keep.
pub async fn migrate(settings: &DatabaseSettings, password: Option<&str>) -> Result<(), DbError> {
    let opts = options(&settings.direct_url, "database.direct_url", password)?;
    let mut conn = PgConnection::connect_with(&opts).await?;
    sqlx::migrate!("./migrations").run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// A direct connection (session semantics), for admin work such as creating databases.
pub async fn connect_direct(url: &str, password: Option<&str>) -> Result<PgConnection, DbError> {
    let opts = options(url, "database.direct_url", password)?;
    Ok(opts.connect().await?)
}
