//! `RustStore`: the demo's feature-flag store (`examples/demo/src/store.rs`, compiled
//! in here as well) with writes and edge cases added, callable from Python over the
//! Python pool or the native PostgreSQL pool. The tests drive each pool's behaviour
//! through it: retries, rollback, panics, refused Tokio timers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_twisted::db::{
    DatabasePool, DatabasePoolExt, DbRow, DbRowExt, DbValue, PostgresConfig, PostgresPool,
    PythonDatabasePool,
};
use pyo3_twisted::{create_coroutine, create_deferred};

#[path = "../../../examples/demo/src/store.rs"]
mod flags;
use flags::get_flags;

/// Sets one flag of `user_id` (insert or update).
pub async fn set_flag(
    pool: &dyn DatabasePool,
    user_id: String,
    feature: String,
    enabled: bool,
) -> anyhow::Result<()> {
    pool.run_interaction("set_feature_flag", move |txn| {
        let params = [
            user_id.clone().into(),
            feature.clone().into(),
            enabled.into(),
        ];
        async move {
            txn.execute(
                "INSERT INTO feature_flags (user_id, feature, enabled) VALUES (?, ?, ?) \
                 ON CONFLICT (user_id, feature) DO UPDATE SET enabled = EXCLUDED.enabled",
                &params,
            )
            .await?;
            Ok(())
        }
        .boxed()
    })
    .await
}

/// Held by a closure: notes the thread it is dropped on.
struct DropWatch {
    _guard: Option<Py<PyAny>>,
    dropped_on: Option<Py<PyAny>>,
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        let Some(list) = self.dropped_on.take() else {
            return;
        };
        Python::attach(|py| {
            let ident = py
                .import("threading")
                .and_then(|threading| threading.getattr("get_ident")?.call0());
            if let Ok(ident) = ident {
                let _ = list.bind(py).call_method1("append", (ident,));
            }
        });
    }
}

/// The original Python exception if the error carries one (a database error raised
/// by the driver), else a `RuntimeError` with the whole chain. No GIL needed.
fn to_py(err: anyhow::Error) -> PyErr {
    let message = format!("{err:#}");
    err.downcast::<PyErr>()
        .unwrap_or_else(|_| pyo3::exceptions::PyRuntimeError::new_err(message))
}

/// The store over one pool, callable from Python; every method returns a Deferred.
#[pyclass(frozen, weakref, module = "pyo3_twisted.probes")]
pub struct RustStore {
    pool: Arc<dyn DatabasePool>,
    native: Option<Arc<PostgresPool>>,
    /// The Python pool, for `run_interaction_coroutine`.
    python: Option<Arc<PythonDatabasePool>>,
}

impl RustStore {
    /// `f` on this store's pool, its errors made Python exceptions.
    fn bridged<F, O>(
        &self,
        f: impl FnOnce(Arc<dyn DatabasePool>) -> F,
    ) -> impl std::future::Future<Output = PyResult<O>> + Send + 'static
    where
        F: std::future::Future<Output = anyhow::Result<O>> + Send + 'static,
    {
        let fut = f(Arc::clone(&self.pool));
        async move { fut.await.map_err(to_py) }
    }

    fn run<'py, F, O>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
        f: impl FnOnce(Arc<dyn DatabasePool>) -> F,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        F: std::future::Future<Output = anyhow::Result<O>> + Send + 'static,
        for<'a> O: IntoPyObject<'a> + Send + 'static,
    {
        create_deferred(py, reactor, self.bridged(f))
    }
}

/// `Transaction::query` in a transaction of its own.
async fn query_rows(
    pool: Arc<dyn DatabasePool>,
    sql: String,
    params: Vec<DbValue>,
) -> anyhow::Result<Vec<DbRow>> {
    pool.run_interaction("query", move |txn| {
        let (sql, params) = (sql.clone(), params.clone());
        async move { txn.query(&sql, &params).await }.boxed()
    })
    .await
}

#[pymethods]
impl RustStore {
    /// A store over a Python pool's `runInteraction`.
    #[staticmethod]
    fn python(pool: Py<PyAny>, reactor: Py<PyAny>) -> Self {
        let python = Arc::new(PythonDatabasePool::new(pool, reactor));
        Self {
            pool: Arc::clone(&python) as Arc<dyn DatabasePool>,
            native: None,
            python: Some(python),
        }
    }

    /// A store over a native PostgreSQL pool.
    #[staticmethod]
    #[pyo3(signature = (dsn, max_size=4, max_attempts=5, reconnect_timeout=5.0, statement_cache=true))]
    fn postgres(
        dsn: String,
        max_size: usize,
        max_attempts: u32,
        reconnect_timeout: f64,
        statement_cache: bool,
    ) -> PyResult<Self> {
        let mut config = PostgresConfig::new(dsn);
        config.statement_cache = statement_cache;
        config.max_size = max_size;
        config.max_attempts = max_attempts;
        config.reconnect_timeout = Duration::try_from_secs_f64(reconnect_timeout)
            .map_err(|_| PyValueError::new_err("reconnect_timeout must be >= 0 seconds"))?;
        let pool = Arc::new(
            PostgresPool::new(config).map_err(|e| PyValueError::new_err(format!("{e:#}")))?,
        );
        Ok(Self {
            pool: Arc::clone(&pool) as Arc<dyn DatabasePool>,
            native: Some(pool),
            python: None,
        })
    }

    /// Deferred of `[(feature, enabled)]`.
    fn get_flags<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
        user_id: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, reactor, |pool| async move {
            get_flags(&*pool, user_id).await
        })
    }

    /// Deferred of `None`.
    fn set_flag<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
        user_id: String,
        feature: String,
        enabled: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, reactor, |pool| async move {
            set_flag(&*pool, user_id, feature, enabled).await
        })
    }

    /// `Transaction::query` in a transaction of its own: Deferred of row tuples.
    fn query<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
        sql: String,
        params: Vec<DbValue>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, reactor, |pool| query_rows(pool, sql, params))
    }

    /// `query` as a coroutine (`create_coroutine`): awaitable of row tuples.
    fn query_coroutine<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
        sql: String,
        params: Vec<DbValue>,
    ) -> PyResult<Bound<'py, PyAny>> {
        create_coroutine(
            py,
            reactor,
            self.bridged(|pool| query_rows(pool, sql, params)),
        )
    }

    /// Each statement through `Transaction::execute`, all in one transaction:
    /// Deferred of the row counts.
    fn execute<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
        statements: Vec<(String, Vec<DbValue>)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, reactor, |pool| async move {
            pool.run_interaction("execute", move |txn| {
                let statements = statements.clone();
                async move {
                    let mut counts = Vec::new();
                    for (sql, params) in &statements {
                        counts.push(txn.execute(sql, params).await?);
                    }
                    Ok(counts)
                }
                .boxed()
            })
            .await
        })
    }

    /// Reads `counter.value` (id 1), waits for advisory lock `lock_id` (held by the
    /// test meanwhile, while another transaction updates the row), then increments
    /// it: Deferred of `(value returned by the committed attempt, attempts run)`.
    fn increment_after_lock<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
        lock_id: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, reactor, |pool| async move {
            let attempts = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&attempts);
            let value: i64 = pool
                .run_interaction("increment_after_lock", move |txn| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        txn.query("SELECT value FROM counter WHERE id = 1", &[])
                            .await?;
                        txn.execute("SELECT pg_advisory_xact_lock(?)", &[lock_id.into()])
                            .await?;
                        let rows = txn
                            .query(
                                "UPDATE counter SET value = value + 1 WHERE id = 1 RETURNING value",
                                &[],
                            )
                            .await?;
                        rows[0].try_get(0)
                    }
                    .boxed()
                })
                .await?;
            Ok((value, attempts.load(Ordering::SeqCst)))
        })
    }

    /// Inserts `(txn_id, attempt)` into `restart_log` and holds the transaction for
    /// `hold` seconds (`pg_sleep`): Deferred of the number of attempts run. Rolled-back
    /// attempts leave no row, so the table shows what committed.
    #[pyo3(signature = (reactor, txn_id, hold=0.003))]
    fn insert_attempt<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
        txn_id: i64,
        hold: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, reactor, |pool| async move {
            let attempts = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&attempts);
            pool.run_interaction("insert_attempt", move |txn| {
                let attempt = counted.fetch_add(1, Ordering::SeqCst) as i64 + 1;
                async move {
                    txn.execute(
                        "INSERT INTO restart_log (txn, attempt) VALUES (?, ?)",
                        &[txn_id.into(), attempt.into()],
                    )
                    .await?;
                    txn.execute("SELECT pg_sleep(?)", &[hold.into()]).await?;
                    Ok(())
                }
                .boxed()
            })
            .await?;
            Ok(attempts.load(Ordering::SeqCst))
        })
    }

    /// A closure that awaits a Tokio timer inside the transaction (refused).
    fn sleep_in_transaction<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, reactor, |pool| async move {
            pool.run_interaction("sleep_in_transaction", |txn| {
                async move {
                    txn.execute("INSERT INTO feature_flags (user_id, feature, enabled) VALUES ('sleeper', 'x', TRUE)", &[]).await?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok(())
                }
                .boxed()
            })
            .await
        })
    }

    /// A closure that writes, then panics (rolled back, reported).
    fn panic_in_transaction<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, reactor, |pool| async move {
            pool.run_interaction("panic_in_transaction", |txn| {
                async move {
                    txn.execute("INSERT INTO feature_flags (user_id, feature, enabled) VALUES ('panicker', 'x', TRUE)", &[]).await?;
                    if txn.query("SELECT 1", &[]).await?.len() == 1 {
                        panic!("the closure gave up");
                    }
                    Ok(())
                }
                .boxed()
            })
            .await
        })
    }

    /// Python pool only: `Transaction::query` through `run_interaction_coroutine`,
    /// awaitable of row lists made by `then` on the reactor thread. With `insert`,
    /// the closure first inserts that user's flag; with `panic`, it panics after
    /// its query; with `then_raises`, `then` raises `ValueError`. The closure and
    /// `then` hold `guard` (any object) until both are dropped, and the thread the
    /// last of them was dropped on (`threading.get_ident()`) is appended to
    /// `dropped_on`.
    #[pyo3(signature = (sql, params, insert=None, panic=false, then_raises=false, guard=None, dropped_on=None))]
    #[allow(clippy::too_many_arguments)]
    fn query_interaction<'py>(
        &self,
        py: Python<'py>,
        sql: String,
        params: Vec<DbValue>,
        insert: Option<String>,
        panic: bool,
        then_raises: bool,
        guard: Option<Py<PyAny>>,
        dropped_on: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(pool) = &self.python else {
            return Err(PyValueError::new_err(
                "run_interaction_coroutine needs the Python pool",
            ));
        };
        let watch = Arc::new(DropWatch {
            _guard: guard,
            dropped_on,
        });
        let then_watch = Arc::clone(&watch);
        pool.run_interaction_coroutine(
            py,
            "query_interaction",
            move |txn| {
                let (sql, params, insert, _watch) = (sql.clone(), params.clone(), insert.clone(), Arc::clone(&watch));
                async move {
                    if let Some(user) = insert {
                        txn.execute(
                            "INSERT INTO feature_flags (user_id, feature, enabled) VALUES (?, 'x', TRUE)",
                            &[user.into()],
                        )
                        .await?;
                    }
                    let rows = txn.query(&sql, &params).await?;
                    if panic {
                        panic!("the closure gave up");
                    }
                    Ok(rows)
                }
                .boxed()
            },
            move |py, rows| {
                let _watch = then_watch;
                if then_raises {
                    return Err(PyValueError::new_err("then gave up"));
                }
                Ok(rows.into_pyobject(py)?.into_any().unbind())
            },
        )
    }

    /// Native pool only: every field of `PoolStatus`, by name.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(native) = &self.native else {
            return Ok(None);
        };
        let status = native.status();
        let dict = PyDict::new(py);
        dict.set_item("size", status.size)?;
        dict.set_item("available", status.available)?;
        dict.set_item("max_size", status.max_size)?;
        for (name, value) in [
            ("checkouts", status.checkouts),
            ("checkout_waits", status.checkout_waits),
            ("checkout_timeouts", status.checkout_timeouts),
            ("retries_serialization", status.retries_serialization),
            ("retries_deadlock", status.retries_deadlock),
            ("retries_connection", status.retries_connection),
            ("connections_opened", status.connections_opened),
            ("connections_closed", status.connections_closed),
        ] {
            dict.set_item(name, value)?;
        }
        Ok(Some(dict))
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RustStore>()?;
    Ok(())
}
