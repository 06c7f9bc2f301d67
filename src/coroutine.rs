//! A Python coroutine driven from Rust: what `ensureDeferred` does for
//! `run_python_awaitable`, without its Deferred and its Python frames.
//!
//! ```text
//!  reactor thread only
//!  Driver::start(coro) ─ context.run(coro.send, None) ─▶ yields Deferred d ─ d.addBoth(driver)
//!  driver(result)      ─ context.run(coro.send, result)      (a Failure: coro.throw(exception))
//!                        ─▶ yields again … ─▶ StopIteration(v) / exception ─▶ done(outcome)
//!  Driver::cancel      ─ d.cancel() on the Deferred it waits for (the coroutine sees CancelledError)
//!  Driver::adopt(coro, d) ─ a coroutine stepped elsewhere (`resume`) that awaits d: as above from there
//! ```
//!
//! It keeps the rules of Twisted's `ensureDeferred` (inlineCallbacks) that a coroutine
//! can observe: every step runs in one copy of the `contextvars` context taken at the
//! start, a failure is thrown into the coroutine where it awaits (with its
//! traceback), a yielded value that is not a Deferred is sent straight back, the
//! Deferred it waited on gets `None` as its result once the coroutine has it, and a
//! Deferred that fires while it is being waited on does not recurse.
//!
//! A driver waiting on a Deferred is part of a cycle (the Deferred's callbacks hold
//! the driver, the driver the coroutine, whose frame holds the Deferred) that
//! nothing outside may reference once its reactor is gone: the driver shows its
//! references to Python's garbage collector, which can then free the lot, as it
//! frees a coroutine `ensureDeferred` waits for.

use parking_lot::Mutex;
use pyo3::exceptions::{PyBaseException, PyStopIteration, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::{PyTraverseError, PyVisit};

use crate::twisted::{
    copy_context, coroutine_type, deferred_class, failure_class, failure_to_pyerr,
};

/// Called once with the object given to [`Driver::start`] and the coroutine's
/// outcome: its return value or its exception. A function and an object rather
/// than a closure, so the garbage collector sees the driver's reference to it.
/// An exception it hands back is raised from the driver's callback, so it reaches
/// the next callback of the Deferred the coroutine awaited (someone else waits on
/// that Deferred too: `rust_coroutine`'s caller, for a cancellation).
pub(crate) type Done =
    for<'py> fn(&Bound<'py, PyAny>, PyResult<Bound<'py, PyAny>>) -> Option<PyErr>;

/// Whether the coroutine finished during [`Driver::start`] or waits on a Deferred.
pub(crate) enum Started {
    Finished,
    Waiting(Py<Driver>),
}

/// A coroutine and its `send`, looked up once.
struct Coroutine {
    coro: Py<PyAny>,
    send: Py<PyAny>,
}

/// What goes into a coroutine next.
pub(crate) enum Input {
    Send(Py<PyAny>),
    Throw(PyErr),
}

/// What one step of a coroutine came to.
pub(crate) enum Stepped<'py> {
    /// It awaits this (a Deferred, for a coroutine Twisted can drive).
    Yielded(Bound<'py, PyAny>),
    Returned(Bound<'py, PyAny>),
    Raised(PyErr),
}

/// One step of `coro` in the current `contextvars` context, as `yield from` takes
/// it: a value is sent with `PyIter_Send` (a return is handed back as it is, no
/// `StopIteration` made), an exception thrown with `coro.throw`. Reactor thread.
pub(crate) fn resume<'py>(coro: &Bound<'py, PyAny>, input: Input) -> Stepped<'py> {
    let py = coro.py();
    match input {
        Input::Send(value) => {
            let mut out = std::ptr::null_mut();
            // SAFETY: both pointers are live objects (the GIL is held); `out` is
            // set to a new reference unless the result is an error.
            let sent = unsafe { pyo3::ffi::PyIter_Send(coro.as_ptr(), value.as_ptr(), &mut out) };
            if sent == pyo3::ffi::PySendResult::PYGEN_ERROR {
                return Stepped::Raised(PyErr::fetch(py));
            }
            // SAFETY: not an error, so `out` is a new reference.
            let out = unsafe { Bound::from_owned_ptr(py, out) };
            if sent == pyo3::ffi::PySendResult::PYGEN_RETURN {
                Stepped::Returned(out)
            } else {
                Stepped::Yielded(out)
            }
        }
        Input::Throw(err) => {
            let thrown = coro
                .getattr(intern!(py, "throw"))
                .and_then(|throw| throw.call1((err.into_value(py),)));
            match thrown {
                Ok(yielded) => Stepped::Yielded(yielded),
                Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
                    match err.value(py).getattr(intern!(py, "value")) {
                        Ok(value) => Stepped::Returned(value),
                        Err(err) => Stepped::Raised(err),
                    }
                }
                Err(err) => Stepped::Raised(err),
            }
        }
    }
}

/// The exception `throw(typ, val, tb)` raises, as a generator's `throw` makes it.
pub(crate) fn thrown(
    py: Python<'_>,
    typ: Bound<'_, PyAny>,
    val: Option<Bound<'_, PyAny>>,
    tb: Option<Bound<'_, PyAny>>,
) -> PyResult<PyErr> {
    let val = val.filter(|v| !v.is_none());
    let exception = if typ.is_instance_of::<PyBaseException>() {
        typ
    } else if typ
        .cast::<PyType>()
        .is_ok_and(|t| t.is_subclass_of::<PyBaseException>().unwrap_or(false))
    {
        match val {
            Some(val) if val.is_instance(&typ)? => val,
            Some(val) => typ.call1((val,))?,
            None => typ.call0()?,
        }
    } else {
        return Err(PyTypeError::new_err(
            "exceptions must be classes or instances deriving from BaseException",
        ));
    };
    if let Some(tb) = tb.filter(|tb| !tb.is_none()) {
        exception.call_method1(intern!(py, "with_traceback"), (tb,))?;
    }
    Ok(PyErr::from_value(exception))
}

/// `StopIteration(value)`, made now: the trampoline raises it as it is, where a
/// lazy `PyStopIteration::new_err` would box its arguments first.
pub(crate) fn stop_iteration(py: Python<'_>, value: Py<PyAny>) -> PyErr {
    match py.get_type::<PyStopIteration>().call1((value,)) {
        Ok(exception) => PyErr::from_value(exception),
        Err(err) => err,
    }
}

/// The coroutine between steps. Also the callback added to each Deferred it awaits.
#[pyclass(frozen, module = "pyo3_twisted")]
pub(crate) struct Driver {
    state: Mutex<State>,
}

struct State {
    /// The coroutine until it finishes.
    coro: Option<Coroutine>,
    /// `contextvars.Context.run` of the context copied at the start: looked up
    /// once, not at every step.
    run: Py<PyAny>,
    /// What to tell of the outcome, and the function to tell it with.
    done: Option<(Py<PyAny>, Done)>,
    /// The Deferred the coroutine awaits, for `cancel`.
    waiting: Option<Py<PyAny>>,
    /// Inside `addBoth`: a result that arrives now is left here for the loop.
    adding: bool,
    arrived: Option<Input>,
}

/// Whether `value` is a coroutine object (exactly: an `async def`'s), which
/// [`Driver::start`] takes.
pub(crate) fn is_coroutine(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(value.get_type().is(coroutine_type(value.py())?))
}

impl Driver {
    /// Runs `coro` (an exact coroutine object) to its first wait; its outcome goes
    /// to `done(target, outcome)`. Reactor thread.
    pub(crate) fn start(
        py: Python<'_>,
        coro: Bound<'_, PyAny>,
        target: Py<PyAny>,
        done: Done,
    ) -> PyResult<Started> {
        let driver = Self::new(py, coro, target, done)?;
        match run(&driver, Input::Send(py.None())) {
            // Nobody else waits on anything yet: nothing to hand back to.
            Ran::Finished(_) => Ok(Started::Finished),
            Ran::Waiting => Ok(Started::Waiting(driver.unbind())),
        }
    }

    /// Takes over `coro`, which was stepped elsewhere (in the caller's own
    /// context) and now awaits `yielded`, a Deferred: from here on it is driven as
    /// [`Driver::start`] drives one, in a copy of the context current now.
    /// Reactor thread.
    pub(crate) fn adopt(
        py: Python<'_>,
        coro: Bound<'_, PyAny>,
        yielded: Bound<'_, PyAny>,
        target: Py<PyAny>,
        done: Done,
    ) -> PyResult<Started> {
        let driver = Self::new(py, coro, target, done)?;
        let ran = match wait_on(&driver, yielded) {
            None => Ran::Waiting,
            Some(input) => run(&driver, input),
        };
        match ran {
            Ran::Finished(_) => Ok(Started::Finished),
            Ran::Waiting => Ok(Started::Waiting(driver.unbind())),
        }
    }

    fn new<'py>(
        py: Python<'py>,
        coro: Bound<'py, PyAny>,
        target: Py<PyAny>,
        done: Done,
    ) -> PyResult<Bound<'py, Self>> {
        let context_run = copy_context(py)?.call0()?.getattr(intern!(py, "run"))?;
        let send = coro.getattr(intern!(py, "send"))?;
        Bound::new(
            py,
            Driver {
                state: Mutex::new(State {
                    coro: Some(Coroutine {
                        coro: coro.unbind(),
                        send: send.unbind(),
                    }),
                    run: context_run.unbind(),
                    done: Some((target, done)),
                    waiting: None,
                    adding: false,
                    arrived: None,
                }),
            },
        )
    }

    /// The Deferred the coroutine awaits now, if it waits.
    pub(crate) fn waiting<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state
            .lock()
            .waiting
            .as_ref()
            .map(|d| d.bind(py).clone())
    }
}

/// How far [`run`] got.
enum Ran {
    /// Waiting on a pending Deferred.
    Waiting,
    /// Finished (`done` called); what `done` handed back.
    Finished(Option<PyErr>),
}

#[pymethods]
impl Driver {
    /// The awaited Deferred's outcome: the next step.
    fn __call__(slf: &Bound<'_, Self>, result: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let input = if result.is_instance(failure_class(py)?)? {
            Input::Throw(failure_to_pyerr(&result))
        } else {
            Input::Send(result.unbind())
        };
        let run_now = {
            let mut state = slf.get().state.lock();
            state.waiting = None;
            if state.adding {
                state.arrived = Some(input);
                None
            } else {
                Some(input)
            }
        };
        if let Some(input) = run_now {
            if let Ran::Finished(Some(err)) = run(slf, input) {
                return Err(err);
            }
        }
        Ok(py.None())
    }

    /// The Python objects the driver holds, for the garbage collector. A state
    /// locked now (never across a call into Python) is skipped: the collector then
    /// keeps the cycle this time.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(state) = self.state.try_lock() else {
            return Ok(());
        };
        if let Some(coroutine) = &state.coro {
            visit.call(&coroutine.coro)?;
            visit.call(&coroutine.send)?;
        }
        visit.call(&state.run)?;
        visit.call(&state.waiting)?;
        if let Some(Input::Send(value)) = &state.arrived {
            visit.call(value)?;
        }
        visit.call(state.done.as_ref().map(|(target, _)| target))?;
        Ok(())
    }

    /// Breaks a cycle the collector found unreachable: the coroutine, what it waits
    /// on and whom it would tell are let go (dropped after the lock is released,
    /// since dropping them may run Python).
    fn __clear__(&self) {
        let taken = {
            let mut state = self.state.lock();
            (
                state.coro.take(),
                state.waiting.take(),
                state.arrived.take(),
                state.done.take(),
            )
        };
        drop(taken);
    }

    /// Cancels the Deferred the coroutine awaits, if any.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        let waiting = self.state.lock().waiting.as_ref().map(|d| d.clone_ref(py));
        if let Some(deferred) = waiting {
            deferred.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }
}

/// Steps the coroutine until it waits on a pending Deferred or finishes (`done`
/// called).
fn run(driver: &Bound<'_, Driver>, mut input: Input) -> Ran {
    let py = driver.py();
    loop {
        // Only what this step calls: the coroutine itself only to throw into it.
        let (run, method) = {
            let state = driver.get().state.lock();
            let Some(coroutine) = &state.coro else {
                return Ran::Finished(None);
            };
            let method = match &input {
                Input::Send(_) => coroutine.send.clone_ref(py),
                Input::Throw(_) => coroutine.coro.clone_ref(py),
            };
            (state.run.clone_ref(py), method)
        };
        let run = run.bind(py);
        let stepped = match input {
            Input::Send(value) => run.call1((method, value)),
            Input::Throw(err) => method
                .bind(py)
                .getattr(intern!(py, "throw"))
                .and_then(|throw| run.call1((throw, err.into_value(py)))),
        };
        let yielded = match stepped {
            Ok(yielded) => yielded,
            Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
                let value = err.value(py).getattr(intern!(py, "value"));
                return Ran::Finished(finish(driver, value));
            }
            Err(err) => return Ran::Finished(finish(driver, Err(err))),
        };
        let deferred = match as_wait(yielded) {
            Ok(deferred) => deferred,
            Err(next) => {
                input = next;
                continue;
            }
        };
        match wait_on(driver, deferred) {
            Some(next) => input = next,
            None => return Ran::Waiting,
        }
    }
}

/// What a coroutine yielded, as Twisted's driver takes it: a Deferred to wait on,
/// or else what goes back into the coroutine at once (the value itself, as
/// inlineCallbacks sends it straight back).
pub(crate) fn as_wait(yielded: Bound<'_, PyAny>) -> Result<Bound<'_, PyAny>, Input> {
    match deferred_class(yielded.py()).and_then(|class| yielded.is_instance(class)) {
        Ok(true) => Ok(yielded),
        Ok(false) => Err(Input::Send(yielded.unbind())),
        Err(err) => Err(Input::Throw(err)),
    }
}

/// Waits on `deferred`, a Deferred the coroutine yielded: `None` if it is pending
/// now, else what goes into the coroutine next (it fired at once, or `addBoth`
/// failed).
fn wait_on(driver: &Bound<'_, Driver>, deferred: Bound<'_, PyAny>) -> Option<Input> {
    let py = driver.py();
    {
        let mut state = driver.get().state.lock();
        state.waiting = Some(deferred.clone().unbind());
        state.adding = true;
    }
    let added = deferred.call_method1(intern!(py, "addBoth"), (driver,));
    let arrived = {
        let mut state = driver.get().state.lock();
        state.adding = false;
        state.arrived.take()
    };
    match (added, arrived) {
        (_, Some(next)) => Some(next),
        (Ok(_), None) => None,
        (Err(err), None) => Some(Input::Throw(err)),
    }
}

fn finish(driver: &Bound<'_, Driver>, outcome: PyResult<Bound<'_, PyAny>>) -> Option<PyErr> {
    let (done, finished) = {
        let mut state = driver.get().state.lock();
        let finished = (state.coro.take(), state.waiting.take());
        (state.done.take(), finished)
    };
    // Released outside the lock: dropping them may run Python.
    drop(finished);
    done.and_then(|(target, done)| done(target.bind(driver.py()), outcome))
}
