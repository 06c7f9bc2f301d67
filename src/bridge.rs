//! One reactor's bridge: the state that joins a reactor to the Tokio pool.
//!
//! ```text
//!  reactor object ── attr ──▶ ReactorSlot ──▶ Arc<Bridge> ◀── Runtime handles, tasks' scopes
//!        ▲                                      │
//!        └──────────── weakref ─────────────────┘   (the bridge never keeps its reactor alive)
//!
//!  Bridge
//!   ├─ cross-thread: config, counters, mailbox, phase, engine (Tokio handle + submitter)
//!   └─ reactor thread only: registry of in-flight Deferreds, canceller, provider,
//!      asyncio loop, ReactorSide (weak reactor, wake reader, pending shutdown)
//! ```
//!
//! Which thread runs what: everything that takes `py` runs on the reactor thread with
//! the GIL held, except [`Bridge::stats`] and the accessors, which any thread may
//! call. The lifecycle (install, start, fork, shutdown, collection, interpreter exit)
//! is in [`lifecycle`]; this module holds the state and the small operations on it.
//!
//! One bridge per reactor and per copy of this crate: the slot is stored on the
//! reactor under [`runtime_attr`], a name that differs between copies, so two
//! extension modules that each link the crate each keep their own bridge there.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyWeakrefReference};
use pyo3::{PyTraverseError, PyVisit};

use crate::asyncio::AsyncioLoop;
use crate::config::{RuntimeConfig, TokioRuntime};
use crate::errors::report;
use crate::live_tasks::{HasLiveTasks, LiveTasks};
use crate::logcontext::Provider;
use crate::mailbox::Mailbox;
use crate::registry::{Entry, Key, Registry};
use crate::stats::{Counters, Histograms, Stats};
use crate::submit::{Submitter, Task};
use crate::threads;
use crate::timer_queue::{Deadline, Timer, TimerQueue};

mod directory;
mod lifecycle;

pub(crate) use directory::find as bridge_for_address;
use lifecycle::{Phase, PhaseCell};

/// The reactor attribute that holds this copy of the crate's bridge:
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

/// [`runtime_attr`] as a Python string, made once (every `create_deferred` looks it up).
fn runtime_attr_py(py: Python<'_>) -> &Bound<'_, PyString> {
    static NAME: PyOnceLock<Py<PyString>> = PyOnceLock::new();
    NAME.get_or_init(py, || PyString::intern(py, runtime_attr()).unbind())
        .bind(py)
}

/// What the reactor holds: the bridge's anchor. When the reactor is collected (or
/// the attribute deleted) the slot goes, and with it the bridge's work: in-flight
/// tasks are aborted and their state freed.
///
/// It is visible to Python's garbage collector: a pending Deferred whose callbacks
/// lead back to the reactor is a cycle the collector can see and break.
#[pyclass(frozen, name = "RuntimeSlot", module = "pyo3_twisted")]
pub(crate) struct ReactorSlot {
    bridge: Arc<Bridge>,
}

#[pymethods]
impl ReactorSlot {
    fn __repr__(&self) -> String {
        format!(
            "<pyo3_twisted.RuntimeSlot {} in_flight={}>",
            self.bridge.cross.phase.load().name(),
            self.bridge.in_flight()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.bridge.traverse(&visit)
    }

    fn __clear__(&self) {
        Python::attach(|py| self.bridge.orphan(py));
    }
}

impl Drop for ReactorSlot {
    fn drop(&mut self) {
        Python::attach(|py| self.bridge.orphan(py));
    }
}

/// The Tokio side of a started bridge: where its futures run. Built on first use,
/// and built again in a forked child.
pub(crate) struct Engine {
    handle: tokio::runtime::Handle,
    submitter: Submitter,
    /// A runtime of this bridge's own (`TokioRuntime::PerReactor`); none on the
    /// shared pool, where stopping means waiting for our tasks (`Bridge::live`).
    owned: Mutex<Option<tokio::runtime::Runtime>>,
    /// On the shared pool (`owned` was none when it was built).
    shared_pool: bool,
    /// The fork generation it was built in.
    generation: u64,
}

impl Engine {
    /// Hands `task` to Tokio; gives it back if the engine has stopped.
    pub(crate) fn submit(&self, task: Task) -> Result<(), Task> {
        self.submitter.submit(task)
    }

    /// Whether the engine runs on a pool we do not own, whose tasks are counted.
    pub(crate) fn counts_live_tasks(&self) -> bool {
        self.shared_pool
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

/// State touched on the reactor thread only, outside the hot path.
#[derive(Default)]
struct ReactorSide {
    /// The reactor, weakly: the bridge never keeps it alive.
    reactor: Option<Py<PyWeakrefReference>>,
    /// The eventfd reader registered with `addReader` (fd wake mode).
    reader: Option<Py<PyAny>>,
    wake_mode: &'static str,
    /// Deferreds to fire when a shutdown finishes.
    shutdown_waiters: Vec<Py<PyAny>>,
    /// The `callLater` that ends a shutdown's wait.
    shutdown_timer: Option<Py<PyAny>>,
}

/// One reactor's runtime: mailbox, in-flight work, provider, counters, engine.
pub(crate) struct Bridge {
    // Set at install, read anywhere.
    config: RuntimeConfig,
    reactor_address: usize,
    provider: Option<Provider>,
    /// The reactor's asyncio loop, on Twisted's asyncio reactor.
    asyncio: Option<AsyncioLoop>,
    cross: CrossThread,
    local: ReactorLocal,
}

/// What Tokio threads (and any thread) touch.
struct CrossThread {
    counters: Arc<Counters>,
    histograms: Arc<Histograms>,
    mailbox: Arc<Mailbox>,
    phase: PhaseCell,
    engine: RwLock<Option<Arc<Engine>>>,
    /// The futures of `create_deferred` that still exist, on the shared pool.
    live: LiveTasks,
    reactor_thread: AtomicU64,
    /// Whether the reactor was running when the process last forked.
    running_at_fork: AtomicBool,
    /// The timers of `time`, when this runtime follows the reactor's clock.
    timers: Option<TimerQueue>,
}

/// What only the reactor thread touches (`stats()` and the garbage collector read
/// the registry too, under its lock).
struct ReactorLocal {
    registry: Mutex<Registry>,
    /// `create_coroutine` coroutines whose caller waits on a Python awaitable's own
    /// Deferred (no registered one of ours): in flight too.
    python_waits: AtomicUsize,
    /// The canceller every Deferred of this bridge is created with.
    canceller: OnceLock<Py<PyAny>>,
    /// The reactor-side linger: a `callLater(0)` callable (fd mode only), and
    /// whether one is scheduled or running.
    linger: OnceLock<Py<PyAny>>,
    linger_scheduled: AtomicBool,
    /// Whether the reactor's lingers have been catching their answers.
    linger_gate: crate::linger_gate::LingerGate,
    /// What the timers' `callLater` runs (reactor clock only).
    timers_due: OnceLock<Py<PyAny>>,
    side: Mutex<ReactorSide>,
}

thread_local! {
    /// On a Tokio thread of a bridge's own runtime: that bridge.
    static OWNER: std::cell::RefCell<Weak<Bridge>> = const { std::cell::RefCell::new(Weak::new()) };
}

/// The bridge that last started on the process-wide pool, for that pool's threads.
static PROCESS_OWNER: Mutex<Weak<Bridge>> = Mutex::new(Weak::new());

impl Bridge {
    /// The bridge installed on `reactor` by this copy of the crate, if any.
    pub(crate) fn of_reactor(reactor: &Bound<'_, PyAny>) -> PyResult<Option<Arc<Bridge>>> {
        let py = reactor.py();
        let Some(attr) = reactor.getattr_opt(runtime_attr_py(py))? else {
            return Ok(None);
        };
        match attr.cast::<ReactorSlot>() {
            Ok(slot) => Ok(Some(Arc::clone(&slot.get().bridge))),
            Err(_) => Err(PyRuntimeError::new_err(format!(
                "reactor.{} holds {}, not a pyo3-twisted runtime",
                runtime_attr(),
                attr.get_type().name()?
            ))),
        }
    }

    /// The bridge of `reactor`, installing the default runtime on first use.
    pub(crate) fn for_reactor(reactor: &Bound<'_, PyAny>) -> PyResult<Arc<Bridge>> {
        match Self::of_reactor(reactor)? {
            Some(bridge) => Ok(bridge),
            None => Self::install(reactor, RuntimeConfig::default()),
        }
    }

    /// The bridge whose runtime owns the calling Tokio thread.
    pub(crate) fn of_current_thread() -> Option<Arc<Bridge>> {
        OWNER.with(|owner| owner.borrow().upgrade()).or_else(|| {
            if crate::tokio_pool::in_process_pool() {
                PROCESS_OWNER.lock().upgrade()
            } else {
                None
            }
        })
    }

    pub(crate) fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub(crate) fn histograms(&self) -> &Histograms {
        &self.cross.histograms
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.cross.counters
    }

    pub(crate) fn mailbox(&self) -> &Arc<Mailbox> {
        &self.cross.mailbox
    }

    /// The address of the reactor object, its identity without the GIL.
    pub(crate) fn reactor_address(&self) -> usize {
        self.reactor_address
    }

    /// The logcontext provider, if one is configured.
    pub(crate) fn provider(&self) -> Option<&Provider> {
        self.provider.as_ref()
    }

    /// The reactor's asyncio loop, if it is Twisted's asyncio reactor.
    pub(crate) fn asyncio(&self) -> Option<&AsyncioLoop> {
        self.asyncio.as_ref()
    }

    /// The reactor, unless it has been collected. Reactor thread.
    pub(crate) fn reactor<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let side = self.local.side.lock();
        side.reactor.as_ref()?.bind(py).upgrade()
    }

    /// Whether new work is accepted (shutdown has not begun).
    pub(crate) fn accepting(&self) -> bool {
        self.cross.phase.load() <= Phase::Running
    }

    /// Whether the bridge has stopped for good.
    pub(crate) fn is_stopped(&self) -> bool {
        self.cross.phase.load() == Phase::Stopped
    }

    /// Whether the calling thread is this reactor's thread.
    pub(crate) fn is_reactor_thread(&self) -> bool {
        threads::current_id() == self.cross.reactor_thread.load(Ordering::Acquire)
    }

    /// The reactor thread's id ([`threads::current_id`]).
    pub(crate) fn reactor_thread_id(&self) -> u64 {
        self.cross.reactor_thread.load(Ordering::Acquire)
    }

    /// The live counters, shared (a local task bumps them after the bridge call
    /// that started it returned).
    pub(crate) fn counters_arc(&self) -> Arc<Counters> {
        Arc::clone(&self.cross.counters)
    }

    /// Raises unless called on the reactor thread.
    pub(crate) fn check_reactor_thread(&self, what: &str) -> PyResult<()> {
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

    /// The Tokio handle of the started engine, if it started in this process.
    pub(crate) fn started_handle(&self) -> Option<tokio::runtime::Handle> {
        let engine = self.cross.engine.read();
        engine
            .as_ref()
            .filter(|engine| engine.generation == crate::fork::generation())
            .map(|engine| engine.handle.clone())
    }

    /// The canceller every Deferred of this bridge is created with.
    pub(crate) fn canceller<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyAny>> {
        self.local
            .canceller
            .get()
            .map(|c| c.bind(py))
            .ok_or_else(|| PyRuntimeError::new_err("pyo3-twisted runtime is not initialised"))
    }

    /// Records an in-flight Deferred. Reactor thread.
    pub(crate) fn register(
        &self,
        deferred: Py<PyAny>,
        abort: futures_util::future::AbortHandle,
    ) -> Key {
        self.local.registry.lock().insert(deferred, abort)
    }

    /// Removes the entry of a finished (or refused) task, unless it already left.
    pub(crate) fn take_entry(&self, key: Key) -> Option<Entry> {
        self.local.registry.lock().take(key)
    }

    /// Deferreds created and not yet fired, and coroutines waiting on Python alone.
    pub(crate) fn in_flight(&self) -> usize {
        self.local.registry.lock().len() + self.local.python_waits.load(Ordering::Relaxed)
    }

    /// A `create_coroutine` coroutine began (`true`) or ended (`false`) a wait on a
    /// Python awaitable alone, with nothing of ours registered.
    pub(crate) fn python_wait(&self, began: bool) {
        if began {
            self.local.python_waits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.local.python_waits.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// `d.cancel()` on one of our Deferreds. Reactor thread.
    fn cancel(
        self: &Arc<Self>,
        py: Python<'_>,
        deferred: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let entry = self.local.registry.lock().take_deferred(deferred);
        if let Some(entry) = entry {
            // Wakes the task, which drops the future at its next poll. Twisted then
            // errbacks the Deferred with CancelledError, since we did not fire it.
            entry.abort.abort();
            Counters::bump(&self.cross.counters.tasks_cancelled);
            self.entry_left(py);
        }
        Ok(py.None())
    }

    /// Work was just handed to Tokio from the reactor thread: make sure the reactor
    /// lingers for the results once the current reactor turn is done (one
    /// `callLater(0)` per burst of hand-offs), unless lately lingers have not been
    /// catching their answers (`linger_gate`).
    pub(crate) fn note_handoff(&self, py: Python<'_>) {
        let Some(linger) = self.local.linger.get() else {
            return;
        };
        if self.local.linger_scheduled.load(Ordering::Acquire) {
            return;
        }
        if !self.local.linger_gate.should_linger() {
            Counters::bump(&self.cross.counters.mailbox_lingers_skipped);
            return;
        }
        if self.local.linger_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let scheduled = self
            .reactor(py)
            .map(|reactor| reactor.call_method1(intern!(py, "callLater"), (0.0, linger.bind(py))));
        if !matches!(scheduled, Some(Ok(_))) {
            self.local.linger_scheduled.store(false, Ordering::Release);
        }
    }

    fn linger(&self, py: Python<'_>) {
        if self.cross.phase.load() <= Phase::Draining {
            match self.cross.mailbox.linger(
                py,
                self.local.linger_gate.idle(self.config.linger),
                lifecycle::LINGER_BUDGET,
            ) {
                Ok(ran) => self.local.linger_gate.record(ran > 0),
                Err(err) => report(
                    py,
                    err,
                    "pyo3-twisted: interrupted while lingering for results",
                ),
            }
        }
        self.local.linger_scheduled.store(false, Ordering::Release);
    }

    /// This runtime's timers on the reactor's clock; `None` when it uses Tokio's.
    pub(crate) fn timers(&self) -> Option<&TimerQueue> {
        self.cross.timers.as_ref()
    }

    /// Refreshes the reactor-clock time that tasks read. Reactor thread.
    pub(crate) fn observe_clock(&self, py: Python<'_>) {
        if let (Some(timers), Some(reactor)) = (self.cross.timers.as_ref(), self.reactor(py)) {
            if let Err(err) = timers.observe(&reactor) {
                report(py, err, "pyo3-twisted: reading reactor.seconds()");
            }
        }
    }

    /// Starts a reactor-clock timer. Reactor thread.
    pub(crate) fn start_timer(
        &self,
        py: Python<'_>,
        timer: Arc<Timer>,
        deadline: Deadline,
    ) -> PyResult<()> {
        let (Some(timers), Some(due), Some(reactor)) = (
            self.cross.timers.as_ref(),
            self.local.timers_due.get(),
            self.reactor(py),
        ) else {
            timer.shut_down();
            return Ok(());
        };
        timers.insert(&reactor, timer, deadline, due)
    }

    /// The timers' `callLater` ran. Reactor thread.
    fn timers_due(&self, py: Python<'_>) {
        let (Some(timers), Some(due), Some(reactor)) = (
            self.cross.timers.as_ref(),
            self.local.timers_due.get(),
            self.reactor(py),
        ) else {
            return;
        };
        if let Err(err) = timers.fire_due(&reactor, due) {
            report(py, err, "pyo3-twisted: firing timers");
        }
    }

    /// Reports what the bridge holds to Python's garbage collector.
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // A lock held elsewhere means a reactor-thread operation is under way;
        // reporting less only delays collection.
        if let Some(registry) = self.local.registry.try_lock() {
            for entry in registry.iter() {
                visit.call(&entry.deferred)?;
            }
        }
        if let Some(side) = self.local.side.try_lock() {
            for waiter in &side.shutdown_waiters {
                visit.call(waiter)?;
            }
            visit.call(&side.shutdown_timer)?;
        }
        if let Some(timers) = &self.cross.timers {
            timers.traverse(visit)?;
        }
        Ok(())
    }

    /// A snapshot of the counters. Any thread.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = Stats {
            state: self.cross.phase.load().name(),
            wake_mode: self.local.side.lock().wake_mode,
            worker_threads: self.config.worker_threads as u64,
            tasks_in_flight: self.in_flight() as u64,
            clock: if self.cross.timers.is_some() {
                "reactor"
            } else {
                "tokio"
            },
            timers_pending: self.cross.timers.as_ref().map_or(0, |t| t.len() as u64),
            timers_fired: self.cross.timers.as_ref().map_or(0, |t| t.fired()),
            mailbox_depth: self.cross.mailbox.depth() as u64,
            gil_acquisitions_on_tokio_threads: threads::gil_acquisitions_on_tokio_threads(),
            ..Stats::default()
        };
        self.cross.counters.load_into(&mut stats);
        if self.config.tokio == TokioRuntime::Process {
            stats.tokio_threads_live = crate::tokio_pool::process_threads_live();
        }
        stats
    }
}

impl HasLiveTasks for Bridge {
    fn live_tasks(&self) -> &LiveTasks {
        &self.cross.live
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Normally a shutdown, the slot's drop or the exit hook took the runtime. If
        // not, stop it without waiting: this may run on a Tokio thread, where waiting
        // is not allowed.
        if let Some(engine) = self.cross.engine.get_mut().take() {
            if engine.generation == crate::fork::generation() {
                if let Some(runtime) = engine.owned.lock().take() {
                    runtime.shutdown_background();
                }
            } else {
                // A forked child has none of its threads: never touch that runtime.
                std::mem::forget(engine);
            }
        }
    }
}
