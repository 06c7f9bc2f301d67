//! The handle on a reactor's runtime: [`Runtime`] in Rust, `pyo3_twisted.Runtime` in
//! Python, and [`RuntimeRef`], which lets every bridged call take either a handle or
//! the reactor itself.
//!
//! ```text
//!  Runtime::install(reactor, config) ─┐
//!  Runtime::new(reactor)  ────────────┼─▶ Runtime (Arc<Bridge>): Clone + Send + Sync,
//!  Runtime::current() (in a task) ────┘   keeps nothing Python alive
//!      ├─ create_deferred(py, &runtime, fut) / run_python_awaitable(runtime, f) / spawn
//!      ├─ tokio_handle()   dispatch(f)   shutdown(py, timeout)
//! ```
//!
//! [`Runtime::install`], [`Runtime::new`], [`Runtime::start`] and
//! [`Runtime::shutdown`] run on the reactor thread with the GIL held; the other
//! methods run on any thread without it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::bridge::{bridge_for_address, Bridge};
use crate::config::RuntimeConfig;
use crate::errors::RuntimeShutdown;
use crate::histogram::HistogramSnapshot;
use crate::scope::TaskScope;
use crate::stats::Stats;

/// A handle on one reactor's pyo3-twisted runtime, to keep instead of the reactor.
///
/// Cheap to clone and send; usable from any thread without the GIL. It keeps the
/// runtime's state alive but never the reactor: if the reactor is collected, the
/// runtime stops (its in-flight tasks are aborted) and later calls fail with
/// [`RuntimeShutdown`].
///
/// ```no_run
/// use pyo3::prelude::*;
/// use pyo3_twisted::{Runtime, RuntimeConfig};
///
/// #[pyclass]
/// struct Handler {
///     runtime: Runtime,
/// }
///
/// #[pymethods]
/// impl Handler {
///     #[new]
///     fn new(reactor: &Bound<'_, PyAny>) -> PyResult<Self> {
///         let config = RuntimeConfig { worker_threads: 2, ..Default::default() };
///         Ok(Self { runtime: Runtime::install(reactor, config)? })
///     }
///
///     fn answer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
///         pyo3_twisted::create_deferred(py, &self.runtime, async { Ok(42) })
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Runtime {
    bridge: Arc<Bridge>,
}

/// The earlier name of [`Runtime`], kept so existing code compiles.
pub type ReactorHandle = Runtime;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field(
                "reactor",
                &format_args!("{:#x}", self.bridge.reactor_address()),
            )
            .field("state", &self.bridge.stats().state)
            .finish()
    }
}

impl Runtime {
    /// Installs a runtime with `config` on `reactor` and returns its handle; with an
    /// equal config already installed, returns that one. A different config, or a
    /// reactor whose runtime has shut down, is an error. Reactor thread.
    ///
    /// Nothing starts yet: the Tokio side starts at the first of `callWhenRunning`,
    /// the reactor already running, the first bridged call, or [`Runtime::start`].
    /// By default every reactor shares the process's one Tokio pool, which the first
    /// install sizes ([`TokioRuntime`](crate::TokioRuntime)).
    pub fn install(reactor: &Bound<'_, PyAny>, config: RuntimeConfig) -> PyResult<Self> {
        Bridge::install(reactor, config).map(Self::from_bridge)
    }

    /// The runtime of `reactor`, installing the default one if it has none (as
    /// [`create_deferred`](crate::create_deferred) does). Reactor thread.
    pub fn new(reactor: &Bound<'_, PyAny>) -> PyResult<Self> {
        Bridge::for_reactor(reactor).map(Self::from_bridge)
    }

    /// The runtime running the calling task: inside a bridged future, its `spawn`ed
    /// children, or anything else on this crate's Tokio threads.
    pub fn current() -> Option<Self> {
        TaskScope::current_bridge().map(Self::from_bridge)
    }

    pub(crate) fn from_bridge(bridge: Arc<Bridge>) -> Self {
        Self { bridge }
    }

    pub(crate) fn bridge(&self) -> &Arc<Bridge> {
        &self.bridge
    }

    /// Starts the Tokio side now, if it has not started (or, in a forked child, has
    /// not started in this process). Reactor thread; the GIL is released while
    /// threads start.
    pub fn start(&self, py: Python<'_>) -> PyResult<()> {
        self.bridge.engine(py).map(drop)
    }

    /// The Tokio runtime's handle, starting the runtime if needed. Any thread; if it
    /// must start, this takes the GIL (never on a Tokio worker: those exist only
    /// once it has started).
    pub fn tokio_handle(&self) -> PyResult<tokio::runtime::Handle> {
        if let Some(handle) = self.bridge.started_handle() {
            return Ok(handle);
        }
        crate::threads::attach(|py| self.bridge.engine(py).map(|e| e.handle().clone()))
            .unwrap_or_else(|| {
                Err(RuntimeShutdown::new_err(
                    "the Python interpreter is shutting down",
                ))
            })
    }

    /// Spawns `fut` on this runtime. It keeps the calling task's logging context if
    /// it is a task of this runtime (as [`spawn`](crate::spawn) does), and can call
    /// [`run_python_awaitable`](crate::run_python_awaitable) on this reactor.
    pub fn spawn<F>(&self, fut: F) -> PyResult<tokio::task::JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if !self.bridge.accepting() {
            return Err(shut_down());
        }
        let handle = self.tokio_handle()?;
        let scope = TaskScope::current()
            .filter(|scope| Arc::ptr_eq(&scope.bridge, &self.bridge))
            .unwrap_or_else(|| Arc::new(TaskScope::new(Arc::clone(&self.bridge), None)));
        Ok(handle.spawn(TaskScope::enter(scope, fut)))
    }

    /// Runs `f` on the reactor thread, through the mailbox (batched with results, one
    /// wake-up per batch). Any thread; never takes the GIL. An error `f` returns is
    /// reported through Twisted's log. After shutdown, fails with
    /// [`RuntimeShutdown`] and `f` is dropped.
    pub fn dispatch<F>(&self, f: F) -> PyResult<()>
    where
        F: for<'py> FnOnce(Python<'py>) -> PyResult<()> + Send + 'static,
    {
        if self.bridge.is_stopped() {
            return Err(shut_down());
        }
        self.bridge.mailbox().push(Box::new(f));
        Ok(())
    }

    /// Shuts the runtime down now, as reactor shutdown would: new work is refused
    /// with [`RuntimeShutdown`], in-flight work gets up to `timeout` to finish (its
    /// results are delivered meanwhile, the GIL released between them), the rest is
    /// aborted and its Deferreds fail with [`RuntimeShutdown`]. Returns when done.
    /// Calling it again, or after reactor shutdown, does nothing. Reactor thread.
    ///
    /// For an application that stops before its reactor does (Synapse's
    /// `hs.shutdown()`), or a test harness that never stops its reactor.
    pub fn shutdown(&self, py: Python<'_>, timeout: Duration) -> PyResult<()> {
        self.bridge.shutdown_blocking(py, timeout)
    }

    /// Whether the runtime has shut down for good.
    pub fn is_shut_down(&self) -> bool {
        self.bridge.is_stopped()
    }

    /// The reactor, unless it has been collected. Needs the GIL.
    pub fn reactor<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.bridge.reactor(py)
    }

    /// A snapshot of the runtime's counters. Any thread.
    pub fn stats(&self) -> Stats {
        self.bridge.stats()
    }

    /// [`run_python_awaitable`](crate::run_python_awaitable) on this runtime's reactor.
    pub async fn run_python_awaitable<F>(&self, make_awaitable: F) -> PyResult<Py<PyAny>>
    where
        F: for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + 'static,
    {
        crate::awaitable::run(
            Arc::clone(&self.bridge),
            (),
            make_awaitable,
            |obj: &Bound<'_, PyAny>| Ok(obj.clone().unbind()),
        )
        .await
    }

    /// [`run_python_awaitable`](crate::run_python_awaitable), with the result
    /// converted by `convert` on the reactor thread: the Tokio side receives a plain
    /// Rust value and never needs the GIL to use it.
    pub async fn run_python_awaitable_map<F, C, T>(
        &self,
        make_awaitable: F,
        convert: C,
    ) -> PyResult<T>
    where
        F: for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + 'static,
        C: for<'py> FnOnce(&Bound<'py, PyAny>) -> PyResult<T> + Send + 'static,
        T: Send + 'static,
    {
        crate::awaitable::run(Arc::clone(&self.bridge), (), make_awaitable, convert).await
    }
}

fn shut_down() -> PyErr {
    RuntimeShutdown::new_err("the pyo3-twisted runtime has shut down")
}

pub(crate) mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Runtime {}
    impl Sealed for pyo3::Bound<'_, pyo3::PyAny> {}
    impl Sealed for pyo3::Py<pyo3::PyAny> {}
    impl<T: Sealed + ?Sized> Sealed for &T {}
}

/// What a bridged call accepts to name its runtime: a [`Runtime`] handle, or the
/// reactor itself (`&Bound<PyAny>` or `Py<PyAny>`), whose runtime is found (and, with
/// the GIL on the reactor thread, installed with the default config) on use.
///
/// Sealed: implemented by this crate only.
pub trait RuntimeRef: sealed::Sealed {
    /// The runtime, on the reactor thread with the GIL: installs the default runtime
    /// on a reactor that has none.
    #[doc(hidden)]
    fn runtime_with_gil(&self, py: Python<'_>) -> PyResult<Runtime>;

    /// The runtime, on any thread without the GIL: it must be installed already.
    #[doc(hidden)]
    fn runtime_without_gil(&self) -> PyResult<Runtime>;
}

impl RuntimeRef for Runtime {
    fn runtime_with_gil(&self, _py: Python<'_>) -> PyResult<Runtime> {
        Ok(self.clone())
    }

    fn runtime_without_gil(&self) -> PyResult<Runtime> {
        Ok(self.clone())
    }
}

impl RuntimeRef for Bound<'_, PyAny> {
    fn runtime_with_gil(&self, _py: Python<'_>) -> PyResult<Runtime> {
        Runtime::new(self)
    }

    fn runtime_without_gil(&self) -> PyResult<Runtime> {
        runtime_of_address(self.as_ptr() as usize)
    }
}

impl RuntimeRef for Py<PyAny> {
    fn runtime_with_gil(&self, py: Python<'_>) -> PyResult<Runtime> {
        Runtime::new(self.bind(py))
    }

    fn runtime_without_gil(&self) -> PyResult<Runtime> {
        runtime_of_address(self.as_ptr() as usize)
    }
}

impl<T: RuntimeRef + ?Sized> RuntimeRef for &T {
    fn runtime_with_gil(&self, py: Python<'_>) -> PyResult<Runtime> {
        (**self).runtime_with_gil(py)
    }

    fn runtime_without_gil(&self) -> PyResult<Runtime> {
        (**self).runtime_without_gil()
    }
}

/// The runtime of the reactor at `address`: the calling task's own if it is that
/// reactor's, else the live one there. No GIL.
pub(crate) fn runtime_of_address(address: usize) -> PyResult<Runtime> {
    TaskScope::current()
        .map(|scope| Arc::clone(&scope.bridge))
        .filter(|bridge| bridge.reactor_address() == address)
        .or_else(|| bridge_for_address(address))
        .map(Runtime::from_bridge)
        .ok_or_else(|| {
            PyRuntimeError::new_err(
                "no pyo3-twisted runtime is installed on this reactor (or it has shut \
                 down): install it, or call create_deferred, on the reactor thread first",
            )
        })
}

/// Runs a Python awaitable on the reactor thread and waits for its result.
///
/// Call it from any Tokio task: inside a future given to
/// [`create_deferred`](crate::create_deferred), in a child made with
/// [`spawn`](crate::spawn), or elsewhere once the reactor has a runtime. The calling
/// thread never takes the GIL. `runtime` names the reactor: a [`Runtime`](crate::Runtime) handle, or
/// the reactor object (`Py<PyAny>`, released on the reactor thread).
///
/// - `make_awaitable` runs on the reactor thread, inside the logging context the
///   calling task works for (the sentinel if none, or if that context has finished).
///   It may return a coroutine, a Deferred, any awaitable, or a plain value. On
///   Twisted's asyncio reactor it may also return an asyncio future or Task, and a
///   coroutine may await asyncio futures (`asyncio.sleep`, ...) as well as Deferreds:
///   it keeps its logging context across both. Code that needs a current asyncio
///   Task (`asyncio.timeout`, `TaskGroup`) should be returned wrapped in one
///   (`asyncio.ensure_future(coro)`). On other reactors an asyncio future is an error.
/// - `Err` carries the original Python exception, traceback included.
/// - Dropping the returned future before it resolves cancels the Python side
///   (`Deferred.cancel()`, so a coroutine sees `CancelledError`).
/// - If the job can never run (the runtime shut down, the reactor was collected),
///   the future resolves with [`RuntimeShutdown`](crate::RuntimeShutdown); it never hangs. It runs whether or
///   not the reactor was ever `run()`: a memory reactor's harness delivers it.
///
/// ```no_run
/// # use pyo3::prelude::*;
/// # async fn f(reactor: Py<PyAny>) -> PyResult<()> {
/// let value = pyo3_twisted::run_python_awaitable(reactor, |py| {
///     py.import("my_module")?.call_method1("fetch", ("key",))
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn run_python_awaitable<R, F>(runtime: R, make_awaitable: F) -> PyResult<Py<PyAny>>
where
    R: RuntimeRef + Send + 'static,
    F: for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + 'static,
{
    let bridge = Arc::clone(runtime.runtime_without_gil()?.bridge());
    crate::awaitable::run(bridge, runtime, make_awaitable, |obj: &Bound<'_, PyAny>| {
        Ok(obj.clone().unbind())
    })
    .await
}

/// Installs a runtime with `config` on `reactor`.
///
/// Call it on the reactor thread, before or after `reactor.run()`. Installing again
/// with an equal config is a no-op; with a different one it is an error, as is
/// installing after the runtime shut down. Without an explicit install, the first
/// [`create_deferred`](crate::create_deferred) on a reactor installs
/// `RuntimeConfig::default()`. [`Runtime::install`] does the same and returns a
/// handle.
///
/// ```no_run
/// use pyo3::prelude::*;
/// use pyo3_twisted::{install_runtime, RuntimeConfig};
///
/// # fn main() -> PyResult<()> {
/// Python::attach(|py| {
///     let reactor = py.import("twisted.internet.reactor")?;
///     install_runtime(&reactor, RuntimeConfig { worker_threads: 2, ..Default::default() })
/// })
/// # }
/// ```
pub fn install_runtime(reactor: &Bound<'_, PyAny>, config: RuntimeConfig) -> PyResult<()> {
    Bridge::install(reactor, config).map(drop)
}

/// A snapshot of the counters of the runtime installed on `reactor`.
///
/// Errors if no runtime is installed there (this does not install one).
pub fn stats(reactor: &Bound<'_, PyAny>) -> PyResult<Stats> {
    match Bridge::of_reactor(reactor)? {
        Some(bridge) => Ok(bridge.stats()),
        None => Err(PyRuntimeError::new_err(
            "no pyo3-twisted runtime is installed on this reactor",
        )),
    }
}

/// One histogram of a runtime, as [`histograms`] reads it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HistogramReading {
    /// `drain_batch_size` (jobs), `wake_to_drain_seconds`, `task_run_seconds`,
    /// `task_cpu_seconds`, `pool_checkout_seconds` or `run_interaction_seconds`.
    pub name: &'static str,
    /// Its labels, `(name, value)`: `outcome` (`completed`, `failed`, `panicked`) for
    /// task runs; `pool` for checkouts; `pool`, `name` (the transaction's) and
    /// `outcome` (`committed`, `retried`, `failed`) for transactions.
    pub labels: Vec<(&'static str, &'static str)>,
    /// The counts.
    pub snapshot: HistogramSnapshot,
}

/// The histograms of the runtime installed on `reactor` (all empty when it was
/// installed with `metrics: false`). Any thread; never blocks the workers.
///
/// Errors if no runtime is installed there (this does not install one).
pub fn histograms(reactor: &Bound<'_, PyAny>) -> PyResult<Vec<HistogramReading>> {
    match Bridge::of_reactor(reactor)? {
        Some(bridge) => Ok(bridge
            .histograms()
            .snapshot()
            .into_iter()
            .map(|(name, labels, snapshot)| HistogramReading {
                name,
                labels,
                snapshot,
            })
            .collect()),
        None => Err(PyRuntimeError::new_err(
            "no pyo3-twisted runtime is installed on this reactor",
        )),
    }
}

/// `pyo3_twisted.Runtime(reactor, **config)`: the [`Runtime`] handle in Python.
///
/// An extension module exposes it with `m.add_class::<pyo3_twisted::PyRuntime>()`.
/// Without keyword arguments it is the reactor's runtime (the default one installed
/// if there is none); with them, as [`RuntimeConfig::from_kwargs`] reads them, it
/// installs that config (or finds it installed). Methods: `start()`,
/// `shutdown(timeout=None)` (a Deferred that fires once stopped; the reactor
/// drives the wait), `shutdown_blocking(timeout=None)` (returns once stopped),
/// `stats()`, and the `reactor` and `is_shut_down` attributes.
#[pyclass(frozen, weakref, name = "Runtime", module = "pyo3_twisted")]
#[derive(Debug)]
pub struct PyRuntime {
    runtime: Runtime,
}

impl PyRuntime {
    /// The Rust handle.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

fn timeout_or(timeout: Option<f64>, default: Duration) -> PyResult<Duration> {
    match timeout {
        None => Ok(default),
        Some(seconds) => Duration::try_from_secs_f64(seconds).map_err(|_| {
            PyValueError::new_err(format!(
                "timeout must be a finite number of seconds >= 0, got {seconds}"
            ))
        }),
    }
}

#[pymethods]
impl PyRuntime {
    #[new]
    #[pyo3(signature = (reactor, **config))]
    fn py_new(reactor: &Bound<'_, PyAny>, config: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let runtime = match config.filter(|kwargs| !kwargs.is_empty()) {
            Some(kwargs) => Runtime::install(reactor, RuntimeConfig::from_kwargs(Some(kwargs))?)?,
            None => Runtime::new(reactor)?,
        };
        Ok(Self { runtime })
    }

    /// The reactor, or None once it has been collected.
    #[getter]
    fn reactor<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.runtime.reactor(py)
    }

    /// Whether the runtime has shut down for good.
    #[getter]
    fn is_shut_down(&self) -> bool {
        self.runtime.is_shut_down()
    }

    /// Starts the Tokio side now if it has not started.
    #[pyo3(name = "start")]
    fn py_start(&self, py: Python<'_>) -> PyResult<()> {
        self.runtime.start(py)
    }

    /// Begins shutting down; a Deferred that fires once stopped. The reactor drives
    /// the wait (up to `timeout`, by default the configured `shutdown_timeout`).
    #[pyo3(name = "shutdown", signature = (timeout=None))]
    fn py_shutdown(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let bridge = self.runtime.bridge();
        bridge.check_reactor_thread("Runtime.shutdown")?;
        bridge.shutdown_deferred(py, timeout_or(timeout, bridge.config().shutdown_timeout)?)
    }

    /// Shuts down now and returns once stopped: for synchronous shutdown handlers and
    /// reactors that are never run.
    #[pyo3(name = "shutdown_blocking", signature = (timeout=None))]
    fn py_shutdown_blocking(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let default = self.runtime.bridge().config().shutdown_timeout;
        self.runtime.shutdown(py, timeout_or(timeout, default)?)
    }

    /// The runtime's counters, as `pyo3_twisted.stats(reactor)` returns them.
    #[pyo3(name = "stats")]
    fn py_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.runtime.stats().to_dict(py)
    }

    fn __repr__(&self) -> String {
        let stats = self.runtime.stats();
        format!(
            "<pyo3_twisted.Runtime {} workers={} in_flight={}>",
            stats.state, stats.worker_threads, stats.tasks_in_flight
        )
    }
}
