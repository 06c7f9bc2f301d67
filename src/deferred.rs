//! Rust future → Twisted `Deferred`.
//!
//! ```text
//!  reactor thread                Tokio worker                       reactor thread
//!  create_deferred(fut)          poll fut (catching panics,         drain: registry.take(key)
//!    Deferred(canceller) ─key─▶  abortable by d.cancel())  ─job─▶   → O into Python
//!    registry.insert(d)          Ready → mailbox.push(job)          → d.callback / d.errback
//!    submit(task) ─────────────▶
//!  d.cancel() → canceller: registry.take(d), abort → future dropped on its worker
//! ```
//!
//! [`create_deferred`] runs on the reactor thread. The task owns no Python object;
//! the result is turned into one on the reactor thread, in the drain.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::{AbortHandle, Abortable};
use futures_util::FutureExt;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use tracing::Instrument;

use crate::errors::{panic_message, RuntimeShutdown, RustPanicError};
use crate::live_tasks::LiveTasks;
use crate::registry::Key;
use crate::runtime::RuntimeRef;
use crate::scope::TaskScope;
use crate::stats::{Counters, TaskOutcome};
use crate::twisted::{already_called_error, deferred_class};

/// Runs `fut` on the reactor's Tokio runtime and returns a Twisted `Deferred` for its
/// result.
///
/// `runtime` is a [`Runtime`](crate::Runtime) handle or the reactor (`&reactor`).
/// Call it on the reactor thread (elsewhere it raises `RuntimeError`). The first call
/// on a reactor without a runtime installs the default one (see
/// [`install_runtime`](crate::install_runtime)), and the first call starts the
/// runtime if it has not started: a reactor that is never `run()` (a test's memory
/// reactor) serves it too.
///
/// What the Deferred does:
/// - `Ok(v)`: fires with `v` converted to Python (on the reactor thread);
/// - `Err(e)`: fails with the exception `e` carries, the same object;
/// - a panic in `fut`: fails with [`RustPanicError`] carrying the panic message; the
///   process goes on;
/// - `d.cancel()`: the future is dropped on its worker at once and the Deferred fails
///   with `CancelledError`, exactly once, even if the future finished concurrently;
/// - reactor shutdown with `fut` still running after `shutdown_timeout`, or a call
///   after shutdown began: fails with [`RuntimeShutdown`].
///
/// With a logcontext provider configured and a caller inside a logging context,
/// the Deferred follows the provider's rules (`make_deferred_yieldable`): the
/// reactor gets the sentinel back now and the caller's context is restored for the
/// callbacks. A caller in the sentinel gets the plain Deferred, which fires there.
///
/// ```no_run
/// use pyo3::prelude::*;
///
/// #[pyfunction]
/// fn answer<'py>(py: Python<'py>, reactor: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
///     pyo3_twisted::create_deferred(py, &reactor, async {
///         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///         Ok(42)
///     })
/// }
/// ```
pub fn create_deferred<'py, R, F, O>(
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
    let bridge = runtime.bridge();
    bridge.check_reactor_thread("create_deferred")?;
    let deferred = deferred_class(py)?.call1((bridge.canceller(py)?,))?;
    if !bridge.accepting() {
        Counters::bump(&bridge.counters().tasks_rejected_after_shutdown);
        reject(py, &deferred)?;
        return Ok(deferred);
    }
    // Starts the runtime on first use.
    let engine = bridge.engine(py)?;
    // On the reactor's clock the task's `time::now()` starts from the time now.
    bridge.observe_clock(py);

    let context = match bridge.provider() {
        Some(provider) => provider.capture(py)?,
        None => None,
    };
    // A caller in the sentinel (the reactor itself) needs no context restored.
    let yieldable = context.is_some();
    let scope = Arc::new(TaskScope::new(Arc::clone(bridge), context));
    let (abort, registration) = AbortHandle::new_pair();
    let key = bridge.register(deferred.clone().unbind(), abort);
    // Holds the scope; on the shared pool it also counts the task until it is gone.
    let live = LiveTasks::enter(scope, engine.counts_live_tasks());
    let started = bridge.histograms().enabled.then(Instant::now);
    // The caller's `tracing` span, if any, goes with the task.
    let span = tracing::Span::current();
    let task = Box::pin(async move {
        let Some(scope) = live.owner().map(Arc::clone) else {
            return;
        };
        let scoped = TaskScope::enter(scope, fut.instrument(span));
        let outcome = match AssertUnwindSafe(Abortable::new(scoped, registration))
            .catch_unwind()
            .await
        {
            Ok(Ok(result)) => Outcome::Finished(result),
            // Cancelled or shut down: whoever aborted us fired the Deferred.
            Ok(Err(_aborted)) => return,
            Err(payload) => Outcome::Panicked(panic_message(&*payload)),
        };
        let Some(scope) = live.disarm() else {
            return;
        };
        if let Some(started) = started {
            record(&scope, started, &outcome);
        }
        if crate::local_task::polling_on_reactor() {
            // Finished on the reactor thread (reactor_polls): fire it as soon as
            // this poll returns, with no mailbox trip.
            crate::local_task::after_poll(Box::new(move || {
                crate::threads::attach(|py| {
                    if let Err(err) = deliver(py, &scope, key, outcome) {
                        crate::errors::report(py, err, "pyo3-twisted: delivering a result");
                    }
                });
            }));
            return;
        }
        let mailbox = Arc::clone(scope.bridge.mailbox());
        mailbox.push(Box::new(move |py| deliver(py, &scope, key, outcome)));
    });
    Counters::bump(&bridge.counters().tasks_spawned);
    if bridge.config().reactor_polls {
        // Its first poll, here and now: a future that starts by calling Python
        // makes that call with no trip through Tokio.
        let ((), owed) = crate::lazy_restore::collecting(|| {
            crate::local_task::LocalTask::start(
                task,
                bridge.reactor_thread_id(),
                engine.handle().clone(),
                bridge.counters_arc(),
            )
        });
        // The poll parked an awaitable and left the caller's context owed: the
        // Deferred's own wait sets the sentinel next, so the two switches cancel.
        if let Some(owed) = owed {
            return match bridge.provider() {
                Some(provider) if yieldable => {
                    provider.make_deferred_yieldable_owing(deferred, owed)
                }
                _ => {
                    owed.pay(py);
                    Ok(deferred)
                }
            };
        }
    } else if engine.submit(task).is_err() {
        // The engine is gone (shutdown raced us): fail now rather than never.
        if bridge.take_entry(key).is_some() {
            Counters::bump(&bridge.counters().tasks_rejected_after_shutdown);
            reject(py, &deferred)?;
        }
    } else {
        bridge.note_handoff(py);
    }
    match bridge.provider() {
        Some(provider) if yieldable => provider.make_deferred_yieldable(deferred),
        _ => Ok(deferred),
    }
}

enum Outcome<O> {
    Finished(PyResult<O>),
    Panicked(String),
}

/// The task's run time and CPU time, into its runtime's histograms. Tokio worker.
fn record<O>(scope: &TaskScope, started: Instant, outcome: &Outcome<O>) {
    let histograms = scope.bridge.histograms();
    let kind = match outcome {
        Outcome::Finished(Ok(_)) => TaskOutcome::Completed,
        Outcome::Finished(Err(_)) => TaskOutcome::Failed,
        Outcome::Panicked(_) => TaskOutcome::Panicked,
    };
    histograms.task_run[kind as usize].observe_duration(started.elapsed());
    if let Some(cpu) = scope.cpu_total() {
        histograms.task_cpu.observe_duration(cpu);
    }
}

fn reject(py: Python<'_>, deferred: &Bound<'_, PyAny>) -> PyResult<()> {
    let err = RuntimeShutdown::new_err(
        "the pyo3-twisted runtime is shutting down and accepts no new work",
    );
    deferred.call_method1(intern!(py, "errback"), (err.into_value(py),))?;
    Ok(())
}

/// The completion job: fires the Deferred unless a cancel or shutdown got there first.
/// Reactor thread.
fn deliver<O>(py: Python<'_>, scope: &TaskScope, key: Key, outcome: Outcome<O>) -> PyResult<()>
where
    for<'a> O: IntoPyObject<'a>,
{
    let bridge = &scope.bridge;
    let Some(entry) = bridge.take_entry(key) else {
        return Ok(());
    };
    // Before the callbacks run, so the request's figures include the Rust work.
    scope.charge_cpu(py);
    let deferred = entry.deferred.bind(py);
    let counters = bridge.counters();
    let (method, arg) = match outcome {
        Outcome::Finished(Ok(value)) => match value.into_bound_py_any(py) {
            Ok(value) => {
                Counters::bump(&counters.tasks_completed);
                (intern!(py, "callback"), value)
            }
            Err(err) => {
                Counters::bump(&counters.tasks_failed);
                (
                    intern!(py, "errback"),
                    err.into_value(py).into_bound(py).into_any(),
                )
            }
        },
        Outcome::Finished(Err(err)) => {
            Counters::bump(&counters.tasks_failed);
            (
                intern!(py, "errback"),
                err.into_value(py).into_bound(py).into_any(),
            )
        }
        Outcome::Panicked(message) => {
            Counters::bump(&counters.tasks_panicked);
            let err = RustPanicError::new_err(message);
            (
                intern!(py, "errback"),
                err.into_value(py).into_bound(py).into_any(),
            )
        }
    };
    let fired = match deferred.call_method1(method, (arg,)) {
        Ok(_) => Ok(()),
        // Someone fired our Deferred by hand: the result has nowhere to go.
        Err(err) if err.is_instance(py, already_called_error(py)?) => Ok(()),
        Err(err) => Err(err),
    };
    bridge.entry_left(py);
    fired
}
