//! `pyo3_twisted._native`: the compiled half of the Python package `pyo3_twisted`.
//!
//! It exposes the crate's runtime configuration and statistics to Python, and the
//! probes (small Rust futures with known behaviour) that the tests and benchmarks
//! drive from Python.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_twisted::{install_runtime, PyRuntime, RuntimeConfig, RuntimeShutdown, RustPanicError};

mod awaitable_probes;
mod demo;
mod flags;
mod probes;
mod sql;

/// install(reactor, *, worker_threads=None, thread_name=None, shutdown_timeout=None,
///         logcontext=None, track_cpu_time=None, wake=None, linger=None, tokio=None)
///
/// Installs the pyo3-twisted runtime on `reactor`. Omitted options keep their
/// defaults. Installing again with the same options is a no-op; with different ones,
/// a RuntimeError.
#[pyfunction]
#[pyo3(signature = (reactor, **config))]
fn install(reactor: &Bound<'_, PyAny>, config: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
    install_runtime(reactor, RuntimeConfig::from_kwargs(config)?)
}

/// stats(reactor) -> dict
///
/// Counters of the runtime installed on `reactor`: tasks spawned, completed, failed,
/// panicked, cancelled, aborted at shutdown, in flight; mailbox wake-ups, drains,
/// batches, jobs; Tokio threads; GIL acquisitions made by pyo3-twisted on Tokio
/// threads. Raises RuntimeError if no runtime is installed.
#[pyfunction]
fn stats<'py>(py: Python<'py>, reactor: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    pyo3_twisted::stats(reactor)?.to_dict(py)
}

static LOG_RESET: std::sync::OnceLock<pyo3_log::ResetHandle> = std::sync::OnceLock::new();

/// reset_log_cache()
///
/// Forgets the Python logger levels cached for Rust log records; call it after
/// changing logging configuration.
#[pyfunction]
fn reset_log_cache() {
    if let Some(handle) = LOG_RESET.get() {
        handle.reset();
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(install, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_class::<PyRuntime>()?;
    m.add("POLLS_READERS_ATTR", pyo3_twisted::POLLS_READERS_ATTR)?;
    m.add("RustPanicError", py.get_type::<RustPanicError>())?;
    m.add("RuntimeShutdown", py.get_type::<RuntimeShutdown>())?;
    // The reactor attribute of this module's copy of the crate.
    m.add("RUNTIME_ATTR", pyo3_twisted::runtime_attr())?;
    sql::register(m)?;
    probes::register(m)?;
    awaitable_probes::register(m)?;
    flags::register(m)?;
    demo::register(m)?;
    m.add_function(wrap_pyfunction!(reset_log_cache, m)?)?;
    // Rust `log` records reach Python logging; from Tokio threads, through the
    // reactor and in the request's logcontext. Another logger may already be set.
    if let Ok(handle) = pyo3_twisted::Logger::new(py)?.install() {
        let _ = LOG_RESET.set(handle);
    }
    Ok(())
}
