//! `pyo3_twisted._native`: the compiled half of the Python package `pyo3_twisted`.
//!
//! It exposes its copy of the crate's Python API (`install`, `stats`, `Runtime`, the
//! exceptions), the SQL placeholder conversion `pyo3_twisted.database` uses, and the
//! bridges from Rust `log` records and `tracing` events to Python logging. Built with the `probes` feature
//! (the test build only), it also carries `pyo3_twisted.probes`: small Rust futures
//! with known behaviour that the tests and benchmarks drive from Python.

use pyo3::prelude::*;

#[cfg(feature = "probes")]
mod probes;
mod sql;

static LOG_RESET: std::sync::OnceLock<pyo3_log::ResetHandle> = std::sync::OnceLock::new();
static TRACE_RESET: std::sync::OnceLock<pyo3_log::ResetHandle> = std::sync::OnceLock::new();

/// reset_log_cache()
///
/// Forgets the Python logger levels cached for Rust `log` records and `tracing`
/// events; call it after changing logging configuration.
#[pyfunction]
fn reset_log_cache() {
    for handle in [LOG_RESET.get(), TRACE_RESET.get()].into_iter().flatten() {
        handle.reset();
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    pyo3_twisted::add_python_api(m)?;
    sql::register(m)?;
    #[cfg(feature = "probes")]
    probes::register(m)?;
    m.add_function(wrap_pyfunction!(reset_log_cache, m)?)?;
    // Rust `log` records reach Python logging; from Tokio threads, through the
    // reactor and in the request's logcontext. Another logger may already be set.
    if let Ok(handle) = pyo3_twisted::Logger::new(py)?.install() {
        let _ = LOG_RESET.set(handle);
    }
    // And `tracing` events, the same way, unless a subscriber is already set.
    if let Some(handle) = pyo3_twisted::trace::try_init(py)? {
        let _ = TRACE_RESET.set(handle);
    }
    Ok(())
}
