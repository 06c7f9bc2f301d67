//! The logcontext provider: the Python module (Synapse's `synapse.logging.context`, or
//! `pyo3_twisted.logcontext`) through which the crate reads and switches the request's
//! logging context.
//!
//! Every function here runs on the reactor thread with the GIL. A context is only ever
//! switched there, through the provider's `set_current_context` (Synapse checks which
//! thread starts and stops a context). A context that has finished is not re-entered:
//! its work runs in the reactor's own (sentinel) context instead. How a context follows
//! a task across threads is `scope.rs`.

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::report;

/// The functions of a logcontext provider module, looked up at install.
pub(crate) struct Provider {
    current_context: Py<PyAny>,
    set_current_context: Py<PyAny>,
    make_deferred_yieldable: Py<PyAny>,
    /// `SENTINEL_CONTEXT`, if the module names it (Synapse's and ours do).
    sentinel: Option<Py<PyAny>>,
}

impl Provider {
    /// Imports `module` and checks it has what a provider needs.
    pub(crate) fn load(py: Python<'_>, module: &str) -> PyResult<Self> {
        let m = py.import(module).map_err(|err| {
            let e = PyRuntimeError::new_err(format!(
                "cannot import the logcontext provider module {module:?}"
            ));
            e.set_cause(py, Some(err));
            e
        })?;
        let get = |name: &str| -> PyResult<Py<PyAny>> {
            m.getattr(name).map(Bound::unbind).map_err(|_| {
                PyRuntimeError::new_err(format!(
                    "{module:?} is not a logcontext provider: it has no {name}() \
                     (a provider needs current_context, set_current_context and \
                     make_deferred_yieldable)"
                ))
            })
        };
        Ok(Self {
            current_context: get("current_context")?,
            set_current_context: get("set_current_context")?,
            make_deferred_yieldable: get("make_deferred_yieldable")?,
            sentinel: m.getattr("SENTINEL_CONTEXT").ok().map(Bound::unbind),
        })
    }

    /// The current context, unless it is the (falsy) sentinel. Reactor thread.
    pub(crate) fn capture(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let context = self.current_context.bind(py).call0()?;
        Ok(if context.is_truthy()? {
            Some(context.unbind())
        } else {
            None
        })
    }

    pub(crate) fn make_deferred_yieldable<'py>(
        &self,
        deferred: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.make_deferred_yieldable
            .bind(deferred.py())
            .call1((deferred,))
    }

    /// [`Provider::make_deferred_yieldable`] for a caller whose context `owed` is owed
    /// (not current): if `deferred` waits and the sentinel is current, that is
    /// already what `make_deferred_yieldable` would set now, so only the restore
    /// when it fires is added, with no switch now; otherwise the debt is paid first.
    pub(crate) fn make_deferred_yieldable_owing<'py>(
        &self,
        deferred: Bound<'py, PyAny>,
        owed: crate::lazy_restore::Owed,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = deferred.py();
        if let Some(sentinel) = &self.sentinel {
            let fired = deferred.getattr(intern!(py, "called"))?.is_truthy()?
                && !deferred.getattr(intern!(py, "paused"))?.is_truthy()?;
            if !fired && self.current(py)?.is(sentinel.bind(py)) {
                let restore = SetContext {
                    set_current_context: self.set_current_context.clone_ref(py),
                    context: owed.context().clone_ref(py),
                };
                deferred.call_method1(intern!(py, "addBoth"), (restore,))?;
                return Ok(deferred);
            }
        }
        owed.pay(py);
        self.make_deferred_yieldable(deferred)
    }

    /// `make_deferred_yieldable` itself, for Python code that needs it.
    pub(crate) fn make_deferred_yieldable_fn(&self, py: Python<'_>) -> Py<PyAny> {
        self.make_deferred_yieldable.clone_ref(py)
    }

    /// The current context, the sentinel included. Reactor thread.
    pub(crate) fn current<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.current_context.bind(py).call0()
    }

    /// Makes `context` current; returns the one it replaced. Reactor thread.
    pub(crate) fn set<'py>(
        &self,
        py: Python<'py>,
        context: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.set_current_context.bind(py).call1((context,))
    }

    /// Whether the module names `SENTINEL_CONTEXT`, so [`Provider::set_sentinel`]
    /// switches.
    pub(crate) fn names_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// Makes the sentinel current, if the provider names one (`false`: it does
    /// not, nothing was switched). Reactor thread.
    pub(crate) fn set_sentinel(&self, py: Python<'_>) -> PyResult<bool> {
        match &self.sentinel {
            Some(sentinel) => self.set(py, sentinel.bind(py)).map(|_| true),
            None => Ok(false),
        }
    }

    /// Runs `f` with `context` active on this (the reactor) thread, restoring the
    /// previous context on every path. A finished context, or none, is not entered:
    /// `f` runs in the current (sentinel) context. `f` is told whether the previous
    /// context will be restored after it.
    pub(crate) fn with_context<R>(
        &self,
        py: Python<'_>,
        context: Option<&Py<PyAny>>,
        f: impl FnOnce(bool) -> PyResult<R>,
    ) -> PyResult<R> {
        match context.filter(|c| !is_finished(c.bind(py))) {
            Some(context) => self.switched(py, context.bind(py), true, || f(true)),
            None => f(false),
        }
    }

    /// Runs `f` with `context` active, or the sentinel for none or a finished
    /// context (a provider without `SENTINEL_CONTEXT` leaves the current one), and
    /// restores the previous context on every path. Reactor thread.
    pub(crate) fn with_context_or_sentinel<R>(
        &self,
        py: Python<'_>,
        context: Option<&Py<PyAny>>,
        f: impl FnOnce() -> PyResult<R>,
    ) -> PyResult<R> {
        match context
            .filter(|c| !is_finished(c.bind(py)))
            .or(self.sentinel.as_ref())
        {
            Some(target) => self.switched(py, target.bind(py), false, f),
            None => f(),
        }
    }

    /// `lazy`: the restore may be left to a collector (`lazy_restore`).
    fn switched<R>(
        &self,
        py: Python<'_>,
        target: &Bound<'_, PyAny>,
        lazy: bool,
        f: impl FnOnce() -> PyResult<R>,
    ) -> PyResult<R> {
        let set = self.set_current_context.bind(py);
        let previous = set.call1((target,))?;
        let result = f();
        if lazy && crate::lazy_restore::skip(py, &self.set_current_context, &previous) {
            return result;
        }
        if let Err(err) = set.call1((previous,)) {
            report(py, err, "pyo3-twisted: restoring the logcontext");
        }
        result
    }
}

/// A Deferred's callback that sets `context` and passes the result on: the restore
/// `make_deferred_yieldable` adds.
#[pyclass(frozen, module = "pyo3_twisted")]
struct SetContext {
    set_current_context: Py<PyAny>,
    context: Py<PyAny>,
}

#[pymethods]
impl SetContext {
    /// Its two references, for the garbage collector: a context that (through its
    /// request, say) reaches the Deferred this restore is a callback of makes a cycle
    /// the collector must see whole. Both are immutable, so nothing to clear: the
    /// collector breaks such a cycle at the Deferred.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.set_current_context)?;
        visit.call(&self.context)
    }

    fn __call__<'py>(&self, result: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.set_current_context
            .bind(result.py())
            .call1((&self.context,))?;
        Ok(result)
    }
}

fn is_finished(context: &Bound<'_, PyAny>) -> bool {
    context
        .getattr(intern!(context.py(), "finished"))
        .and_then(|f| f.is_truthy())
        .unwrap_or(false)
}
