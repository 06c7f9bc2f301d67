//! Per-user feature flags, read as Synapse's store reads them: a boxed pool, a
//! closure that may run more than once, `?` placeholders and `&[&str]` parameters.

use std::sync::Arc;

use futures_util::FutureExt;

use crate::synapse_shaped::storage::db::{DatabasePool, DatabasePoolExt, DbRowExt};

/// The flags a `/versions` response can turn on per user.
#[derive(Clone, Copy, Debug)]
pub enum Feature {
    Msc3881,
    Msc3575,
}

impl Feature {
    pub fn name(self) -> &'static str {
        match self {
            Feature::Msc3881 => "msc3881",
            Feature::Msc3575 => "msc3575",
        }
    }
}

pub struct Store {
    pub db_pool: Box<dyn DatabasePool>,
}

impl Store {
    /// Whether `feature` is set for `user_id`: `None` without a row.
    pub async fn feature_for_user(
        &self,
        user_id: &str,
        feature: Feature,
    ) -> anyhow::Result<Option<bool>> {
        let user_id: Arc<str> = user_id.into();
        self.db_pool
            .run_interaction("feature_for_user", move |txn| {
                let user_id = Arc::clone(&user_id);
                async move {
                    let rows = txn
                        .query(
                            "SELECT enabled FROM per_user_experimental_features \
                             WHERE user_id = ? AND feature = ?",
                            &[user_id.as_ref(), feature.name()],
                        )
                        .await?;
                    match rows.as_slice() {
                        [] => Ok(None),
                        [row] => Ok(Some(row.try_get(0)?)),
                        more => anyhow::bail!("{} rows for one user and feature", more.len()),
                    }
                }
                .boxed()
            })
            .await
    }
}
