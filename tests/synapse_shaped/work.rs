//! A handler whose Tokio task hands its logcontext to a child task and logs there.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::synapse_shaped::deferred::create_deferred;
use crate::synapse_shaped::runtime::RustRuntime;
use pyo3_twisted::synapse::logging::context::LogContextHandle;

#[pyclass(frozen)]
pub struct Work {
    runtime: RustRuntime,
}

#[pymethods]
impl Work {
    #[new]
    fn new(runtime: &RustRuntime) -> Self {
        Self {
            runtime: runtime.clone(),
        }
    }

    /// Logs `working on {tag}` from a child task spawned straight on the Tokio
    /// handle (not through the crate's `spawn`), with the request's context handed
    /// over by `task_current().scope(..)`; resolves to the tag's length.
    fn run<'py>(&self, py: Python<'py>, tag: String) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.runtime.tokio_handle()?;
        create_deferred(py, &self.runtime, async move {
            let context = LogContextHandle::task_current()
                .ok_or_else(|| PyRuntimeError::new_err("the task has no logcontext handle"))?;
            let child = handle.spawn(context.scope(async move {
                log::info!(target: "synapse_shaped", "working on {tag}");
                tag.len()
            }));
            child
                .await
                .map_err(|err| PyRuntimeError::new_err(format!("child task failed: {err}")))
        })
    }
}
