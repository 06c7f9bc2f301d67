//! The native pool behind PgBouncer (Debian's package, 1.18) in transaction mode, as
//! `make test` starts it (scripts/test-postgres.sh start-pgbouncer): a pool of 3
//! server connections, which log in as `bouncer`.
//!
//! The load runs in 4 worker processes: this test binary again, told by an
//! environment variable to be a worker.
#![cfg(feature = "postgres")]

mod common;

use common::tokio_runtime as runtime;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use pyo3_twisted::db::{
    DatabasePoolExt, DbRowExt, DbValue, PostgresConfig, PostgresPool, StatementCacheUnsafe,
};

const WORKER: &str = "PYO3_TWISTED_BOUNCER_WORKER";
const PROCESSES: i64 = 4;
const TASKS: i64 = 8;
const TRANSACTIONS: i64 = 250;
/// PgBouncer's default_pool_size in scripts/test-postgres.sh.
const BOUNCER_POOL_SIZE: i64 = 3;

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name}: `make test` starts the servers and sets it"))
}

fn bouncer_dsn() -> String {
    format!(
        "postgresql://postgres@127.0.0.1:{}/pyo3_twisted_test?sslmode=disable",
        var("PYO3_TWISTED_TEST_PGBOUNCER_PORT")
    )
}

fn direct_pool() -> PostgresPool {
    PostgresPool::new(PostgresConfig::new(var("PYO3_TWISTED_TEST_PG_DSN"))).unwrap()
}

/// An empty table of the load's rows, made on the server directly.
async fn fresh_table(pool: &PostgresPool, table: &'static str) {
    pool.run_interaction("setup", move |txn| {
        async move {
            txn.execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
                .await?;
            txn.execute(
                &format!(
                    "CREATE TABLE {table} (process INT, task INT, n INT, note TEXT, \
                     PRIMARY KEY (process, task, n))"
                ),
                &[],
            )
            .await
        }
        .boxed()
    })
    .await
    .unwrap();
}

/// One transaction of the load: insert a row, then read it back with the task's
/// count, which must be exactly the rows this task has committed.
async fn step(
    pool: &PostgresPool,
    table: &'static str,
    id: (i64, i64, i64),
) -> anyhow::Result<i64> {
    pool.run_interaction("load_step", move |txn| {
        async move {
            let (process, task, n) = id;
            txn.execute(
                &format!("INSERT INTO {table} (process, task, n, note) VALUES (?, ?, ?, ?)"),
                &[
                    process.into(),
                    task.into(),
                    n.into(),
                    DbValue::Text(format!("p{process}t{task}n{n}")),
                ],
            )
            .await?;
            let rows = txn
                .query(
                    &format!("SELECT count(*), max(n) FROM {table} WHERE process = ? AND task = ?"),
                    &[process.into(), task.into()],
                )
                .await?;
            let (count, max): (i64, i64) = (rows[0].try_get(0)?, rows[0].try_get(1)?);
            anyhow::ensure!(max == n, "read back max(n) {max}, wrote {n}");
            Ok(count)
        }
        .boxed()
    })
    .await
}

fn worker(process: i64) {
    runtime().block_on(async {
        let pool = Arc::new(
            PostgresPool::new(PostgresConfig {
                max_size: TASKS as usize,
                statement_cache: false,
                ..PostgresConfig::new(bouncer_dsn())
            })
            .unwrap(),
        );
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for n in 0..TRANSACTIONS {
                        let count = step(&pool, "bouncer_load", (process, task, n))
                            .await
                            .unwrap_or_else(|e| {
                                panic!("process {process} task {task} n {n}: {e:#}")
                            });
                        assert_eq!(count, n + 1);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        println!("worker {process}: committed {}", TASKS * TRANSACTIONS);
    });
}

#[test]
fn transaction_mode_load_from_four_processes_without_the_statement_cache() {
    if let Ok(process) = std::env::var(WORKER) {
        // We are one of the workers this test started.
        return worker(process.parse().unwrap());
    }
    let rt = runtime();
    let direct = direct_pool();
    rt.block_on(async {
        fresh_table(&direct, "bouncer_load").await;
    });

    // Sample the server's connections from PgBouncer while the workers run.
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (done, most) = (done.clone(), most.clone());
        std::thread::spawn(move || {
            runtime().block_on(async {
                let direct = direct_pool();
                let mut samples = 0;
                while !done.load(Ordering::Acquire) {
                    let now: i64 = direct
                        .run_interaction("census", |txn| {
                            async move {
                                txn.query(
                                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'bouncer'",
                                    &[],
                                )
                                .await?[0]
                                    .try_get(0)
                            }
                            .boxed()
                        })
                        .await
                        .unwrap();
                    most.fetch_max(now, Ordering::AcqRel);
                    samples += 1;
                    // Pacing, not synchronisation: a sample every few milliseconds.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                samples
            })
        })
    };

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|process| {
            Command::new(&exe)
                .args([
                    "transaction_mode_load_from_four_processes_without_the_statement_cache",
                    "--exact",
                    "--nocapture",
                ])
                .env(WORKER, process.to_string())
                .output_async()
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|child| child.wait()).collect();
    done.store(true, Ordering::Release);
    let samples = sampler.join().unwrap();
    for (process, output) in outputs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success()
                && stdout.contains(&format!("worker {process}: committed 2000")),
            "worker {process} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rows: i64 = rt
        .block_on(direct.run_interaction("count", |txn| {
            async move { txn.query("SELECT count(*) FROM bouncer_load", &[]).await?[0].try_get(0) }
                .boxed()
        }))
        .unwrap();
    assert_eq!(rows, PROCESSES * TASKS * TRANSACTIONS);
    let most = most.load(Ordering::Acquire);
    assert!(samples > 0);
    assert!(
        (1..=BOUNCER_POOL_SIZE).contains(&most),
        "the server saw {most} connections from PgBouncer (pool size {BOUNCER_POOL_SIZE})"
    );
}

#[test]
fn the_statement_cache_behind_a_transaction_pooler_is_refused_not_corrupting() {
    runtime().block_on(async {
        let direct = direct_pool();
        fresh_table(&direct, "bouncer_cached").await;
        let pool = Arc::new(
            PostgresPool::new(PostgresConfig {
                max_size: TASKS as usize,
                // The default: named statements, cached per connection.
                ..PostgresConfig::new(bouncer_dsn())
            })
            .unwrap(),
        );
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut committed = Vec::new();
                    let mut refused = 0;
                    for n in 0..50 {
                        match step(&pool, "bouncer_cached", (0, task, n)).await {
                            Ok(_) => committed.push(n),
                            Err(err) => {
                                let message = format!("{err:#}");
                                assert!(
                                    err.downcast_ref::<StatementCacheUnsafe>().is_some()
                                        || message.contains("statement_cache = false"),
                                    "an unexpected failure: {message}"
                                );
                                assert!(message.contains("statement_cache = false"), "{message}");
                                refused += 1;
                            }
                        }
                    }
                    (task, committed, refused)
                })
            })
            .collect();
        let mut refused_total = 0;
        let mut expected = Vec::new();
        for task in tasks {
            let (task, committed, refused) = task.await.unwrap();
            refused_total += refused;
            expected.extend(committed.into_iter().map(|n| (task, n)));
        }
        assert!(refused_total > 0, "the pooler went unnoticed");
        // Exactly the committed transactions' rows, each with its own note: nothing
        // ran another statement, nothing half-done.
        let rows: Vec<(i64, i64, String)> = direct
            .run_interaction("rows", |txn| {
                async move {
                    txn.query(
                        "SELECT task, n, note FROM bouncer_cached ORDER BY task, n",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect()
                }
                .boxed()
            })
            .await
            .unwrap();
        expected.sort();
        let got: Vec<_> = rows.iter().map(|(t, n, _)| (*t, *n)).collect();
        assert_eq!(got, expected);
        for (task, n, note) in rows {
            assert_eq!(note, format!("p0t{task}n{n}"));
        }
        let status = pool.status();
        assert!(status.checkouts >= 8 * 50, "{status:?}");
    });
}

/// `Command::output` on a thread, so the four workers run at once.
trait OutputAsync {
    fn output_async(&mut self) -> std::thread::JoinHandle<std::process::Output>;
}

impl OutputAsync for Command {
    fn output_async(&mut self) -> std::thread::JoinHandle<std::process::Output> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

trait Wait {
    fn wait(self) -> std::process::Output;
}

impl Wait for std::thread::JoinHandle<std::process::Output> {
    fn wait(self) -> std::process::Output {
        self.join().unwrap()
    }
}
