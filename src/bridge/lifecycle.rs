//! A bridge's life: install, start, restart after a fork, shutdown, collection, exit.
//!
//! ```text
//!  install ──▶ Installed ──first of: callWhenRunning, reactor already running,──▶ Running
//!                │          first bridged call, Runtime::start                    │
//!                │                                                                 │ before-shutdown trigger,
//!                │                                                                 │ Runtime::shutdown
//!                │                                                                 ▼
//!                └──────────────── shutdown before any start ─────────────────▶ Draining ──▶ Stopped
//!                                                       in-flight work finishes,   │
//!                                                       or the timeout aborts it ──┘
//!  any phase ── reactor collected (slot dropped), or interpreter exit ──▶ Stopped
//!  Running, in a forked child ── first use on the reactor thread ──▶ Running (a new engine)
//! ```
//!
//! Every function here runs on the reactor thread with the GIL held, except the Tokio
//! thread hooks. Starting builds the Tokio side (the shared pool, or a runtime of the
//! bridge's own) with the GIL released; the wake mechanism is set up at install, so
//! results can be delivered whether or not the reactor ever runs.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyTuple, PyWeakrefReference};

use super::{
    directory, runtime_attr_py, Bridge, CrossThread, Engine, ReactorLocal, ReactorSide,
    ReactorSlot, OWNER, PROCESS_OWNER,
};
use crate::asyncio::AsyncioLoop;
use crate::config::{ClockMode, LogContextProvider, RuntimeConfig, TokioRuntime};
use crate::errors::{report, RuntimeShutdown};
use crate::live_tasks::LiveTasks;
use crate::logcontext::Provider;
use crate::mailbox::Mailbox;
use crate::registry::{Entry, Registry};
use crate::stats::{Counters, Histograms};
use crate::submit::Submitter;
use crate::threads;
use crate::timer_queue::TimerQueue;
use crate::twisted::{deferred_class, succeed};

/// How long stopping waits for Tokio threads to finish their current poll. Aborted
/// tasks stop at their next poll; this only bounds a task stuck in a blocking call.
const DROP_GRACE: Duration = Duration::from_secs(1);

/// Longest the reactor lingers for results in one go, however busy the mailbox:
/// then it returns to servicing its other file descriptors.
pub(super) const LINGER_BUDGET: Duration = Duration::from_millis(1);

/// Where a bridge is in its life. Only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Installed on its reactor; no Tokio side yet.
    Installed = 0,
    /// Its engine runs; work is accepted.
    Running = 1,
    /// Shutting down: no new work; in-flight work finishes or is aborted.
    Draining = 2,
    /// Stopped for good: bridged calls fail with `RuntimeShutdown`.
    Stopped = 3,
}

impl Phase {
    /// The name `stats()["state"]` reports.
    pub(super) fn name(self) -> &'static str {
        match self {
            Phase::Installed => "installed",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Phase::Installed,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Stopped,
        }
    }
}

/// A [`Phase`] that any thread may read.
pub(crate) struct PhaseCell(AtomicU8);

impl PhaseCell {
    fn new(phase: Phase) -> Self {
        Self(AtomicU8::new(phase as u8))
    }

    pub(super) fn load(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Acquire))
    }

    fn store(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }

    fn swap(&self, phase: Phase) -> Phase {
        Phase::from_u8(self.0.swap(phase as u8, Ordering::AcqRel))
    }
}

/// A Python callable that runs `f` with the bridge, if it still exists. It holds the
/// bridge weakly: the reactor keeps these callables.
fn bridge_callback<F>(
    py: Python<'_>,
    bridge: &Arc<Bridge>,
    name: &'static std::ffi::CStr,
    f: F,
) -> PyResult<Py<PyAny>>
where
    F: for<'py> Fn(&Arc<Bridge>, Python<'py>, &Bound<'py, PyTuple>) -> PyResult<Py<PyAny>>
        + Send
        + Sync
        + 'static,
{
    let weak = Arc::downgrade(bridge);
    let function = PyCFunction::new_closure(py, Some(name), None, move |args, _kwargs| match weak
        .upgrade()
    {
        Some(bridge) => f(&bridge, args.py(), args),
        None => Ok(args.py().None()),
    })?;
    Ok(function.into_any().unbind())
}

impl Bridge {
    /// Installs a bridge with `config` on `reactor`, or returns the one there if its
    /// config is equal. Reactor thread.
    pub(crate) fn install(
        reactor: &Bound<'_, PyAny>,
        config: RuntimeConfig,
    ) -> PyResult<Arc<Bridge>> {
        let py = reactor.py();
        config.validate()?;
        if let Some(existing) = Self::of_reactor(reactor)? {
            if existing.is_stopped() {
                return Err(RuntimeShutdown::new_err(
                    "this reactor's pyo3-twisted runtime has shut down",
                ));
            }
            if existing.config != config {
                return Err(PyRuntimeError::new_err(format!(
                    "a pyo3-twisted runtime with a different configuration is already \
                     installed on this reactor (installed: {:?}; requested: {:?}). Install \
                     it once, before the first create_deferred, which otherwise installs \
                     the default.",
                    existing.config, config
                )));
            }
            return Ok(existing);
        }

        if config.tokio == TokioRuntime::Process {
            crate::tokio_pool::check_shared(&config)?;
        }
        let provider = match &config.logcontext {
            LogContextProvider::None => None,
            LogContextProvider::Module(module) => Some(Provider::load(py, module)?),
        };
        let asyncio = AsyncioLoop::of_reactor(reactor, provider.as_ref())?;
        let counters = Arc::new(Counters::default());
        let histograms = Arc::new(Histograms::new(config.metrics));
        let mailbox = Arc::new(Mailbox::new(Arc::clone(&counters), Arc::clone(&histograms)));
        let installed = crate::mailbox::install(py, reactor, config.wake, &mailbox)?;
        let timers = match config.clock {
            ClockMode::Reactor => true,
            ClockMode::Tokio => false,
            // Reactors a test drives by hand: Twisted's Clock and its subclasses.
            ClockMode::Auto => reactor.hasattr(intern!(py, "advance"))?,
        }
        .then(TimerQueue::default);
        let bridge = Arc::new(Bridge {
            reactor_address: reactor.as_ptr() as usize,
            provider,
            asyncio,
            cross: CrossThread {
                mailbox,
                counters,
                histograms,
                phase: PhaseCell::new(Phase::Installed),
                engine: parking_lot::RwLock::new(None),
                live: LiveTasks::default(),
                reactor_thread: std::sync::atomic::AtomicU64::new(threads::current_id()),
                running_at_fork: std::sync::atomic::AtomicBool::new(false),
                timers,
            },
            local: ReactorLocal {
                registry: parking_lot::Mutex::new(Registry::default()),
                python_waits: std::sync::atomic::AtomicUsize::new(0),
                canceller: std::sync::OnceLock::new(),
                linger: std::sync::OnceLock::new(),
                linger_scheduled: std::sync::atomic::AtomicBool::new(false),
                linger_gate: crate::linger_gate::LingerGate::default(),
                timers_due: std::sync::OnceLock::new(),
                side: parking_lot::Mutex::new(ReactorSide {
                    reactor: Some(PyWeakrefReference::new(reactor)?.unbind()),
                    reader: installed.reader.as_ref().map(|r| r.clone_ref(py)),
                    wake_mode: installed.mode,
                    ..ReactorSide::default()
                }),
            },
            config,
        });
        let fd_mode = installed.reader.is_some();
        bridge.cross.mailbox.set_waker(installed.waker);
        let _ = bridge.local.canceller.set(bridge_callback(
            py,
            &bridge,
            c"cancel",
            |bridge, py, args| bridge.cancel(py, &args.get_item(0)?),
        )?);
        if bridge.cross.timers.is_some() {
            let due = bridge_callback(py, &bridge, c"timers_due", |bridge, py, _| {
                bridge.timers_due(py);
                Ok(py.None())
            })?;
            let _ = bridge.local.timers_due.set(due);
        }
        if fd_mode && !bridge.config.linger.is_zero() {
            let linger = bridge_callback(py, &bridge, c"linger", |bridge, py, _| {
                bridge.linger(py);
                Ok(py.None())
            })?;
            let _ = bridge.local.linger.set(linger);
        }
        let before_shutdown = bridge_callback(py, &bridge, c"before_shutdown", |bridge, py, _| {
            bridge.shutdown_deferred(py, bridge.config.shutdown_timeout)
        })?;
        reactor.call_method1(
            intern!(py, "addSystemEventTrigger"),
            ("before", "shutdown", before_shutdown),
        )?;
        directory::track(py, &bridge)?;
        crate::fork::watch(py, directory::note_fork)?;
        reactor.setattr(
            runtime_attr_py(py),
            ReactorSlot {
                bridge: Arc::clone(&bridge),
            },
        )?;

        if is_running(reactor)? {
            bridge.engine(py)?;
        } else {
            let start = bridge_callback(py, &bridge, c"start", |bridge, py, _| {
                if bridge.accepting() {
                    bridge.engine(py)?;
                }
                Ok(py.None())
            })?;
            reactor.call_method1(intern!(py, "callWhenRunning"), (start,))?;
        }
        Ok(bridge)
    }

    /// The engine to submit work to, started now if this is the first use (or the
    /// first use in a forked child). Reactor thread, GIL held; any thread when the
    /// engine already runs.
    pub(crate) fn engine(self: &Arc<Self>, py: Python<'_>) -> PyResult<Arc<Engine>> {
        if let Some(engine) = &*self.cross.engine.read() {
            if engine.generation == crate::fork::generation() {
                return Ok(Arc::clone(engine));
            }
        }
        self.start(py)
    }

    fn start(self: &Arc<Self>, py: Python<'_>) -> PyResult<Arc<Engine>> {
        match self.cross.phase.load() {
            Phase::Installed | Phase::Running => {}
            Phase::Draining | Phase::Stopped => {
                return Err(RuntimeShutdown::new_err(
                    "the pyo3-twisted runtime is shutting down and accepts no new work",
                ))
            }
        }
        let stale = self.cross.engine.read().clone();
        if let Some(stale) = stale {
            self.forget_parent(py, stale)?;
        }
        // Built with the GIL released, outside any lock: another thread may start us
        // meanwhile, and the first to finish wins.
        let config = self.config.clone();
        let owner = Arc::downgrade(self);
        let counters = Arc::clone(&self.cross.counters);
        let built = py.detach(move || -> PyResult<_> {
            Ok(match config.tokio {
                TokioRuntime::PerReactor => {
                    let runtime = build_own(&config, owner, counters)?;
                    (runtime.handle().clone(), Some(runtime))
                }
                TokioRuntime::Process => (
                    crate::tokio_pool::shared_pool(&config)?.handle().clone(),
                    None,
                ),
            })
        })?;
        let (handle, owned) = built;
        let mut slot = self.cross.engine.write();
        if let Some(engine) = &*slot {
            if engine.generation == crate::fork::generation() {
                if let Some(runtime) = owned {
                    runtime.shutdown_background();
                }
                return Ok(Arc::clone(engine));
            }
        }
        let engine = Arc::new(Engine {
            submitter: Submitter::start(&handle, self.config.linger),
            handle,
            shared_pool: owned.is_none(),
            owned: parking_lot::Mutex::new(owned),
            generation: crate::fork::generation(),
        });
        *slot = Some(Arc::clone(&engine));
        drop(slot);
        if self.config.tokio == TokioRuntime::Process {
            *PROCESS_OWNER.lock() = Arc::downgrade(self);
        }
        if self.cross.phase.load() == Phase::Installed {
            self.cross.phase.store(Phase::Running);
        }
        Ok(engine)
    }

    /// In a forked child, before its first use: the engine is the parent's (its
    /// threads are not here). Fails the work that was in flight at the fork, drops
    /// what the parent's threads queued, and gives the mailbox a wake mechanism of
    /// the child's own. The parent's Tokio runtime is leaked, never touched.
    fn forget_parent(self: &Arc<Self>, py: Python<'_>, stale: Arc<Engine>) -> PyResult<()> {
        if !self.is_reactor_thread() {
            return Err(PyRuntimeError::new_err(
                "this process was forked after its pyo3-twisted runtime started: make the \
                 first bridged call in the child on the reactor thread, which gives the \
                 child a runtime of its own",
            ));
        }
        self.cross.engine.write().take();
        // Its runtime's threads and I/O driver belong to the parent: dropping or
        // waking anything of it could reach into the parent through inherited fds.
        std::mem::forget(stale);
        self.cross
            .counters
            .tokio_threads_live
            .store(0, Ordering::Relaxed);
        self.cross.live.forget();
        let entries: Vec<Entry> = self.local.registry.lock().take_all();
        let reason = format!(
            "this work was in flight when the process forked (the child, pid {}, has none \
             of the parent's Tokio threads, so it never finished here)",
            std::process::id()
        );
        for entry in entries {
            // Not aborted: its waker belongs to the parent's runtime.
            let Entry {
                deferred, abort, ..
            } = entry;
            std::mem::forget(abort);
            Counters::bump(&self.cross.counters.tasks_aborted_at_shutdown);
            errback_shutdown(py, deferred.bind(py), &reason);
        }
        self.cross.mailbox.discard_after_fork(py);
        if let Some(reactor) = self.reactor(py) {
            if self.cross.running_at_fork.load(Ordering::Acquire) && polls_real_fds(py, &reactor)? {
                // The parent goes on running this reactor, and its epoll set is shared
                // with us: changing its readers here would take the parent's away.
                // This bridge is done for in the child.
                self.cross.phase.store(Phase::Stopped);
                directory::forget(self);
                self.cross.mailbox.close(py);
                return Err(PyRuntimeError::new_err(
                    "this process was forked while its reactor was running: the child \
                     shares that reactor's file descriptors with its parent, so it cannot \
                     use it (Twisted does not support that either). Make a new reactor in \
                     the child; its pyo3-twisted runtime will be the child's own. Work in \
                     flight at the fork has failed with RuntimeShutdown.",
                ));
            }
            let old_reader = self.local.side.lock().reader.take();
            if let Some(old_reader) = old_reader {
                reactor.call_method1(intern!(py, "removeReader"), (old_reader,))?;
            }
            let installed =
                crate::mailbox::install(py, &reactor, self.config.wake, &self.cross.mailbox)?;
            {
                let mut side = self.local.side.lock();
                side.reader = installed.reader;
                side.wake_mode = installed.mode;
            }
            self.cross.mailbox.set_waker(installed.waker);
        }
        Ok(())
    }

    /// Just before a fork, in the parent: remembers whether the reactor is running.
    pub(super) fn note_fork(&self, py: Python<'_>) {
        let running = self
            .reactor(py)
            .and_then(|reactor| reactor.getattr(intern!(py, "running")).ok())
            .map(|running| running.is_truthy().unwrap_or(false))
            .unwrap_or(false);
        self.cross.running_at_fork.store(running, Ordering::Release);
    }

    /// Begins a shutdown that waits, driven by the reactor, up to `timeout` for the
    /// work in flight; a Deferred that fires when it is done. The reactor's
    /// before-shutdown trigger and Python's `Runtime.shutdown()` call it. While a
    /// shutdown already waits, a second one gets its own Deferred and the first
    /// one's timeout stands. Reactor thread.
    pub(crate) fn shutdown_deferred(
        self: &Arc<Self>,
        py: Python<'_>,
        timeout: Duration,
    ) -> PyResult<Py<PyAny>> {
        let fired = |py: Python<'_>| Ok(succeed(py)?.call1((py.None(),))?.unbind());
        match self.cross.phase.load() {
            Phase::Stopped => return fired(py),
            Phase::Installed => {
                self.cross.phase.store(Phase::Draining);
                self.finish(py);
                return fired(py);
            }
            Phase::Running => {
                self.cross.phase.store(Phase::Draining);
                if self.in_flight() == 0 {
                    self.finish(py);
                    return fired(py);
                }
            }
            // A shutdown that already waits keeps its timeout.
            Phase::Draining => {}
        }
        let done = deferred_class(py)?.call0()?;
        let needs_timer = self.local.side.lock().shutdown_timer.is_none();
        let timer = match (needs_timer, self.reactor(py)) {
            (true, Some(reactor)) => {
                let on_timeout =
                    bridge_callback(py, self, c"shutdown_timeout", |bridge, py, _| {
                        bridge.shutdown_timed_out(py);
                        Ok(py.None())
                    })?;
                Some(
                    reactor
                        .call_method1(
                            intern!(py, "callLater"),
                            (timeout.as_secs_f64(), on_timeout),
                        )?
                        .unbind(),
                )
            }
            _ => None,
        };
        {
            let mut side = self.local.side.lock();
            side.shutdown_waiters.push(done.clone().unbind());
            if timer.is_some() {
                side.shutdown_timer = timer;
            }
        }
        Ok(done.unbind())
    }

    /// Shuts down now, on the calling (reactor) thread: refuses new work, runs the
    /// results of in-flight work as they arrive (GIL released between them) for up to
    /// `timeout`, fails the rest with `RuntimeShutdown`, and stops. Idempotent.
    pub(crate) fn shutdown_blocking(
        self: &Arc<Self>,
        py: Python<'_>,
        timeout: Duration,
    ) -> PyResult<()> {
        self.check_reactor_thread("Runtime::shutdown")?;
        let deadline = Instant::now() + timeout;
        match self.cross.phase.load() {
            Phase::Stopped => return Ok(()),
            Phase::Installed => {
                self.cross.phase.store(Phase::Draining);
                self.finish(py);
                return Ok(());
            }
            Phase::Running | Phase::Draining => self.cross.phase.store(Phase::Draining),
        }
        loop {
            if self.is_stopped() {
                return Ok(());
            }
            if self.in_flight() == 0 {
                self.finish(py);
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.time_out(py, timeout);
                return Ok(());
            }
            if let Err(err) = self.cross.mailbox.drain(py) {
                // KeyboardInterrupt or SystemExit: stop now, then let it through.
                self.fail_all(
                    py,
                    "the pyo3-twisted runtime was interrupted while shutting down",
                );
                self.finish(py);
                return Err(err);
            }
            if !self.is_stopped() && self.in_flight() > 0 {
                let mailbox = Arc::clone(&self.cross.mailbox);
                py.detach(move || mailbox.wait_until(deadline));
            }
        }
    }

    fn shutdown_timed_out(self: &Arc<Self>, py: Python<'_>) {
        if self.cross.phase.load() != Phase::Draining {
            return;
        }
        self.local.side.lock().shutdown_timer = None;
        self.time_out(py, self.config.shutdown_timeout);
    }

    /// A shutdown's wait is over: fails what is still in flight and stops.
    fn time_out(self: &Arc<Self>, py: Python<'_>, timeout: Duration) {
        let reason = format!(
            "the pyo3-twisted runtime shut down before this task finished \
             (shutdown_timeout = {timeout:?})"
        );
        self.fail_all(py, &reason);
        self.finish(py);
    }

    /// Called after an entry left the registry; finishes a shutdown that waited for it.
    pub(crate) fn entry_left(self: &Arc<Self>, py: Python<'_>) {
        if self.cross.phase.load() == Phase::Draining && self.in_flight() == 0 {
            self.finish(py);
        }
    }

    /// Aborts every in-flight task and errbacks its Deferred with `RuntimeShutdown`.
    fn fail_all(&self, py: Python<'_>, reason: &str) {
        let entries: Vec<Entry> = self.local.registry.lock().take_all();
        for entry in entries {
            entry.abort.abort();
            Counters::bump(&self.cross.counters.tasks_aborted_at_shutdown);
            errback_shutdown(py, entry.deferred.bind(py), reason);
        }
    }

    /// Stops the engine (GIL released), unregisters the waker, fires the shutdown
    /// Deferreds. Runs once.
    fn finish(self: &Arc<Self>, py: Python<'_>) {
        if self.cross.phase.swap(Phase::Stopped) == Phase::Stopped {
            return;
        }
        let (reader, timer, waiters) = {
            let mut side = self.local.side.lock();
            (
                side.reader.take(),
                side.shutdown_timer.take(),
                std::mem::take(&mut side.shutdown_waiters),
            )
        };
        if let Some(timer) = timer {
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
        if let (Some(reactor), Some(reader)) = (self.reactor(py), reader) {
            if let Err(err) = reactor.call_method1(intern!(py, "removeReader"), (reader,)) {
                report(py, err, "pyo3-twisted: unregistering the mailbox reader");
            }
        }
        if let Some(timers) = &self.cross.timers {
            if let Err(err) = timers.close(py) {
                report(py, err, "pyo3-twisted: cancelling the timers' callLater");
            }
        }
        directory::forget(self);
        self.stop_engine(py, true);
        // What the stopped tasks queued as they were dropped: the cancellation of
        // the Python awaitables they were waiting for, their last log records.
        if let Err(err) = self.cross.mailbox.drain(py) {
            report(py, err, "pyo3-twisted: interrupted while stopping");
        }
        self.cross.mailbox.close(py);
        for done in waiters {
            if let Err(err) = done
                .bind(py)
                .call_method1(intern!(py, "callback"), (py.None(),))
            {
                report(py, err, "pyo3-twisted: firing the shutdown Deferred");
            }
        }
    }

    /// Stops the Tokio side. With `wait`, as a shutdown does: our own runtime is
    /// dropped (GIL released; it cancels every task), or on the shared pool our
    /// tasks are aborted and waited for (bounded), so none is still taking the GIL
    /// when CPython finalizes. Without, nothing blocks.
    fn stop_engine(&self, py: Python<'_>, wait: bool) {
        let Some(engine) = self.cross.engine.write().take() else {
            return;
        };
        if engine.generation != crate::fork::generation() {
            std::mem::forget(engine);
            return;
        }
        engine.submitter.stop();
        for entry in self.local.registry.lock().take_all() {
            entry.abort.abort();
        }
        let owned = engine.owned.lock().take();
        match (owned, wait) {
            (Some(runtime), true) if !threads::is_tokio_thread() => {
                py.detach(move || runtime.shutdown_timeout(DROP_GRACE))
            }
            (Some(runtime), _) => runtime.shutdown_background(),
            (None, true) => {
                if !py.detach(|| self.cross.live.wait_idle(DROP_GRACE)) {
                    log::warn!("pyo3-twisted: bridged tasks still running after shutdown");
                }
            }
            (None, false) => {}
        }
    }

    /// The reactor was collected (its slot dropped, or cleared by the garbage
    /// collector): aborts in-flight tasks (their futures are dropped on their
    /// workers), drops their Deferreds and frees the bridge's state, without
    /// blocking. Any thread holding the GIL.
    pub(super) fn orphan(&self, py: Python<'_>) {
        if self.cross.phase.swap(Phase::Stopped) == Phase::Stopped {
            return;
        }
        let entries: Vec<Entry> = self.local.registry.lock().take_all();
        for entry in &entries {
            entry.abort.abort();
            Counters::bump(&self.cross.counters.tasks_aborted_at_shutdown);
        }
        drop(entries);
        let side = std::mem::take(&mut *self.local.side.lock());
        drop(side);
        directory::forget(self);
        self.stop_engine(py, false);
        self.cross.mailbox.close(py);
    }

    /// Stops at interpreter exit, whatever state the reactor is in.
    pub(super) fn stop_for_exit(&self, py: Python<'_>) {
        self.cross.phase.store(Phase::Stopped);
        if let Some(timers) = &self.cross.timers {
            if let Err(err) = timers.close(py) {
                report(py, err, "pyo3-twisted: cancelling the timers' callLater");
            }
        }
        directory::forget(self);
        self.stop_engine(py, true);
        self.cross.mailbox.close(py);
    }
}

fn errback_shutdown(py: Python<'_>, deferred: &Bound<'_, PyAny>, reason: &str) {
    let err = RuntimeShutdown::new_err(reason.to_owned());
    if let Err(err) = deferred.call_method1(intern!(py, "errback"), (err.into_value(py),)) {
        report(py, err, "pyo3-twisted: failing a Deferred at shutdown");
    }
}

/// Whether the reactor runs now, or has run, so the bridge starts at once rather than
/// through `callWhenRunning`: on Twisted < 26.4 a memory reactor whose `run()` has
/// returned (`hasRun`) never fires it again. (Twisted 24.11 initialises `hasRun` to
/// true, so there a plain memory reactor starts the bridge at install.) A reactor that
/// never runs starts the bridge at its first use.
fn is_running(reactor: &Bound<'_, PyAny>) -> PyResult<bool> {
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

/// Whether `reactor` polls real file descriptors (epoll, poll, select, asyncio), as
/// opposed to a memory reactor, whose readers are only Python objects.
fn polls_real_fds(py: Python<'_>, reactor: &Bound<'_, PyAny>) -> PyResult<bool> {
    let base = py
        .import("twisted.internet.posixbase")?
        .getattr("PosixReactorBase")?;
    reactor.is_instance(&base)
}

/// Builds a bridge's own Tokio runtime. Blocks while its workers start: call it
/// without the GIL.
fn build_own(
    config: &RuntimeConfig,
    owner: std::sync::Weak<Bridge>,
    counters: Arc<Counters>,
) -> PyResult<tokio::runtime::Runtime> {
    let counters_stop = Arc::clone(&counters);
    crate::tokio_pool::build(
        config,
        Arc::new(move || {
            OWNER.with(|o| *o.borrow_mut() = owner.clone());
            counters.tokio_threads_live.fetch_add(1, Ordering::Relaxed);
        }),
        Arc::new(move || {
            counters_stop
                .tokio_threads_live
                .fetch_sub(1, Ordering::Relaxed);
        }),
    )
}
