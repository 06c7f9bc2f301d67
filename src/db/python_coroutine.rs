//! A Rust transaction through a Python pool's `runInteraction`, awaited by Python
//! as a coroutine with no Rust future: the shape of a handler that reads, then
//! answers.
//!
//! ```text
//!  reactor thread (the awaiting coroutine's step)          DB thread (the pool's)
//!  send(None): pool.runInteraction(name, cb) ─▶ its coroutine,
//!              stepped as `yield from` ─▶ yields what it awaits ─▶ cb(txn): the closure
//!  send(x):    stepped again ─▶ returns ─▶ then(py, result) ─▶ StopIteration(answer)
//! ```
//!
//! Every function here runs on the reactor thread, in the awaiting coroutine's step,
//! except the callback (`python::TransactionCallback`), which runs on the DB thread.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::python::{Attempt, Interaction, InteractionFn, PythonDatabasePool, TransactionCallback};
use super::Transaction;
use crate::coroutine::{is_coroutine, resume, stop_iteration, thrown, Input, Stepped};
use crate::runtime::Runtime;

/// One call's closure, its outcome and `then`, in one allocation: the awaitable's
/// steps see it as [`Answer`], the DB thread's callback as [`Attempt`].
struct Call<F, R, T> {
    interaction: Interaction<F, R>,
    then: Mutex<Option<T>>,
}

/// What the awaitable's steps need of a call, whatever its types. Reactor thread.
trait Answer: Send + Sync {
    /// `then` of the committed attempt's value, once `runInteraction` succeeded;
    /// `committed` learns whether the transaction committed before `then` runs.
    fn answer(
        &self,
        py: Python<'_>,
        name: &'static str,
        committed: &mut dyn FnMut(bool),
    ) -> PyResult<Py<PyAny>>;

    /// Gives up: the closure and `then` are dropped here (the closure goes with the
    /// callback instead if the DB thread is running it now).
    fn let_go(&self);

    /// How many times the closure ran.
    fn attempts(&self) -> &AtomicU32;

    /// The same call, as the DB thread's callback sees it.
    fn for_callback(self: Arc<Self>) -> Arc<dyn Attempt>;
}

impl<F, R, T> Answer for Call<F, R, T>
where
    F: InteractionFn<R> + 'static,
    R: Send + 'static,
    T: FnOnce(Python<'_>, R) -> PyResult<Py<PyAny>> + Send + 'static,
{
    fn answer(
        &self,
        py: Python<'_>,
        name: &'static str,
        committed: &mut dyn FnMut(bool),
    ) -> PyResult<Py<PyAny>> {
        let value = self.interaction.finish(name);
        committed(value.is_ok());
        let then = self.then.lock().take();
        match (value, then) {
            (Ok(value), Some(then)) => then(py, value),
            (Err(err), _) => Err(PyRuntimeError::new_err(format!("{err:#}"))),
            (Ok(_), None) => Err(PyRuntimeError::new_err(format!(
                "run_interaction({name}): answered already"
            ))),
        }
    }

    fn let_go(&self) {
        self.interaction.let_go();
        drop(self.then.lock().take());
    }

    fn attempts(&self) -> &AtomicU32 {
        &self.interaction.attempts
    }

    fn for_callback(self: Arc<Self>) -> Arc<dyn Attempt> {
        self
    }
}

impl<F: InteractionFn<R>, R: Send, T: Send> Attempt for Call<F, R, T> {
    fn attempt(
        &self,
        py: Python<'_>,
        name: &'static str,
        runtime: &tokio::runtime::Handle,
        txn: &mut dyn Transaction,
    ) -> PyResult<()> {
        self.interaction.attempt(py, name, runtime, txn)
    }
}

impl PythonDatabasePool {
    /// `func` in a transaction through the Python pool's `runInteraction`, as an
    /// awaitable for the reactor thread whose value is `then(py, result)`.
    ///
    /// What [`run_interaction`](super::DatabasePoolExt::run_interaction) inside
    /// [`create_coroutine`](crate::create_coroutine) does for a handler whose work
    /// is one transaction and an answer, without a Rust future: no task, no waker,
    /// no context capture. Awaiting it is awaiting `runInteraction(name, ...)` from
    /// a Python coroutine (`yield from`): the transaction starts at the first step,
    /// in the awaiting coroutine's logging and `contextvars` contexts; the pool keeps
    /// the logcontext rules around its wait, charges the database time and retries
    /// the closure on serialization failures; a cancellation (or any `throw`) goes
    /// to `runInteraction`'s coroutine. Then `then` runs on the reactor thread, in
    /// the caller's context, and its value is the awaitable's.
    ///
    /// A failure is the Python exception `runInteraction` raised: the closure's
    /// database error as the driver raised it, its other errors as `RuntimeError`,
    /// its panic as `RustPanicError`. The closure is dropped on the reactor thread,
    /// where the awaitable is done with it.
    ///
    /// Awaitable once, from a coroutine on the reactor thread (or with
    /// `ensureDeferred`).
    ///
    /// ```no_run
    /// use futures_util::FutureExt;
    /// use pyo3::prelude::*;
    /// use pyo3_twisted::db::{DbRowExt, PythonDatabasePool};
    ///
    /// fn count_users<'py>(py: Python<'py>, pool: &PythonDatabasePool) -> PyResult<Bound<'py, PyAny>> {
    ///     pool.run_interaction_coroutine(
    ///         py,
    ///         "count_users",
    ///         |txn| async move {
    ///             let rows = txn.query("SELECT COUNT(*) FROM users", &[]).await?;
    ///             rows[0].try_get::<i64>(0)
    ///         }
    ///         .boxed(),
    ///         |py, count| Ok(count.into_pyobject(py)?.into_any().unbind()),
    ///     )
    /// }
    /// ```
    pub fn run_interaction_coroutine<'py, R, F, T>(
        &self,
        py: Python<'py>,
        name: &'static str,
        func: F,
        then: T,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        R: Send + 'static,
        F: for<'txn> Fn(&'txn mut dyn Transaction) -> BoxFuture<'txn, anyhow::Result<R>>
            + Send
            + 'static,
        T: FnOnce(Python<'_>, R) -> PyResult<Py<PyAny>> + Send + 'static,
    {
        let Some(runtime) = self.runtime() else {
            return Err(PyRuntimeError::new_err(format!(
                "PythonDatabasePool has no pyo3-twisted runtime: {}",
                self.broken_reason()
            )));
        };
        let call = Arc::new(Call {
            interaction: Interaction::new(func),
            then: Mutex::new(Some(then)),
        });
        let coroutine = InteractionCoroutine {
            state: Mutex::new(State::Created(Created {
                pool: self.clone_for_coroutine(),
                runtime: runtime.clone(),
                call,
            })),
            name,
        };
        Ok(Bound::new(py, coroutine)?.into_any())
    }
}

/// A `run_interaction_coroutine` awaitable.
#[pyclass(frozen, module = "pyo3_twisted")]
struct InteractionCoroutine {
    state: Mutex<State>,
    name: &'static str,
}

enum State {
    Created(Created),
    Running(Running),
    /// Inside a step (which runs Python).
    Executing,
    Done,
}

struct Created {
    pool: PythonDatabasePool,
    runtime: Runtime,
    call: Arc<dyn Answer>,
}

struct Running {
    /// `runInteraction`'s coroutine (or its awaitable's `__await__` iterator).
    inner: Py<PyAny>,
    call: Arc<dyn Answer>,
    runtime: Runtime,
    started: Instant,
}

impl InteractionCoroutine {
    fn step(&self, py: Python<'_>, input: Input) -> PyResult<Py<PyAny>> {
        let mut state = self.state.lock();
        let running = match std::mem::replace(&mut *state, State::Executing) {
            State::Created(created) => {
                if let Input::Send(value) = &input {
                    if !value.is_none(py) {
                        // As a coroutine does: refused, and still ready to start.
                        *state = State::Created(created);
                        return Err(PyTypeError::new_err(
                            "can't send non-None value to a just-started coroutine",
                        ));
                    }
                }
                if let Input::Throw(err) = input {
                    *state = State::Done;
                    return Err(err);
                }
                drop(state);
                let started = self.start(py, created);
                state = self.state.lock();
                match started {
                    Ok(running) => running,
                    Err(err) => {
                        *state = State::Done;
                        return Err(err);
                    }
                }
            }
            State::Running(running) => running,
            State::Executing => {
                *state = State::Executing;
                return Err(PyValueError::new_err("coroutine already executing"));
            }
            State::Done => {
                *state = State::Done;
                return Err(PyRuntimeError::new_err(
                    "cannot reuse already awaited coroutine",
                ));
            }
        };
        // Stepped with the lock released: the step runs Python, which may drop or
        // touch this object.
        drop(state);
        let stepped = resume(running.inner.bind(py), input);
        match stepped {
            Stepped::Yielded(yielded) => {
                let yielded = yielded.unbind();
                let mut state = self.state.lock();
                // Closed (or cleared) from inside the step: stays so.
                if matches!(*state, State::Executing) {
                    *state = State::Running(running);
                }
                Ok(yielded)
            }
            Stepped::Returned(_) => {
                *self.state.lock() = State::Done;
                let Running {
                    call,
                    runtime,
                    started,
                    ..
                } = running;
                let answer = call.answer(py, self.name, &mut |committed| {
                    super::record_interaction(
                        Some(runtime.bridge()),
                        "python",
                        self.name,
                        call.attempts(),
                        committed,
                        started,
                    )
                });
                Err(stop_iteration(py, answer?))
            }
            Stepped::Raised(err) => {
                *self.state.lock() = State::Done;
                let Running {
                    call,
                    runtime,
                    started,
                    ..
                } = running;
                call.let_go();
                super::record_interaction(
                    Some(runtime.bridge()),
                    "python",
                    self.name,
                    call.attempts(),
                    false,
                    started,
                );
                Err(err)
            }
        }
    }

    /// The first step: `runInteraction` called, its coroutine ready to step.
    fn start(&self, py: Python<'_>, created: Created) -> PyResult<Running> {
        let Created {
            pool,
            runtime,
            call,
        } = created;
        runtime
            .bridge()
            .check_reactor_thread("awaiting a run_interaction_coroutine awaitable")?;
        let callback = Bound::new(
            py,
            TransactionCallback::new(
                self.name,
                Arc::clone(&call).for_callback(),
                runtime.tokio_handle()?,
            ),
        )?;
        let awaitable = pool
            .python_pool(py)?
            .call_method1(intern!(py, "runInteraction"), (self.name, callback))?;
        // As `await` takes it: a coroutine is stepped itself, anything else through
        // its `__await__` iterator.
        let inner = if is_coroutine(&awaitable)? {
            awaitable.unbind()
        } else {
            awaitable.call_method0(intern!(py, "__await__"))?.unbind()
        };
        Ok(Running {
            inner,
            call,
            runtime,
            started: Instant::now(),
        })
    }
}

#[pymethods]
impl InteractionCoroutine {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.step(py, Input::Send(py.None()))
    }

    fn send(&self, py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.step(py, Input::Send(value.unbind()))
    }

    /// Into `runInteraction`'s coroutine, which may catch it.
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: Bound<'_, PyAny>,
        val: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let err = thrown(py, typ, val, tb)?;
        self.step(py, Input::Throw(err))
    }

    /// Closes `runInteraction`'s coroutine if it started; the closure is dropped.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let previous = std::mem::replace(&mut *self.state.lock(), State::Done);
        if let State::Running(running) = previous {
            running.call.let_go();
            if let Ok(close) = running.inner.bind(py).getattr(intern!(py, "close")) {
                close.call0()?;
            }
        }
        Ok(())
    }

    /// `runInteraction`'s coroutine: its frame holds what it awaits, whose callbacks
    /// hold the caller, which holds this awaitable.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(state) = self.state.try_lock() {
            if let State::Running(running) = &*state {
                visit.call(&running.inner)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let previous = std::mem::replace(&mut *self.state.lock(), State::Done);
        drop(previous);
    }

    fn __repr__(&self) -> String {
        format!("<run_interaction_coroutine {}>", self.name)
    }
}
