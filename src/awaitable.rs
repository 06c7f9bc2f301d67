//! Python awaitable → Rust future.
//!
//! ```text
//!  Tokio task (no GIL)                       reactor thread (mailbox job, or inline
//!                                            in a reactor-thread poll)
//!  run_python_awaitable(f) ──start job────▶  with the task's logcontext active: v = f()
//!                                              a coroutine: driven here (`coroutine`),
//!                                                or, in a `create_coroutine` poll,
//!                                                stepped by it (`Delegated`)
//!                                              anything else: as a Deferred, + Resolver
//!                                            still pending: the provider's rules (`launch`)
//!  .await ◀──────── the call's slot ────────── Resolver: value or exception, converted here
//!  future dropped early ──cancel job──────▶  cancel() what it waits on (the Python side
//!                                            sees CancelledError)
//! ```
//!
//! The calling Tokio thread never takes the GIL: it pushes a job and waits on a
//! channel. The factory, the conversion of the result and the release of every Python
//! object run on the reactor thread.
//!
//! Inside a poll of a `create_coroutine` coroutine, a call still pending offers its
//! wait ([`watching_waits`]): if the future waits on nothing else, the coroutine's
//! caller waits on the awaitable's own Deferred ([`PythonWait`]), as a Python
//! coroutine awaiting it would.

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::bridge::Bridge;
use crate::coroutine::{as_wait, resume, Driver, Input, Started, Stepped};
use crate::errors::RuntimeShutdown;
use crate::logcontext::Provider;
use crate::scope::TaskScope;
use crate::stats::Counters;
use crate::twisted::{cancelled_error, failure_class, failure_to_pyerr, to_deferred};

/// State shared by the Tokio side and the reactor side of one call.
#[derive(Default)]
struct Shared {
    /// The Rust future is gone: do not start the awaitable.
    abandoned: AtomicBool,
    /// The Deferred while it is pending, for cancellation.
    deferred: Mutex<Option<Py<PyAny>>>,
    /// Whether a `create_coroutine` caller waits on what this call waits on
    /// ([`PythonWait`]): then a `CancelledError` is passed on to that caller, and a
    /// Deferred's answer is handed over in the task's context (a coroutine's
    /// follows the rules itself, as under a Python caller). [`NOT_DIRECT`],
    /// [`DIRECT_DEFERRED`] or [`DIRECT_COROUTINE`].
    direct: AtomicU8,
    /// A coroutine awaitable stepped by the `create_coroutine` poll that started
    /// it, and driven by nobody yet ([`Delegated`]).
    delegated: Mutex<Option<Delegated>>,
}

/// A coroutine awaitable that a `create_coroutine` poll started by stepping it
/// itself, in the caller's own context (as `await` would), and that waits. When the
/// poll's step ends, either the caller drives it on (it is all the future waits on:
/// the caller waits on what it yielded and its steps are forwarded to it, `yield
/// from`), or a [`Driver`] takes it over ([`Delegations::settle`]). No driver, no
/// context copy, no `addBoth` and no callback of ours on the direct path.
struct Delegated {
    coro: Py<PyAny>,
    /// What it yielded (a Deferred), until the caller takes it to wait on.
    yielded: Option<Py<PyAny>>,
    resolver: Py<Resolver>,
}

impl Shared {
    /// For the collector: what the call waits on (a Deferred or the driver of a
    /// coroutine), or the [`Delegated`] coroutine, what it yielded and its
    /// resolver. A lock held now is skipped (the cycle is kept this time).
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(pending) = self.deferred.try_lock() {
            visit.call(&*pending)?;
        }
        if let Some(delegated) = self.delegated.try_lock() {
            if let Some(delegated) = &*delegated {
                visit.call(&delegated.coro)?;
                visit.call(&delegated.yielded)?;
                visit.call(&delegated.resolver)?;
            }
        }
        Ok(())
    }
}

const NOT_DIRECT: u8 = 0;
const DIRECT_DEFERRED: u8 = 1;
const DIRECT_COROUTINE: u8 = 2;

/// One call in one allocation: its [`Shared`] state, the factory until the start job
/// takes it, the conversion until the answer takes it, and the answer's slot, which
/// the Rust side polls (what a oneshot channel, a boxed factory and a boxed
/// completer each allocated before). The Rust side holds it typed; the reactor side
/// and the `create_coroutine` poll watching it hold a [`CallRef`].
struct Call<F, C, T> {
    shared: Shared,
    factory: Mutex<Option<F>>,
    convert: Mutex<Option<C>>,
    slot: Mutex<Slot<T>>,
}

enum Slot<T> {
    /// No answer yet; the Rust side's waker, once it polled.
    Waiting(Option<Waker>),
    Answered(PyResult<T>),
    /// The answer was taken, or none will come.
    Closed,
}

/// A [`Call`] as the reactor side sees it, whatever its types.
trait Answer: Send + Sync {
    fn shared(&self) -> &Shared;
    /// Runs the factory (once; again: an error). Reactor thread.
    fn make<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>>;
    /// Converts the outcome and hands it to the Rust side, unless it was answered or
    /// closed already. Reactor thread.
    fn answer(&self, py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>);
    /// No answer will come: the Rust side hears `RuntimeShutdown`; the factory and
    /// the conversion, if still held, are dropped here. A no-op once answered.
    fn close(&self);
    /// Whether it was answered or closed.
    fn is_settled(&self) -> bool;
    /// The Rust side is gone: nothing is started for it any more, an answer is
    /// dropped on arrival, and its waker is let go now.
    fn abandon(&self);
}

impl<F, C, T> Answer for Call<F, C, T>
where
    F: for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + 'static,
    C: for<'py> FnOnce(&Bound<'py, PyAny>) -> PyResult<T> + Send + 'static,
    T: Send + 'static,
{
    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn make<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let factory = self.factory.lock().take();
        match factory {
            Some(factory) => factory(py),
            None => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "pyo3-twisted: a Python awaitable's factory ran twice",
            )),
        }
    }

    fn answer(&self, _py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>) {
        let Some(convert) = self.convert.lock().take() else {
            return;
        };
        let answer = outcome.and_then(|obj| convert(&obj));
        if self.shared.abandoned.load(Ordering::Acquire) {
            // The Rust side is gone: the value is dropped here, on the reactor thread.
            return;
        }
        let waker = match std::mem::replace(&mut *self.slot.lock(), Slot::Answered(answer)) {
            Slot::Waiting(waker) => waker,
            Slot::Answered(_) | Slot::Closed => None,
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn close(&self) {
        let Some(convert) = self.convert.lock().take() else {
            // Answered (the factory ran) or closed already: the usual case, as the
            // resolver goes.
            return;
        };
        let factory = self.factory.lock().take();
        let waker = match std::mem::replace(&mut *self.slot.lock(), Slot::Closed) {
            Slot::Waiting(waker) => waker,
            Slot::Answered(_) | Slot::Closed => None,
        };
        drop((convert, factory));
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn is_settled(&self) -> bool {
        self.convert.lock().is_none()
    }

    fn abandon(&self) {
        self.shared.abandoned.store(true, Ordering::Release);
        let waker = match &mut *self.slot.lock() {
            Slot::Waiting(waker) => waker.take(),
            Slot::Answered(_) | Slot::Closed => None,
        };
        drop(waker);
    }
}

impl<F, C, T> Call<F, C, T> {
    /// The Rust side's poll: the answer, `RuntimeShutdown` if none will come, or
    /// pending (the waker kept).
    fn poll_answer(&self, cx: &Context<'_>) -> Poll<PyResult<T>> {
        let mut slot = self.slot.lock();
        match &mut *slot {
            Slot::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Slot::Answered(_) => match std::mem::replace(&mut *slot, Slot::Closed) {
                Slot::Answered(answer) => Poll::Ready(answer),
                Slot::Waiting(_) | Slot::Closed => unreachable!("matched above"),
            },
            Slot::Closed => Poll::Ready(Err(RuntimeShutdown::new_err(
                "the Python awaitable never completed: the reactor stopped before it could \
                 run or finish",
            ))),
        }
    }
}

/// A call as the reactor side and the watching poll hold it: its [`Shared`] state
/// (through `Deref`) and its [`Answer`] side.
#[derive(Clone)]
struct CallRef(Arc<dyn Answer>);

impl Deref for CallRef {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        self.0.shared()
    }
}

impl CallRef {
    /// How many hold the call, the Rust side included while it lives.
    fn strong_count(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    fn make<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.0.make(py)
    }

    fn answer(&self, py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>) {
        self.0.answer(py, outcome);
    }

    fn close(&self) {
        self.0.close();
    }

    fn is_settled(&self) -> bool {
        self.0.is_settled()
    }

    fn abandon(&self) {
        self.0.abandon();
    }
}

/// The reactor side's hold on a call (the start job's, then the [`Resolver`]'s):
/// if it goes unanswered, the call is closed.
struct Answering(CallRef);

impl Deref for Answering {
    type Target = CallRef;

    fn deref(&self) -> &CallRef {
        &self.0
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The call itself. `keep` (the caller's reactor reference, if any) is released on
/// the reactor thread.
pub(crate) async fn run<K, F, C, T>(
    bridge: Arc<Bridge>,
    keep: K,
    factory: F,
    convert: C,
) -> PyResult<T>
where
    K: Send + 'static,
    F: for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + 'static,
    C: for<'py> FnOnce(&Bound<'py, PyAny>) -> PyResult<T> + Send + 'static,
    T: Send + 'static,
{
    if bridge.is_stopped() {
        return Err(RuntimeShutdown::new_err(
            "the pyo3-twisted runtime has shut down",
        ));
    }
    let call = Arc::new(Call {
        shared: Shared::default(),
        factory: Mutex::new(Some(factory)),
        convert: Mutex::new(Some(convert)),
        slot: Mutex::new(Slot::Waiting(None)),
    });
    let shared = CallRef(Arc::clone(&call) as Arc<dyn Answer>);
    let scope = TaskScope::current();
    // Entered on the reactor thread while the factory runs: Rust it calls back into
    // (a `create_deferred`) starts under the calling task's span.
    let span = tracing::Span::current();
    let job_call = Answering(shared.clone());
    let job_bridge = Arc::clone(&bridge);
    let job = move |py: Python<'_>| {
        drop(keep);
        let _entered = span.enter();
        start(py, &job_bridge, scope.as_deref(), job_call)
    };
    if crate::local_task::polling_on_reactor() && bridge.is_reactor_thread() {
        // Polled on the reactor thread (reactor_polls), GIL held: start it now.
        crate::local_task::in_python(|| {
            crate::threads::attach(|py| {
                if let Err(err) = job(py) {
                    crate::errors::report(py, err, "pyo3-twisted: starting a Python awaitable");
                }
            })
        });
    } else {
        bridge.mailbox().push(Box::new(job));
    }

    let mut guard = CancelOnDrop {
        bridge,
        shared,
        armed: true,
    };
    let result = std::future::poll_fn(|cx| {
        let polled = call.poll_answer(cx);
        if polled.is_pending() {
            offer(cx.waker(), &guard.shared);
        }
        polled
    })
    .await;
    guard.armed = false;
    result
}

/// The start job. Reactor thread.
fn start(
    py: Python<'_>,
    bridge: &Arc<Bridge>,
    scope: Option<&TaskScope>,
    call: Answering,
) -> PyResult<()> {
    // Abandoned, or reached in the last drain of a stopped runtime: never start it
    // (dropping `call` unanswered tells a waiting caller `RuntimeShutdown`).
    if call.abandoned.load(Ordering::Acquire) || bridge.is_stopped() {
        return Ok(());
    }
    Counters::bump(&bridge.counters().awaitables_started);
    let resolver = Bound::new(
        py,
        Resolver {
            shared: call,
            bridge: Arc::downgrade(bridge),
            restore: Mutex::new(None),
            task_context: scope.and_then(TaskScope::context).map(|c| c.clone_ref(py)),
        },
    )?;
    // The resolver holds the call now; the factory runs from there.
    let shared: &CallRef = &resolver.get().shared;
    let factory = |py| shared.make(py);
    let scope_address = scope.map_or(0, |scope| scope as *const TaskScope as usize);
    match bridge.provider() {
        // A `create_coroutine` poll with the task's own context current: the
        // factory runs in it as it is, and the coroutine's driver keeps the rules
        // around what is left waiting (`rust_coroutine`).
        Some(_) if crate::local_task::own_context_current(scope_address) => {
            launch(py, bridge, factory(py), &resolver, shared, None)?;
            if !resolver.get().is_resolved() {
                crate::local_task::own_context_unknown();
                crate::cputime::meter_from_now();
            }
            Ok(())
        }
        // The factory runs in the task's context; what it starts follows the
        // provider's rules (see `launch`).
        Some(provider) => {
            let begin = |restored_after: bool| {
                let rules = Rules {
                    provider,
                    // Read only where it is set back: inside `with_context` the
                    // caller restores its own context (one provider call fewer).
                    current: if restored_after {
                        None
                    } else {
                        Some(provider.current(py)?)
                    },
                };
                launch(py, bridge, factory(py), &resolver, shared, Some(rules))
            };
            let started = match scope {
                Some(scope) => scope.with_context(py, begin),
                None => begin(false),
            };
            match started {
                Err(err) => resolver.get().resolve(py, Err(err)),
                Ok(()) => Ok(()),
            }
        }
        None => launch(py, bridge, factory(py), &resolver, shared, None),
    }
}

/// The logcontext rules `launch` applies, with a provider.
struct Rules<'a, 'py> {
    provider: &'a Provider,
    /// The context the factory ran in, to set back once the awaitable is started;
    /// `None` where the caller restores its own context after `launch` returns
    /// (`with_context`), so nothing needs setting back first.
    current: Option<Bound<'py, PyAny>>,
}

/// Starts what the factory made and sees its outcome to `resolver`: a plain value
/// or an exception at once, a coroutine driven here (no `ensureDeferred`), anything
/// else as a Deferred. Reactor thread.
///
/// Inside a `create_coroutine` poll with no `rules` (the task's own context is
/// current, or there is no provider), a coroutine is stepped here, as `await`
/// would, and left [`Delegated`] if it waits.
///
/// With a logcontext provider, `rules` holds it and the context the factory ran in.
/// An awaitable still pending once started gets that context back now, and the
/// context it left (the sentinel, for one that keeps the rules) is restored when it
/// completes, before the Rust side hears of it: what the provider's
/// `run_in_background` does, without its Python frame and extra Deferred.
fn launch(
    py: Python<'_>,
    bridge: &Bridge,
    made: PyResult<Bound<'_, PyAny>>,
    resolver: &Bound<'_, Resolver>,
    shared: &CallRef,
    rules: Option<Rules<'_, '_>>,
) -> PyResult<()> {
    let value = match made.and_then(|made| crate::asyncio::prepare(bridge.asyncio(), made)) {
        Ok(value) => value,
        Err(err) => {
            resolver.get().resolve(py, Err(err))?;
            return Ok(());
        }
    };
    // A plain value needs no Deferred: answer at once.
    if is_plain_value(&value) {
        resolver.get().resolve(py, Ok(value))?;
        return Ok(());
    }
    let pending = if crate::coroutine::is_coroutine(&value)? {
        if rules.is_none() && watching() {
            return step_first(value, resolver, shared);
        }
        let target = resolver.clone().into_any().unbind();
        match Driver::start(py, value, target, resolve_done)? {
            Started::Finished => return Ok(()),
            Started::Waiting(driver) => driver.into_any(),
        }
    } else {
        let deferred = match to_deferred(value) {
            Ok(deferred) => deferred,
            Err(err) => {
                resolver.get().resolve(py, Err(err))?;
                return Ok(());
            }
        };
        deferred.call_method1(intern!(py, "addBoth"), (resolver,))?;
        if resolver.get().is_resolved() {
            return Ok(());
        }
        deferred.unbind()
    };
    if let Some(rules) = rules {
        // Inside `with_context` the caller's context is set back right after this,
        // so reading what the awaitable left is enough: one switch fewer.
        let left = match &rules.current {
            None => rules.provider.current(py)?,
            Some(current) => rules.provider.set(py, current)?,
        };
        *resolver.get().restore.lock() = Some(left.unbind());
    }
    *shared.deferred.lock() = Some(pending);
    Ok(())
}

/// The first step of a coroutine awaitable, taken by the `create_coroutine` poll
/// that started it: its answer, or it is left [`Delegated`] on the Deferred it
/// awaits. What it yields that is not a Deferred is sent straight back, as Twisted's
/// driver does. Reactor thread.
fn step_first(
    coro: Bound<'_, PyAny>,
    resolver: &Bound<'_, Resolver>,
    shared: &CallRef,
) -> PyResult<()> {
    let py = coro.py();
    let mut input = Input::Send(py.None());
    loop {
        let yielded = match resume(&coro, input) {
            Stepped::Returned(value) => return resolver.get().resolve(py, Ok(value)),
            Stepped::Raised(err) => return resolver.get().resolve(py, Err(err)),
            Stepped::Yielded(yielded) => yielded,
        };
        let deferred = match as_wait(yielded) {
            Ok(deferred) => deferred,
            Err(next) => {
                input = next;
                continue;
            }
        };
        *shared.delegated.lock() = Some(Delegated {
            coro: coro.unbind(),
            yielded: Some(deferred.unbind()),
            resolver: resolver.clone().unbind(),
        });
        WATCH.with(|watch| watch.borrow_mut().delegated.push(shared.clone()));
        return Ok(());
    }
}

/// The coroutine driver's report: `target` is the call's [`Resolver`].
fn resolve_done<'py>(
    target: &Bound<'py, PyAny>,
    outcome: PyResult<Bound<'py, PyAny>>,
) -> Option<PyErr> {
    let resolver = target.cast::<Resolver>().ok()?;
    resolver.get().resolve(target.py(), outcome).err()
}

/// Values of the common built-in types, which cannot be awaited: checked by exact
/// type, so no attribute lookup (and no exception) is spent on them.
fn is_plain_value(value: &Bound<'_, PyAny>) -> bool {
    use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
    value.is_none()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyString>()
        || value.is_exact_instance_of::<PyBool>()
        || value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyBytes>()
        || value.is_exact_instance_of::<PyList>()
        || value.is_exact_instance_of::<PyDict>()
        || value.is_exact_instance_of::<PyTuple>()
}

/// Added with `addBoth`: hands the outcome to the waiting Rust future and swallows
/// it, so a failure never reaches "Unhandled error in Deferred".
#[pyclass(frozen, module = "pyo3_twisted")]
struct Resolver {
    /// The call; dropped unanswered (the Deferred never fired), it is closed.
    shared: Answering,
    bridge: std::sync::Weak<Bridge>,
    /// With a provider: the context to set once the awaitable's answer is handed
    /// over.
    restore: Mutex<Option<Py<PyAny>>>,
    /// The context of the task that waits, if any.
    task_context: Option<Py<PyAny>>,
}

impl Resolver {
    fn is_resolved(&self) -> bool {
        self.shared.is_settled()
    }

    /// Hands `outcome` to the Rust side; an `Err` is a cancellation to pass on to
    /// the `create_coroutine` caller that waits on the same Deferred, which then
    /// drops the future (the Rust side never hears of it).
    fn resolve(&self, py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>) -> PyResult<()> {
        let direct = match self.shared.direct.swap(NOT_DIRECT, Ordering::AcqRel) {
            _ if self.shared.abandoned.load(Ordering::Acquire) => NOT_DIRECT,
            direct => direct,
        };
        let keeps_rules = direct == DIRECT_COROUTINE;
        let direct = direct != NOT_DIRECT;
        let outcome = match outcome {
            Err(err) if direct && is_cancellation(py, &err) => {
                drop(self.shared.deferred.lock().take());
                return Err(err);
            }
            outcome => outcome,
        };
        let deferred = self.shared.deferred.lock().take();
        drop(deferred);
        if self.is_resolved() {
            return Ok(());
        }
        let bridge = self.bridge.upgrade();
        // Waited on directly: the caller resumes (its coroutine, then the task) as
        // soon as this returns, in the task's context, which a coroutine that keeps
        // the rules has set back itself (a Python caller trusts it so too).
        let restore = if keeps_rules {
            None
        } else if direct {
            self.task_context.as_ref().map(|c| c.clone_ref(py))
        } else {
            self.restore.lock().take()
        };
        let provider = bridge.as_ref().and_then(|bridge| bridge.provider());
        if let Some(bridge) = &bridge {
            Counters::bump(&bridge.counters().awaitables_completed);
        }
        // The answer is handed over in the context the awaitable left current and
        // only then is the rule's context set: a task polled here at once
        // (reactor_polls) that finds its own context current runs in it, charged by
        // it, and its Deferred's callbacks need no switch back to it.
        let polls_here = bridge.as_ref().is_some_and(|b| b.config().reactor_polls);
        // (Direct: nothing is polled before this returns.)
        let charged = match (provider, &restore, &self.task_context) {
            (Some(provider), Some(_), Some(task)) if polls_here && !direct => provider
                .current(py)
                .map(|current| current.is(task.bind(py)))
                .unwrap_or(false),
            _ => false,
        };
        let polls = crate::local_task::polls_run();
        let ((), owed) = crate::lazy_restore::collecting(|| {
            crate::cputime::with_context_charging(charged, || self.shared.answer(py, outcome))
        });
        match (provider, restore) {
            // What the task's poll left owed is overwritten by this: both skipped.
            (Some(provider), Some(context)) => {
                if let Err(err) = provider.set(py, context.bind(py)) {
                    crate::errors::report(py, err, "pyo3-twisted: restoring the logcontext");
                }
            }
            _ => {
                if let Some(owed) = owed {
                    owed.pay(py);
                }
            }
        }
        // The waiting task will answer soon: linger for it, unless it already ran
        // here, or is being polled here now (reactor_polls), or its caller resumes
        // it right after this (direct).
        if let Some(bridge) = bridge {
            if !direct
                && !crate::local_task::polling_on_reactor()
                && crate::local_task::polls_run() == polls
            {
                bridge.note_handoff(py);
            }
        }
        Ok(())
    }
}

/// Whether `err` is Twisted's `CancelledError`.
fn is_cancellation(py: Python<'_>, err: &PyErr) -> bool {
    cancelled_error(py).is_ok_and(|class| err.value(py).is_instance(class).unwrap_or(false))
}

#[pymethods]
impl Resolver {
    /// The Python objects the call holds, for the garbage collector: the context
    /// to restore, the task's context, and what it waits on (whose callbacks hold
    /// this resolver: a cycle) once the Rust side is gone. While the Rust future
    /// lives it holds the call too, to cancel it, so what it waits on stays alive
    /// for it, as the Deferred a coroutine awaits stays alive for whoever holds
    /// `ensureDeferred`'s Deferred. When the future was dropped without that
    /// cancel running (its reactor was collected), the cycle is Python's alone and
    /// the collector frees it. A lock held now is skipped (the cycle is kept this
    /// time).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Read with the GIL held: once it is 1 nobody can clone another.
        if self.shared.strong_count() == 1 {
            self.shared.traverse(&visit)?;
        }
        if let Some(restore) = self.restore.try_lock() {
            visit.call(&*restore)?;
        }
        visit.call(&self.task_context)?;
        Ok(())
    }

    /// Breaks an unreachable cycle: the awaitable, the contexts and the (unheard)
    /// answer's channel are let go, after the locks are released.
    fn __clear__(&self) {
        let deferred = self.shared.deferred.lock().take();
        let delegated = self.shared.delegated.lock().take();
        let restore = self.restore.lock().take();
        drop((deferred, delegated, restore));
        self.shared.close();
    }

    fn __call__(&self, py: Python<'_>, result: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let outcome = if result.is_instance(failure_class(py)?)? {
            Err(failure_to_pyerr(&result))
        } else {
            Ok(result)
        };
        self.resolve(py, outcome)?;
        Ok(py.None())
    }
}

/// Cancels the Python side when the Rust future is dropped before it resolved.
struct CancelOnDrop {
    bridge: Arc<Bridge>,
    shared: CallRef,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.shared.abandon();
        // Queued after the start job, so it finds the Deferred if one was made.
        let shared = self.shared.clone();
        self.bridge.mailbox().push(Box::new(move |py| {
            let deferred = shared.deferred.lock().take();
            if let Some(deferred) = deferred {
                deferred.bind(py).call_method0(intern!(py, "cancel"))?;
            }
            Ok(())
        }));
    }
}

/// What the `create_coroutine` poll running on this thread watches for.
struct Watch {
    /// The data pointer of the task's own waker; null outside such a poll.
    task_waker: *const (),
    /// Calls left pending in this poll with that waker, and the last of them.
    offers: u32,
    offer: Option<CallRef>,
    /// Coroutine awaitables this poll started and left [`Delegated`].
    delegated: CallList,
}

impl Watch {
    const fn new(task_waker: *const ()) -> Self {
        Self {
            task_waker,
            offers: 0,
            offer: None,
            delegated: CallList::new(),
        }
    }
}

/// Whether a `create_coroutine` poll runs on this thread now: a coroutine awaitable
/// it starts is stepped by it ([`Delegated`]).
fn watching() -> bool {
    WATCH.with(|watch| !watch.borrow().task_waker.is_null())
}

/// The coroutine awaitables a `create_coroutine` step left [`Delegated`]: before
/// the step returns, [`Delegations::settle`] gives each one the caller does not
/// drive a [`Driver`]. Reactor thread.
#[derive(Default)]
pub(crate) struct Delegations(CallList);

/// Calls, the first held inline: a step usually leaves one coroutine awaitable
/// delegated, and then its list allocates nothing.
#[derive(Default)]
struct CallList {
    first: Option<CallRef>,
    /// Only ever non-empty after `first`.
    more: Vec<CallRef>,
}

impl CallList {
    const fn new() -> Self {
        Self {
            first: None,
            more: Vec::new(),
        }
    }

    fn push(&mut self, call: CallRef) {
        match self.first {
            None => self.first = Some(call),
            Some(_) => self.more.push(call),
        }
    }

    /// Moves `other`'s calls to the end of this list.
    fn append(&mut self, other: &mut CallList) {
        if self.first.is_none() {
            std::mem::swap(self, other);
        } else {
            self.more.extend(other.drain());
        }
    }

    /// The calls, in order, leaving the list empty.
    fn drain(&mut self) -> impl Iterator<Item = CallRef> + '_ {
        self.first.take().into_iter().chain(self.more.drain(..))
    }
}

impl Delegations {
    /// A [`Driver`] takes over each delegated coroutine the caller does not wait on
    /// directly (it may have been dropped: its cancel job, queued meanwhile, then
    /// finds the driver and cancels what it awaits).
    pub(crate) fn settle(&mut self, py: Python<'_>) {
        for shared in self.0.drain() {
            if shared.direct.load(Ordering::Acquire) != NOT_DIRECT {
                continue;
            }
            let Some(delegated) = shared.delegated.lock().take() else {
                continue;
            };
            let Delegated {
                coro,
                yielded,
                resolver,
            } = delegated;
            let Some(yielded) = yielded else { continue };
            let target = resolver.clone_ref(py).into_any();
            let adopted = Driver::adopt(
                py,
                coro.into_bound(py),
                yielded.into_bound(py),
                target,
                resolve_done,
            );
            let failed = match adopted {
                Ok(Started::Waiting(driver)) => {
                    *shared.deferred.lock() = Some(driver.into_any());
                    Ok(())
                }
                Ok(Started::Finished) => Ok(()),
                Err(err) => resolver.get().resolve(py, Err(err)),
            };
            if let Err(err) = failed {
                crate::errors::report(py, err, "pyo3-twisted: driving a Python coroutine");
            }
        }
    }
}

thread_local! {
    static WATCH: RefCell<Watch> = const { RefCell::new(Watch::new(std::ptr::null())) };
}

/// A call left pending with `waker`. Reactor thread, or a Tokio worker (where no
/// poll is watched).
fn offer(waker: &Waker, shared: &CallRef) {
    WATCH.with(|watch| {
        let mut watch = watch.borrow_mut();
        if !watch.task_waker.is_null() && waker.data() == watch.task_waker {
            watch.offers += 1;
            watch.offer = Some(shared.clone());
        }
    });
}

/// Runs `poll`, a poll of a `create_coroutine` task whose waker is `task_waker`,
/// and returns the call it left waiting if exactly one was left pending with that
/// waker itself (not a combinator's). Whether that is all the task waits on is the
/// caller's to check (how many wakers exist). Coroutine awaitables the poll left
/// [`Delegated`] join `delegations`, to be settled before the step returns.
/// Reactor thread.
pub(crate) fn watching_waits<R>(
    task_waker: &Waker,
    delegations: &mut Delegations,
    poll: impl FnOnce() -> R,
) -> (R, Option<PythonWait>) {
    let outer = WATCH.with(|w| w.replace(Watch::new(task_waker.data())));
    let result = poll();
    let mut watched = WATCH.with(|w| w.replace(outer));
    delegations.0.append(&mut watched.delegated);
    let wait = match watched {
        Watch {
            offers: 1,
            offer: Some(shared),
            ..
        } => Some(PythonWait { shared }),
        _ => None,
    };
    (result, wait)
}

/// A call a `create_coroutine` task waits on alone: its caller can wait on the
/// awaitable's own Deferred instead of one of ours. While it does, the answer is
/// handed over in the task's logging context (the caller resumes right after), and
/// a `CancelledError` (the caller cancelled it, or the awaitable raised it) goes to
/// the caller, which drops the future: a coroutine that does not catch it ends the
/// same way. Reactor thread.
pub(crate) struct PythonWait {
    shared: CallRef,
}

impl PythonWait {
    /// The pending Deferred the call waits on now, marking the wait direct, and
    /// whether the awaitable is a coroutine (the Deferred is the one it awaits; it
    /// keeps the logcontext rules around it itself); `None` if it has none.
    pub(crate) fn deferred<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyAny>, bool)> {
        if self.shared.abandoned.load(Ordering::Acquire) {
            return None;
        }
        if let Some(delegated) = &mut *self.shared.delegated.lock() {
            let yielded = delegated.yielded.take()?;
            self.shared
                .direct
                .store(DIRECT_COROUTINE, Ordering::Release);
            return Some((yielded.into_bound(py), true));
        }
        let pending = self.shared.deferred.lock().as_ref()?.bind(py).clone();
        let (deferred, kind) = match pending.cast::<Driver>() {
            Ok(driver) => (driver.get().waiting(py)?, DIRECT_COROUTINE),
            Err(_) => (pending, DIRECT_DEFERRED),
        };
        self.shared.direct.store(kind, Ordering::Release);
        Some((deferred, kind == DIRECT_COROUTINE))
    }

    /// Whether the caller drives the awaitable itself (a [`Delegated`] coroutine):
    /// its steps go to [`PythonWait::forward`].
    pub(crate) fn is_delegated(&self) -> bool {
        self.shared.delegated.lock().is_some()
    }

    /// One step of a [`Delegated`] coroutine, with what the caller sent or threw:
    /// what it awaits next, or its outcome handed to the Rust side (in the context
    /// it left, as a coroutine awaited directly). A `CancelledError` it raises is
    /// handed back instead (the caller then drops the future, as for any direct
    /// wait).
    pub(crate) fn forward<'py>(&self, py: Python<'py>, input: Input) -> Forwarded<'py> {
        let coro = match &*self.shared.delegated.lock() {
            Some(delegated) => delegated.coro.clone_ref(py).into_bound(py),
            None => return Forwarded::Answered,
        };
        let outcome = match resume(&coro, input) {
            Stepped::Yielded(yielded) => return Forwarded::Waits(yielded),
            Stepped::Returned(value) => Ok(value),
            Stepped::Raised(err) => Err(err),
        };
        let Some(delegated) = self.shared.delegated.lock().take() else {
            return Forwarded::Answered;
        };
        match delegated.resolver.get().resolve(py, outcome) {
            Ok(()) => Forwarded::Answered,
            Err(err) => Forwarded::Raised(err),
        }
    }

    /// The caller no longer waits on it (resumed, or gone).
    pub(crate) fn leave(&self) {
        self.shared.direct.store(NOT_DIRECT, Ordering::Release);
    }

    /// The caller is gone (`close`, `throw`, collected): the awaitable is let go,
    /// not cancelled, as a Python coroutine closed while it awaits lets it go (its
    /// callbacks include the gone caller's, which a cancellation would run). The
    /// reference is dropped after the lock is released (dropping it may run Python).
    ///
    /// A [`Delegated`] coroutine is closed with `close` (`close()` of the caller,
    /// which `yield from` passes on), or else let go (collected: its own finalizer
    /// closes it).
    pub(crate) fn release(&self, py: Python<'_>, close: bool) {
        self.shared.abandoned.store(true, Ordering::Release);
        let pending = self.shared.deferred.lock().take();
        let delegated = self.shared.delegated.lock().take();
        drop(pending);
        if let Some(delegated) = delegated {
            if close {
                if let Err(err) = delegated.coro.bind(py).call_method0(intern!(py, "close")) {
                    crate::errors::report(py, err, "pyo3-twisted: closing a Python coroutine");
                }
            }
            drop(delegated);
        }
    }

    /// For the collector: the awaitable (or the coroutine driving it), which the
    /// call holds and which holds the caller waiting on it (a cycle through Rust).
    /// Visited by the waiting coroutine; the [`Resolver`] does not visit it while
    /// anyone but itself holds the call, so it is visited once. Skipped if locked.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.shared.traverse(visit)
    }
}

/// What a forwarded step of a [`Delegated`] coroutine came to.
pub(crate) enum Forwarded<'py> {
    /// It awaits this: the caller waits on it.
    Waits(Bound<'py, PyAny>),
    /// Its outcome went to the Rust side: poll the future.
    Answered,
    /// It raised `CancelledError`: the caller raises it and drops the future.
    Raised(PyErr),
}
