//! The demo's storage: a per-user feature-flag table read through
//! `db::DatabasePool::run_interaction`, so the same code runs on the Python pool
//! (SQLite or PostgreSQL) and on the native PostgreSQL pool, the shape of Synapse's
//! Rust storage code. The test build of `pyo3_twisted._native` compiles this file
//! into its `RustStore` probe too, to drive every pool through it.

use futures_util::FutureExt;
use pyo3_twisted::db::{DatabasePool, DatabasePoolExt, DbRowExt};

/// The flags of `user_id`, by feature name.
pub async fn get_flags(
    pool: &dyn DatabasePool,
    user_id: String,
) -> anyhow::Result<Vec<(String, bool)>> {
    pool.run_interaction("get_feature_flags", move |txn| {
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
    })
    .await
}
