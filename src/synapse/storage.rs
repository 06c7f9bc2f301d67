//! Synapse's `storage` module paths: [`db`].

pub mod db {
    //! Synapse's `storage::db`: its traits and types, as views of [`crate::db`].
    //!
    //! Synapse's [`Transaction::query`] takes `&[&str]` parameters; it is the crate's
    //! own transaction seen through a view that passes them as [`DbValue::Text`]. Every
    //! [`crate::db::DatabasePool`] (the Python pool, the native PostgreSQL pool, or your
    //! own) is a [`DatabasePool`] here too, so there is one implementation of each pool
    //! and each transaction, and the crate's richer API (typed [`DbValue`] parameters,
    //! `execute`) stays one `use` away.
    //!
    //! ```no_run
    //! use futures_util::FutureExt;
    //! use pyo3_twisted::synapse::storage::db::{DatabasePool, DatabasePoolExt, DbRowExt};
    //!
    //! async fn enabled(pool: &dyn DatabasePool, user_id: &str) -> anyhow::Result<Option<bool>> {
    //!     let user_id: std::sync::Arc<str> = user_id.into();
    //!     pool.run_interaction("enabled", move |txn| {
    //!         let user_id = user_id.clone();
    //!         async move {
    //!             let rows = txn
    //!                 .query("SELECT enabled FROM flags WHERE user_id = ?", &[&user_id])
    //!                 .await?;
    //!             rows.first().map(|row| row.try_get(0)).transpose()
    //!         }
    //!         .boxed()
    //!     })
    //!     .await
    //! }
    //! ```

    use std::future::Future;
    use std::sync::Arc;

    use futures_util::future::BoxFuture;
    use futures_util::FutureExt;

    pub use crate::db::{DbRow, DbRowExt, DbValue, FromDbValue};

    /// The dyn-compatible form of a transaction closure, as Synapse declares it: see
    /// [`DatabasePoolExt::run_interaction`].
    pub type ErasedInteraction = Box<
        dyn for<'txn> Fn(&'txn mut dyn Transaction) -> BoxFuture<'txn, ErasedResult> + Send + Sync,
    >;

    /// The type-erased result of an [`ErasedInteraction`].
    pub type ErasedResult = crate::db::ErasedResult;

    /// A pool that runs transactions, as Synapse declares it. Implemented for every
    /// [`crate::db::DatabasePool`]; use it as `Box<dyn DatabasePool>`.
    #[async_trait::async_trait]
    pub trait DatabasePool: Send + Sync {
        /// Runs `func` in a transaction named `name`, retrying it whole on
        /// serialization failures and deadlocks, and returns the boxed result of the
        /// attempt that committed. Callers use [`DatabasePoolExt::run_interaction`].
        async fn run_interaction_erased(
            &self,
            name: &'static str,
            func: ErasedInteraction,
        ) -> ErasedResult;
    }

    #[async_trait::async_trait]
    impl<P: crate::db::DatabasePool + ?Sized> DatabasePool for P {
        async fn run_interaction_erased(
            &self,
            name: &'static str,
            func: ErasedInteraction,
        ) -> ErasedResult {
            // Each attempt gets the crate's transaction through a view; the closure is
            // shared between attempts.
            let func = Arc::new(func);
            let ours: crate::db::ErasedInteraction = Box::new(move |txn| {
                let func = Arc::clone(&func);
                async move { func(&mut TextParams(txn)).await }.boxed()
            });
            crate::db::DatabasePool::run_interaction_erased(self, name, ours).await
        }
    }

    /// The typed `run_interaction`, for every [`DatabasePool`], with Synapse's bounds.
    pub trait DatabasePoolExt: DatabasePool {
        /// Runs `func` in a transaction named `name` (for logs and metrics) and
        /// returns its result once the transaction committed. `func` may run more than
        /// once (a serialization failure or deadlock runs it again from scratch);
        /// inside it, await only [`Transaction`] methods.
        fn run_interaction<R, F>(
            &self,
            name: &'static str,
            func: F,
        ) -> impl Future<Output = anyhow::Result<R>> + Send
        where
            R: Send + 'static,
            F: for<'txn> Fn(&'txn mut dyn Transaction) -> BoxFuture<'txn, anyhow::Result<R>>
                + Send
                + Sync
                + 'static,
        {
            let erased: ErasedInteraction = Box::new(move |txn| crate::db::erase(func(txn)));
            async move { crate::db::unerase(name, self.run_interaction_erased(name, erased).await) }
        }
    }

    impl<P: DatabasePool + ?Sized> DatabasePoolExt for P {}

    /// A transaction in progress, as Synapse declares it: `?` placeholders, text
    /// parameters.
    #[async_trait::async_trait]
    pub trait Transaction: Send {
        /// Runs `sql` with `args` as text parameters and returns its rows. A
        /// parameter count that does not match the placeholders is an error before
        /// anything is sent.
        async fn query(&mut self, sql: &str, args: &[&str]) -> anyhow::Result<Vec<DbRow>>;
    }

    /// The crate's transaction, seen as Synapse's.
    struct TextParams<'t>(&'t mut dyn crate::db::Transaction);

    #[async_trait::async_trait]
    impl Transaction for TextParams<'_> {
        async fn query(&mut self, sql: &str, args: &[&str]) -> anyhow::Result<Vec<DbRow>> {
            let params: Vec<DbValue> = args.iter().map(|&arg| DbValue::from(arg)).collect();
            self.0.query(sql, &params).await
        }
    }

    pub mod python_db_pool {
        //! Synapse's `PythonDatabasePoolWrapper`: the crate's
        //! [`PythonDatabasePool`], made from a
        //! `RustRuntime`.

        use pyo3::prelude::*;

        use crate::db::{ErasedInteraction, ErasedResult, PythonDatabasePool};
        use crate::errors::RuntimeShutdown;
        use crate::synapse::runtime::RustRuntime;

        /// Rust transactions through a Python `DatabasePool`'s `runInteraction`
        /// (`hs.get_datastores().main.db_pool`), which it holds weakly: it never keeps
        /// the pool or its homeserver alive, and a transaction asked for once the pool
        /// is gone fails with a clear error.
        #[derive(Debug)]
        pub struct PythonDatabasePoolWrapper {
            pool: PythonDatabasePool,
            /// Its homeserver's handle: closed, it refuses new transactions.
            runtime: RustRuntime,
        }

        impl PythonDatabasePoolWrapper {
            /// Wraps `database_pool`, running its transactions on `runtime`'s reactor.
            pub fn new(database_pool: &Bound<'_, PyAny>, runtime: RustRuntime) -> PyResult<Self> {
                Ok(Self {
                    pool: PythonDatabasePool::with_runtime(
                        database_pool,
                        runtime.runtime().clone(),
                    ),
                    runtime,
                })
            }

            /// The crate's pool underneath, for its own API.
            pub fn pool(&self) -> &PythonDatabasePool {
                &self.pool
            }
        }

        #[async_trait::async_trait]
        impl crate::db::DatabasePool for PythonDatabasePoolWrapper {
            async fn run_interaction_erased(
                &self,
                name: &'static str,
                func: ErasedInteraction,
            ) -> ErasedResult {
                if self.runtime.is_shut_down() {
                    return Err(RuntimeShutdown::new_err(format!(
                        "run_interaction({name}): the homeserver's Rust runtime has shut down"
                    ))
                    .into());
                }
                self.pool.run_interaction_erased(name, func).await
            }

            async fn run_interaction_erased_with(
                &self,
                name: &'static str,
                options: crate::db::InteractionOptions,
                func: ErasedInteraction,
            ) -> ErasedResult {
                if self.runtime.is_shut_down() {
                    return Err(RuntimeShutdown::new_err(format!(
                        "run_interaction({name}): the homeserver's Rust runtime has shut down"
                    ))
                    .into());
                }
                self.pool
                    .run_interaction_erased_with(name, options, func)
                    .await
            }
        }
    }
}
