//! `GET /_matrix/client/versions`: global features, overridden per user from the
//! database.

use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::synapse_shaped::deferred::create_deferred;
use crate::synapse_shaped::runtime::RustRuntime;
use crate::synapse_shaped::storage::store::{Feature, Store};

const VERSIONS: [&str; 10] = [
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.15",
];

#[derive(Clone, Copy, Debug)]
pub struct GlobalFeatures {
    pub msc3881: bool,
    pub msc3575: bool,
}

/// The response body; a dict in Python.
pub struct VersionsResponse {
    features: GlobalFeatures,
}

impl<'py> IntoPyObject<'py> for VersionsResponse {
    type Target = PyDict;
    type Output = Bound<'py, PyDict>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let unstable = PyDict::new(py);
        unstable.set_item("org.matrix.msc3881", self.features.msc3881)?;
        unstable.set_item("org.matrix.msc3575", self.features.msc3575)?;
        unstable.set_item("org.matrix.label_based_filtering", true)?;
        let body = PyDict::new(py);
        body.set_item("versions", VERSIONS.to_vec())?;
        body.set_item("unstable_features", unstable)?;
        Ok(body)
    }
}

#[pyclass(frozen)]
pub struct VersionsHandler {
    pub global: Arc<GlobalFeatures>,
    pub store: Arc<Store>,
    pub runtime: RustRuntime,
}

#[pymethods]
impl VersionsHandler {
    /// A Deferred of the response body.
    #[pyo3(signature = (user_id=None))]
    fn get_versions<'py>(
        &self,
        py: Python<'py>,
        user_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        let global = *self.global;
        create_deferred(py, &self.runtime, async move {
            build(&store, global, user_id.as_deref())
                .await
                .map_err(|err| PyRuntimeError::new_err(format!("building /versions: {err:#}")))
        })
    }
}

async fn build(
    store: &Store,
    global: GlobalFeatures,
    user_id: Option<&str>,
) -> anyhow::Result<VersionsResponse> {
    let per_user = |enabled: bool, feature: Feature| async move {
        match user_id {
            Some(user_id) if !enabled => Ok(store
                .feature_for_user(user_id, feature)
                .await?
                .unwrap_or(false)),
            _ => Ok::<_, anyhow::Error>(enabled),
        }
    };
    let features = GlobalFeatures {
        msc3881: per_user(global.msc3881, Feature::Msc3881).await?,
        msc3575: per_user(global.msc3575, Feature::Msc3575).await?,
    };
    Ok(VersionsResponse { features })
}
