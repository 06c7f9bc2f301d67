//! `RustHandlers(hs)`: built from a homeserver as Synapse's are.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::synapse_shaped::runtime::RustRuntime;
use crate::synapse_shaped::storage::db::python_db_pool::PythonDatabasePoolWrapper;
use crate::synapse_shaped::storage::store::Store;

pub mod versions;

#[pyclass]
pub struct RustHandlers {
    versions: Py<versions::VersionsHandler>,
}

#[pymethods]
impl RustHandlers {
    #[new]
    fn new(py: Python<'_>, homeserver: Bound<'_, PyAny>) -> PyResult<Self> {
        let runtime: RustRuntime = homeserver.call_method0("get_rust_runtime")?.extract()?;
        let pool = homeserver
            .call_method0("get_datastores")?
            .getattr("main")?
            .getattr("db_pool")?;
        let store = Arc::new(Store {
            db_pool: Box::new(PythonDatabasePoolWrapper::new(&pool, runtime.clone())?),
        });
        let experimental = homeserver.getattr("config")?.getattr("experimental")?;
        let global = versions::GlobalFeatures {
            msc3881: experimental.getattr("msc3881_enabled")?.extract()?,
            msc3575: experimental.getattr("msc3575_enabled")?.extract()?,
        };
        let versions = Py::new(
            py,
            versions::VersionsHandler {
                global: Arc::new(global),
                store,
                runtime,
            },
        )?;
        Ok(Self { versions })
    }

    #[getter]
    fn versions(&self, py: Python<'_>) -> Py<versions::VersionsHandler> {
        self.versions.clone_ref(py)
    }
}
