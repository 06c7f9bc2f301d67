//! Child tasks that stay on this crate's runtime.

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::scope::TaskScope;

/// Spawns a child task from inside a bridged future (one passed to
/// [`create_deferred`](crate::create_deferred), or another child).
///
/// Use it instead of `tokio::spawn` so the child keeps the request's logging context
/// (when a provider is configured): its log lines, its Python calls
/// ([`run_python_awaitable`](crate::run_python_awaitable)) and its CPU time are
/// charged to the same request. It also runs in the caller's current `tracing` span,
/// so the child's events carry the parent's span fields. Outside a bridged task it is
/// `tokio::spawn` (in the current span).
///
/// # Panics
///
/// Like `tokio::spawn`, if called outside a task of a Tokio runtime.
///
/// ```no_run
/// # use pyo3::prelude::*;
/// # fn f<'py>(py: Python<'py>, reactor: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
/// pyo3_twisted::create_deferred(py, &reactor, async {
///     let child = pyo3_twisted::spawn(async { 20 + 1 });
///     let half = child.await.expect("child task failed");
///     Ok(half * 2)
/// })
/// # }
/// ```
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let fut = fut.in_current_span();
    match TaskScope::current() {
        Some(scope) => tokio::spawn(TaskScope::enter(scope, fut)),
        None => tokio::spawn(fut),
    }
}
