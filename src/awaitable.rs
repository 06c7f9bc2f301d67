//! Python awaitable → Rust future.
//!
//! ```text
//!  Tokio task (no GIL)                       reactor thread (mailbox job)
//!  run_python_awaitable(f) ──start job────▶  with the task's logcontext active:
//!                                              d = run_in_background(f)  (provider)
//!                                              d = f() as a Deferred     (no provider)
//!                                            d.addBoth(Resolver)
//!  .await ◀─────────── oneshot ───────────── Resolver: value or Failure, converted here
//!  future dropped early ──cancel job──────▶  d.cancel()  (the Python side sees CancelledError)
//! ```
//!
//! The calling Tokio thread never takes the GIL: it pushes a job and waits on a
//! channel. The factory, the conversion of the result and the release of every Python
//! object run on the reactor thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use tokio::sync::oneshot;

use crate::bridge::Bridge;
use crate::errors::RuntimeShutdown;
use crate::scope::TaskScope;
use crate::stats::Counters;
use crate::twisted::{failure_class, failure_to_pyerr, to_deferred};

type BoxedFactory = Box<dyn for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send>;
type Completer = Box<dyn for<'py> FnOnce(Python<'py>, PyResult<Bound<'py, PyAny>>) + Send>;

/// State shared by the Tokio side and the reactor side of one call.
#[derive(Default)]
struct Shared {
    /// The Rust future is gone: do not start the awaitable.
    abandoned: AtomicBool,
    /// The Deferred while it is pending, for cancellation.
    deferred: Mutex<Option<Py<PyAny>>>,
}

/// The call itself. `keep` (the caller's reactor reference, if any) is released on
/// the reactor thread.
pub(crate) async fn run<K, C, T>(
    bridge: Arc<Bridge>,
    keep: K,
    factory: BoxedFactory,
    convert: C,
) -> PyResult<T>
where
    K: Send + 'static,
    C: for<'py> FnOnce(&Bound<'py, PyAny>) -> PyResult<T> + Send + 'static,
    T: Send + 'static,
{
    if bridge.is_stopped() {
        return Err(RuntimeShutdown::new_err(
            "the pyo3-twisted runtime has shut down",
        ));
    }
    let (tx, rx) = oneshot::channel::<PyResult<T>>();
    let complete: Completer = Box::new(move |_py, result| {
        // If the Rust side is gone the value is dropped here, on the reactor thread.
        let _ = tx.send(result.and_then(|obj| convert(&obj)));
    });
    let shared = Arc::new(Shared::default());
    let scope = TaskScope::current();
    // Entered on the reactor thread while the factory runs: Rust it calls back into
    // (a `create_deferred`) starts under the calling task's span.
    let span = tracing::Span::current();
    let job_shared = Arc::clone(&shared);
    let job_bridge = Arc::clone(&bridge);
    let job = move |py: Python<'_>| {
        drop(keep);
        let _entered = span.enter();
        start(
            py,
            &job_bridge,
            scope.as_deref(),
            factory,
            complete,
            job_shared,
        )
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
    let result = rx.await;
    guard.armed = false;
    result.unwrap_or_else(|_| {
        Err(RuntimeShutdown::new_err(
            "the Python awaitable never completed: the reactor stopped before it could \
             run or finish",
        ))
    })
}

/// The start job. Reactor thread.
fn start(
    py: Python<'_>,
    bridge: &Arc<Bridge>,
    scope: Option<&TaskScope>,
    factory: BoxedFactory,
    complete: Completer,
    shared: Arc<Shared>,
) -> PyResult<()> {
    // Abandoned, or reached in the last drain of a stopped runtime: never start it
    // (dropping `complete` tells a waiting caller `RuntimeShutdown`).
    if shared.abandoned.load(Ordering::Acquire) || bridge.is_stopped() {
        return Ok(());
    }
    Counters::bump(&bridge.counters().awaitables_started);
    let started = match bridge.provider() {
        // The provider's run_in_background runs the factory in the task's context
        // and keeps the rules for whatever it returns.
        Some(provider) => {
            let begin = || {
                let factory = Bound::new(
                    py,
                    Factory {
                        f: Mutex::new(Some(factory)),
                        bridge: Arc::downgrade(bridge),
                    },
                )?;
                provider.run_in_background(py, factory.into_any())
            };
            match scope {
                Some(scope) => scope.with_context(py, begin),
                None => begin(),
            }
        }
        None => match factory(py) {
            // A plain value needs no Deferred: answer at once.
            Ok(value) if is_plain_value(&value) => {
                Counters::bump(&bridge.counters().awaitables_completed);
                let polls = crate::local_task::polls_run();
                complete(py, Ok(value));
                // Started inside the waiter's own reactor-thread poll, or the waiter
                // ran here: nobody to linger for.
                if !crate::local_task::polling_on_reactor()
                    && crate::local_task::polls_run() == polls
                {
                    bridge.note_handoff(py);
                }
                return Ok(());
            }
            Ok(value) => crate::asyncio::prepare(bridge.asyncio(), value).and_then(to_deferred),
            Err(err) => Err(err),
        },
    };
    let resolver = Bound::new(
        py,
        Resolver {
            complete: Mutex::new(Some(complete)),
            shared: Arc::clone(&shared),
            bridge: Arc::downgrade(bridge),
        },
    )?;
    match started {
        Ok(deferred) => {
            deferred.call_method1(intern!(py, "addBoth"), (&resolver,))?;
            if resolver.get().complete.lock().is_some() {
                *shared.deferred.lock() = Some(deferred.unbind());
            }
        }
        Err(err) => resolver.get().resolve(py, Err(err)),
    }
    Ok(())
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

/// Calls the Rust factory once, from `run_in_background` (so it runs in the
/// provider's idea of the current context).
#[pyclass(frozen, module = "pyo3_twisted")]
struct Factory {
    f: Mutex<Option<BoxedFactory>>,
    /// For the asyncio reactor: what the factory returns is adapted before the
    /// provider sees it (the provider knows Deferreds and coroutines, not futures).
    bridge: std::sync::Weak<Bridge>,
}

#[pymethods]
impl Factory {
    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let f = self.f.lock().take();
        match f {
            Some(f) => {
                let made = f(py)?;
                match self.bridge.upgrade() {
                    Some(bridge) => crate::asyncio::prepare(bridge.asyncio(), made),
                    None => Ok(made),
                }
            }
            None => Err(PyRuntimeError::new_err(
                "pyo3-twisted: an awaitable factory was called twice",
            )),
        }
    }
}

/// Added with `addBoth`: hands the outcome to the waiting Rust future and swallows
/// it, so a failure never reaches "Unhandled error in Deferred".
#[pyclass(frozen, module = "pyo3_twisted")]
struct Resolver {
    complete: Mutex<Option<Completer>>,
    shared: Arc<Shared>,
    bridge: std::sync::Weak<Bridge>,
}

impl Resolver {
    fn resolve(&self, py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>) {
        let complete = self.complete.lock().take();
        let deferred = self.shared.deferred.lock().take();
        drop(deferred);
        if let Some(complete) = complete {
            let bridge = self.bridge.upgrade();
            if let Some(bridge) = &bridge {
                Counters::bump(&bridge.counters().awaitables_completed);
            }
            let polls = crate::local_task::polls_run();
            complete(py, outcome);
            // The waiting task will answer soon: linger for it, unless it already
            // ran here (reactor_polls).
            if let Some(bridge) = bridge {
                if crate::local_task::polls_run() == polls {
                    bridge.note_handoff(py);
                }
            }
        }
    }
}

#[pymethods]
impl Resolver {
    fn __call__(&self, py: Python<'_>, result: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let outcome = if result.is_instance(failure_class(py)?)? {
            Err(failure_to_pyerr(&result))
        } else {
            Ok(result)
        };
        self.resolve(py, outcome);
        Ok(py.None())
    }
}

/// Cancels the Python side when the Rust future is dropped before it resolved.
struct CancelOnDrop {
    bridge: Arc<Bridge>,
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.shared.abandoned.store(true, Ordering::Release);
        // Queued after the start job, so it finds the Deferred if one was made.
        let shared = Arc::clone(&self.shared);
        self.bridge.mailbox().push(Box::new(move |py| {
            let deferred = shared.deferred.lock().take();
            if let Some(deferred) = deferred {
                deferred.bind(py).call_method0(intern!(py, "cancel"))?;
            }
            Ok(())
        }));
    }
}
