//! The Twisted and Python objects this crate calls, looked up once per process.
//! Reactor thread (or any thread holding the GIL).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

macro_rules! cached {
    ($(#[$doc:meta])* $name:ident = $module:literal . $attr:literal) => {
        $(#[$doc])*
        pub(crate) fn $name(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
            static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            CELL.get_or_try_init(py, || Ok(py.import($module)?.getattr($attr)?.unbind()))
                .map(|object| object.bind(py))
        }
    };
}

cached!(
    /// `twisted.internet.defer.Deferred`
    deferred_class = "twisted.internet.defer"."Deferred"
);
cached!(
    /// `twisted.internet.defer.AlreadyCalledError`
    already_called_error = "twisted.internet.defer"."AlreadyCalledError"
);
cached!(
    /// `twisted.internet.defer.CancelledError`
    cancelled_error = "twisted.internet.defer"."CancelledError"
);
cached!(
    /// `twisted.internet.defer.ensureDeferred`
    ensure_deferred = "twisted.internet.defer"."ensureDeferred"
);
cached!(
    /// `twisted.internet.defer.succeed`
    succeed = "twisted.internet.defer"."succeed"
);
cached!(
    /// `twisted.python.failure.Failure`
    failure_class = "twisted.python.failure"."Failure"
);
cached!(
    /// `twisted.python.log.err`
    log_err = "twisted.python.log"."err"
);
cached!(
    /// `types.CoroutineType`
    coroutine_type = "types"."CoroutineType"
);
cached!(
    /// `contextvars.copy_context`
    copy_context = "contextvars"."copy_context"
);
cached!(
    /// `inspect.iscoroutine`
    is_coroutine = "inspect"."iscoroutine"
);

/// `async def _(awaitable): return await awaitable`: drives any awaitable as a
/// coroutine, so `ensureDeferred` accepts it.
pub(crate) fn await_any(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        let module = PyModule::from_code(
            py,
            c"async def await_any(awaitable):\n    return await awaitable\n",
            c"pyo3_twisted/await_any.py",
            c"pyo3_twisted_await_any",
        )?;
        Ok(module.getattr("await_any")?.unbind())
    })
    .map(|f| f.bind(py))
}

/// Turns whatever a factory returned into a Deferred: a Deferred as is, a coroutine
/// or other awaitable driven by `ensureDeferred`, any other value already fired.
/// (asyncio objects are dealt with before, by `asyncio::prepare`).
pub(crate) fn to_deferred(obj: Bound<'_, PyAny>) -> PyResult<Bound<'_, PyAny>> {
    let py = obj.py();
    if obj.is_instance(deferred_class(py)?)? {
        Ok(obj)
    } else if is_coroutine(py)?.call1((&obj,))?.is_truthy()? {
        ensure_deferred(py)?.call1((obj,))
    } else if obj.hasattr(pyo3::intern!(py, "__await__"))? {
        ensure_deferred(py)?.call1((await_any(py)?.call1((obj,))?,))
    } else {
        succeed(py)?.call1((obj,))
    }
}

/// The exception a `Failure` carries, with its traceback attached, as a `PyErr`.
pub(crate) fn failure_to_pyerr(failure: &Bound<'_, PyAny>) -> PyErr {
    let py = failure.py();
    let value = match failure.getattr(pyo3::intern!(py, "value")) {
        Ok(value) => value,
        Err(err) => return err,
    };
    if let Ok(tb) = failure.getattr(pyo3::intern!(py, "tb")) {
        let has_own = value
            .getattr(pyo3::intern!(py, "__traceback__"))
            .map(|own| !own.is_none())
            .unwrap_or(true);
        if !tb.is_none() && !has_own {
            let _ = value.setattr(pyo3::intern!(py, "__traceback__"), tb);
        }
    }
    PyErr::from_value(value)
}
