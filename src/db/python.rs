//! Rust transactions through a Python pool's `runInteraction`.
//!
//! ```text
//!  Tokio task                      reactor thread                     DB thread (the pool's)
//!  run_interaction_erased ──job──▶ pool.runInteraction(name, cb) ───▶ cb(txn): poll the closure
//!    (no GIL)                        (in the task's logcontext, so     once; its Transaction calls
//!                                     DB time goes to the request)     run txn.execute/fetchall
//!  result ◀──────────────────────── Deferred fires ◀──────────────── commit (or retry: cb again)
//! ```
//!
//! The pool's own machinery opens the transaction, retries it on serialization
//! failures and deadlocks, rolls back, commits and charges the time; the callback only
//! runs the closure. A database error inside the closure is re-raised as the original
//! Python exception so the pool classifies it. The Python side's transaction methods
//! answer synchronously, so the closure completes in one poll; a closure that waits on
//! anything else is rolled back with a clear error.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
    PyWeakrefReference,
};

use super::{
    foreign_await, DbRow, DbValue, ErasedInteraction, ErasedResult, Placeholders, Transaction,
};
use crate::errors::{panic_message, RuntimeShutdown, RustPanicError};
use crate::registry::AddressHasher;
use crate::runtime::Runtime;
use crate::threads;

/// A [`DatabasePool`](super::DatabasePool) that runs each transaction through a Python
/// pool's `runInteraction(desc, func)`: Synapse's `DatabasePool`, or
/// `pyo3_twisted.database.DatabasePool`.
///
/// It holds the Python pool weakly, as Synapse's wrapper does: it never keeps the
/// pool (or the homeserver that owns it) alive, and a transaction asked for once the
/// pool is gone fails with a clear error. It holds the runtime by its handle, never
/// the reactor. `run_interaction` is callable from any task on that runtime.
///
/// The Python transaction object must offer `execute(sql, params)` (with `?`
/// placeholders), `fetchall()`, `rowcount` and `description`, as Synapse's
/// `LoggingTransaction` does.
pub struct PythonDatabasePool {
    pool: Arc<PoolRef>,
    /// None when `new` could not find the reactor's runtime (`PoolRef::Broken` says
    /// why).
    runtime: Option<Runtime>,
}

/// The Python pool: weakly if it can be weakly referenced, else (an object without
/// `__weakref__`) strongly.
enum PoolRef {
    Weak(Py<PyWeakrefReference>),
    Strong(Py<PyAny>),
    /// Made without a runtime: why.
    Broken(String),
}

impl PoolRef {
    fn new(pool: &Bound<'_, PyAny>) -> Self {
        match PyWeakrefReference::new(pool) {
            Ok(weak) => PoolRef::Weak(weak.unbind()),
            Err(_) => PoolRef::Strong(pool.clone().unbind()),
        }
    }

    fn get<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            PoolRef::Weak(weak) => weak.bind(py).upgrade().ok_or_else(|| {
                RuntimeShutdown::new_err(
                    "the Python database pool behind this PythonDatabasePool has been \
                     garbage-collected (it is held weakly: its owner must keep it alive)",
                )
            }),
            PoolRef::Strong(pool) => Ok(pool.bind(py).clone()),
            PoolRef::Broken(reason) => Err(PyRuntimeError::new_err(reason.clone())),
        }
    }
}

impl PythonDatabasePool {
    /// Wraps `py_pool`, whose `runInteraction` is called on `reactor`'s thread. Takes
    /// the GIL (briefly; call it on the reactor thread) to find the reactor's runtime,
    /// installing the default one if it has none. If that fails, every transaction
    /// fails with the reason; [`PythonDatabasePool::with_runtime`] takes a runtime
    /// that exists already.
    pub fn new(py_pool: Py<PyAny>, reactor: Py<PyAny>) -> Self {
        let made = threads::attach(|py| {
            Runtime::new(reactor.bind(py))
                .map(|runtime| Self::with_runtime(py_pool.bind(py), runtime))
                .map_err(|err| err.to_string())
        });
        let made = made.unwrap_or_else(|| Err("the Python interpreter is shutting down".into()));
        made.unwrap_or_else(|reason| Self {
            pool: Arc::new(PoolRef::Broken(reason)),
            runtime: None,
        })
    }

    /// Wraps `py_pool`, running its transactions on `runtime`'s reactor.
    pub fn with_runtime(py_pool: &Bound<'_, PyAny>, runtime: Runtime) -> Self {
        Self {
            pool: Arc::new(PoolRef::new(py_pool)),
            runtime: Some(runtime),
        }
    }

    /// The runtime the pool's transactions run on.
    pub fn runtime(&self) -> Option<&Runtime> {
        self.runtime.as_ref()
    }

    /// Another handle on the same Python pool and runtime.
    pub(super) fn clone_for_coroutine(&self) -> Self {
        Self {
            pool: Arc::clone(&self.pool),
            runtime: self.runtime.clone(),
        }
    }

    /// Why the pool has no runtime, if `new` said.
    pub(super) fn broken_reason(&self) -> String {
        match &*self.pool {
            PoolRef::Broken(reason) => reason.clone(),
            _ => String::new(),
        }
    }

    /// The Python pool, if it is still alive.
    pub(super) fn python_pool<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.pool.get(py)
    }
}

impl std::fmt::Debug for PythonDatabasePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonDatabasePool").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl super::DatabasePool for PythonDatabasePool {
    async fn run_interaction_erased(
        &self,
        name: &'static str,
        func: ErasedInteraction,
    ) -> ErasedResult {
        let started = std::time::Instant::now();
        let interaction: Arc<ErasedCall> = Arc::new(Interaction::new(func));
        let result = self.run_attempts(name, &interaction).await;
        // Dropped here, where it was made (the awaiting task's thread), rather than
        // on the DB thread with the Python callback; never waited for (a Tokio
        // worker), so a closure the DB thread is still running goes with it there.
        interaction.let_go();
        let bridge = self
            .runtime
            .as_ref()
            .map(|runtime| runtime.bridge().as_ref());
        super::record_interaction(
            bridge,
            "python",
            name,
            &interaction.attempts,
            result.is_ok(),
            started,
        );
        result
    }
}

/// One `run_interaction` call: the closure, how often it ran, and what its last
/// run returned. Shared by the awaiting side and the callback on the DB thread, in
/// one allocation. Typed (`F` the closure, `R` its value): the erased path
/// ([`ErasedCall`]) boxes the closure and its value, `run_interaction_coroutine`
/// neither.
pub(super) struct Interaction<F, R> {
    func: Mutex<Option<F>>,
    pub(super) attempts: AtomicU32,
    /// Each attempt overwrites it; read once the Deferred has fired.
    last_attempt: Mutex<Option<anyhow::Result<R>>>,
}

/// A `DatabasePool::run_interaction_erased` call.
type ErasedCall = Interaction<ErasedInteraction, Box<dyn Any + Send>>;

/// The closure of a `run_interaction` call, with its value type.
pub(super) trait InteractionFn<R>:
    for<'txn> Fn(&'txn mut dyn Transaction) -> BoxFuture<'txn, anyhow::Result<R>> + Send
{
}

impl<R, F> InteractionFn<R> for F where
    F: for<'txn> Fn(&'txn mut dyn Transaction) -> BoxFuture<'txn, anyhow::Result<R>> + Send
{
}

impl<F, R> Interaction<F, R> {
    pub(super) fn new(func: F) -> Self {
        Self {
            func: Mutex::new(Some(func)),
            attempts: AtomicU32::new(0),
            last_attempt: Mutex::new(None),
        }
    }

    /// The awaiting side gives up on the transaction: the closure is dropped here,
    /// unless the DB thread is running it now (it holds the lock, and may wait for
    /// the GIL this thread holds); then it goes with the callback, and a retry finds
    /// the caller gone.
    pub(super) fn let_go(&self) {
        if let Some(mut func) = self.func.try_lock() {
            drop(func.take());
        }
    }

    /// What the last attempt returned, if one ran.
    fn take_last(&self) -> Option<anyhow::Result<R>> {
        self.last_attempt.lock().take()
    }

    /// What the committed attempt returned, once `runInteraction` succeeded; the
    /// closure is dropped here (the awaiting side's thread). Reactor thread.
    pub(super) fn finish(&self, name: &str) -> anyhow::Result<R> {
        self.let_go();
        match self.take_last() {
            Some(result) => result,
            None => {
                anyhow::bail!("runInteraction({name}) finished without running the transaction")
            }
        }
    }
}

/// What the DB thread's callback needs of a call, whatever its types.
pub(super) trait Attempt: Send + Sync {
    /// Runs the closure once on `txn`, polled once inside `runtime`'s context, and
    /// keeps the outcome for the awaiting side; a failure is also returned as the
    /// exception for the pool to see (it rolls back, and may retry). DB thread, GIL
    /// held.
    fn attempt(
        &self,
        py: Python<'_>,
        name: &'static str,
        runtime: &tokio::runtime::Handle,
        txn: &mut dyn Transaction,
    ) -> PyResult<()>;
}

impl<F: InteractionFn<R>, R: Send> Attempt for Interaction<F, R> {
    fn attempt(
        &self,
        py: Python<'_>,
        name: &'static str,
        runtime: &tokio::runtime::Handle,
        txn: &mut dyn Transaction,
    ) -> PyResult<()> {
        let polled = catch_unwind(AssertUnwindSafe(|| {
            // Inside the runtime's context, Tokio leaf futures (timers...) return
            // Pending instead of panicking, and Pending is what we report.
            let _runtime = runtime.enter();
            let func = self.func.lock();
            let Some(func) = &*func else {
                // The awaiting side took it: it has given up on this transaction.
                return Poll::Ready(Err(anyhow::anyhow!(
                    "run_interaction({name}): the caller has gone"
                )));
            };
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let mut fut = func(txn);
            fut.as_mut().poll(&mut Context::from_waker(
                futures_util::task::noop_waker_ref(),
            ))
        }));
        let (outcome, raised) = match polled {
            Ok(Poll::Ready(Ok(value))) => (Ok(value), None),
            Ok(Poll::Ready(Err(err))) => {
                let raised = original_exception(py, &err);
                (Err(err), Some(raised))
            }
            Ok(Poll::Pending) => {
                let err = foreign_await(name);
                let raised = PyRuntimeError::new_err(err.to_string());
                (Err(err), Some(raised))
            }
            Err(payload) => {
                let (err, raised) = panicked(name, &*payload);
                (Err(err), Some(raised))
            }
        };
        *self.last_attempt.lock() = Some(outcome);
        // Raising makes the pool roll back, and lets it retry database errors.
        match raised {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// A panic in the closure: the error kept for the awaiting side and the exception
/// raised to the pool.
fn panicked(name: &str, payload: &(dyn Any + Send)) -> (anyhow::Error, PyErr) {
    let message = panic_message(payload);
    let err =
        anyhow::anyhow!("run_interaction({name}): the transaction closure panicked: {message}");
    (err, RustPanicError::new_err(message))
}

impl PythonDatabasePool {
    /// The transaction through `runInteraction`, which reruns the closure on a
    /// serialization failure.
    async fn run_attempts(
        &self,
        name: &'static str,
        interaction: &Arc<ErasedCall>,
    ) -> ErasedResult {
        let Some(handle) = &self.runtime else {
            anyhow::bail!(
                "PythonDatabasePool has no pyo3-twisted runtime: {}",
                self.broken_reason()
            );
        };
        let runtime = handle.tokio_handle()?;
        let callback = TransactionCallback::new(name, Arc::clone(interaction) as _, runtime);
        let pool = Arc::clone(&self.pool);
        let outcome = handle
            .run_python_awaitable_map(
                move |py| {
                    let callback = Bound::new(py, callback)?;
                    pool.get(py)?
                        .call_method1(intern!(py, "runInteraction"), (name, callback))
                },
                |_| Ok(()),
            )
            .await;
        let last = interaction.take_last();
        match (outcome, last) {
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Ok(()), Some(Err(err))) => Err(err),
            (Ok(()), None) => {
                anyhow::bail!("runInteraction({name}) finished without running the transaction")
            }
            // The closure's own failure, with its Rust context.
            (Err(_), Some(Err(err))) => Err(err),
            // The closure succeeded and the commit (or the pool) failed afterwards.
            (Err(err), _) => {
                Err(anyhow::Error::from(err).context(format!("runInteraction({name}) failed")))
            }
        }
    }
}

/// The `func` handed to `runInteraction`: runs the closure on the DB thread.
#[pyclass(frozen, module = "pyo3_twisted")]
pub(super) struct TransactionCallback {
    name: &'static str,
    interaction: Arc<dyn Attempt>,
    runtime: tokio::runtime::Handle,
}

impl TransactionCallback {
    pub(super) fn new(
        name: &'static str,
        interaction: Arc<dyn Attempt>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            name,
            interaction,
            runtime,
        }
    }
}

#[pymethods]
impl TransactionCallback {
    fn __call__(&self, py: Python<'_>, txn: Bound<'_, PyAny>) -> PyResult<()> {
        let mut transaction = PyTransaction { txn: txn.unbind() };
        self.interaction
            .attempt(py, self.name, &self.runtime, &mut transaction)
    }
}

/// The Python exception behind `err` if it came from Python (a database error), so
/// the pool's retry logic sees the real thing; otherwise a `RuntimeError`.
fn original_exception(py: Python<'_>, err: &anyhow::Error) -> PyErr {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<PyErr>())
        .map(|original| original.clone_ref(py))
        .unwrap_or_else(|| PyRuntimeError::new_err(format!("{err:#}")))
}

/// A Python transaction object (Synapse's `LoggingTransaction` or ours). Used only on
/// the DB thread, inside the callback, with the GIL held.
struct PyTransaction {
    txn: Py<PyAny>,
}

impl PyTransaction {
    fn run<R>(
        &self,
        sql: &str,
        params: &[DbValue],
        then: impl FnOnce(&Bound<'_, PyAny>) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        threads::attach(|py| {
            let (sql, placeholders) = statement(py, sql);
            super::sql::check_count(placeholders, params.len())?;
            let txn = self.txn.bind(py);
            let params = PyTuple::new(py, params.iter().map(|v| to_python(py, v)))?;
            txn.call_method1(intern!(py, "execute"), (sql, params))?;
            then(txn)
        })
        .unwrap_or_else(|| anyhow::bail!("the Python interpreter is shutting down"))
    }
}

/// A SQL text as the Python string handed to `execute`, and its `?` count.
struct Statement {
    text: Py<PyString>,
    placeholders: usize,
}

/// Statements this (database) thread keeps at most; past that it starts over.
const STATEMENTS_KEPT: usize = 512;

thread_local! {
    /// The SQL texts run on this thread, by the address of the Rust text: the same
    /// (usually `'static`) text is scanned and made a Python string once, and
    /// `execute` gets the same string object each time, as Python code passes its
    /// constant, so the driver's statement cache does not hash a new one.
    static STATEMENTS: RefCell<HashMap<usize, Statement, BuildHasherDefault<AddressHasher>>> =
        RefCell::new(HashMap::default());
}

/// `sql` as a Python string, and its placeholder count. A text found at the address
/// of one kept is reused only if it is the same text. Holds the GIL.
fn statement<'py>(py: Python<'py>, sql: &str) -> (Bound<'py, PyString>, usize) {
    STATEMENTS.with(|kept| {
        let mut kept = kept.borrow_mut();
        let address = sql.as_ptr() as usize;
        if let Some(found) = kept.get(&address) {
            let text = found.text.bind(py);
            if text.to_str().is_ok_and(|t| t == sql) {
                return (text.clone(), found.placeholders);
            }
        }
        if kept.len() >= STATEMENTS_KEPT {
            kept.clear();
        }
        let text = PyString::new(py, sql);
        let placeholders = Placeholders::scan(sql).count();
        kept.insert(
            address,
            Statement {
                text: text.clone().unbind(),
                placeholders,
            },
        );
        (text, placeholders)
    })
}

#[async_trait::async_trait]
impl Transaction for PyTransaction {
    async fn query(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<Vec<DbRow>> {
        self.run(sql, params, |txn| {
            let py = txn.py();
            let rows = txn.call_method0(intern!(py, "fetchall"))?;
            let cell = |index: usize, cell: &Bound<'_, PyAny>| match from_python(cell, index, &[]) {
                Ok(value) => Ok(value),
                // Column names only for the message: not read per query.
                Err(_) => from_python(cell, index, &column_names(txn)?),
            };
            // What DB-API drivers return (sqlite3, psycopg2): a list of tuples, read
            // in place, with no iterator object per row.
            if let Ok(rows) = rows.cast::<PyList>() {
                let mut out = Vec::with_capacity(rows.len());
                for row in rows.iter() {
                    let values = match row.cast::<PyTuple>() {
                        Ok(row) => {
                            let mut values = Vec::with_capacity(row.len());
                            for (index, value) in row.iter_borrowed().enumerate() {
                                values.push(cell(index, &value)?);
                            }
                            values
                        }
                        Err(_) => row_values(&row, cell)?,
                    };
                    out.push(values);
                }
                return Ok(out);
            }
            let mut out = Vec::new();
            for row in rows.try_iter()? {
                out.push(row_values(&row?, cell)?);
            }
            Ok(out)
        })
    }

    async fn execute(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<u64> {
        self.run(sql, params, |txn| {
            let count: i64 = txn.getattr(intern!(txn.py(), "rowcount"))?.extract()?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }
}

/// `None`, `bool`, `int`, `float`, `str` or `bytes`.
impl<'py> IntoPyObject<'py> for DbValue {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(to_python(py, &self))
    }
}

/// From `None`, `bool`, `int` (within `i64`), `float`, `str`, `bytes`, `bytearray`
/// or `memoryview`.
impl<'a, 'py> FromPyObject<'a, 'py> for DbValue {
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        from_python(&obj.to_owned(), 0, &[]).map_err(|err| {
            pyo3::exceptions::PyTypeError::new_err(err.to_string().replace("column 0 ", "value "))
        })
    }
}

fn to_python<'py>(py: Python<'py>, value: &DbValue) -> Bound<'py, PyAny> {
    match value {
        DbValue::Null => py.None().into_bound(py),
        DbValue::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        DbValue::Int(i) => PyInt::new(py, *i).into_any(),
        DbValue::Float(f) => PyFloat::new(py, *f).into_any(),
        DbValue::Text(s) => PyString::new(py, s).into_any(),
        DbValue::Bytes(b) => PyBytes::new(py, b).into_any(),
    }
}

/// A row of any iterable type, converted cell by cell.
fn row_values(
    row: &Bound<'_, PyAny>,
    cell: impl Fn(usize, &Bound<'_, PyAny>) -> anyhow::Result<DbValue>,
) -> anyhow::Result<Vec<DbValue>> {
    let mut values = Vec::new();
    for (index, value) in row.try_iter()?.enumerate() {
        values.push(cell(index, &value?)?);
    }
    Ok(values)
}

fn column_names(txn: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let description = txn.getattr(intern!(txn.py(), "description"))?;
    if description.is_none() {
        return Ok(Vec::new());
    }
    description
        .try_iter()?
        .map(|column| column?.get_item(0)?.str().map(|s| s.to_string()))
        .collect()
}

fn from_python(cell: &Bound<'_, PyAny>, index: usize, names: &[String]) -> anyhow::Result<DbValue> {
    let column = || match names.get(index) {
        Some(name) => format!("column {index} ({name:?})"),
        None => format!("column {index}"),
    };
    if cell.is_none() {
        Ok(DbValue::Null)
    } else if let Ok(b) = cell.cast::<PyBool>() {
        Ok(DbValue::Bool(b.is_true()))
    } else if cell.is_instance_of::<PyInt>() {
        cell.extract::<i64>().map(DbValue::Int).map_err(|_| {
            anyhow::anyhow!(
                "{} holds {cell}, which is outside the i64 range of DbValue::Int",
                column()
            )
        })
    } else if let Ok(f) = cell.cast::<PyFloat>() {
        Ok(DbValue::Float(f.value()))
    } else if let Ok(s) = cell.cast::<PyString>() {
        Ok(DbValue::Text(s.to_str()?.to_owned()))
    } else if let Ok(b) = cell.cast::<PyBytes>() {
        Ok(DbValue::Bytes(b.as_bytes().to_vec()))
    } else if cell.is_instance_of::<PyByteArray>() || cell.is_instance_of::<PyMemoryView>() {
        let py = cell.py();
        let bytes = py.get_type::<PyBytes>().call1((cell,))?;
        Ok(DbValue::Bytes(
            bytes
                .cast::<PyBytes>()
                .map_err(PyErr::from)?
                .as_bytes()
                .to_vec(),
        ))
    } else if is_integral_decimal(cell)? {
        // PostgreSQL's NUMERIC (SUM of bigints, for one) arrives as a Decimal.
        let int = cell.py().get_type::<PyInt>().call1((cell,))?;
        int.extract::<i64>().map(DbValue::Int).map_err(|_| {
            anyhow::anyhow!(
                "{} holds {cell}, which is outside the i64 range of DbValue::Int",
                column()
            )
        })
    } else {
        anyhow::bail!(
            "{} has Python type {}, which has no DbValue mapping (cast it in SQL to an \
             integer, float, text or bytes type)",
            column(),
            cell.get_type().name()?
        )
    }
}

fn is_integral_decimal(cell: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = cell.py();
    let decimal = py
        .import(intern!(py, "decimal"))?
        .getattr(intern!(py, "Decimal"))?;
    if !cell.is_instance(&decimal)? {
        return Ok(false);
    }
    if !cell.call_method0(intern!(py, "is_finite"))?.is_truthy()? {
        return Ok(false);
    }
    let ratio = cell.call_method0(intern!(py, "as_integer_ratio"))?;
    Ok(ratio.get_item(1)?.extract::<i64>()? == 1)
}
