//! `db`: the same transaction code on the Python pool (`pyo3_twisted.database` on
//! SQLite) and, with the `postgres` feature, on the native pool.

mod common;

use common::*;
use futures_util::FutureExt;
use pyo3::prelude::*;
use pyo3_twisted::db::{DatabasePool, DatabasePoolExt, DbRowExt, PythonDatabasePool};
use pyo3_twisted::{create_deferred, install_runtime, RuntimeConfig};

/// Counts the flags of a user, inserting one first: a write and a read in one
/// transaction, through the trait object.
async fn insert_and_count(pool: &dyn DatabasePool, user: &'static str) -> anyhow::Result<i64> {
    pool.run_interaction("insert_and_count", move |txn| {
        async move {
            txn.execute(
                "INSERT INTO flags (user_id, enabled) VALUES (?, ?)",
                &[user.into(), true.into()],
            )
            .await?;
            let rows = txn
                .query(
                    "SELECT count(*) FROM flags WHERE user_id = ? AND enabled",
                    &[user.into()],
                )
                .await?;
            rows[0].try_get(0)
        }
        .boxed()
    })
    .await
}

/// A running memory reactor with a runtime of its own.
fn reactor_with_runtime(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let reactor = memory_reactor(py, true)?;
    install_runtime(
        &reactor,
        RuntimeConfig {
            worker_threads: 2,
            tokio: pyo3_twisted::TokioRuntime::PerReactor,
            ..RuntimeConfig::default()
        },
    )?;
    Ok(reactor)
}

fn python_pool(py: Python<'_>) -> PyResult<(Bound<'_, PyAny>, Bound<'_, PyAny>)> {
    let lc = logcontext(py)?;
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python_shim/python/pyo3_twisted/database.py"),
    )?;
    let database = define_module(py, "pyo3_twisted_test_database", &source)?;
    let reactor = reactor_with_runtime(py)?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("logcontext", lc)?;
    let pool = database
        .getattr("DatabasePool")?
        .call((&reactor, ":memory:"), Some(&kwargs))?;
    let setup = define_module(
        py,
        "pyo3_twisted_test_db_setup",
        "def schema(txn):\n\
         \x20   txn.execute('CREATE TABLE flags (user_id TEXT NOT NULL, enabled BOOLEAN NOT NULL)')\n\
         \x20   txn.execute('CREATE TABLE parent (id INTEGER PRIMARY KEY)')\n\
         \x20   txn.execute('CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)')\n",
    )?;
    let ensure = py
        .import("twisted.internet.defer")?
        .getattr("ensureDeferred")?;
    let d = ensure
        .call1((pool.call_method1("runInteraction", ("schema", setup.getattr("schema")?))?,))?;
    get_success(&reactor, &d)?;
    Ok((reactor, pool))
}

#[test]
fn python_pool_runs_rust_transactions_and_reports_commit_failures() {
    with_python(|py| {
        let (reactor, pool) = python_pool(py)?;
        let db = std::sync::Arc::new(PythonDatabasePool::new(
            pool.clone().unbind(),
            reactor.clone().unbind(),
        ));
        let for_task = std::sync::Arc::clone(&db);
        let d = create_deferred(py, &reactor, async move {
            let first = insert_and_count(&*for_task, "@a:x").await;
            let second = insert_and_count(&*for_task, "@a:x").await;
            let commit = for_task
                .run_interaction("orphan", |txn| {
                    async move {
                        txn.execute("INSERT INTO child (id, parent_id) VALUES (1, 99)", &[])
                            .await
                    }
                    .boxed()
                })
                .await;
            let wrong_type = for_task
                .run_interaction("wrong_type", |txn| {
                    async move { txn.query("SELECT 'text'", &[]).await?[0].try_get::<i64>(0) }
                        .boxed()
                })
                .await;
            let options = for_task
                .run_interaction_with(
                    "read_only",
                    pyo3_twisted::db::InteractionOptions::default().read_only(),
                    |txn| async move { txn.execute("SELECT 1", &[]).await }.boxed(),
                )
                .await;
            let show = |r: anyhow::Result<i64>| match r {
                Ok(n) => format!("ok {n}"),
                Err(e) => format!("error {e:#}"),
            };
            Ok([
                show(first),
                show(second),
                show(commit.map(|n| n as i64)),
                show(wrong_type),
                show(options.map(|n| n as i64)),
            ])
        })?;
        let [first, second, commit, wrong_type, options]: [String; 5] =
            get_success(&reactor, &d)?.extract()?;
        // The Python pool's transactions are the Python pool's: options are refused.
        assert!(
            options.contains("does not support transaction options"),
            "{options}"
        );
        assert_eq!((first.as_str(), second.as_str()), ("ok 1", "ok 2"));
        // The closure returned Ok(1); the deferred foreign key failed at COMMIT.
        assert!(
            commit.starts_with("error") && commit.contains("FOREIGN KEY constraint failed"),
            "{commit}"
        );
        assert!(
            wrong_type.contains("column 0") && wrong_type.contains("as i64"),
            "{wrong_type}"
        );
        drop(db);
        reactor.call_method0("shutdown")?;
        pool.call_method0("close")?;
        Ok(())
    })
}

#[test]
fn python_pool_drops_the_closure_where_the_caller_awaits_not_on_the_db_thread() {
    with_python(|py| {
        let (reactor, pool) = python_pool(py)?;
        let db = std::sync::Arc::new(PythonDatabasePool::new(
            pool.clone().unbind(),
            reactor.clone().unbind(),
        ));
        let dropped_on = std::sync::Arc::new(std::sync::Mutex::new(None));
        let ran_on = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (guard, ran) = (DropsOn(dropped_on.clone()), ran_on.clone());
        let for_task = std::sync::Arc::clone(&db);
        let d = create_deferred(py, &reactor, async move {
            let counted = for_task
                .run_interaction("drop_thread", move |txn| {
                    let _held = &guard;
                    *ran.lock().unwrap() = Some(std::thread::current().id());
                    async move { txn.query("SELECT 1", &[]).await?[0].try_get::<i64>(0) }.boxed()
                })
                .await;
            // Still on the thread that awaited: the closure is gone by now.
            let awaited_on = std::thread::current().id();
            let counted = counted.map_or_else(|e| format!("error {e:#}"), |n| format!("ok {n}"));
            Ok((counted, format!("{awaited_on:?}")))
        })?;
        let (counted, awaited_on): (String, String) = get_success(&reactor, &d)?.extract()?;
        assert_eq!(counted, "ok 1");
        let ran_on = ran_on.lock().unwrap().expect("the closure ran");
        let dropped_on = dropped_on.lock().unwrap().expect("the closure was dropped");
        assert_ne!(dropped_on, ran_on, "dropped on the DB thread that ran it");
        assert_eq!(format!("{dropped_on:?}"), awaited_on);
        drop(db);
        reactor.call_method0("shutdown")?;
        pool.call_method0("close")?;
        Ok(())
    })
}

#[cfg(feature = "postgres")]
mod native {
    use super::*;
    use pyo3_twisted::db::{DbValue, PostgresConfig, PostgresPool};

    fn dsn() -> String {
        std::env::var("PYO3_TWISTED_TEST_PG_DSN")
            .expect("PYO3_TWISTED_TEST_PG_DSN: `make test` starts PostgreSQL and sets it")
    }

    async fn fresh_table(pool: &PostgresPool, table: &'static str) {
        pool.run_interaction("setup", move |txn| {
            async move {
                txn.execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
                    .await?;
                txn.execute(
                    &format!(
                        "CREATE TABLE {table} (user_id TEXT NOT NULL, enabled BOOLEAN NOT NULL)"
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

    use crate::common::tokio_runtime as runtime;

    #[test]
    fn native_pool_round_trip_bad_input_and_no_leak() {
        runtime().block_on(async {
            let mut config = PostgresConfig::new(dsn());
            config.max_size = 3;
            let pool = PostgresPool::new(config).unwrap();
            fresh_table(&pool, "native_flags").await;
            let count = |user: &'static str| {
                pool.run_interaction("count", move |txn| {
                    async move {
                        txn.execute(
                            "INSERT INTO native_flags (user_id, enabled) VALUES (?, ?)",
                            &[user.into(), true.into()],
                        )
                        .await?;
                        txn.query(
                            "SELECT count(*) FROM native_flags WHERE user_id = ?",
                            &[user.into()],
                        )
                        .await?[0]
                            .try_get::<i64>(0)
                    }
                    .boxed()
                })
            };
            assert_eq!(count("@a:x").await.unwrap(), 1);
            assert_eq!(count("@a:x").await.unwrap(), 2);

            let query = |sql: &'static str, params: Vec<DbValue>| {
                pool.run_interaction("bad", move |txn| {
                    let params = params.clone();
                    async move { txn.query(sql, &params).await }.boxed()
                })
            };
            let err = |r: anyhow::Result<Vec<Vec<DbValue>>>| format!("{:#}", r.unwrap_err());
            assert!(err(query("SELEKT 1", vec![]).await).contains("syntax error"));
            assert!(err(query("SELECT ?::int", vec![1.into(), 2.into()]).await)
                .contains("1 `?` placeholder(s) but 2"));
            assert!(err(query("SELECT 1e30::numeric AS huge", vec![]).await).contains("i64 range"));
            assert!(err(query("SELECT now() AS t", vec![]).await).contains("no DbValue mapping"));
            assert!(err(query("SELECT ?::int2", vec![100_000.into()]).await)
                .contains("does not fit PostgreSQL type int2"));
            let sleeper = pool
                .run_interaction("sleeper", |txn| {
                    async move {
                        txn.execute(
                            "INSERT INTO native_flags (user_id, enabled) VALUES ('sleeper', TRUE)",
                            &[],
                        )
                        .await?;
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        Ok(())
                    }
                    .boxed()
                })
                .await;
            assert!(format!("{:#}", sleeper.unwrap_err())
                .contains("awaited something other than a Transaction method"));
            let panicker = pool
                .run_interaction("panicker", |txn| {
                    async move {
                        txn.execute(
                            "INSERT INTO native_flags (user_id, enabled) VALUES ('panicker', TRUE)",
                            &[],
                        )
                        .await?;
                        if txn.query("SELECT 1", &[]).await?.len() == 1 {
                            panic!("gave up");
                        }
                        Ok(())
                    }
                    .boxed()
                })
                .await;
            assert!(format!("{:#}", panicker.unwrap_err()).contains("panicked: gave up"));
            let leftovers = query(
                "SELECT count(*) FROM native_flags WHERE user_id IN ('sleeper', 'panicker')",
                vec![],
            )
            .await
            .unwrap();
            assert_eq!(
                leftovers[0].try_get::<i64>(0).unwrap(),
                0,
                "failed transactions rolled back"
            );
            let status = pool.status();
            assert!(
                status.size <= 3 && status.available == status.size,
                "{status:?}"
            );
        });
    }

    #[test]
    fn statement_timeout_cancels_once_and_leaves_the_pool_healthy() {
        runtime().block_on(async {
            let mut config = PostgresConfig::new(dsn());
            config.max_size = 1;
            config.statement_timeout = Some(std::time::Duration::from_millis(100));
            let pool = PostgresPool::new(config).unwrap();
            let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
            let counter = std::sync::Arc::clone(&attempts);
            let started = std::time::Instant::now();
            let err = pool
                .run_interaction("slow", move |txn| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move { txn.execute("SELECT pg_sleep(10)", &[]).await }.boxed()
                })
                .await
                .unwrap_err();
            let took = started.elapsed();
            let message = format!("{err:#}");
            assert!(message.contains("statement timeout"), "{message}");
            // Cut off by the server at 100 ms, far from the 10 s asked for (the margin
            // is for a loaded machine, not for the timeout).
            assert!(took < std::time::Duration::from_secs(3), "{took:?}");
            assert_eq!(
                attempts.load(std::sync::atomic::Ordering::Relaxed),
                1,
                "a cancelled statement is not a serialization failure"
            );
            // The same (only) connection serves the next transaction, which sees the
            // timeout in force.
            let rows = pool
                .run_interaction("after", |txn| {
                    async move { txn.query("SHOW statement_timeout", &[]).await }.boxed()
                })
                .await
                .unwrap();
            assert_eq!(rows[0].try_get::<String>(0).unwrap(), "100ms");
            let status = pool.status();
            assert_eq!((status.size, status.available), (1, 1), "{status:?}");
        });
    }

    #[test]
    fn read_only_and_per_transaction_timeouts_apply_to_that_transaction_only() {
        use pyo3_twisted::db::InteractionOptions;
        runtime().block_on(async {
            let mut config = PostgresConfig::new(dsn());
            config.max_size = 1;
            let pool = PostgresPool::new(config).unwrap();
            fresh_table(&pool, "read_only_flags").await;
            let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
            let counter = std::sync::Arc::clone(&attempts);
            let err = pool
                .run_interaction_with(
                    "write_in_read_only",
                    InteractionOptions::default().read_only(),
                    move |txn| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        async move {
                            txn.execute(
                                "INSERT INTO read_only_flags (user_id, enabled) VALUES ('a', TRUE)",
                                &[],
                            )
                            .await
                        }
                        .boxed()
                    },
                )
                .await
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("read-only transaction"),
                "{err:#}"
            );
            assert_eq!(attempts.load(std::sync::atomic::Ordering::Relaxed), 1);
            let read: Vec<_> = pool
                .run_interaction_with("read", InteractionOptions::default().read_only(), |txn| {
                    async move { txn.query("SHOW transaction_read_only", &[]).await }.boxed()
                })
                .await
                .unwrap();
            assert_eq!(read[0].try_get::<String>(0).unwrap(), "on");

            let err = pool
                .run_interaction_with(
                    "slow",
                    InteractionOptions::default()
                        .statement_timeout(std::time::Duration::from_millis(100)),
                    |txn| async move { txn.execute("SELECT pg_sleep(5)", &[]).await }.boxed(),
                )
                .await
                .unwrap_err();
            assert!(format!("{err:#}").contains("statement timeout"), "{err:#}");
            // The next transaction on the same connection has neither option.
            let after = pool
                .run_interaction("after", |txn| {
                    async move {
                        let timeout = txn.query("SHOW statement_timeout", &[]).await?;
                        let read_only = txn.query("SHOW transaction_read_only", &[]).await?;
                        Ok((
                            timeout[0].try_get::<String>(0)?,
                            read_only[0].try_get::<String>(0)?,
                        ))
                    }
                    .boxed()
                })
                .await
                .unwrap();
            assert_ne!(after.0, "100ms");
            assert_eq!(after.1, "off");
            assert_eq!(pool.status().available, 1);
        });
    }

    #[test]
    fn checkout_timeout_names_the_pool_its_size_and_the_wait() {
        runtime().block_on(async {
            let mut config = PostgresConfig::new(dsn());
            config.max_size = 2;
            config.checkout_timeout = Some(std::time::Duration::from_millis(200));
            let pool = std::sync::Arc::new(PostgresPool::new(config).unwrap());
            // Two transactions hold both connections: each says when it is in, then
            // sleeps in the server well past the third one's checkout timeout.
            let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let holders: Vec<_> = (0..2)
                .map(|_| {
                    let pool = std::sync::Arc::clone(&pool);
                    let held_tx = held_tx.clone();
                    tokio::spawn(async move {
                        pool.run_interaction("hold", move |txn| {
                            let held_tx = held_tx.clone();
                            async move {
                                txn.execute("SELECT 1", &[]).await?;
                                let _ = held_tx.send(());
                                txn.execute("SELECT pg_sleep(1.5)", &[]).await
                            }
                            .boxed()
                        })
                        .await
                    })
                })
                .collect();
            held_rx.recv().await.unwrap();
            held_rx.recv().await.unwrap();
            // Whether a holder's checkout waited depends on timing (a connection to
            // a local server can open within its first poll); this one must wait.
            let waits_before = pool.status().checkout_waits;
            let err = pool
                .run_interaction("waits", |txn| {
                    async move { txn.execute("SELECT 1", &[]).await }.boxed()
                })
                .await
                .unwrap_err();
            assert_eq!(pool.status().checkout_waits, waits_before + 1);
            let timeout = err
                .downcast_ref::<pyo3_twisted::db::CheckoutTimeout>()
                .unwrap_or_else(|| panic!("not a CheckoutTimeout: {err:#}"));
            assert_eq!(timeout.max_size, 2);
            assert_eq!(timeout.waited, std::time::Duration::from_millis(200));
            let message = format!("{err:#}");
            assert!(
                message.contains("127.0.0.1")
                    || message.contains("localhost")
                    || message.contains("/"),
                "{message}"
            );
            assert!(
                message.contains("within 200ms") && message.contains("all 2 (max_size)"),
                "{message}"
            );
            // The holders were not disturbed, and the pool works once they are done.
            for holder in holders {
                holder.await.unwrap().unwrap();
            }
            pool.run_interaction("after", |txn| {
                async move { txn.execute("SELECT 1", &[]).await }.boxed()
            })
            .await
            .unwrap();
            // Nothing leaked: both connections idle, none opened beyond max_size, the
            // timed-out checkout counted.
            let status = pool.status();
            assert_eq!((status.size, status.available), (2, 2), "{status:?}");
            assert_eq!(status.connections_opened, 2, "{status:?}");
            assert_eq!(status.connections_closed, 0, "{status:?}");
            assert_eq!(status.checkout_timeouts, 1, "{status:?}");
            // Two holders and the last transaction; the timed-out one never got one.
            assert_eq!(status.checkouts, 3, "{status:?}");
        });
    }

    #[test]
    fn unnamed_statements_round_trip_every_value_and_leave_no_statement_behind() {
        runtime().block_on(async {
            let pool = PostgresPool::new(PostgresConfig {
                statement_cache: false,
                ..PostgresConfig::new(dsn())
            })
            .unwrap();
            let values = vec![
                DbValue::Bool(true),
                DbValue::Int(1 << 62),
                DbValue::Float(1.5),
                DbValue::Text("héllo 'quoted' \\ back".into()),
                DbValue::Bytes(vec![0, 0xff, b'\\']),
                DbValue::Null,
                DbValue::Float(f64::INFINITY),
            ];
            let sent = values.clone();
            let (rows, statements) = pool
                .run_interaction("unnamed", move |txn| {
                    let sent = sent.clone();
                    async move {
                        // The server types each parameter from the SQL, as it does
                        // psycopg2's literals.
                        let rows = txn
                            .query(
                                "SELECT ?::bool, ?::int8, ?::float8, ?::text, ?::bytea, ?::int4, ?::float8",
                                &sent,
                            )
                            .await?;
                        txn.execute("CREATE TEMP TABLE unnamed_t (small INT2, f FLOAT8)", &[])
                            .await?;
                        // Untyped placeholders take the column's type.
                        let inserted = txn
                            .execute(
                                "INSERT INTO unnamed_t VALUES (?, ?), (?, ?)",
                                &[7.into(), 2.into(), DbValue::Null, 0.25.into()],
                            )
                            .await?;
                        anyhow::ensure!(inserted == 2, "inserted {inserted}");
                        let statements = txn
                            .query("SELECT count(*) FROM pg_prepared_statements", &[])
                            .await?[0]
                            .try_get::<i64>(0)?;
                        Ok((rows, statements))
                    }
                    .boxed()
                })
                .await
                .unwrap();
            assert_eq!(rows, vec![values]);
            assert_eq!(statements, 0, "nothing prepared by name on the server");
        });
    }

    #[test]
    fn unreachable_server_names_the_dsn_without_the_password() {
        runtime().block_on(async {
            let pool = PostgresPool::new(PostgresConfig {
                reconnect_timeout: std::time::Duration::from_millis(100),
                ..PostgresConfig::new("postgresql://app:hunter2@127.0.0.1:1/db")
            })
            .unwrap();
            let err = pool
                .run_interaction("x", |txn| {
                    async move { txn.execute("SELECT 1", &[]).await }.boxed()
                })
                .await
                .unwrap_err();
            let message = format!("{err:#}");
            assert!(
                message.contains("postgresql://app:***@127.0.0.1:1/db"),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "{message}");
            // Refused connections were retried (reconnect_timeout) before giving up.
            assert!(message.contains("Connection refused"), "{message}");
            assert!(!message.contains("after 1 attempt(s)"), "{message}");
        });
    }
}

/// `fetchall` results of every shape a DB-API driver may return read the same: a
/// list of tuples (read in place), rows that are lists or other sequences, and an
/// iterator of rows.
#[test]
fn python_pool_reads_rows_of_any_shape() {
    with_python(|py| {
        let reactor = reactor_with_runtime(py)?;
        let shapes = define_module(
            py,
            "pyo3_twisted_test_row_shapes",
            r#"
from twisted.internet import defer

class Row:
    """A sequence that is not a tuple, as sqlite3.Row is."""
    def __init__(self, *cells):
        self.cells = cells
    def __iter__(self):
        return iter(self.cells)

SHAPES = {
    "tuples": lambda: [(1, "a"), (2, None)],
    "lists": lambda: [[1, "a"], [2, None]],
    "sequences": lambda: [Row(1, "a"), Row(2, None)],
    "iterator": lambda: iter([(1, "a"), (2, None)]),
}

class Txn:
    description = None
    rowcount = -1
    def __init__(self, rows):
        self.rows = rows
    def execute(self, sql, params):
        pass
    def fetchall(self):
        return self.rows()

class Pool:
    def __init__(self, shape):
        self.shape = shape
    def runInteraction(self, desc, func, *args):
        return defer.maybeDeferred(func, Txn(SHAPES[self.shape]), *args)
"#,
        )?;
        let names = ["tuples", "lists", "sequences", "iterator"];
        // The pools are held weakly: kept alive here.
        let py_pools: Vec<_> = names
            .iter()
            .map(|name| shapes.getattr("Pool")?.call1((*name,)))
            .collect::<PyResult<_>>()?;
        let pools: Vec<_> = py_pools
            .iter()
            .map(|pool| PythonDatabasePool::new(pool.clone().unbind(), reactor.clone().unbind()))
            .collect();
        let d = create_deferred(py, &reactor, async move {
            let mut read = Vec::new();
            for pool in &pools {
                let rows = pool
                    .run_interaction("shape", |txn| {
                        async move { txn.query("SELECT id, name FROM t", &[]).await }.boxed()
                    })
                    .await;
                read.push(match rows {
                    Ok(rows) => format!("{rows:?}"),
                    Err(err) => format!("error {err:#}"),
                });
            }
            Ok(read)
        })?;
        let read: Vec<String> = get_success(&reactor, &d)?.extract()?;
        let expected = r#"[[Int(1), Text("a")], [Int(2), Null]]"#;
        for (name, rows) in names.iter().zip(&read) {
            assert_eq!(rows, expected, "{name}");
        }
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}
