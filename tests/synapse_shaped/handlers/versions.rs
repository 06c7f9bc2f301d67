//! `GET /_matrix/client/versions`: global features, overridden per user from the
//! database.

use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::synapse_shaped::deferred::create_deferred;
use crate::synapse_shaped::runtime::RustRuntime;
use crate::synapse_shaped::storage::store::{Feature, Store};

/// The spec versions served (as many as Synapse 1.163 lists).
const VERSIONS: [&str; 23] = [
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2",
    "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12", "v1.13",
    "v1.14", "v1.15",
];

/// Features that do not depend on the user, so that the body is as large as
/// Synapse's (40 flags).
const FIXED_FEATURES: [(&str, bool); 38] = [
    ("org.matrix.label_based_filtering", true),
    ("org.matrix.e2e_cross_signing", true),
    ("org.matrix.msc2432", true),
    ("org.matrix.msc2666", true),
    ("org.matrix.msc3026", false),
    ("org.matrix.msc2285", true),
    ("org.matrix.msc3827", true),
    ("org.matrix.msc3440", true),
    ("org.matrix.msc3771", true),
    ("org.matrix.msc3773", false),
    ("org.matrix.msc2815", false),
    ("org.matrix.msc2659", true),
    ("org.matrix.msc3882", false),
    ("org.matrix.msc3874", false),
    ("org.matrix.msc3912", false),
    ("org.matrix.msc3981", true),
    ("org.matrix.msc3391", false),
    ("org.matrix.msc4069", false),
    ("org.matrix.msc4028", false),
    ("org.matrix.msc4108", false),
    ("org.matrix.msc4140", false),
    ("org.matrix.msc4133", false),
    ("org.matrix.msc4133.stable", true),
    ("org.matrix.msc4155", false),
    ("org.matrix.msc4306", false),
    ("org.matrix.msc4169", false),
    ("org.matrix.msc4262", false),
    ("org.matrix.msc4354", false),
    ("org.matrix.msc4380", true),
    ("org.matrix.msc4429", false),
    ("org.matrix.msc4445", true),
    ("org.matrix.msc4491", false),
    ("org.matrix.msc4143", false),
    ("org.matrix.msc4446", false),
    ("org.matrix.msc4222", false),
    ("org.matrix.msc4502", false),
    ("org.matrix.msc3916", true),
    ("org.matrix.msc4230", true),
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
        for (name, enabled) in FIXED_FEATURES {
            unstable.set_item(name, enabled)?;
        }
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
