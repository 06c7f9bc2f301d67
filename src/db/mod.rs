//! Transactions from Rust, through the Python pool or a native PostgreSQL pool.
//!
//! ```text
//!  Rust handler (Tokio)            PythonDatabasePool                    PostgresPool (feature "postgres")
//!  pool.run_interaction(name, f) ─▶ run_python_awaitable:                 deadpool connection,
//!                                    pool.runInteraction(name, cb)         BEGIN (isolation level),
//!                                    cb runs f on the DB thread            f, COMMIT; retried whole
//!                                    (polled once), retried whole by       on 40001/40P01 with
//!                                    the Python pool                       jittered backoff; no GIL
//! ```
//!
//! One API, two pools. A Synapse-style program keeps one pool, owned by Python, and
//! Rust borrows its connections through `runInteraction` ([`PythonDatabasePool`]), so
//! the two languages never exhaust connections between them and Rust transactions get
//! the Python pool's retries, logging and logcontext accounting. A Rust-only program
//! uses [`PostgresPool`] with the same traits.
//!
//! The transaction closure is `Fn`: a serialization failure or deadlock re-runs it
//! from scratch, and only the attempt that committed returns its value. Inside it,
//! await only [`Transaction`] methods: awaiting anything else (a timer, another
//! service) while holding a connection is refused with a clear error.
//!
//! ```no_run
//! use futures_util::FutureExt;
//! use pyo3_twisted::db::{DatabasePool, DatabasePoolExt, DbRowExt};
//!
//! async fn feature_enabled(pool: &dyn DatabasePool, user_id: String) -> anyhow::Result<bool> {
//!     pool.run_interaction("feature_enabled", move |txn| {
//!         let user_id = user_id.clone();
//!         async move {
//!             let rows = txn
//!                 .query("SELECT enabled FROM flags WHERE user_id = ?", &[user_id.into()])
//!                 .await?;
//!             rows.first().map_or(Ok(false), |row| row.try_get(0))
//!         }
//!         .boxed()
//!     })
//!     .await
//! }
//! ```

use std::any::Any;
use std::future::Future;
#[cfg(feature = "postgres")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU32, Ordering};
#[cfg(feature = "postgres")]
use std::task::Poll;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

mod python;
mod python_coroutine;
mod sql;
mod value;

#[cfg(feature = "postgres")]
mod libpq;
#[cfg(feature = "postgres")]
mod pg_connection;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod tls;

#[cfg(feature = "postgres")]
pub use postgres::{
    CheckoutTimeout, CommitOutcomeUnknown, PoolStatus, PostgresConfig, PostgresPool,
    StatementCacheUnsafe,
};
pub use python::PythonDatabasePool;
pub use sql::Placeholders;
pub use value::{DbRow, DbRowExt, DbValue, FromDbValue};

/// The dyn-compatible form of a transaction closure: see
/// [`DatabasePoolExt::run_interaction`]. `Fn`, since a retry runs it again.
pub type ErasedInteraction =
    Box<dyn for<'txn> Fn(&'txn mut dyn Transaction) -> BoxFuture<'txn, ErasedResult> + Send>;

/// The type-erased result of an [`ErasedInteraction`].
pub type ErasedResult = anyhow::Result<Box<dyn Any + Send>>;

/// A pool that runs transactions. Held as `Box<dyn DatabasePool>` or
/// `Arc<dyn DatabasePool>`; call [`DatabasePoolExt::run_interaction`] on it.
#[async_trait::async_trait]
pub trait DatabasePool: Send + Sync {
    /// Runs `func` in a transaction, retrying it whole on serialization failures and
    /// deadlocks, and returns the boxed result of the attempt that committed.
    /// Implementors implement this; callers use `run_interaction`.
    async fn run_interaction_erased(
        &self,
        name: &'static str,
        func: ErasedInteraction,
    ) -> ErasedResult;

    /// [`run_interaction_erased`](Self::run_interaction_erased) with `options`. Pools
    /// that support options override it; the default runs default options and
    /// refuses others with a clear error.
    async fn run_interaction_erased_with(
        &self,
        name: &'static str,
        options: InteractionOptions,
        func: ErasedInteraction,
    ) -> ErasedResult {
        if options != InteractionOptions::default() {
            anyhow::bail!(
                "run_interaction({name}): this pool does not support transaction options \
                 ({options:?}); the native PostgresPool does"
            );
        }
        self.run_interaction_erased(name, func).await
    }
}

/// How one transaction runs, beyond its closure:
/// [`DatabasePoolExt::run_interaction_with`]. Supported by
/// [`PostgresPool`](crate::db::PostgresPool) (feature `postgres`).
///
/// ```
/// use std::time::Duration;
/// use pyo3_twisted::db::InteractionOptions;
///
/// let report = InteractionOptions::default()
///     .read_only()
///     .statement_timeout(Duration::from_secs(2));
/// assert!(report.read_only);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InteractionOptions {
    /// `BEGIN ... READ ONLY`: the server refuses writes (SQLSTATE 25006, not
    /// retried). Default: `false`.
    pub read_only: bool,
    /// This transaction's `statement_timeout`, in place of the pool's. Default: the
    /// pool's.
    pub statement_timeout: Option<std::time::Duration>,
}

impl InteractionOptions {
    /// A read-only transaction.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// A transaction whose statements the server cancels after `limit`.
    pub fn statement_timeout(mut self, limit: std::time::Duration) -> Self {
        self.statement_timeout = Some(limit);
        self
    }
}

/// The typed `run_interaction`, for every [`DatabasePool`].
pub trait DatabasePoolExt: DatabasePool {
    /// Runs `func` in a transaction named `name` (for logs and metrics) and returns
    /// its result once the transaction committed.
    ///
    /// `func` may run more than once: a serialization failure or deadlock rolls the
    /// transaction back and runs it again from scratch. Only the committed attempt's
    /// result is returned; a failed commit is an error, never the closure's value.
    /// Inside `func`, await only [`Transaction`] methods.
    fn run_interaction<R, F>(
        &self,
        name: &'static str,
        func: F,
    ) -> impl Future<Output = anyhow::Result<R>> + Send
    where
        R: Send + 'static,
        F: for<'t> Fn(&'t mut dyn Transaction) -> BoxFuture<'t, anyhow::Result<R>> + Send + 'static,
    {
        let erased: ErasedInteraction = Box::new(move |txn| erase(func(txn)));
        async move { unerase(name, self.run_interaction_erased(name, erased).await) }
    }

    /// [`run_interaction`](Self::run_interaction) with `options` (read-only, a
    /// statement timeout). A pool that does not support them fails at once, running
    /// nothing.
    fn run_interaction_with<R, F>(
        &self,
        name: &'static str,
        options: InteractionOptions,
        func: F,
    ) -> impl Future<Output = anyhow::Result<R>> + Send
    where
        R: Send + 'static,
        F: for<'t> Fn(&'t mut dyn Transaction) -> BoxFuture<'t, anyhow::Result<R>> + Send + 'static,
    {
        let erased: ErasedInteraction = Box::new(move |txn| erase(func(txn)));
        async move {
            unerase(
                name,
                self.run_interaction_erased_with(name, options, erased)
                    .await,
            )
        }
    }
}

/// One attempt's typed result, boxed for an erased interaction.
pub(crate) fn erase<R: Send + 'static>(
    fut: BoxFuture<'_, anyhow::Result<R>>,
) -> BoxFuture<'_, ErasedResult> {
    async move { Ok(Box::new(fut.await?) as Box<dyn Any + Send>) }.boxed()
}

/// The committed attempt's result, back to its type.
pub(crate) fn unerase<R: 'static>(name: &str, result: ErasedResult) -> anyhow::Result<R> {
    result?.downcast::<R>().map(|r| *r).map_err(|_| {
        anyhow::anyhow!("run_interaction({name}): the pool returned a value of another type")
    })
}

impl<P: DatabasePool + ?Sized> DatabasePoolExt for P {}

/// Counts one whole transaction (every attempt) in `bridge`'s histograms:
/// `committed` at the first attempt, `retried` when it committed after reruns,
/// `failed` otherwise.
pub(crate) fn record_interaction(
    bridge: Option<&crate::bridge::Bridge>,
    pool: &'static str,
    name: &'static str,
    attempts: &AtomicU32,
    committed: bool,
    started: std::time::Instant,
) {
    let Some(bridge) = bridge else { return };
    let outcome = match (committed, attempts.load(Ordering::Relaxed) > 1) {
        (false, _) => "failed",
        (true, true) => "retried",
        (true, false) => "committed",
    };
    bridge
        .histograms()
        .observe_interaction(pool, name, outcome, started.elapsed());
}

/// A transaction in progress, handed to the closure of `run_interaction`.
///
/// SQL uses `?` placeholders whatever the engine; the pool rewrites them (outside
/// string literals, quoted identifiers and comments). A parameter count that does
/// not match the placeholders is an error before anything is sent.
#[async_trait::async_trait]
pub trait Transaction: Send {
    /// Runs `sql` and returns its rows.
    async fn query(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<Vec<DbRow>>;

    /// Runs `sql` without fetching rows (`INSERT`, `UPDATE`, DDL) and returns the
    /// number of rows it changed (0 when the driver does not say).
    async fn execute(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<u64>;
}

/// The error for a closure that awaited something other than a [`Transaction`]
/// method.
pub(crate) fn foreign_await(name: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "run_interaction({name}): the transaction closure awaited something other than a \
         Transaction method (a timer, a channel, another service...). Only \
         Transaction::query and Transaction::execute may be awaited inside a transaction; \
         do other async work before or after run_interaction. The transaction was rolled back."
    )
}

/// Set while a [`Transaction`] method is awaiting the database; lets a pool tell a
/// closure waiting on its transaction from one waiting on anything else.
#[cfg(feature = "postgres")]
#[derive(Default, Debug)]
pub(crate) struct InTransactionCall(AtomicBool);

#[cfg(feature = "postgres")]
impl InTransactionCall {
    /// Runs `fut` (a transaction method's database round trip) marked as in flight.
    pub(crate) async fn around<T>(&self, fut: impl Future<Output = T>) -> T {
        self.0.store(true, Ordering::Relaxed);
        let out = fut.await;
        self.0.store(false, Ordering::Relaxed);
        out
    }

    /// Drives `closure`, failing it if it waits on anything but a transaction call,
    /// and turning a panic in it into an error.
    pub(crate) async fn drive<T>(
        &self,
        name: &str,
        mut closure: BoxFuture<'_, anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                closure.as_mut().poll(cx)
            })) {
                Ok(Poll::Pending) if !self.0.load(Ordering::Relaxed) => {
                    Poll::Ready(Err(foreign_await(name)))
                }
                Ok(other) => other,
                Err(payload) => Poll::Ready(Err(anyhow::anyhow!(
                    "run_interaction({name}): the transaction closure panicked: {}",
                    crate::errors::panic_message(&*payload)
                ))),
            }
        })
        .await
    }
}
