//! Twisted's asyncio reactor: awaitables that belong to asyncio.
//!
//! ```text
//!  factory() returns          on the asyncio reactor                  elsewhere
//!  Deferred                   as is                                   as is
//!  asyncio future / Task      Deferred.fromFuture                     error: its loop never runs
//!  coroutine                  ensureDeferred, asyncio futures it      ensureDeferred
//!                             awaits relayed as (yieldable) Deferreds
//! ```
//!
//! Reactor thread only. The relay lives in `asyncio_driver.py` (why Twisted drives and
//! not an asyncio Task is explained there); it is loaded once per process.

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::logcontext::Provider;
use crate::twisted::{coroutine_type, deferred_class};

/// The asyncio event loop behind a reactor, with what the relay needs.
pub(crate) struct AsyncioLoop {
    event_loop: Py<PyAny>,
    make_yieldable: Option<Py<PyAny>>,
}

impl AsyncioLoop {
    /// The loop of `reactor` if it is Twisted's `AsyncioSelectorReactor`.
    pub(crate) fn of_reactor(
        reactor: &Bound<'_, PyAny>,
        provider: Option<&Provider>,
    ) -> PyResult<Option<Self>> {
        let py = reactor.py();
        let Some(event_loop) = reactor.getattr_opt(intern!(py, "_asyncioEventloop"))? else {
            return Ok(None);
        };
        Ok(Some(Self {
            event_loop: event_loop.unbind(),
            make_yieldable: provider.map(|p| p.make_deferred_yieldable_fn(py)),
        }))
    }

    /// A Deferred for a coroutine or an asyncio future; anything else unchanged.
    pub(crate) fn adapt<'py>(&self, obj: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = obj.py();
        driver(py)?.getattr(intern!(py, "adapt"))?.call1((
            obj,
            self.event_loop.bind(py),
            self.make_yieldable.as_ref().map(|f| f.bind(py)),
        ))
    }
}

/// What a factory returned, made fit for the reactor: on the asyncio reactor
/// (`asyncio` is its loop) asyncio futures and coroutines become Deferreds; elsewhere
/// an asyncio future is refused. Anything else comes back unchanged.
pub(crate) fn prepare<'py>(
    asyncio: Option<&AsyncioLoop>,
    obj: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    match asyncio {
        Some(asyncio) => asyncio.adapt(obj),
        None => {
            reject_future(&obj)?;
            Ok(obj)
        }
    }
}

/// On a reactor that is not asyncio's, an asyncio future would never complete (no
/// loop runs it): refuse it with a message that says so.
fn reject_future(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = obj.py();
    // The common answers without a Python call: a coroutine or a Deferred.
    if obj.get_type().is(coroutine_type(py)?) || obj.is_instance(deferred_class(py)?)? {
        return Ok(());
    }
    if is_future(py)?.call1((obj,))?.is_truthy()? {
        return Err(PyTypeError::new_err(format!(
            "run_python_awaitable got an asyncio future ({}), but the reactor is not \
             Twisted's asyncio reactor, so no asyncio loop runs it: install \
             twisted.internet.asyncioreactor, or return a Deferred or coroutine",
            obj.get_type().name()?
        )));
    }
    Ok(())
}

fn driver(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || {
            let code = std::ffi::CString::new(include_str!("asyncio_driver.py"))?;
            Ok::<_, PyErr>(
                PyModule::from_code(
                    py,
                    &code,
                    c"pyo3_twisted/asyncio_driver.py",
                    c"pyo3_twisted_asyncio_driver",
                )?
                .unbind(),
            )
        })
        .map(|m| m.bind(py))
}

fn is_future(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("asyncio")?.getattr("isfuture")?.unbind())
    })
    .map(|f| f.bind(py))
}
