//! A native PostgreSQL pool: tokio-postgres connections from deadpool, no Python.
//!
//! ```text
//!  Tokio task: run_interaction(name, f)
//!    for attempt in 1..=max_attempts:
//!      connection ← deadpool (at most max_size; opened by pg_connection: libpq's rules, TLS)
//!      BEGIN ISOLATION LEVEL …; [SET LOCAL statement_timeout]; [SELECT pg_backend_pid()]
//!        (one round trip; the pid guards the statement cache against transaction poolers)
//!      f(txn)  (only Transaction calls may be awaited);  COMMIT
//!      40001 / 40P01 (in f or at COMMIT) → ROLLBACK, jittered backoff, again
//!      connection lost or refused before COMMIT → drop the connection, back off,
//!        again on a new one (for up to `reconnect_timeout`: a server restart)
//!      connection lost during COMMIT → error, never retried (it may have committed)
//! ```
//!
//! Everything runs on the calling Tokio task; the GIL is never involved.

use std::time::Duration;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use deadpool::managed::{Object, Pool, PoolError};
use futures_util::TryStreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, Format, FromSql, IsNull, Kind, ToSql, Type};
use tokio_postgres::{IsolationLevel, Row, SimpleQueryMessage};

use super::libpq::{self, ProcessEnvironment};
use super::pg_connection::{ConnectError, PgConnection, PgManager, PoolCounters};

use super::{
    DbRow, DbValue, ErasedInteraction, ErasedResult, InTransactionCall, InteractionOptions,
    Placeholders, Transaction,
};

/// Configuration of a [`PostgresPool`].
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// A connection string, read as libpq reads one: a URL
    /// (`postgresql://synapse:secret@db.example:5432/synapse?sslmode=verify-full`) or
    /// `key=value` pairs (`host=/var/run/postgresql dbname=synapse`). What it leaves
    /// out comes from the `PG*` environment variables (`PGHOST`, which may be a
    /// Unix-socket directory, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGCONNECT_TIMEOUT`,
    /// `PGPASSFILE`, `PGAPPNAME`, `PGOPTIONS`), then the password file (`~/.pgpass`),
    /// then libpq's defaults (the local socket directory, port 5432, the OS user,
    /// `sslmode=prefer`). An empty string takes everything from there. Read once, by
    /// [`PostgresPool::new`].
    ///
    /// TLS is rustls, with `sslmode` as libpq defines it: `disable`, `allow`,
    /// `prefer` (the default: TLS when the server offers it, certificate unchecked),
    /// `require`, `verify-ca` and `verify-full`. `sslrootcert` is a PEM file of CAs or
    /// `system` (the system's roots; implies `verify-full`); with a root file (the
    /// default is `~/.postgresql/root.crt` when it exists) the chain is checked in
    /// every mode, the host name in `verify-full`. `sslcert`/`sslkey` (default
    /// `~/.postgresql/postgresql.{crt,key}`) authenticate the client. Unix-socket
    /// connections are never encrypted, as in libpq.
    pub dsn: String,
    /// Most connections open at once. Default: 10.
    pub max_size: usize,
    /// Isolation level of every transaction. Default: repeatable read (as Synapse).
    pub isolation_level: IsolationLevel,
    /// Attempts per transaction on serialization failures and deadlocks. Default: 5.
    pub max_attempts: u32,
    /// Base delay before a retry, doubled each time, with up to 100% jitter added.
    /// Default: 5 ms.
    pub retry_backoff: Duration,
    /// How long a transaction keeps retrying, on new connections, when the server
    /// drops or refuses connections before its COMMIT (a restart or failover), in
    /// addition to `max_attempts`. Retry delays grow to at most 250 ms. Zero turns
    /// these retries off. Default: 5 seconds.
    pub reconnect_timeout: Duration,
    /// How long a transaction waits for a pooled connection when all `max_size` are
    /// in use, before failing with [`CheckoutTimeout`] (never retried). `None` waits
    /// as long as it takes. Follows the task's clock ([`crate::time`]). Default: 30
    /// seconds.
    pub checkout_timeout: Option<Duration>,
    /// The server's `statement_timeout` for every statement of this pool's
    /// transactions (`SET LOCAL` after `BEGIN`, so it works behind PgBouncer too): a
    /// statement running longer is cancelled by the server, the transaction rolls
    /// back and fails with SQLSTATE 57014, never retried, and the connection goes back
    /// to the pool. `None` leaves the server's setting. Default: `None`.
    pub statement_timeout: Option<Duration>,
    /// How long opening one connection may take, when the DSN (`connect_timeout`)
    /// and `PGCONNECT_TIMEOUT` say nothing: libpq would wait as long as TCP does,
    /// minutes for a server that drops packets. Default: 10 seconds.
    pub connect_timeout: Option<Duration>,
    /// Keep each connection's prepared statements, by SQL text, and reuse them
    /// (named statements: one round trip less per query). Default: `true`.
    ///
    /// Turn it off behind a pooler that hands one client connection's transactions to
    /// different server connections (PgBouncer in transaction mode, before 1.21 or
    /// without `max_prepared_statements`): queries then use unnamed statements, with
    /// parameters sent as text for the server to type, and never leave anything on
    /// the server. With the cache on, each transaction checks that it runs in the
    /// session where its statements were prepared, and fails with
    /// [`StatementCacheUnsafe`] (never retried) rather than run a statement another
    /// client may have prepared under the same name.
    pub statement_cache: bool,
}

impl PostgresConfig {
    /// The defaults, connecting to `dsn`.
    pub fn new(dsn: impl Into<String>) -> Self {
        Self {
            dsn: dsn.into(),
            max_size: 10,
            isolation_level: IsolationLevel::RepeatableRead,
            max_attempts: 5,
            retry_backoff: Duration::from_millis(5),
            reconnect_timeout: Duration::from_secs(5),
            checkout_timeout: Some(Duration::from_secs(30)),
            statement_timeout: None,
            connect_timeout: Some(Duration::from_secs(10)),
            statement_cache: true,
        }
    }
}

/// A transaction found its connection in another server session than the one its
/// cached statements were prepared in: a pooler in transaction mode sits in front of
/// the server. Never retried; turn [`PostgresConfig::statement_cache`] off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementCacheUnsafe {
    /// The pool's DSN, without its password.
    pub dsn: String,
    /// `pg_backend_pid()` when the statements were prepared, and now.
    pub backends: (i32, i32),
}

impl std::fmt::Display for StatementCacheUnsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server session behind one connection to {} changed between transactions \
             (backend {} then {}): a pooler in transaction mode, such as PgBouncer, is in \
             between, and named prepared statements could run another client's SQL there; \
             nothing was run. Set PostgresConfig::statement_cache = false for this pool",
            self.dsn, self.backends.0, self.backends.1
        )
    }
}

impl std::error::Error for StatementCacheUnsafe {}

/// A transaction waited longer than `checkout_timeout` for a connection of a
/// [`PostgresPool`] whose connections were all in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutTimeout {
    /// The pool's DSN, without its password.
    pub dsn: String,
    /// The pool's `max_size`.
    pub max_size: usize,
    /// How long the transaction waited.
    pub waited: Duration,
}

impl std::fmt::Display for CheckoutTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no connection of the pool for {} came free within {:?}: all {} (max_size) \
             are in use; raise max_size or checkout_timeout, or hold connections for less",
            self.dsn, self.waited, self.max_size
        )
    }
}

impl std::error::Error for CheckoutTimeout {}

/// A [`DatabasePool`](super::DatabasePool) over tokio-postgres, for Rust-only
/// programs.
///
/// ```no_run
/// # async fn f() -> anyhow::Result<()> {
/// use futures_util::FutureExt;
/// use pyo3_twisted::db::{DatabasePoolExt, DbRowExt, PostgresConfig, PostgresPool};
///
/// let pool = PostgresPool::new(PostgresConfig::new("postgresql://app@127.0.0.1/app"))?;
/// let users: i64 = pool
///     .run_interaction("count_users", |txn| {
///         async move { txn.query("SELECT count(*) FROM users", &[]).await?[0].try_get(0) }.boxed()
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct PostgresPool {
    pool: Pool<PgManager>,
    config: PostgresConfig,
    safe_dsn: String,
    counters: Arc<PoolCounters>,
}

/// What a [`PostgresPool`] holds now and has done since it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// Connections open now.
    pub size: usize,
    /// Open connections not in use.
    pub available: usize,
    /// The configured maximum.
    pub max_size: usize,
    /// Connections handed to transactions (one per attempt).
    pub checkouts: u64,
    /// Checkouts that found no idle connection at once, and waited for one to open
    /// or come free.
    pub checkout_waits: u64,
    /// Checkouts that gave up after `checkout_timeout` ([`CheckoutTimeout`]).
    pub checkout_timeouts: u64,
    /// Transactions run again after a serialization failure (SQLSTATE 40001).
    pub retries_serialization: u64,
    /// Transactions run again after a deadlock (40P01).
    pub retries_deadlock: u64,
    /// Transactions run again on a new connection after losing one, or failing to
    /// open one, before COMMIT (`reconnect_timeout`).
    pub retries_connection: u64,
    /// Connections opened.
    pub connections_opened: u64,
    /// Connections that have ended (closed by either side, or dropped by the pool).
    pub connections_closed: u64,
}

impl std::fmt::Debug for PostgresPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPool")
            .field("dsn", &self.safe_dsn)
            .field("status", &self.status())
            .finish()
    }
}

impl PostgresPool {
    /// A pool for `config`. The DSN, the `PG*` environment and the password file are
    /// read now, and TLS files loaded now, so a mistake in them fails here; connections
    /// are opened on first use, so an unreachable server is reported by the first
    /// transaction (naming the host, never the password).
    pub fn new(config: PostgresConfig) -> anyhow::Result<Self> {
        let safe_dsn = redact(&config.dsn);
        let mut options = libpq::resolve(&config.dsn, &ProcessEnvironment)
            .map_err(|e| anyhow::anyhow!("invalid PostgreSQL DSN {safe_dsn}: {e}"))?;
        if options.connect_timeout.is_none() {
            options.connect_timeout = config.connect_timeout;
        }
        if config.max_size == 0 || config.max_attempts == 0 {
            anyhow::bail!("max_size and max_attempts must be at least 1");
        }
        let tls = super::tls::client_config(&options.tls)
            .map_err(|e| anyhow::anyhow!("TLS for {safe_dsn}: {e}"))?;
        let counters = Arc::new(PoolCounters::default());
        let pool = Pool::builder(PgManager::new(options, tls, counters.clone()))
            .max_size(config.max_size)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build a pool for {safe_dsn}: {e}"))?;
        Ok(Self {
            pool,
            config,
            safe_dsn,
            counters,
        })
    }

    /// Connection counts now, and the pool's totals so far.
    pub fn status(&self) -> PoolStatus {
        let status = self.pool.status();
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        PoolStatus {
            size: status.size,
            available: status.available,
            max_size: status.max_size,
            checkouts: read(&c.checkouts),
            checkout_waits: read(&c.checkout_waits),
            checkout_timeouts: read(&c.checkout_timeouts),
            retries_serialization: read(&c.retries_serialization),
            retries_deadlock: read(&c.retries_deadlock),
            retries_connection: read(&c.retries_connection),
            connections_opened: read(&c.connections_opened),
            connections_closed: read(&c.connections_closed),
        }
    }

    async fn checkout(&self) -> Result<Object<PgManager>, PoolError<ConnectError>> {
        let mut get = std::pin::pin!(self.pool.get());
        // Ready at the first poll: an idle connection was there. Anything else waited,
        // for a connection to open or to come free.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(get.as_mut().poll(cx))).await;
        match first {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => {
                PoolCounters::bump(&self.counters.checkout_waits);
                get.await
            }
        }
    }

    // `&mut`: the closure is `Send` but not `Sync`, and this future must be `Send`.
    async fn attempt(
        &self,
        name: &'static str,
        options: InteractionOptions,
        func: &mut ErasedInteraction,
    ) -> ErasedResult {
        let waiting = std::time::Instant::now();
        let checkout = match self.config.checkout_timeout {
            Some(limit) => match crate::time::within(limit, self.checkout()).await {
                Some(checkout) => checkout,
                None => {
                    PoolCounters::bump(&self.counters.checkout_timeouts);
                    return Err(anyhow::Error::new(CheckoutTimeout {
                        dsn: self.safe_dsn.clone(),
                        max_size: self.config.max_size,
                        waited: limit,
                    }));
                }
            },
            None => self.checkout().await,
        };
        if let Some(bridge) = crate::scope::TaskScope::current_bridge() {
            if bridge.histograms().enabled {
                bridge
                    .histograms()
                    .checkout
                    .observe_duration(waiting.elapsed());
            }
        }
        let connection = match checkout {
            Ok(connection) => connection,
            Err(err) => {
                let (message, transient) = match &err {
                    PoolError::Backend(connect) => (connect.message.clone(), connect.transient),
                    other => (other.to_string(), false),
                };
                let message = format!("cannot connect to {}: {message}", self.safe_dsn);
                return Err(if transient {
                    anyhow::Error::new(ServerUnreachable(message))
                } else {
                    anyhow::anyhow!(message)
                });
            }
        };
        PoolCounters::bump(&self.counters.checkouts);
        let mut open = OpenTransaction {
            connection: Some(connection),
            in_transaction: false,
        };
        let outcome = self.transaction(name, options, func, &mut open).await;
        let unusable = outcome.as_ref().is_err_and(|err| {
            connection_lost(err) || err.downcast_ref::<StatementCacheUnsafe>().is_some()
        });
        if unusable {
            // Not back into the pool: the next user would find it dead, or in the
            // wrong session, too.
            if let Some(connection) = open.connection.take() {
                drop(Object::take(connection));
            }
        }
        outcome
    }

    async fn transaction(
        &self,
        name: &'static str,
        options: InteractionOptions,
        func: &mut ErasedInteraction,
        open: &mut OpenTransaction,
    ) -> ErasedResult {
        let Some(connection) = open.connection.as_deref_mut() else {
            anyhow::bail!("internal error: no connection for the transaction");
        };
        let begin = self.begin_statement(options);
        open.in_transaction = true;
        let replies = connection.client.simple_query(&begin).await?;
        if self.config.statement_cache {
            let pid = replies.iter().find_map(|reply| match reply {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|pid| pid.parse().ok()),
                _ => None,
            });
            match (connection.backend_pid, pid) {
                (Some(before), Some(now)) if before != now => {
                    // Nothing ran; the connection is closed after this anyway.
                    let _ = connection.client.batch_execute("ROLLBACK").await;
                    return Err(anyhow::Error::new(StatementCacheUnsafe {
                        dsn: self.safe_dsn.clone(),
                        backends: (before, now),
                    }));
                }
                (None, Some(now)) => connection.backend_pid = Some(now),
                _ => {}
            }
        }
        let calls = InTransactionCall::default();
        let mut transaction = PgTransaction {
            connection: &mut *connection,
            unnamed: !self.config.statement_cache,
            calls: &calls,
        };
        let result = calls.drive(name, func(&mut transaction)).await;
        match result {
            Ok(value) => match connection.client.batch_execute("COMMIT").await {
                Ok(()) => {
                    open.in_transaction = false;
                    Ok(value)
                }
                Err(err) if is_connection_loss(&err) => {
                    Err(anyhow::Error::new(err).context(CommitOutcomeUnknown {
                        dsn: self.safe_dsn.clone(),
                    }))
                }
                Err(err) => Err(err.into()),
            },
            Err(err) => {
                if connection.client.batch_execute("ROLLBACK").await.is_ok() {
                    open.in_transaction = false;
                }
                Err(err)
            }
        }
    }

    /// BEGIN and what goes with it, as one simple query: one round trip.
    fn begin_statement(&self, options: InteractionOptions) -> String {
        let isolation = match self.config.isolation_level {
            IsolationLevel::ReadUncommitted => "READ UNCOMMITTED",
            IsolationLevel::ReadCommitted => "READ COMMITTED",
            IsolationLevel::Serializable => "SERIALIZABLE",
            _ => "REPEATABLE READ",
        };
        let mut begin = format!("BEGIN ISOLATION LEVEL {isolation}");
        if options.read_only {
            begin.push_str(" READ ONLY");
        }
        if let Some(limit) = options.statement_timeout.or(self.config.statement_timeout) {
            // At least 1 ms: 0 would mean no timeout to the server.
            let ms = limit.as_millis().max(1);
            begin.push_str(&format!("; SET LOCAL statement_timeout = {ms}"));
        }
        if self.config.statement_cache {
            begin.push_str("; SELECT pg_backend_pid()");
        }
        begin
    }
}

/// A checked-out connection and whether a transaction is open on it. Dropped with one
/// open (the caller's future was cancelled mid-transaction), it rolls back on a Tokio
/// task before the connection goes back to the pool, or closes the connection.
struct OpenTransaction {
    connection: Option<Object<PgManager>>,
    in_transaction: bool,
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if !self.in_transaction {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if connection.client.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(connection));
                    }
                });
            }
            // The server rolls back when the connection closes.
            Err(_) => drop(Object::take(connection)),
        }
    }
}

/// `func`, counting the attempts it is called for.
fn counted(func: ErasedInteraction) -> (ErasedInteraction, Arc<AtomicU32>) {
    let attempts = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&attempts);
    let counted: ErasedInteraction = Box::new(move |txn| {
        count.fetch_add(1, Ordering::Relaxed);
        func(txn)
    });
    (counted, attempts)
}

#[async_trait::async_trait]
impl super::DatabasePool for PostgresPool {
    async fn run_interaction_erased(
        &self,
        name: &'static str,
        func: ErasedInteraction,
    ) -> ErasedResult {
        self.run_interaction_erased_with(name, InteractionOptions::default(), func)
            .await
    }

    async fn run_interaction_erased_with(
        &self,
        name: &'static str,
        options: InteractionOptions,
        func: ErasedInteraction,
    ) -> ErasedResult {
        let (func, attempts) = counted(func);
        let started = std::time::Instant::now();
        let result = self.run_counted(name, options, func).await;
        let bridge = crate::scope::TaskScope::current_bridge();
        super::record_interaction(
            bridge.as_deref(),
            "postgres",
            name,
            &attempts,
            result.is_ok(),
            started,
        );
        result
    }
}

impl PostgresPool {
    /// The transaction, retried on serialization failures, deadlocks and (within
    /// `reconnect_timeout`) lost connections.
    async fn run_counted(
        &self,
        name: &'static str,
        options: InteractionOptions,
        mut func: ErasedInteraction,
    ) -> ErasedResult {
        let mut attempt = 1;
        // The crate's clock: a test on a memory reactor retries in virtual time.
        let started = crate::time::clock_now();
        loop {
            match self.attempt(name, options, &mut func).await {
                Err(err) if attempt < self.config.max_attempts && is_retryable(&err) => {
                    PoolCounters::bump(if is_deadlock(&err) {
                        &self.counters.retries_deadlock
                    } else {
                        &self.counters.retries_serialization
                    });
                    log::debug!(
                        "run_interaction({name}): attempt {attempt} failed, retrying: {err:#}"
                    );
                    crate::time::wait(backoff(self.config.retry_backoff, attempt)).await;
                    attempt += 1;
                }
                Err(err)
                    if connection_lost(&err)
                        && crate::time::clock_now() - started < self.config.reconnect_timeout =>
                {
                    PoolCounters::bump(&self.counters.retries_connection);
                    log::warn!(
                        "run_interaction({name}): connection to {} lost or refused \
                         (attempt {attempt}), retrying on a new one: {err:#}",
                        self.safe_dsn
                    );
                    let delay =
                        backoff(self.config.retry_backoff, attempt).min(Duration::from_millis(250));
                    crate::time::wait(delay).await;
                    attempt += 1;
                }
                Err(err) => {
                    return Err(err.context(format!(
                        "run_interaction({name}) failed after {attempt} attempt(s)"
                    )))
                }
                ok => return ok,
            }
        }
    }
}

/// The connection dropped during COMMIT: the server may or may not have committed, so
/// the transaction is not run again.
#[derive(Debug)]
pub struct CommitOutcomeUnknown {
    dsn: String,
}

impl std::fmt::Display for CommitOutcomeUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the connection to {} was lost during COMMIT: the transaction may or may not \
             have committed, so it was not retried",
            self.dsn
        )
    }
}

impl std::error::Error for CommitOutcomeUnknown {}

/// The server closed or refused the connection before COMMIT (nothing committed):
/// safe to run again on a new connection. Not after an unknown COMMIT outcome.
fn connection_lost(err: &anyhow::Error) -> bool {
    // A context layer: found by anyhow's downcast, not by walking the chain.
    if err.downcast_ref::<CommitOutcomeUnknown>().is_some() {
        return false;
    }
    err.chain().any(|cause| {
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
            return is_connection_loss(pg);
        }
        cause.is::<ServerUnreachable>()
    })
}

/// A new connection could not be made.
#[derive(Debug)]
struct ServerUnreachable(String);

impl std::fmt::Display for ServerUnreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerUnreachable {}

/// A closed connection, a refused one, or the server shutting down (SQLSTATE class
/// 08, 57P01 to 57P03).
pub(crate) fn is_connection_loss(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(code) = err.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    // No SQLSTATE and not a server error: an I/O failure on the socket.
    err.as_db_error().is_none()
        && std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
}

/// Serialization failures and deadlocks: the transaction can simply run again.
fn is_retryable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            .is_some_and(|code| {
                *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
            })
    })
}

fn is_deadlock(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            .is_some_and(|code| *code == SqlState::T_R_DEADLOCK_DETECTED)
    })
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(1 << (attempt - 1).min(10));
    // Jitter from the clock's low bits: enough to keep racing retries apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    exponential + exponential.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// The DSN with any password replaced, for error messages and logs.
fn redact(dsn: &str) -> String {
    if let Some(scheme_end) = dsn.find("://") {
        let rest = &dsn[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            return format!("{}{user}{hidden}{}", &dsn[..scheme_end + 3], &rest[at..]);
        }
        return dsn.to_owned();
    }
    // key=value form
    dsn.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The innermost cause's message (deadpool and tokio-postgres wrap the interesting
/// one, such as "connection refused").
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

struct PgTransaction<'a> {
    connection: &'a mut PgConnection,
    /// No named statements (`statement_cache` off).
    unnamed: bool,
    calls: &'a InTransactionCall,
}

/// The parameter type of an unnamed query: unspecified, for the server to infer, with
/// the value sent as text.
static UNSPECIFIED: once_cell::sync::Lazy<Type> = once_cell::sync::Lazy::new(|| {
    Type::new("unspecified".into(), 0, Kind::Pseudo, "pg_catalog".into())
});

impl PgTransaction<'_> {
    /// `sql` with `$n` placeholders, checked against the parameters.
    fn numbered(sql: &str, params: &[DbValue]) -> anyhow::Result<String> {
        let placeholders = Placeholders::scan(sql);
        placeholders.check(params.len())?;
        Ok(placeholders.numbered(sql))
    }

    /// An unnamed statement (`statement_cache` off): parsed, bound and run in one
    /// round trip, the parameters typed by the server.
    async fn unnamed(
        &self,
        sql: &str,
        params: &[DbValue],
    ) -> anyhow::Result<tokio_postgres::RowStream> {
        let typed = params.iter().map(|p| (p, UNSPECIFIED.clone()));
        self.connection
            .client
            .query_typed_raw(sql, typed)
            .await
            .map_err(explain_statement_error)
    }

    /// This connection's named statement for `sql`, prepared once.
    async fn prepared(&mut self, sql: &str) -> anyhow::Result<tokio_postgres::Statement> {
        self.connection
            .prepare_cached(sql)
            .await
            .map_err(explain_statement_error)
    }

    async fn rows(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<Vec<Row>> {
        let sql = Self::numbered(sql, params)?;
        if self.unnamed {
            return Ok(self.unnamed(&sql, params).await?.try_collect().await?);
        }
        let statement = self.prepared(&sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        self.connection
            .client
            .query(&statement, &refs)
            .await
            .map_err(explain_statement_error)
    }

    async fn affected(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<u64> {
        let sql = Self::numbered(sql, params)?;
        if self.unnamed {
            let mut stream = std::pin::pin!(self.unnamed(&sql, params).await?);
            while stream.try_next().await?.is_some() {}
            return Ok(stream.rows_affected().unwrap_or(0));
        }
        let statement = self.prepared(&sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        Ok(self.connection.client.execute(&statement, &refs).await?)
    }
}

/// A prepared statement the server does not know, or knows already: its sessions are
/// being shared by a pooler (checked for at BEGIN; this is the backstop).
fn explain_statement_error(err: tokio_postgres::Error) -> anyhow::Error {
    let code = err.code().cloned();
    let err = anyhow::Error::new(err);
    if code == Some(SqlState::INVALID_SQL_STATEMENT_NAME)
        || code == Some(SqlState::DUPLICATE_PSTATEMENT)
    {
        return err.context(
            "the server lost or already had a prepared statement of this connection: a \
             pooler in transaction mode (PgBouncer?) is in between; set \
             PostgresConfig::statement_cache = false",
        );
    }
    err
}

#[async_trait::async_trait]
impl Transaction for PgTransaction<'_> {
    async fn query(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<Vec<DbRow>> {
        let calls = self.calls;
        calls
            .around(async {
                let rows = self.rows(sql, params).await?;
                rows.iter().map(row_values).collect()
            })
            .await
    }

    async fn execute(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<u64> {
        let calls = self.calls;
        calls.around(self.affected(sql, params)).await
    }
}

fn row_values(row: &Row) -> anyhow::Result<DbRow> {
    row.columns()
        .iter()
        .enumerate()
        .map(|(index, column)| {
            let ty = column.type_();
            let unmapped = || {
                anyhow::anyhow!(
                    "column {index} ({:?}) has PostgreSQL type {ty}, which has no DbValue mapping \
                     (cast it in SQL to an integer, float, text or bytea type)",
                    column.name()
                )
            };
            let value = match *ty {
                Type::BOOL => row.try_get::<_, Option<bool>>(index)?.map(DbValue::Bool),
                Type::INT2 => row.try_get::<_, Option<i16>>(index)?.map(DbValue::from),
                Type::INT4 => row.try_get::<_, Option<i32>>(index)?.map(DbValue::from),
                Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(DbValue::Int),
                Type::OID => row.try_get::<_, Option<u32>>(index)?.map(DbValue::from),
                Type::FLOAT4 => row.try_get::<_, Option<f32>>(index)?.map(DbValue::from),
                Type::FLOAT8 => row.try_get::<_, Option<f64>>(index)?.map(DbValue::Float),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    row.try_get::<_, Option<String>>(index)?.map(DbValue::Text)
                }
                Type::BYTEA => row
                    .try_get::<_, Option<Vec<u8>>>(index)?
                    .map(DbValue::Bytes),
                // What `SELECT pg_advisory_xact_lock(…)` and friends return.
                Type::VOID => None,
                // SUM() of bigints, for one, is NUMERIC: integral values map to Int.
                Type::NUMERIC => match row.try_get::<_, Option<NumericInt>>(index)? {
                    Some(NumericInt(Ok(i))) => Some(DbValue::Int(i)),
                    Some(NumericInt(Err(what))) => {
                        anyhow::bail!("column {index} ({:?}) holds {what}", column.name())
                    }
                    None => None,
                },
                _ => return Err(unmapped()),
            };
            Ok(value.unwrap_or(DbValue::Null))
        })
        .collect()
}

/// A NUMERIC decoded as an integer, or why it is not one.
struct NumericInt(Result<i64, &'static str>);

impl<'a> FromSql<'a> for NumericInt {
    /// The binary NUMERIC format: digit count, weight (of the first base-10000
    /// digit), sign, display scale, then the base-10000 digits.
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(2 * i..2 * i + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "truncated NUMERIC value".into())
        };
        let (ndigits, weight, sign) = (word(0)? as usize, word(1)? as i16, word(2)?);
        const POSITIVE: u16 = 0x0000;
        const NEGATIVE: u16 = 0x4000;
        if sign != POSITIVE && sign != NEGATIVE {
            return Ok(Self(Err(
                "a NUMERIC NaN or infinity, which has no DbValue mapping",
            )));
        }
        let mut value: i128 = 0;
        for i in 0..ndigits {
            let digit = i128::from(word(4 + i)?);
            if i64::from(weight) - (i as i64) < 0 {
                if digit != 0 {
                    return Ok(Self(Err(
                        "a NUMERIC with a fractional part, which has no DbValue mapping \
                         (cast it to float8 or text in SQL)",
                    )));
                }
                continue;
            }
            value = value
                .checked_mul(10_000)
                .and_then(|v| v.checked_add(digit))
                .unwrap_or(i128::MAX);
        }
        for _ in ndigits as i64..=i64::from(weight) {
            value = value.checked_mul(10_000).unwrap_or(i128::MAX);
        }
        if sign == NEGATIVE {
            value = -value;
        }
        Ok(Self(i64::try_from(value).map_err(|_| {
            "a NUMERIC beyond the i64 range of DbValue::Int"
        })))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// Encodes a parameter for whatever type PostgreSQL inferred for its placeholder,
/// range-checking integers (an `i64` into an `int2` column, say).
impl ToSql for DbValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if ty.oid() == 0 {
            return self.to_text(out);
        }
        let narrow = |i: i64, what: &str| format!("{i} does not fit PostgreSQL type {what}");
        match (self, ty) {
            (DbValue::Null, _) => Ok(IsNull::Yes),
            (DbValue::Bool(b), &Type::BOOL) => b.to_sql(ty, out),
            (DbValue::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (DbValue::Int(i), &Type::INT4) => i32::try_from(*i)
                .map_err(|_| narrow(*i, "int4"))?
                .to_sql(ty, out),
            (DbValue::Int(i), &Type::INT2) => i16::try_from(*i)
                .map_err(|_| narrow(*i, "int2"))?
                .to_sql(ty, out),
            (DbValue::Int(i), &Type::OID) => u32::try_from(*i)
                .map_err(|_| narrow(*i, "oid"))?
                .to_sql(ty, out),
            (DbValue::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (DbValue::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (DbValue::Float(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (DbValue::Float(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (DbValue::Text(s), _) if <&str as ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            (DbValue::Bytes(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (value, ty) => Err(format!(
                "cannot send a {} parameter as PostgreSQL type {ty}",
                value.kind()
            )
            .into()),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, ty: &Type) -> Format {
        if ty.oid() == 0 {
            Format::Text
        } else {
            Format::Binary
        }
    }

    to_sql_checked!();
}

impl DbValue {
    /// The value in PostgreSQL's text input format, for a parameter whose type the
    /// server infers (unnamed statements).
    fn to_text(
        &self,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use std::fmt::Write;
        match self {
            DbValue::Null => return Ok(IsNull::Yes),
            DbValue::Bool(b) => out.extend_from_slice(if *b { b"t" } else { b"f" }),
            DbValue::Int(i) => write!(out, "{i}")?,
            DbValue::Float(f) if f.is_nan() => out.extend_from_slice(b"NaN"),
            DbValue::Float(f) if f.is_infinite() => {
                out.extend_from_slice(if *f > 0.0 { b"Infinity" } else { b"-Infinity" })
            }
            // `{:?}` keeps every digit and a decimal point, so 1.0 stays a float.
            DbValue::Float(f) => write!(out, "{f:?}")?,
            DbValue::Text(text) => {
                if text.contains('\0') {
                    return Err("PostgreSQL text cannot contain NUL characters".into());
                }
                out.extend_from_slice(text.as_bytes())
            }
            DbValue::Bytes(bytes) => {
                out.extend_from_slice(b"\\x");
                for byte in bytes {
                    write!(out, "{byte:02x}")?;
                }
            }
        }
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgresql://synapse:s3cret@127.0.0.1:5432/synapse?sslmode=disable"),
            "postgresql://synapse:***@127.0.0.1:5432/synapse?sslmode=disable"
        );
        assert_eq!(redact("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(
            redact("host=h user=u password=x dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
    }

    fn numeric(weight: i16, negative: bool, digits: &[u16]) -> Result<i64, &'static str> {
        let mut raw = Vec::new();
        for word in [
            digits.len() as u16,
            weight as u16,
            if negative { 0x4000 } else { 0 },
            0,
        ] {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        for d in digits {
            raw.extend_from_slice(&d.to_be_bytes());
        }
        NumericInt::from_sql(&Type::NUMERIC, &raw).unwrap().0
    }

    #[test]
    fn numerics_decode_to_integers_or_say_why_not() {
        assert_eq!(numeric(0, false, &[42]), Ok(42));
        assert_eq!(numeric(1, true, &[12, 3456]), Ok(-123_456));
        assert_eq!(numeric(2, false, &[5]), Ok(500_000_000)); // trailing zero groups elided
        assert_eq!(numeric(0, false, &[7, 0]), Ok(7)); // 7.0000
        assert!(numeric(0, false, &[7, 5000])
            .unwrap_err()
            .contains("fractional"));
        assert!(numeric(5, false, &[9999, 9999, 9999, 9999, 9999, 9999])
            .unwrap_err()
            .contains("beyond"));
        assert_eq!(numeric(-1, false, &[]), Ok(0));
    }

    #[test]
    fn an_unknown_commit_outcome_is_never_retried() {
        let refused = anyhow::Error::new(ServerUnreachable("refused".into()));
        assert!(connection_lost(&refused));
        let unknown = refused.context(CommitOutcomeUnknown {
            dsn: "postgresql://h/db".into(),
        });
        assert!(!connection_lost(&unknown));
        assert!(!is_retryable(&unknown));
        assert!(format!("{unknown:#}").contains("may or may not have committed"));
    }

    #[test]
    fn backoff_grows_with_jitter_bounds() {
        let base = Duration::from_millis(4);
        for attempt in 1..6 {
            let d = backoff(base, attempt);
            let floor = base * (1 << (attempt - 1));
            assert!(d >= floor && d < floor * 2, "{attempt}: {d:?}");
        }
    }
}
