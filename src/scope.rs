//! The scope every bridged task runs in: its runtime, the request's logging context,
//! and the CPU time it used that is not charged yet.
//!
//! ```text
//!  reactor thread                  Tokio threads                     reactor thread
//!  create_deferred:                the future and its spawn()ed      mailbox jobs on its behalf
//!    TaskScope::new(bridge, ctx) ▶ children run inside SCOPE ─────▶ run with ctx active
//!                                  (task-local; CPU metered)         (TaskScope::with_context);
//!                                                                    CPU charged; ctx released
//! ```
//!
//! [`TaskScope::new`], [`TaskScope::with_context`] and [`TaskScope::charge_cpu`] run on
//! the reactor thread; [`TaskScope::current`] and [`TaskScope::enter`] on any thread.
//! The last reference may drop anywhere: the context is then released on the reactor
//! thread, through the mailbox.

use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;

use crate::bridge::Bridge;
use crate::cputime::CpuMeter;
use crate::errors::report;

/// What a bridged task and its children carry: their runtime, the logging context
/// they work for, and the CPU time they used that is not charged yet.
pub(crate) struct TaskScope {
    pub bridge: Arc<Bridge>,
    context: Option<Py<PyAny>>,
    /// Inline, not behind its own `Arc`: the metered future holds the scope.
    cpu: Option<CpuMeter>,
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
    pub(crate) fn new(bridge: Arc<Bridge>, context: Option<Py<PyAny>>) -> Self {
        let cpu = (context.is_some() && bridge.config().track_cpu_time).then(CpuMeter::default);
        Self {
            bridge,
            context,
            cpu,
        }
    }

    /// The scope of the calling task, if it is a bridged task or one of its children.
    pub(crate) fn current() -> Option<Arc<TaskScope>> {
        SCOPE.try_with(Arc::clone).ok()
    }

    /// The runtime the caller works for: its task scope's, else the one owning the
    /// calling Tokio thread. Any thread, no GIL.
    pub(crate) fn current_bridge() -> Option<Arc<Bridge>> {
        Self::bridge_of(Self::current().as_ref())
    }

    /// `scope`'s runtime, else the one owning the calling Tokio thread.
    pub(crate) fn bridge_of(scope: Option<&Arc<TaskScope>>) -> Option<Arc<Bridge>> {
        scope
            .map(|scope| Arc::clone(&scope.bridge))
            .or_else(Bridge::of_current_thread)
    }

    /// `fut` running inside `scope`, its CPU time metered.
    pub(crate) fn enter<F: std::future::Future>(
        scope: Arc<TaskScope>,
        fut: F,
    ) -> impl std::future::Future<Output = F::Output> {
        let meter = scope.cpu.is_some().then(|| ScopeMeter(Arc::clone(&scope)));
        SCOPE.scope(scope, crate::cputime::metered(fut, meter))
    }

    /// One poll (or the drop) of a future that no [`TaskScope::enter`] wraps: inside
    /// this scope and `span`, its CPU time metered as `enter` meters it. What a
    /// `create_coroutine` coroutine polls with, so its future takes one box, not two.
    pub(crate) fn poll_inside<R>(
        self: &Arc<Self>,
        span: &tracing::Span,
        poll: impl FnOnce() -> R,
    ) -> R {
        SCOPE.sync_scope(Arc::clone(self), || {
            crate::cputime::meter_poll(self.cpu.as_ref(), || {
                let _entered = span.enter();
                poll()
            })
        })
    }

    /// The thread CPU time this scope's tasks used, where it is metered.
    pub(crate) fn cpu_total(&self) -> Option<std::time::Duration> {
        self.cpu.as_ref().map(|meter| meter.total())
    }

    /// The logging context this scope works for; `None` for the sentinel.
    pub(crate) fn context(&self) -> Option<&Py<PyAny>> {
        self.context.as_ref()
    }

    /// Runs `f` on the reactor thread with this scope's context active. `f` is told
    /// whether the previous context is restored after it.
    pub(crate) fn with_context<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(bool) -> PyResult<R>,
    ) -> PyResult<R> {
        match self.bridge.provider() {
            Some(provider) => provider.with_context(py, self.context.as_ref(), f),
            None => f(false),
        }
    }

    /// Charges the CPU time metered so far to the context. Reactor thread.
    pub(crate) fn charge_cpu(&self, py: Python<'_>) {
        if let (Some(context), Some(meter)) = (&self.context, &self.cpu) {
            charge(py, context, meter);
        }
    }
}

fn charge(py: Python<'_>, context: &Py<PyAny>, meter: &CpuMeter) {
    if let Some(seconds) = meter.take_seconds() {
        charge_seconds(py, context, seconds);
    }
}

/// Adds `(user, system)` seconds to the context's CPU time.
fn charge_seconds(py: Python<'_>, context: &Py<PyAny>, (user, system): (f64, f64)) {
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

/// A scope's meter, reached through the scope.
struct ScopeMeter(Arc<TaskScope>);

impl std::ops::Deref for ScopeMeter {
    type Target = Option<CpuMeter>;

    fn deref(&self) -> &Option<CpuMeter> {
        &self.0.cpu
    }
}

impl Drop for TaskScope {
    /// The last task of a scope is done: charge what its children used since the
    /// bridged future completed, and release the context on the reactor thread.
    fn drop(&mut self) {
        let Some(context) = self.context.take() else {
            return;
        };
        // The last task is done: nothing adds to the meter any more.
        let owed = self.cpu.as_ref().and_then(CpuMeter::take_seconds);
        let job = move |py: Python<'_>| {
            if let Some(seconds) = owed {
                charge_seconds(py, &context, seconds);
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
