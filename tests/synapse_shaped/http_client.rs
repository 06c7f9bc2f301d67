//! Shaped like Synapse's HTTP client: Tokio does the work, Python gets bytes.

use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::synapse_shaped::deferred::create_deferred;
use crate::synapse_shaped::runtime::RustRuntime;

/// A response body; `bytes` in Python.
pub struct Body(Vec<u8>);

impl<'py> IntoPyObject<'py> for Body {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, Self::Error> {
        Ok(PyBytes::new(py, &self.0))
    }
}

#[pyclass(frozen)]
pub struct HttpClient {
    runtime: RustRuntime,
}

#[pymethods]
impl HttpClient {
    #[new]
    fn new(runtime: &RustRuntime) -> Self {
        Self {
            runtime: runtime.clone(),
        }
    }

    /// "Fetches" `url`: a timer and a task on the Tokio runtime, then the body.
    fn get<'py>(&self, py: Python<'py>, url: String) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.runtime.tokio_handle()?;
        create_deferred(py, &self.runtime, async move {
            let body = handle
                .spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    format!("200 OK {url}").into_bytes()
                })
                .await
                .map_err(|err| PyRuntimeError::new_err(format!("request task failed: {err}")))?;
            Ok(Body(body))
        })
    }
}
