//! The demo's storage: a per-user feature-flag table read through
//! `db::DatabasePool::run_interaction`, so the same code runs on the Python pool
//! (SQLite or PostgreSQL) and on the native PostgreSQL pool, the shape of Synapse's
//! Rust storage code. The test build of `pyo3_twisted._native` compiles this file
//! into its `RustStore` probe too, to drive every pool through it.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use pyo3_twisted::db::{DatabasePool, DatabasePoolExt, DbRowExt, Transaction};

/// A user's flags: `(feature, enabled)`, by feature name.
pub type Flags = Vec<(String, bool)>;

/// The flags of `user_id`, by feature name.
pub async fn get_flags(pool: &dyn DatabasePool, user_id: String) -> anyhow::Result<Flags> {
    pool.run_interaction("get_feature_flags", select_flags(user_id))
        .await
}

/// The transaction of [`get_flags`], for a pool to run.
pub fn select_flags(
    user_id: String,
) -> impl for<'txn> Fn(&'txn mut dyn Transaction) -> BoxFuture<'txn, anyhow::Result<Flags>>
       + Send
       + 'static {
    move |txn| {
        let user_id = user_id.clone();
        async move {
            let rows = txn
                .query(
                    "SELECT feature, enabled FROM feature_flags WHERE user_id = ? ORDER BY feature",
                    &[user_id.into()],
                )
                .await?;
            rows.into_iter()
                .map(|mut row| Ok((row.try_take(0)?, row.try_take(1)?)))
                .collect()
        }
        .boxed()
    }
}
