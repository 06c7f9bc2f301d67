//! Rust future → a Python coroutine, polled on the reactor thread.
//!
//! ```text
//!  reactor thread (GIL held), inside the awaiting coroutine's steps
//!  create_coroutine(fut) → RustCoroutine          (nothing runs yet)
//!  send(None): poll fut here, in the caller's logging context
//!    Ready    → StopIteration(value) / the future's exception / RustPanicError
//!    Pending, waiting on one Python awaitable alone (its channel holds the only
//!             waker): yield that awaitable's own Deferred, the sentinel current;
//!             a coroutine awaitable (stepped by the poll) is driven from here on
//!             by the caller's send/throw/close, forwarded to it (`yield from`)
//!    Pending  otherwise: yield a Deferred `wake` (registered), the sentinel current
//!  the awaitable's Deferred fires: its answer handed over, the caller's context
//!             set; the driver sends: poll again (its CancelledError: thrown in)
//!  fut woken  here (a Python awaitable's answer): `wake` fires now (after the
//!               current poll, if inside one)
//!             on a Tokio worker (I/O, Tokio's timers): a mailbox job fires it
//!  `wake` fires: the caller's context set back; the driver sends: poll again
//!  `wake` cancelled / failed at shutdown, throw(), close(): fut dropped here
//! ```
//!
//! What `create_deferred` under `reactor_polls` does, without the Deferred that
//! hands the result back: the caller's coroutine driver (Twisted's `ensureDeferred`)
//! resumes this one as it would a Python coroutine, and the future's Python calls run
//! in the caller's logging context as it is, so no context is switched to start them.
//!
//! Every function here runs on the reactor thread except [`Wakeup`]'s, which run
//! wherever the future is woken and never take the GIL off the reactor thread.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::future::AbortHandle;
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use pyo3::{PyTraverseError, PyVisit};

use crate::awaitable::{watching_waits, Delegations, Forwarded, PythonWait};
use crate::bridge::Bridge;
use crate::coroutine::Input;
use crate::errors::{panic_message, report, RuntimeShutdown, RustPanicError};
use crate::registry::Key;
use crate::runtime::RuntimeRef;
use crate::scope::TaskScope;
use crate::stats::Counters;
use crate::twisted::{already_called_error, deferred_class};

/// The future, its value made a Python object by its last poll (which runs on the
/// reactor thread, GIL held): one allocation per coroutine, none for the value.
type Erased = Pin<Box<dyn Future<Output = PyResult<Py<PyAny>>> + Send>>;

/// Runs `fut` as a Python coroutine: awaiting the returned object polls `fut` on the
/// reactor thread, inside the awaiting coroutine's own steps, and evaluates to its
/// result. No Deferred carries the result back and no thread is crossed, so a
/// handler whose work waits on Python (a transaction through the Python pool) costs
/// what the same handler written in Python costs.
///
/// `runtime` is a [`Runtime`](crate::Runtime) handle or the reactor (`&reactor`).
/// Call it on the reactor thread; await the result from a coroutine that Twisted
/// drives there (an `async def` run by `ensureDeferred`, `run_in_background`, or
/// awaited by one). It is a coroutine as Python sees it
/// (`isinstance(c, collections.abc.Coroutine)`), so `defer.ensureDeferred(c)` also
/// takes it. Nothing runs until it is awaited.
///
/// What the caller may rely on:
/// - `Ok(v)`: the `await` evaluates to `v` converted to Python; `Err(e)`: it raises
///   the exception `e` carries; a panic: [`RustPanicError`] with the panic message.
/// - Every poll runs on the reactor thread, in the caller's logging context, inside
///   the Tokio runtime's context: the future may use Tokio's timers, sockets and
///   [`spawn`](crate::spawn). A wake from a Tokio worker reaches the reactor through
///   the mailbox, and Python called with [`run_python_awaitable`] starts at once.
/// - While the future waits, the awaiting coroutine waits on a Deferred under the
///   logcontext rules (the sentinel is current meanwhile; the caller's context is
///   set back before it resumes). Where the future waits on one Python awaitable
///   ([`run_python_awaitable`]) and nothing else, that is the awaitable's own
///   Deferred, as when a Python coroutine awaits it; a coroutine awaitable is then
///   driven by the caller's own steps, as `yield from` drives it (what the caller
///   sends, throws or closes reaches it; it runs in the caller's contextvars
///   context). Otherwise it is one of ours, which any wake fires.
/// - Cancelling the caller (the Deferred of `ensureDeferred`) cancels what it waits
///   on. Ours: the future is dropped and the `await` raises `CancelledError`. A
///   Python awaitable's: it is cancelled as under a Python coroutine; if it ends
///   with `CancelledError` the future is dropped and the `await` raises it, if it
///   ends otherwise (it caught the cancellation) the future gets that and goes on.
///   `throw()` and `close()` drop the future.
/// - At runtime shutdown a future still waiting on a Deferred of ours after
///   `shutdown_timeout` is dropped and the `await` raises [`RuntimeShutdown`]; one
///   waiting on a Python awaitable alone is left to it, and raises
///   [`RuntimeShutdown`] (dropping the future) when it answers. Awaiting one after
///   shutdown raises it at once.
///
/// The price: everything the future does between two awaits runs on the reactor
/// thread, which does nothing else meanwhile. Polls longer than 10 ms are counted
/// (`reactor_polls_slow`) and logged. Move CPU-heavy stretches to a Tokio worker
/// (`tokio::task::spawn_blocking`, or [`spawn`](crate::spawn)) or use
/// [`create_deferred`](crate::create_deferred), which polls on Tokio.
///
/// [`run_python_awaitable`]: crate::run_python_awaitable
///
/// ```no_run
/// use pyo3::prelude::*;
///
/// /// `flags = await get_flags(reactor, store, "@alice:example.org")`
/// #[pyfunction]
/// fn get_flags<'py>(
///     py: Python<'py>,
///     reactor: Bound<'py, PyAny>,
///     store: Py<PyAny>,
///     user_id: String,
/// ) -> PyResult<Bound<'py, PyAny>> {
///     let runtime = pyo3_twisted::Runtime::new(&reactor)?;
///     let python = runtime.clone();
///     pyo3_twisted::create_coroutine(py, &runtime, async move {
///         // Called at once, in the awaiting request's context.
///         let flags = python
///             .run_python_awaitable(move |py| store.bind(py).call_method1("get_flags", (user_id,)))
///             .await?;
///         Ok(flags)
///     })
/// }
/// ```
pub fn create_coroutine<'py, R, F, O>(
    py: Python<'py>,
    runtime: &R,
    fut: F,
) -> PyResult<Bound<'py, PyAny>>
where
    R: RuntimeRef + ?Sized,
    F: Future<Output = PyResult<O>> + Send + 'static,
    for<'a> O: IntoPyObject<'a> + Send + 'static,
{
    let runtime = runtime.runtime_with_gil(py)?;
    let bridge = Arc::clone(runtime.bridge());
    bridge.check_reactor_thread("create_coroutine")?;
    let erased: Erased = Box::pin(async move {
        // `fut` is dropped as its await ends, inside this poll: `finish` relies on it.
        let value = fut.await?;
        crate::threads::attach(|py| value.into_py_any(py)).unwrap_or_else(|| {
            Err(RuntimeShutdown::new_err(
                "the Python interpreter is shutting down",
            ))
        })
    });
    Ok(Bound::new(
        py,
        RustCoroutine {
            bridge,
            state: Mutex::new(State::Created(erased)),
        },
    )?
    .into_any())
}

enum State {
    /// Not awaited yet.
    Created(Erased),
    Running(Running),
    Done,
}

struct Running {
    /// The future; each poll enters its scope and span (the waker's).
    future: Erased,
    /// Its waker, which holds what every poll needs. Kept small: a step moves this
    /// struct in and out of the coroutine's state.
    task: Arc<Wakeup>,
    /// The caller waits on a Python awaitable's own Deferred.
    direct: Option<DirectWait>,
}

/// A caller waiting on the Deferred of the one Python awaitable the future waits
/// on: counted in flight until it resumes or goes.
struct DirectWait {
    wait: PythonWait,
    bridge: Arc<Bridge>,
}

impl DirectWait {
    fn new(wait: PythonWait, bridge: &Arc<Bridge>) -> Self {
        bridge.python_wait(true);
        Self {
            wait,
            bridge: Arc::clone(bridge),
        }
    }

    /// Whether the caller drives a Python coroutine through this one (`yield
    /// from`): what it sends or throws goes to that coroutine.
    fn delegates(&self) -> bool {
        self.wait.is_delegated()
    }
}

impl Drop for DirectWait {
    fn drop(&mut self) {
        self.wait.leave();
        self.bridge.python_wait(false);
    }
}

/// The handles to the task's waker: the task's own, the one a step polls with, and
/// the channel of the call it waits on. More, and something else can wake it.
const WAKERS_OF_ONE_WAIT: usize = 3;

/// A Rust future awaited as a coroutine (see [`create_coroutine`]).
#[pyclass(frozen, module = "pyo3_twisted", name = "RustCoroutine")]
struct RustCoroutine {
    bridge: Arc<Bridge>,
    state: Mutex<State>,
}

/// What the awaiting coroutine gets back from one step.
enum Step {
    /// Wait for this Deferred, then send again.
    Wait(Py<PyAny>),
    Finished(Py<PyAny>),
}

impl RustCoroutine {
    /// Resumes it with what the caller sent or threw (which only a Python coroutine
    /// it drives for the future takes) and polls the future until it waits with
    /// nobody having woken it meanwhile. Reactor thread.
    fn step(&self, py: Python<'_>, input: Input) -> PyResult<Step> {
        let mut delegations = Delegations::default();
        let stepped = self.step_with(py, input, &mut delegations);
        delegations.settle(py);
        stepped
    }

    /// [`RustCoroutine::step`], noting in `delegations` the Python coroutines its
    /// polls started and left waiting.
    fn step_with(
        &self,
        py: Python<'_>,
        input: Input,
        delegations: &mut Delegations,
    ) -> PyResult<Step> {
        let bridge = &self.bridge;
        bridge.check_reactor_thread("awaiting a create_coroutine coroutine")?;
        let Some(mut state) = self.state.try_lock() else {
            return Err(PyValueError::new_err("coroutine already executing"));
        };
        if matches!(&*state, State::Created(_)) {
            let State::Created(future) = std::mem::replace(&mut *state, State::Done) else {
                unreachable!("matched above");
            };
            *state = State::Running(self.begin(py, future)?);
        }
        let State::Running(running) = &mut *state else {
            return Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            ));
        };
        if let Some(direct) = running.direct.take_if(|direct| direct.delegates()) {
            // As `yield from`: to the coroutine the future waits on alone.
            match direct.wait.forward(py, input) {
                Forwarded::Waits(next) => {
                    running.direct = Some(direct);
                    return Ok(Step::Wait(next.unbind()));
                }
                Forwarded::Answered => drop(direct),
                Forwarded::Raised(err) => {
                    drop(direct);
                    Counters::bump(&bridge.counters().tasks_cancelled);
                    return Err(give_up(state, err));
                }
            }
        }
        if bridge.is_stopped() {
            // Resumed by a Python awaitable after shutdown: Tokio is gone.
            return Err(give_up(
                state,
                RuntimeShutdown::new_err("the pyo3-twisted runtime has shut down"),
            ));
        }
        // A wake before this poll is answered by it.
        let woken = std::mem::take(&mut running.task.inner.lock().woken);
        if let Some(direct) = running.direct.take() {
            if !woken {
                // The awaitable (a coroutine) took one step and waits again; the
                // future was not woken, so it is not polled.
                if let Some((deferred, keeps_rules)) = direct.wait.deferred(py) {
                    let kept = if keeps_rules {
                        Ok(())
                    } else {
                        self.keep_rules_waiting(py, running)
                    };
                    running.direct = Some(direct);
                    if let Err(err) = kept {
                        return Err(give_up(state, err));
                    }
                    return Ok(Step::Wait(deferred.unbind()));
                }
            }
        }
        let waker = Waker::from(Arc::clone(&running.task));
        let mut cx = Context::from_waker(&waker);
        let scope_address = Arc::as_ptr(&running.task.scope) as usize;
        // The caller's context is current (it was set back before this step), and
        // charges this thread's CPU time itself.
        let charged = running.task.scope.context().is_some();
        loop {
            let (poll, wait) = watching_waits(&waker, delegations, || {
                crate::local_task::poll_here(&running.task.tokio, bridge.counters(), || {
                    crate::cputime::with_context_charging(charged, || {
                        crate::local_task::with_own_context_current(scope_address, || {
                            crate::cputime::with_own_meter_mark(|| {
                                catch_unwind(AssertUnwindSafe(|| {
                                    running.task.scope.poll_inside(&running.task.span, || {
                                        running.future.as_mut().poll(&mut cx)
                                    })
                                }))
                            })
                        })
                    })
                })
            });
            let outcome = match poll {
                Ok(Poll::Pending) => {
                    if std::mem::take(&mut running.task.inner.lock().woken) {
                        continue;
                    }
                    let waited = match wait.map(|wait| self.wait_directly(py, running, wait)) {
                        Some(Ok(Some(deferred))) => Ok(Some(deferred)),
                        Some(Err(err)) => Err(err),
                        Some(Ok(None)) | None => self.suspend(py, running),
                    };
                    match waited {
                        Ok(Some(deferred)) => return Ok(Step::Wait(deferred)),
                        // Woken as it suspended: poll again.
                        Ok(None) => continue,
                        Err(err) => return Err(give_up(state, err)),
                    }
                }
                Ok(Poll::Ready(outcome)) => outcome.map_err(Failure::Error),
                Err(payload) => Err(Failure::Panic(panic_message(&*payload))),
            };
            let State::Running(running) = std::mem::replace(&mut *state, State::Done) else {
                unreachable!("matched above");
            };
            drop(state);
            return self.finish(py, running, outcome);
        }
    }

    /// The first step: the caller's context becomes the task's.
    fn begin(&self, py: Python<'_>, future: Erased) -> PyResult<Running> {
        let bridge = &self.bridge;
        if !bridge.accepting() {
            Counters::bump(&bridge.counters().tasks_rejected_after_shutdown);
            return Err(RuntimeShutdown::new_err(
                "the pyo3-twisted runtime is shutting down and accepts no new work",
            ));
        }
        // Starts the runtime on first use.
        let engine = bridge.engine(py)?;
        bridge.observe_clock(py);
        let context = match bridge.provider() {
            Some(provider) => provider.capture(py)?,
            None => None,
        };
        let scope = Arc::new(TaskScope::new(Arc::clone(bridge), context));
        Counters::bump(&bridge.counters().tasks_spawned);
        Ok(Running {
            future,
            task: Arc::new(Wakeup {
                scope,
                span: tracing::Span::current(),
                tokio: engine.handle().clone(),
                inner: Mutex::new(WakeInner::default()),
            }),
            direct: None,
        })
    }

    /// The future waits on `wait` alone (nothing else holds its waker): the
    /// awaitable's own Deferred for the caller to wait on, or `None` if it has none
    /// or the provider cannot keep the rules around it.
    fn wait_directly(
        &self,
        py: Python<'_>,
        running: &mut Running,
        wait: PythonWait,
    ) -> PyResult<Option<Py<PyAny>>> {
        if Arc::strong_count(&running.task) != WAKERS_OF_ONE_WAIT {
            return Ok(None);
        }
        let has_rules = match (running.task.scope.context(), self.bridge.provider()) {
            (Some(_), Some(provider)) => provider.names_sentinel(),
            _ => true,
        };
        if !has_rules {
            return Ok(None);
        }
        let Some((deferred, keeps_rules)) = wait.deferred(py) else {
            return Ok(None);
        };
        let direct = DirectWait::new(wait, &self.bridge);
        // A coroutine keeps the rules around its own wait (its
        // `make_deferred_yieldable` made the sentinel current), as a Python caller
        // trusts it to; a Deferred gets what `make_deferred_yieldable` would do.
        if !keeps_rules {
            self.keep_rules_waiting(py, running)?;
        }
        running.direct = Some(direct);
        Ok(Some(deferred.unbind()))
    }

    /// The rules for a coroutine that waits: the reactor gets the sentinel back.
    fn keep_rules_waiting(&self, py: Python<'_>, running: &Running) -> PyResult<()> {
        if running.task.scope.context().is_some() {
            if let Some(provider) = self.bridge.provider() {
                provider.set_sentinel(py)?;
            }
        }
        Ok(())
    }

    /// The future waits: a registered Deferred for the caller to wait on, or `None`
    /// if it was woken meanwhile.
    fn suspend(&self, py: Python<'_>, running: &Running) -> PyResult<Option<Py<PyAny>>> {
        let bridge = &self.bridge;
        if bridge.is_stopped() {
            // Nothing would wake it (Tokio is gone) nor fail it (shutdown is over).
            return Err(RuntimeShutdown::new_err(
                "the pyo3-twisted runtime has shut down",
            ));
        }
        let deferred = deferred_class(py)?.call1((bridge.canceller(py)?,))?;
        // Nothing to abort: the Deferred's failure reaches `throw`, which drops the
        // future.
        let key = bridge.register(deferred.clone().unbind(), AbortHandle::new_pair().0);
        {
            let mut inner = running.task.inner.lock();
            if std::mem::take(&mut inner.woken) {
                drop(inner);
                drop(bridge.take_entry(key));
                return Ok(None);
            }
            inner.waiting = Some(key);
        }
        // The rules for a coroutine that waits: the reactor gets the sentinel back.
        if running.task.scope.context().is_some() {
            if let Some(provider) = bridge.provider() {
                if !provider.set_sentinel(py)? {
                    return provider
                        .make_deferred_yieldable(deferred)
                        .map(|d| Some(d.unbind()));
                }
            }
        }
        Ok(Some(deferred.unbind()))
    }

    /// The future is done: its CPU time charged, its value or exception handed over.
    fn finish(
        &self,
        py: Python<'_>,
        running: Running,
        outcome: Result<Py<PyAny>, Failure>,
    ) -> PyResult<Step> {
        let counters = self.bridge.counters();
        running.task.scope.charge_cpu(py);
        let result = match outcome {
            Ok(value) => Ok(value),
            Err(Failure::Error(err)) => Err(err),
            Err(Failure::Panic(message)) => {
                Counters::bump(&counters.tasks_panicked);
                drop_in_runtime(running);
                return Err(RustPanicError::new_err(message));
            }
        };
        Counters::bump(if result.is_ok() {
            &counters.tasks_completed
        } else {
            &counters.tasks_failed
        });
        // It returned: the async block around the caller's future dropped that
        // future (and everything it held) before its last poll ended, inside the
        // runtime's context, so only the box is left to free; no context needed.
        drop(running);
        result.map(Step::Finished)
    }

    /// The caller gave up on it (`throw`, `close`, or its wait was cancelled or
    /// failed): the future is dropped here. With `close`, a Python coroutine the
    /// caller drives for the future is closed first, as `yield from` closes it.
    fn abandon(&self, py: Python<'_>, close: bool) {
        let state = std::mem::replace(&mut *self.state.lock(), State::Done);
        if let State::Running(mut running) = state {
            if let Some(direct) = running.direct.take() {
                Counters::bump(&self.bridge.counters().tasks_cancelled);
                direct.wait.release(py, close);
            }
            let waiting = running.task.inner.lock().waiting.take();
            // Still registered: nobody cancelled or failed its Deferred.
            if let Some(entry) = waiting.and_then(|key| self.bridge.take_entry(key)) {
                Counters::bump(&self.bridge.counters().tasks_cancelled);
                drop(entry);
                self.bridge.entry_left(py);
            }
            drop_in_runtime(running);
        }
    }

    /// One step, as Python sees it: what to wait on, or `StopIteration(value)`.
    fn advance(&self, py: Python<'_>, input: Input) -> PyResult<Py<PyAny>> {
        match self.step(py, input)? {
            Step::Wait(deferred) => Ok(deferred),
            Step::Finished(value) => Err(crate::coroutine::stop_iteration(py, value)),
        }
    }

    /// Whether the caller drives a Python coroutine for the future now.
    fn delegates(&self) -> bool {
        match self.state.try_lock().as_deref() {
            Some(State::Running(Running {
                direct: Some(direct),
                ..
            })) => direct.delegates(),
            _ => false,
        }
    }
}

enum Failure {
    Error(PyErr),
    Panic(String),
}

/// The step cannot go on: the coroutine is done, its future dropped (after the
/// state's lock is released), and `err` is what the step raises.
fn give_up(mut state: parking_lot::MutexGuard<'_, State>, err: PyErr) -> PyErr {
    if let State::Running(running) = std::mem::replace(&mut *state, State::Done) {
        drop(state);
        drop_in_runtime(running);
    }
    err
}

/// Drops the future inside the Tokio runtime's context, its scope and its span, as
/// it was polled (what it holds may need them).
fn drop_in_runtime(running: Running) {
    let task = &running.task;
    let _runtime = task.tokio.enter();
    let future = running.future;
    task.scope.poll_inside(&task.span, move || drop(future));
}

#[pymethods]
impl RustCoroutine {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.advance(py, Input::Send(py.None()))
    }

    /// Resumes it. What is sent goes to the Python coroutine the caller drives for
    /// the future, if any; otherwise it is ignored (the wait's Deferred fires with
    /// `None`).
    fn send(&self, py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.advance(py, Input::Send(value.unbind()))
    }

    /// Drops the future and raises the exception in the awaiting coroutine: how
    /// Twisted's driver reports the wait's cancellation or failure.
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: Bound<'_, PyAny>,
        val: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let err = crate::coroutine::thrown(py, typ, val, tb)?;
        if self.delegates() {
            // Into the Python coroutine, which may catch it.
            return self.advance(py, Input::Throw(err));
        }
        self.abandon(py, false);
        Err(err)
    }

    /// Drops the future (closing first the Python coroutine the caller drives for
    /// it, if any).
    fn close(&self, py: Python<'_>) {
        self.abandon(py, true);
    }

    /// What the collector must see: while the caller waits on a Python awaitable's
    /// own Deferred, that awaitable, which holds the caller (its callbacks), which
    /// holds this coroutine. A state locked now is skipped (the cycle is kept this
    /// time).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(state) = self.state.try_lock() {
            if let State::Running(Running {
                direct: Some(direct),
                ..
            }) = &*state
            {
                direct.wait.traverse(&visit)?;
            }
        }
        Ok(())
    }

    /// Breaks an unreachable cycle: as `close()`.
    fn __clear__(&self) {
        crate::threads::attach(|py| self.abandon(py, false));
    }

    fn __repr__(&self) -> &'static str {
        "<RustCoroutine>"
    }
}

impl Drop for RustCoroutine {
    /// Collected while waiting (its caller is gone): the Deferred leaves the
    /// registry, so a shutdown does not wait for it.
    fn drop(&mut self) {
        if matches!(&*self.state.lock(), State::Running(_)) {
            crate::threads::attach(|py| self.abandon(py, false));
        }
    }
}

/// The waker of a [`RustCoroutine`]'s future. Any thread.
struct Wakeup {
    /// The task's scope: its runtime and the caller's context.
    scope: Arc<TaskScope>,
    /// The span current where it was first awaited, entered by each poll.
    span: tracing::Span,
    /// The runtime whose context each poll enters.
    tokio: tokio::runtime::Handle,
    inner: Mutex<WakeInner>,
}

#[derive(Default)]
struct WakeInner {
    /// Woken while not waiting (during a poll): poll again.
    woken: bool,
    /// The registered Deferred the caller waits on.
    waiting: Option<Key>,
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let key = {
            let mut inner = self.inner.lock();
            match inner.waiting.take() {
                Some(key) => key,
                None => {
                    inner.woken = true;
                    return;
                }
            }
        };
        let bridge = &self.scope.bridge;
        let wakeup = Arc::clone(self);
        if !bridge.is_reactor_thread() {
            bridge
                .mailbox()
                .push(Box::new(move |py| wakeup.resume(py, key)));
        } else if crate::local_task::polling_on_reactor() {
            // Not inside another task's poll: right after it.
            crate::local_task::after_poll(Box::new(move || {
                crate::threads::attach(|py| wakeup.resume_reporting(py, key));
            }));
        } else {
            crate::threads::attach(|py| wakeup.resume_reporting(py, key));
        }
    }
}

impl Wakeup {
    fn resume_reporting(&self, py: Python<'_>, key: Key) {
        if let Err(err) = self.resume(py, key) {
            report(
                py,
                err,
                "pyo3-twisted: resuming a create_coroutine coroutine",
            );
        }
    }

    /// Fires the Deferred the caller waits on, in the caller's context, unless it
    /// was cancelled or failed at shutdown. Reactor thread.
    fn resume(&self, py: Python<'_>, key: Key) -> PyResult<()> {
        let bridge = &self.scope.bridge;
        let Some(entry) = bridge.take_entry(key) else {
            return Ok(());
        };
        if let (Some(provider), Some(context)) = (bridge.provider(), self.scope.context()) {
            if let Err(err) = provider.set(py, context.bind(py)) {
                report(py, err, "pyo3-twisted: restoring the logcontext");
            }
        }
        let fired = match entry
            .deferred
            .bind(py)
            .call_method1(intern!(py, "callback"), (py.None(),))
        {
            Ok(_) => Ok(()),
            // Fired by hand: the caller resumed already.
            Err(err) if err.is_instance(py, already_called_error(py)?) => Ok(()),
            Err(err) => Err(err),
        };
        bridge.entry_left(py);
        fired
    }
}
