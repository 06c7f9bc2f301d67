//! Synapse's `deferred` module: [`create_deferred`], [`run_python_awaitable`] and
//! [`RustPanicError`], with Synapse's signatures, forwarding to the crate's own.

use std::future::Future;

use pyo3::prelude::*;
use pyo3::types::PyModule;

use super::runtime::RustRuntime;

pub use crate::errors::RustPanicError;

/// Runs `fut` on the homeserver's runtime and returns a Deferred for its result:
/// [`crate::create_deferred`] with Synapse's signature. Reactor thread.
///
/// With Synapse's logcontext (a `RustRuntime`'s default), the Deferred follows the
/// logcontext rules (`make_deferred_yieldable`) and the future runs in the caller's
/// context. Unlike Synapse 1.163's, `d.cancel()` drops the future at once, and the CPU
/// time spent polling it is charged to the caller's context. After the homeserver
/// shut down, this returns a `RuntimeShutdown` error.
pub fn create_deferred<'py, F, O>(
    py: Python<'py>,
    runtime: &RustRuntime,
    fut: F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<O>> + Send + 'static,
    for<'a> O: IntoPyObject<'a> + Send + 'static,
{
    crate::create_deferred(py, runtime, fut)
}

/// Runs the awaitable `make_awaitable` returns on the reactor thread, in the calling
/// task's logcontext, and resolves with its result: [`crate::run_python_awaitable`]
/// with Synapse's signature. Any thread, no GIL.
///
/// The returned future borrows nothing. The awaitable starts once it is first
/// polled; dropping the future before it finishes cancels the awaitable's Deferred
/// (Synapse 1.163 lets it run on).
pub fn run_python_awaitable<F>(
    runtime: &RustRuntime,
    make_awaitable: F,
) -> impl Future<Output = PyResult<Py<PyAny>>> + Send + 'static
where
    F: for<'py> Fn(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + Sync + 'static,
{
    let runtime = runtime.clone();
    async move { crate::run_python_awaitable(runtime, make_awaitable).await }
}

/// Checks at import that Twisted is importable, as Synapse's `register_module` does.
pub fn register_module(py: Python<'_>, _m: &Bound<'_, PyModule>) -> PyResult<()> {
    py.import("twisted.internet.defer").map(drop)
}
