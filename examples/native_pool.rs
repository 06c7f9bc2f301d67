//! The native pool in a Rust-only program: connect as `psql` would, run a
//! transaction, print what the server and the pool say.
//!
//! ```text
//! cargo run --example native_pool --features postgres -- "postgresql://user@db.example/app?sslmode=verify-full&sslrootcert=system"
//! PGHOST=/var/run/postgresql cargo run --example native_pool --features postgres
//! ```
//!
//! With no argument the DSN is empty: everything comes from `PG*`, `~/.pgpass` and
//! libpq's defaults.

use futures_util::FutureExt;
use pyo3_twisted::db::{DatabasePoolExt, DbRowExt, PostgresConfig, PostgresPool};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dsn = std::env::args().nth(1).unwrap_or_default();
    let pool = PostgresPool::new(PostgresConfig::new(dsn))?;
    let (user, version, encrypted): (String, String, bool) = pool
        .run_interaction("whoami", |txn| {
            async move {
                let rows = txn
                    .query(
                        "SELECT current_user::text, version(), \
                         coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                        &[],
                    )
                    .await?;
                Ok((rows[0].try_get(0)?, rows[0].try_get(1)?, rows[0].try_get(2)?))
            }
            .boxed()
        })
        .await?;
    println!(
        "connected as {user}, {}",
        if encrypted { "over TLS" } else { "without TLS" }
    );
    println!("{version}");
    println!("{:?}", pool.status());
    Ok(())
}
