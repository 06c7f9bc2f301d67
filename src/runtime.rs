//! The Tokio runtime whose life follows the reactor's.
//!
//! ```text
//!  install_runtime ──▶ Installed ──callWhenRunning──▶ Running ──before-shutdown──▶ Draining
//!   (reactor attr)       │ work is queued,              │                            │ in-flight work finishes,
//!                        │ not yet spawned              │                            │ or shutdown_timeout aborts it
//!                        └──────── reactor shuts down before starting ──────────────▶ Stopped
//! ```
//!
//! Every function here runs on the reactor thread with the GIL held, except the
//! Tokio thread hooks. One [`Bridge`] per reactor and per copy of this crate, stored
//! on the reactor object under [`runtime_attr`]: a name of this crate's own (so it
//! never collides with Synapse's runtime) that differs between copies, so two
//! extension modules that each link the crate each keep their own runtime on the same
//! reactor. (They cannot share one: each copy has its own Tokio, whose thread-local
//! context a future compiled into the other copy would not find.) The Tokio runtime is
//! built only when the reactor starts, so a process that forks before `reactor.run()`
//! (daemonizing) forks without Tokio threads.
//!
//! The runtime is dropped with the GIL released (Tokio threads may be waiting for it
//! inside user code), and at interpreter exit an `atexit` hook stops any runtime still
//! alive, so no Tokio thread runs while CPython finalizes.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;
use tokio::runtime::Runtime;

use crate::asyncio::AsyncioLoop;
use crate::config::{LogContextProvider, RuntimeConfig, TokioRuntime};
use crate::errors::{report, RuntimeShutdown};
use crate::live_tasks::LiveTasks;
use crate::logcontext::Provider;
use crate::mailbox::Mailbox;
use crate::registry::{Entry, Registry};
use crate::stats::{Counters, Stats};
use crate::submit::Submitter;
use crate::twisted::deferred_class;
use crate::{threads, wake};

/// The reactor attribute that holds this copy of the crate's runtime:
/// `_pyo3_twisted_runtime_<version>_<copy>`.
///
/// Every extension module that links pyo3-twisted has its own copy of the crate, and
/// each copy keeps its own runtime on a reactor under its own name: two modules used
/// on one reactor both work, each on its own Tokio threads.
pub fn runtime_attr() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    static COPY: u8 = 0;
    NAME.get_or_init(|| {
        format!(
            "_pyo3_twisted_runtime_{}_{:x}",
            env!("CARGO_PKG_VERSION").replace('.', "_"),
            std::ptr::addr_of!(COPY) as usize
        )
    })
}

/// How long dropping the runtime waits for Tokio threads to finish their current
/// poll. Aborted tasks stop at their next poll; this only bounds a task stuck in a
/// blocking call.
const DROP_GRACE: Duration = Duration::from_secs(1);

/// Longest the reactor lingers for results in one go, however busy the mailbox:
/// then it returns to servicing its other file descriptors.
const LINGER_BUDGET: Duration = Duration::from_millis(1);

thread_local! {
    /// On a Tokio thread of ours: the bridge whose runtime it belongs to.
    static OWNER: std::cell::RefCell<Weak<Bridge>> = const { std::cell::RefCell::new(Weak::new()) };
}

/// The bridge that last started on the process-wide pool, for that pool's threads.
static PROCESS_OWNER: Mutex<Weak<Bridge>> = Mutex::new(Weak::new());

const INSTALLED: u8 = 0;
const RUNNING: u8 = 1;
const DRAINING: u8 = 2;
const STOPPED: u8 = 3;

/// The Python object stored on the reactor; it keeps the bridge alive.
#[pyclass(frozen, name = "Runtime", module = "pyo3_twisted")]
pub(crate) struct RuntimeBinding {
    pub bridge: Arc<Bridge>,
}

#[pymethods]
impl RuntimeBinding {
    fn __repr__(&self) -> String {
        format!(
            "<pyo3_twisted.Runtime {} workers={} in_flight={}>",
            self.bridge.phase_name(),
            self.bridge.config.worker_threads,
            self.bridge.registry.lock().len()
        )
    }
}

/// One reactor's runtime, mailbox and in-flight work.
pub(crate) struct Bridge {
    pub config: RuntimeConfig,
    pub counters: Arc<Counters>,
    pub mailbox: Arc<Mailbox>,
    pub registry: Mutex<Registry>,
    /// The futures of `create_deferred` that still exist; counted only on the
    /// process-wide pool (our own runtime is simply dropped), where stopping means
    /// waiting for them.
    pub live_tasks: Option<Arc<LiveTasks>>,
    submitter: Submitter,
    phase: AtomicU8,
    reactor_thread: AtomicU64,
    canceller: OnceLock<Py<PyAny>>,
    tokio: OnceLock<tokio::runtime::Handle>,
    provider: Option<Provider>,
    /// The reactor's asyncio loop, on Twisted's asyncio reactor.
    asyncio: Option<AsyncioLoop>,
    reactor_address: usize,
    /// The reactor-side linger: a `callLater(0)` callable (fd mode only), and
    /// whether one is scheduled or running.
    linger: OnceLock<Py<PyAny>>,
    linger_scheduled: std::sync::atomic::AtomicBool,
    /// The process generation (see `forks`) the Tokio runtime was started in.
    started_in: AtomicU64,
    slow: Mutex<Slow>,
}

/// State touched only on start and shutdown.
#[derive(Default)]
struct Slow {
    reactor: Option<Py<PyAny>>,
    runtime: Option<Runtime>,
    reader: Option<Py<PyAny>>,
    wake_mode: &'static str,
    shutdown_done: Option<Py<PyAny>>,
    shutdown_timer: Option<Py<PyAny>>,
}

/// Installs a runtime with `config` on `reactor`.
///
/// Call it on the reactor thread, before or after `reactor.run()`. The Tokio threads
/// start when the reactor runs (at once if it already does); futures submitted before
/// that wait and start with it. Installing again with an equal config is a no-op; with
/// a different one it is an error, as is installing after the reactor shut down.
/// Without an explicit install, the first [`create_deferred`](crate::create_deferred)
/// on a reactor installs `RuntimeConfig::default()`.
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
    install(reactor, config).map(drop)
}

/// [`runtime_attr`] as a Python string, made once (every `create_deferred` looks it up).
fn runtime_attr_py(py: Python<'_>) -> &Bound<'_, pyo3::types::PyString> {
    static NAME: PyOnceLock<Py<pyo3::types::PyString>> = PyOnceLock::new();
    NAME.get_or_init(py, || {
        pyo3::types::PyString::intern(py, runtime_attr()).unbind()
    })
    .bind(py)
}

/// A snapshot of the counters of the runtime installed on `reactor`.
///
/// Errors if no runtime is installed there (this does not install one).
pub fn stats(reactor: &Bound<'_, PyAny>) -> PyResult<Stats> {
    match lookup(reactor)? {
        Some(bridge) => Ok(bridge.stats()),
        None => Err(PyRuntimeError::new_err(
            "no pyo3-twisted runtime is installed on this reactor",
        )),
    }
}

/// The bridge of `reactor`, installing the default runtime on first use.
pub(crate) fn bridge_for(reactor: &Bound<'_, PyAny>) -> PyResult<Arc<Bridge>> {
    match lookup(reactor)? {
        Some(bridge) => Ok(bridge),
        None => install(reactor, RuntimeConfig::default()),
    }
}

fn lookup(reactor: &Bound<'_, PyAny>) -> PyResult<Option<Arc<Bridge>>> {
    let py = reactor.py();
    let Some(attr) = reactor.getattr_opt(runtime_attr_py(py))? else {
        return Ok(None);
    };
    match attr.cast::<RuntimeBinding>() {
        Ok(binding) => Ok(Some(Arc::clone(&binding.get().bridge))),
        Err(_) => Err(PyRuntimeError::new_err(format!(
            "reactor.{} holds {}, not a pyo3-twisted runtime",
            runtime_attr(),
            attr.get_type().name()?
        ))),
    }
}

fn install(reactor: &Bound<'_, PyAny>, config: RuntimeConfig) -> PyResult<Arc<Bridge>> {
    let py = reactor.py();
    config.validate()?;
    if let Some(existing) = lookup(reactor)? {
        if existing.phase.load(Ordering::Acquire) == STOPPED {
            return Err(RuntimeShutdown::new_err(
                "this reactor's pyo3-twisted runtime has shut down",
            ));
        }
        if existing.config != config {
            return Err(PyRuntimeError::new_err(format!(
                "a pyo3-twisted runtime with a different configuration is already installed \
                 on this reactor (installed: {:?}; requested: {:?}). Install it once, before \
                 the first create_deferred, which otherwise installs the default.",
                existing.config, config
            )));
        }
        return Ok(existing);
    }

    let provider = match &config.logcontext {
        LogContextProvider::None => None,
        LogContextProvider::Module(module) => Some(Provider::load(py, module)?),
    };
    let asyncio = AsyncioLoop::of_reactor(reactor, provider.as_ref())?;
    let counters = Arc::new(Counters::default());
    let live_tasks =
        (config.tokio == TokioRuntime::Process).then(|| Arc::new(LiveTasks::default()));
    let bridge = Arc::new(Bridge {
        mailbox: Arc::new(Mailbox::new(Arc::clone(&counters))),
        counters,
        config,
        registry: Mutex::new(Registry::default()),
        live_tasks,
        submitter: Submitter::new(),
        phase: AtomicU8::new(INSTALLED),
        reactor_thread: AtomicU64::new(threads::current_id()),
        canceller: OnceLock::new(),
        tokio: OnceLock::new(),
        provider,
        asyncio,
        reactor_address: reactor.as_ptr() as usize,
        linger: OnceLock::new(),
        linger_scheduled: std::sync::atomic::AtomicBool::new(false),
        started_in: AtomicU64::new(0),
        slow: Mutex::new(Slow {
            reactor: Some(reactor.clone().unbind()),
            wake_mode: "none",
            ..Slow::default()
        }),
    });
    let _ = bridge.canceller.set(bridge_callback(
        py,
        &bridge,
        c"cancel",
        |bridge, py, args| bridge.cancel(py, &args.get_item(0)?),
    )?);
    reactor.setattr(
        runtime_attr_py(py),
        RuntimeBinding {
            bridge: Arc::clone(&bridge),
        },
    )?;

    let before_shutdown = bridge_callback(py, &bridge, c"before_shutdown", |bridge, py, _| {
        bridge.before_shutdown(py)
    })?;
    reactor.call_method1(
        intern!(py, "addSystemEventTrigger"),
        ("before", "shutdown", before_shutdown),
    )?;
    directory::track(py, &bridge)?;
    forks::watch(py)?;

    if already_running(reactor)? {
        bridge.start(py)?;
    } else {
        let start = bridge_callback(py, &bridge, c"start", |bridge, py, _| {
            bridge.start(py).map(|()| py.None())
        })?;
        reactor.call_method1(intern!(py, "callWhenRunning"), (start,))?;
    }
    Ok(bridge)
}

/// Whether the runtime must start now rather than through `callWhenRunning`.
///
/// A running reactor, real or memory, counts. So does a memory reactor whose `run()`
/// has returned (`hasRun`): `MemoryReactor.run()` runs its hooks and then calls
/// `stop()`, and on Twisted < 26.4 it ignores `callWhenRunning` from then on. Twisted
/// 24.11 initialises `hasRun` to `True`, so there a plain memory reactor starts the
/// runtime at install: early, never a hang. (`pyo3_twisted.testing`'s reactor resets
/// the flag, so it holds work until `run()` on every version.)
fn already_running(reactor: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = reactor.py();
    for name in [intern!(py, "running"), intern!(py, "hasRun")] {
        if let Some(value) = reactor.getattr_opt(name)? {
            if value.is_truthy()? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A Python callable that runs `f` with the bridge, if it still exists. It holds the
/// bridge weakly: the reactor keeps these callables, and the bridge keeps the reactor.
fn bridge_callback<F>(
    py: Python<'_>,
    bridge: &Arc<Bridge>,
    name: &'static std::ffi::CStr,
    f: F,
) -> PyResult<Py<PyAny>>
where
    F: for<'py> Fn(
            &Arc<Bridge>,
            Python<'py>,
            &Bound<'py, pyo3::types::PyTuple>,
        ) -> PyResult<Py<PyAny>>
        + Send
        + Sync
        + 'static,
{
    let weak: Weak<Bridge> = Arc::downgrade(bridge);
    let function = PyCFunction::new_closure(py, Some(name), None, move |args, _kwargs| match weak
        .upgrade()
    {
        Some(bridge) => f(&bridge, args.py(), args),
        None => Ok(args.py().None()),
    })?;
    Ok(function.into_any().unbind())
}

impl Bridge {
    /// Builds the Tokio runtime and the wake mechanism. Idempotent; reactor thread.
    fn start(self: &Arc<Self>, py: Python<'_>) -> PyResult<()> {
        if self.phase.load(Ordering::Acquire) != INSTALLED {
            return Ok(());
        }
        let Some(reactor) = self.slow.lock().reactor.as_ref().map(|r| r.clone_ref(py)) else {
            return Ok(());
        };
        let (runtime, handle) = match self.config.tokio {
            TokioRuntime::PerReactor => {
                let runtime = self.build_tokio(py)?;
                let handle = runtime.handle().clone();
                (Some(runtime), handle)
            }
            TokioRuntime::Process => {
                let handle = crate::pool::process_runtime(py, &self.config)?
                    .handle()
                    .clone();
                *PROCESS_OWNER.lock() = Arc::downgrade(self);
                (None, handle)
            }
        };
        let installed = wake::install(py, reactor.bind(py), self.config.wake, &self.mailbox)?;
        self.mailbox.set_waker(installed.waker);
        self.submitter.start(&handle, self.config.linger);
        let _ = self.tokio.set(handle);
        self.reactor_thread
            .store(threads::current_id(), Ordering::Release);
        self.started_in
            .store(forks::generation(), Ordering::Release);
        if installed.reader.is_some() && !self.config.linger.is_zero() {
            let linger = bridge_callback(py, self, c"linger", |bridge, py, _| {
                bridge.linger(py);
                Ok(py.None())
            })?;
            let _ = self.linger.set(linger);
        }
        {
            let mut slow = self.slow.lock();
            slow.runtime = runtime;
            slow.reader = installed.reader;
            slow.wake_mode = installed.mode;
        }
        self.phase.store(RUNNING, Ordering::Release);
        Ok(())
    }

    /// Builds this reactor's own Tokio runtime (GIL released while its workers
    /// start).
    fn build_tokio(self: &Arc<Self>, py: Python<'_>) -> PyResult<Runtime> {
        let owner = Arc::downgrade(self);
        let (counters_start, counters_stop) =
            (Arc::clone(&self.counters), Arc::clone(&self.counters));
        let config = self.config.clone();
        py.detach(move || {
            crate::pool::build(
                &config,
                Arc::new(move || {
                    OWNER.with(|o| *o.borrow_mut() = owner.clone());
                    counters_start
                        .tokio_threads_live
                        .fetch_add(1, Ordering::Relaxed);
                }),
                Arc::new(move || {
                    counters_stop
                        .tokio_threads_live
                        .fetch_sub(1, Ordering::Relaxed);
                }),
            )
        })
    }

    /// Raises unless called on the reactor thread of the process that started the
    /// runtime.
    pub fn check_reactor_thread(&self, what: &str) -> PyResult<()> {
        self.check_not_forked()?;
        if self.is_reactor_thread() {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err(format!(
                "{what} must be called on the reactor thread (Deferreds are not thread-safe); \
                 from another thread, go through reactor.callFromThread, or from Tokio use \
                 pyo3_twisted::run_python_awaitable"
            )))
        }
    }

    /// A process forked after the runtime started has none of its threads: say so
    /// instead of queueing work that would never run.
    pub fn check_not_forked(&self) -> PyResult<()> {
        if self.phase.load(Ordering::Acquire) >= RUNNING
            && self.started_in.load(Ordering::Acquire) != forks::generation()
        {
            return Err(PyRuntimeError::new_err(
                "this process was forked after its pyo3-twisted runtime started: the child \
                 has none of the runtime's threads. Fork before the reactor runs (as a \
                 daemonizing server does), or install a runtime on a new reactor in the child.",
            ));
        }
        Ok(())
    }

    /// Whether the calling thread is this reactor's thread.
    pub fn is_reactor_thread(&self) -> bool {
        threads::current_id() == self.reactor_thread.load(Ordering::Acquire)
    }

    /// The Tokio runtime's handle, once it has started.
    pub fn tokio_handle(&self) -> Option<&tokio::runtime::Handle> {
        self.tokio.get()
    }

    /// The address of the reactor object, its identity without the GIL.
    pub fn reactor_address(&self) -> usize {
        self.reactor_address
    }

    /// The logcontext provider, if one is configured.
    pub fn provider(&self) -> Option<&Provider> {
        self.provider.as_ref()
    }

    /// The reactor's asyncio loop, if it is Twisted's asyncio reactor.
    pub fn asyncio(&self) -> Option<&AsyncioLoop> {
        self.asyncio.as_ref()
    }

    /// The bridge whose runtime owns the calling Tokio thread.
    pub fn of_current_thread() -> Option<Arc<Bridge>> {
        OWNER.with(|owner| owner.borrow().upgrade()).or_else(|| {
            if crate::pool::in_process_pool() {
                PROCESS_OWNER.lock().upgrade()
            } else {
                None
            }
        })
    }

    /// Whether new work is accepted (shutdown has not begun).
    pub fn accepting(&self) -> bool {
        self.phase.load(Ordering::Acquire) <= RUNNING
    }

    pub fn submitter(&self) -> &Submitter {
        &self.submitter
    }

    /// The canceller every Deferred of this runtime is created with.
    pub fn canceller<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyAny>> {
        self.canceller
            .get()
            .map(|c| c.bind(py))
            .ok_or_else(|| PyRuntimeError::new_err("pyo3-twisted runtime is not initialised"))
    }

    fn cancel(
        self: &Arc<Self>,
        py: Python<'_>,
        deferred: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let entry = self.registry.lock().take_deferred(deferred);
        if let Some(entry) = entry {
            // Wakes the task, which drops the future at its next poll. Twisted then
            // errbacks the Deferred with CancelledError, since we did not fire it.
            entry.abort.abort();
            Counters::bump(&self.counters.tasks_cancelled);
            self.entry_left(py);
        }
        Ok(py.None())
    }

    /// Work was just handed to Tokio from the reactor thread: make sure the reactor
    /// lingers for the results once the current reactor turn is done (one
    /// `callLater(0)` per burst of hand-offs).
    pub fn note_handoff(&self, py: Python<'_>) {
        let Some(linger) = self.linger.get() else {
            return;
        };
        if self.linger_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let reactor = self.slow.lock().reactor.as_ref().map(|r| r.clone_ref(py));
        let scheduled = reactor.map(|reactor| {
            reactor
                .bind(py)
                .call_method1(intern!(py, "callLater"), (0.0, linger.bind(py)))
        });
        if !matches!(scheduled, Some(Ok(_))) {
            self.linger_scheduled.store(false, Ordering::Release);
        }
    }

    fn linger(&self, py: Python<'_>) {
        if self.phase.load(Ordering::Acquire) <= DRAINING {
            if let Err(err) = self.mailbox.linger(py, self.config.linger, LINGER_BUDGET) {
                report(
                    py,
                    err,
                    "pyo3-twisted: interrupted while lingering for results",
                );
            }
        }
        self.linger_scheduled.store(false, Ordering::Release);
    }

    /// Called after an entry left the registry; finishes a shutdown that waited for it.
    pub fn entry_left(self: &Arc<Self>, py: Python<'_>) {
        if self.phase.load(Ordering::Acquire) == DRAINING && self.registry.lock().is_empty() {
            self.finish(py);
        }
    }

    /// The `before shutdown` trigger: stop taking work, wait for what is in flight.
    fn before_shutdown(self: &Arc<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.phase.load(Ordering::Acquire) {
            INSTALLED => {
                self.phase.store(DRAINING, Ordering::Release);
                self.fail_all(
                    py,
                    "the reactor shut down before the pyo3-twisted runtime started",
                );
                self.finish(py);
                Ok(py.None())
            }
            RUNNING => {
                self.phase.store(DRAINING, Ordering::Release);
                if self.registry.lock().is_empty() {
                    self.finish(py);
                    return Ok(py.None());
                }
                let done = deferred_class(py)?.call0()?;
                let on_timeout =
                    bridge_callback(py, self, c"shutdown_timeout", |bridge, py, _| {
                        bridge.shutdown_timed_out(py);
                        Ok(py.None())
                    })?;
                let reactor = self.slow.lock().reactor.as_ref().map(|r| r.clone_ref(py));
                let timer = match reactor {
                    Some(reactor) => Some(
                        reactor
                            .bind(py)
                            .call_method1(
                                intern!(py, "callLater"),
                                (self.config.shutdown_timeout.as_secs_f64(), on_timeout),
                            )?
                            .unbind(),
                    ),
                    None => None,
                };
                let mut slow = self.slow.lock();
                slow.shutdown_done = Some(done.clone().unbind());
                slow.shutdown_timer = timer;
                Ok(done.unbind())
            }
            _ => Ok(py.None()),
        }
    }

    fn shutdown_timed_out(self: &Arc<Self>, py: Python<'_>) {
        if self.phase.load(Ordering::Acquire) != DRAINING {
            return;
        }
        self.slow.lock().shutdown_timer = None;
        let reason = format!(
            "the pyo3-twisted runtime shut down before this task finished \
             (shutdown_timeout = {:?})",
            self.config.shutdown_timeout
        );
        self.fail_all(py, &reason);
        self.finish(py);
    }

    /// Aborts every in-flight task and errbacks its Deferred with `RuntimeShutdown`.
    fn fail_all(&self, py: Python<'_>, reason: &str) {
        let entries: Vec<Entry> = self.registry.lock().take_all();
        for entry in entries {
            entry.abort.abort();
            Counters::bump(&self.counters.tasks_aborted_at_shutdown);
            let err = RuntimeShutdown::new_err(reason.to_owned());
            if let Err(err) = entry
                .deferred
                .bind(py)
                .call_method1(intern!(py, "errback"), (err.into_value(py),))
            {
                report(py, err, "pyo3-twisted: failing a Deferred at shutdown");
            }
        }
    }

    /// Drops the runtime (GIL released), unregisters the waker, fires the shutdown
    /// Deferred. Runs once.
    fn finish(self: &Arc<Self>, py: Python<'_>) {
        if self.phase.swap(STOPPED, Ordering::AcqRel) == STOPPED {
            return;
        }
        let slow = {
            let mut slow = self.slow.lock();
            Slow {
                wake_mode: slow.wake_mode,
                ..std::mem::take(&mut *slow)
            }
        };
        self.slow.lock().wake_mode = slow.wake_mode;
        if let Some(timer) = slow.shutdown_timer {
            let timer = timer.bind(py);
            let active = timer
                .call_method0(intern!(py, "active"))
                .and_then(|a| a.is_truthy())
                .unwrap_or(false);
            if active {
                if let Err(err) = timer.call_method0(intern!(py, "cancel")) {
                    report(py, err, "pyo3-twisted: cancelling the shutdown timer");
                }
            }
        }
        if let (Some(reactor), Some(reader)) = (&slow.reactor, &slow.reader) {
            if let Err(err) = reactor
                .bind(py)
                .call_method1(intern!(py, "removeReader"), (reader.bind(py),))
            {
                report(py, err, "pyo3-twisted: unregistering the mailbox reader");
            }
        }
        self.submitter.stop();
        directory::forget(self);
        self.stop_runtime(py, slow.runtime);
        self.mailbox.close(py);
        if let Some(done) = slow.shutdown_done {
            if let Err(err) = done
                .bind(py)
                .call_method1(intern!(py, "callback"), (py.None(),))
            {
                report(py, err, "pyo3-twisted: firing the shutdown Deferred");
            }
        }
    }

    /// Drops our own runtime (GIL released; it cancels every task), or, on a pool we
    /// do not own, stops our tasks there.
    fn stop_runtime(&self, py: Python<'_>, runtime: Option<Runtime>) {
        match runtime {
            Some(runtime) => py.detach(move || runtime.shutdown_timeout(DROP_GRACE)),
            None => self.stop_tasks_on_shared_pool(py),
        }
    }

    /// On a pool that outlives us (the process-wide one), or none: aborts our tasks
    /// one by one and waits (GIL released, bounded) until they are gone, as dropping
    /// our own runtime would, so none is still taking the GIL when CPython finalizes.
    fn stop_tasks_on_shared_pool(&self, py: Python<'_>) {
        for entry in self.registry.lock().take_all() {
            entry.abort.abort();
        }
        let Some(live) = self.live_tasks.clone() else {
            return;
        };
        if !py.detach(move || live.wait_idle(DROP_GRACE)) {
            log::warn!("pyo3-twisted: bridged tasks still running after shutdown");
        }
    }

    /// Stops the runtime at interpreter exit, whatever state the reactor is in.
    fn stop_for_exit(&self, py: Python<'_>) {
        self.phase.store(STOPPED, Ordering::Release);
        let runtime = self.slow.lock().runtime.take();
        self.submitter.stop();
        directory::forget(self);
        self.stop_runtime(py, runtime);
        self.mailbox.close(py);
    }

    fn phase_name(&self) -> &'static str {
        match self.phase.load(Ordering::Acquire) {
            INSTALLED => "installed",
            RUNNING => "running",
            DRAINING => "draining",
            _ => "stopped",
        }
    }

    pub fn stats(&self) -> Stats {
        let c = &*self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            state: self.phase_name(),
            wake_mode: self.slow.lock().wake_mode,
            worker_threads: self.config.worker_threads as u64,
            tokio_threads_live: match self.config.tokio {
                TokioRuntime::PerReactor => get(&c.tokio_threads_live),
                TokioRuntime::Process => crate::pool::process_threads_live(),
            },
            tasks_spawned: get(&c.tasks_spawned),
            tasks_completed: get(&c.tasks_completed),
            tasks_failed: get(&c.tasks_failed),
            tasks_panicked: get(&c.tasks_panicked),
            tasks_cancelled: get(&c.tasks_cancelled),
            tasks_aborted_at_shutdown: get(&c.tasks_aborted_at_shutdown),
            tasks_rejected_after_shutdown: get(&c.tasks_rejected_after_shutdown),
            tasks_in_flight: self.registry.lock().len() as u64,
            awaitables_started: get(&c.awaitables_started),
            awaitables_completed: get(&c.awaitables_completed),
            mailbox_wakeups: get(&c.mailbox_wakeups),
            mailbox_drains: get(&c.mailbox_drains),
            mailbox_batches: get(&c.mailbox_batches),
            mailbox_jobs: get(&c.mailbox_jobs),
            mailbox_max_batch: get(&c.mailbox_max_batch),
            mailbox_lingers: get(&c.mailbox_lingers),
            gil_acquisitions_on_tokio_threads: threads::gil_acquisitions_on_tokio_threads(),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Normally `finish` or the exit hook took the runtime. If not, stop it without
        // waiting: this may run on a Tokio thread, where waiting is not allowed.
        if let Some(runtime) = self.slow.get_mut().runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How many times this process has forked since the crate loaded (0 in the
/// original process).
pub(crate) fn fork_generation() -> u64 {
    forks::generation()
}

/// The bridge of the reactor at `address`, found without the GIL (Tokio threads use
/// it: they cannot ask the reactor object). The caller keeps the reactor alive.
pub(crate) fn bridge_for_address(address: usize) -> Option<Arc<Bridge>> {
    directory::find(address)
}

mod forks {
    //! Counts forks, so a child can tell a runtime started in its parent (whose
    //! threads it does not have) from one of its own.

    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static GENERATION: AtomicU64 = AtomicU64::new(0);
    static WATCHING: PyOnceLock<()> = PyOnceLock::new();

    pub(crate) fn generation() -> u64 {
        GENERATION.load(Ordering::Acquire)
    }

    /// Registers `os.register_at_fork(after_in_child=...)` once per process.
    pub(super) fn watch(py: Python<'_>) -> PyResult<()> {
        WATCHING
            .get_or_try_init(py, || -> PyResult<()> {
                let in_child = PyCFunction::new_closure(
                    py,
                    Some(c"pyo3_twisted_after_fork_in_child"),
                    None,
                    |_args, _kwargs| {
                        GENERATION.fetch_add(1, Ordering::AcqRel);
                    },
                )?;
                let kwargs = pyo3::types::PyDict::new(py);
                kwargs.set_item("after_in_child", in_child)?;
                py.import("os")?
                    .call_method("register_at_fork", (), Some(&kwargs))?;
                Ok(())
            })
            .map(drop)
    }
}

mod directory {
    //! Every live bridge, by reactor address: found without the GIL by Tokio
    //! threads, and stopped by one `atexit` hook before CPython finalizes (a Tokio
    //! thread that re-took the GIL during finalization would be killed while running
    //! Rust frames, CPython gh-87135, aborting the process).

    use std::collections::HashMap;

    use super::*;

    static BRIDGES: Mutex<Option<HashMap<usize, Weak<Bridge>>>> = Mutex::new(None);
    static HOOK: PyOnceLock<()> = PyOnceLock::new();

    pub(super) fn track(py: Python<'_>, bridge: &Arc<Bridge>) -> PyResult<()> {
        HOOK.get_or_try_init(py, || -> PyResult<()> {
            let hook = PyCFunction::new_closure(
                py,
                Some(c"pyo3_twisted_stop_runtimes"),
                None,
                |args, _kwargs| {
                    let live: Vec<Arc<Bridge>> = BRIDGES
                        .lock()
                        .take()
                        .unwrap_or_default()
                        .values()
                        .filter_map(Weak::upgrade)
                        .collect();
                    for bridge in live {
                        bridge.stop_for_exit(args.py());
                    }
                },
            )?;
            py.import("atexit")?.call_method1("register", (hook,))?;
            Ok(())
        })?;
        BRIDGES
            .lock()
            .get_or_insert_with(HashMap::new)
            .insert(bridge.reactor_address, Arc::downgrade(bridge));
        Ok(())
    }

    pub(super) fn find(address: usize) -> Option<Arc<Bridge>> {
        BRIDGES.lock().as_ref()?.get(&address)?.upgrade()
    }

    pub(super) fn forget(bridge: &Bridge) {
        if let Some(bridges) = BRIDGES.lock().as_mut() {
            let ours = bridges
                .get(&bridge.reactor_address)
                .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), bridge));
            if ours {
                bridges.remove(&bridge.reactor_address);
            }
        }
    }
}
