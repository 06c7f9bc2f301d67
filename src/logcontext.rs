//! The request's logging context, carried across threads.
//!
//! ```text
//!  reactor thread                  Tokio threads                     reactor thread
//!  create_deferred:                the future and its spawn()ed      mailbox jobs on its behalf
//!    ctx = current_context() ───▶  children run inside SCOPE ─────▶ (run_python_awaitable
//!    (never switched here)         (task-local; CPU metered,          factories, log records,
//!                                   contexts never switched)          CPU charge) run with ctx
//!                                                                     active, then the previous
//!                                                                     context is restored
//! ```
//!
//! A context is only ever switched on the reactor thread, through the provider's
//! `set_current_context` (Synapse checks which thread starts and stops a context).
//! A context that has finished is not re-entered: its work runs in the reactor's own
//! (sentinel) context instead. Python objects held by a scope are dropped on the
//! reactor thread.

use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;

use crate::bridge::Bridge;
use crate::cputime::CpuMeter;
use crate::errors::report;

/// The functions of a logcontext provider module, looked up at install.
pub(crate) struct Provider {
    current_context: Py<PyAny>,
    set_current_context: Py<PyAny>,
    make_deferred_yieldable: Py<PyAny>,
    run_in_background: Py<PyAny>,
    /// `SENTINEL_CONTEXT`, if the module names it (Synapse's and ours do).
    sentinel: Option<Py<PyAny>>,
}

impl Provider {
    /// Imports `module` and checks it has what a provider needs.
    pub fn load(py: Python<'_>, module: &str) -> PyResult<Self> {
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
                     (a provider needs current_context, set_current_context, \
                     make_deferred_yieldable and run_in_background)"
                ))
            })
        };
        Ok(Self {
            current_context: get("current_context")?,
            set_current_context: get("set_current_context")?,
            make_deferred_yieldable: get("make_deferred_yieldable")?,
            run_in_background: get("run_in_background")?,
            sentinel: m.getattr("SENTINEL_CONTEXT").ok().map(Bound::unbind),
        })
    }

    /// The current context, unless it is the (falsy) sentinel. Reactor thread.
    pub fn capture(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let context = self.current_context.bind(py).call0()?;
        Ok(if context.is_truthy()? {
            Some(context.unbind())
        } else {
            None
        })
    }

    pub fn make_deferred_yieldable<'py>(
        &self,
        deferred: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.make_deferred_yieldable
            .bind(deferred.py())
            .call1((deferred,))
    }

    /// `make_deferred_yieldable` itself, for Python code that needs it.
    pub fn make_deferred_yieldable_fn(&self, py: Python<'_>) -> Py<PyAny> {
        self.make_deferred_yieldable.clone_ref(py)
    }

    pub fn run_in_background<'py>(
        &self,
        py: Python<'py>,
        f: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run_in_background.bind(py).call1((f,))
    }

    /// Runs `f` with `context` active on this (the reactor) thread, restoring the
    /// previous context on every path. A finished context, or none, is not entered:
    /// `f` runs in the current (sentinel) context.
    pub fn with_context<R>(
        &self,
        py: Python<'_>,
        context: Option<&Py<PyAny>>,
        f: impl FnOnce() -> PyResult<R>,
    ) -> PyResult<R> {
        match context.filter(|c| !is_finished(c.bind(py))) {
            Some(context) => self.switched(py, context.bind(py), f),
            None => f(),
        }
    }

    /// Runs `f` with `context` active, or the sentinel for none or a finished
    /// context (a provider without `SENTINEL_CONTEXT` leaves the current one), and
    /// restores the previous context on every path. Reactor thread.
    pub fn with_context_or_sentinel<R>(
        &self,
        py: Python<'_>,
        context: Option<&Py<PyAny>>,
        f: impl FnOnce() -> PyResult<R>,
    ) -> PyResult<R> {
        match context
            .filter(|c| !is_finished(c.bind(py)))
            .or(self.sentinel.as_ref())
        {
            Some(target) => self.switched(py, target.bind(py), f),
            None => f(),
        }
    }

    fn switched<R>(
        &self,
        py: Python<'_>,
        target: &Bound<'_, PyAny>,
        f: impl FnOnce() -> PyResult<R>,
    ) -> PyResult<R> {
        let set = self.set_current_context.bind(py);
        let previous = set.call1((target,))?;
        let result = f();
        if let Err(err) = set.call1((previous,)) {
            report(py, err, "pyo3-twisted: restoring the logcontext");
        }
        result
    }
}

fn is_finished(context: &Bound<'_, PyAny>) -> bool {
    context
        .getattr(intern!(context.py(), "finished"))
        .and_then(|f| f.is_truthy())
        .unwrap_or(false)
}

/// What a bridged task and its children carry: their runtime, the logging context
/// they work for, and the CPU time they used that is not charged yet.
pub(crate) struct TaskScope {
    pub bridge: Arc<Bridge>,
    context: Option<Py<PyAny>>,
    cpu: Option<Arc<CpuMeter>>,
}

impl crate::live_tasks::HasLiveTasks for TaskScope {
    fn live_tasks(&self) -> &crate::live_tasks::LiveTasks {
        crate::live_tasks::HasLiveTasks::live_tasks(&*self.bridge)
    }
}

tokio::task_local! {
    static SCOPE: Arc<TaskScope>;
}

impl TaskScope {
    pub fn new(bridge: Arc<Bridge>, context: Option<Py<PyAny>>) -> Self {
        let cpu = (context.is_some() && bridge.config().track_cpu_time)
            .then(|| Arc::new(CpuMeter::default()));
        Self {
            bridge,
            context,
            cpu,
        }
    }

    /// The scope of the calling task, if it is a bridged task or one of its children.
    pub fn current() -> Option<Arc<TaskScope>> {
        SCOPE.try_with(Arc::clone).ok()
    }

    /// `fut` running inside `scope`, its CPU time metered.
    pub fn enter<F: std::future::Future>(
        scope: Arc<TaskScope>,
        fut: F,
    ) -> impl std::future::Future<Output = F::Output> {
        let meter = scope.cpu.clone();
        SCOPE.scope(scope, crate::cputime::metered(fut, meter))
    }

    /// The logging context this scope works for; `None` for the sentinel.
    pub fn context(&self) -> Option<&Py<PyAny>> {
        self.context.as_ref()
    }

    /// Runs `f` on the reactor thread with this scope's context active.
    pub fn with_context<R>(&self, py: Python<'_>, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
        match self.bridge.provider() {
            Some(provider) => provider.with_context(py, self.context.as_ref(), f),
            None => f(),
        }
    }

    /// Charges the CPU time metered so far to the context. Reactor thread.
    pub fn charge_cpu(&self, py: Python<'_>) {
        if let (Some(context), Some(meter)) = (&self.context, &self.cpu) {
            charge(py, context, meter);
        }
    }
}

fn charge(py: Python<'_>, context: &Py<PyAny>, meter: &CpuMeter) {
    if let Some((user, system)) = meter.take_seconds() {
        if let Err(err) = context
            .bind(py)
            .call_method1(intern!(py, "add_cputime"), (user, system))
        {
            report(
                py,
                err,
                "pyo3-twisted: charging Rust CPU time to the logcontext",
            );
        }
    }
}

impl Drop for TaskScope {
    /// The last task of a scope is done: charge what its children used since the
    /// bridged future completed, and release the context on the reactor thread.
    fn drop(&mut self) {
        let Some(context) = self.context.take() else {
            return;
        };
        let meter = self.cpu.take();
        let job = move |py: Python<'_>| {
            if let Some(meter) = &meter {
                charge(py, &context, meter);
            }
            drop(context);
            Ok(())
        };
        if self.bridge.is_reactor_thread() {
            crate::threads::attach(job);
        } else {
            self.bridge.mailbox().push(Box::new(job));
        }
    }
}
