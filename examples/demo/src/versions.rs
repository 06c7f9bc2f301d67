//! The demo service's Rust handler: `GET /versions`, the shape of Synapse's.
//!
//! It reads the user's feature flags through `run_interaction`: on the same Python
//! pool the Python handlers use, or (`--native-pool`) on a native PostgreSQL pool
//! of the same database, the shape of a Rust-only app. The flags are merged where the
//! future is polled (a Tokio worker, or the reactor thread); the answer's dict is
//! made on the reactor thread from Python strings made once, as the Python handler
//! reuses its interned ones.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use pyo3_twisted::db::{DatabasePool, PostgresConfig, PostgresPool, PythonDatabasePool};
use pyo3_twisted::{create_coroutine, create_deferred};

use crate::store::{get_flags, select_flags};

/// The spec versions the demo claims to support.
const VERSIONS: [&str; 4] = ["v1.1", "v1.2", "v1.3", "v1.11"];

/// `GET /versions?user_id=…`, answered in Rust.
#[pyclass(frozen, module = "pyo3_twisted_demo")]
struct VersionsHandler {
    pool: Arc<dyn DatabasePool>,
    known: Arc<Known>,
    work: Duration,
    /// Answer with a coroutine (`create_coroutine`) rather than a Deferred.
    coroutine: bool,
    /// Answer with the Python pool's `run_interaction_coroutine` (no Rust future).
    interaction: Option<PythonDatabasePool>,
}

#[pymethods]
impl VersionsHandler {
    /// `pool`: the Python `DatabasePool`; `known_features`: every feature the server
    /// knows (off unless the user turned it on); `rust_work_ms`: CPU time to spend
    /// per request, standing in for real handler work (0 by default);
    /// `native_dsn`: read through a native PostgreSQL pool of
    /// `native_connections` connections on this DSN instead of through `pool`
    /// (a `ValueError` if the DSN cannot be used); `coroutine`: `handle` returns a
    /// coroutine polled on the reactor thread (`create_coroutine`) instead of a
    /// Deferred.
    #[new]
    #[pyo3(signature = (pool, reactor, known_features, rust_work_ms=0, native_dsn=None, native_connections=5, coroutine=false, interaction=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        pool: Py<PyAny>,
        reactor: Py<PyAny>,
        known_features: Vec<String>,
        rust_work_ms: u64,
        native_dsn: Option<String>,
        native_connections: usize,
        coroutine: bool,
        interaction: bool,
    ) -> PyResult<Self> {
        if interaction && native_dsn.is_some() {
            return Err(PyValueError::new_err(
                "interaction=True reads through the Python pool, not a native one",
            ));
        }
        let interaction =
            interaction.then(|| PythonDatabasePool::new(pool.clone_ref(py), reactor.clone_ref(py)));
        let pool: Arc<dyn DatabasePool> = match native_dsn {
            None => Arc::new(PythonDatabasePool::new(pool, reactor)),
            Some(dsn) => {
                let mut config = PostgresConfig::new(dsn);
                config.max_size = native_connections;
                Arc::new(
                    PostgresPool::new(config)
                        .map_err(|e| PyValueError::new_err(format!("{e:#}")))?,
                )
            }
        };
        Ok(Self {
            pool,
            known: Arc::new(Known::new(py, known_features)),
            work: Duration::from_millis(rust_work_ms),
            coroutine,
            interaction,
        })
    }

    /// A Deferred (or a coroutine, with `coroutine=True`) of
    /// `{"versions": [...], "unstable_features": {feature: bool}}`.
    fn handle<'py>(
        &self,
        py: Python<'py>,
        reactor: &Bound<'py, PyAny>,
        user_id: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Some(pool) = &self.interaction {
            let (known, work) = (Arc::clone(&self.known), self.work);
            return pool.run_interaction_coroutine(
                py,
                "get_feature_flags",
                select_flags(user_id),
                move |py, flags| {
                    let response = merged(known, flags, work);
                    Ok(response.into_pyobject(py)?.into_any().unbind())
                },
            );
        }
        let (pool, known, work) = (Arc::clone(&self.pool), Arc::clone(&self.known), self.work);
        let answer = async move {
            let flags = get_flags(&*pool, user_id)
                .await
                .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("{e:#}")))?;
            Ok(merged(known, flags, work))
        };
        if self.coroutine {
            create_coroutine(py, reactor, answer)
        } else {
            create_deferred(py, reactor, answer)
        }
    }
}

/// The answer for `flags`, after `work` of CPU time.
fn merged(known: Arc<Known>, flags: Vec<(String, bool)>, work: Duration) -> Response {
    let mut enabled = vec![false; known.names.len()];
    for (name, on) in flags {
        if let Ok(index) = known.names.binary_search(&name) {
            enabled[index] = on;
        }
    }
    spend_cpu(work);
    Response { known, enabled }
}

/// The features the server knows, sorted, and their names as Python strings, made
/// once: an answer reuses them, as the Python handler reuses its interned names.
struct Known {
    names: Vec<String>,
    py_names: Vec<Py<PyString>>,
    versions: Vec<Py<PyString>>,
}

impl Known {
    fn new(py: Python<'_>, mut names: Vec<String>) -> Self {
        names.sort();
        names.dedup();
        let intern = |name: &str| PyString::intern(py, name).unbind();
        Self {
            py_names: names.iter().map(|name| intern(name)).collect(),
            versions: VERSIONS.iter().map(|version| intern(version)).collect(),
            names,
        }
    }
}

/// `{"versions": [...], "unstable_features": {name: enabled}}`, made on the reactor
/// thread (in feature-name order, as the Python handler's).
struct Response {
    known: Arc<Known>,
    /// By index into `known.names`.
    enabled: Vec<bool>,
}

impl<'py> IntoPyObject<'py> for Response {
    type Target = PyDict;
    type Output = Bound<'py, PyDict>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let features = PyDict::new(py);
        for (name, enabled) in self.known.py_names.iter().zip(self.enabled) {
            features.set_item(name.bind(py), enabled)?;
        }
        let body = PyDict::new(py);
        body.set_item(
            pyo3::intern!(py, "versions"),
            PyList::new(py, self.known.versions.iter().map(|v| v.bind(py)))?,
        )?;
        body.set_item(pyo3::intern!(py, "unstable_features"), features)?;
        Ok(body)
    }
}

/// Spends `work` of this thread's CPU time (not wall time: a preempted thread
/// would otherwise spend less than it claims).
fn spend_cpu(work: Duration) {
    if work.is_zero() {
        return;
    }
    let start = thread_cpu();
    let mut x = 0_u64;
    while thread_cpu().saturating_sub(start) < work {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: fills the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<VersionsHandler>()
}
