//! `pyo3_twisted_test_ext`: a second, separately compiled extension module that links
//! pyo3-twisted (its own copy of the crate) and pyo3-async-runtimes.
//!
//! The tests load it next to `pyo3_twisted._native` to show that two modules built on
//! the crate work on one reactor, and that pyo3-async-runtimes can run its futures on
//! the same Tokio threads as pyo3-twisted (`TokioRuntime::Process`).

use std::time::Duration;

/// Synapse-shaped handlers on `pyo3_twisted::synapse` (shared with
/// `tests/synapse.rs`), as `pyo3_twisted_test_ext.synapse_shaped`, for the benchmark.
#[path = "../../synapse_shaped/mod.rs"]
mod synapse_shaped;

use pyo3::prelude::*;
use pyo3_twisted::{
    create_deferred, install_runtime, process_runtime, RuntimeConfig, TokioRuntime,
};

fn config(worker_threads: usize, thread_name: String, process: bool) -> RuntimeConfig {
    RuntimeConfig {
        worker_threads,
        thread_name,
        shutdown_timeout: Duration::from_secs(2),
        tokio: if process {
            TokioRuntime::Process
        } else {
            TokioRuntime::PerReactor
        },
        ..RuntimeConfig::default()
    }
}

/// install(reactor, worker_threads, thread_name, process=False)
///
/// Installs this module's runtime on `reactor`; with `process=True` on the
/// process-wide pool.
#[pyfunction]
#[pyo3(signature = (reactor, worker_threads, thread_name, process=false))]
fn install(
    reactor: &Bound<'_, PyAny>,
    worker_threads: usize,
    thread_name: String,
    process: bool,
) -> PyResult<()> {
    install_runtime(reactor, config(worker_threads, thread_name, process))
}

/// share_with_pyo3_async_runtimes(worker_threads, thread_name) -> bool
///
/// Builds the process-wide pool and makes pyo3-async-runtimes use it. False if
/// pyo3-async-runtimes already had a runtime.
#[pyfunction]
fn share_with_pyo3_async_runtimes(
    py: Python<'_>,
    worker_threads: usize,
    thread_name: String,
) -> PyResult<bool> {
    let runtime = process_runtime(py, &config(worker_threads, thread_name, true))?;
    Ok(pyo3_async_runtimes::tokio::init_with_runtime(runtime).is_ok())
}

fn current_thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// deferred_thread_name(reactor, seconds) -> Deferred[str]
///
/// A `create_deferred` future that sleeps, then fires with its thread's name.
#[pyfunction]
fn deferred_thread_name<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    seconds: f64,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        Ok(current_thread_name())
    })
}

/// asyncio_thread_name(seconds) -> asyncio.Future[str]
///
/// The same through pyo3-async-runtimes' `future_into_py` (needs a running asyncio
/// loop: Twisted's asyncio reactor).
#[pyfunction]
fn asyncio_thread_name(py: Python<'_>, seconds: f64) -> PyResult<Bound<'_, PyAny>> {
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        Ok(current_thread_name())
    })
}

/// call_python(reactor, factory) -> Deferred
///
/// From this module's Tokio thread, awaits `factory()` on the reactor
/// (`run_python_awaitable`), e.g. a Deferred of the other module.
#[pyfunction]
fn call_python<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let handle = reactor.clone().unbind();
    create_deferred(py, reactor, async move {
        pyo3_twisted::run_python_awaitable(handle, move |py| factory.bind(py).call0()).await
    })
}

/// stats(reactor) -> dict: this module's runtime on `reactor`.
#[pyfunction]
fn stats<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    let stats = pyo3_twisted::stats(reactor)?;
    let dict = pyo3::types::PyDict::new(py);
    dict.set_item("state", stats.state)?;
    for (name, value) in stats.counters() {
        dict.set_item(name, value)?;
    }
    Ok(dict)
}

#[pymodule]
fn pyo3_twisted_test_ext(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(install, m)?)?;
    m.add_function(wrap_pyfunction!(share_with_pyo3_async_runtimes, m)?)?;
    m.add_function(wrap_pyfunction!(deferred_thread_name, m)?)?;
    m.add_function(wrap_pyfunction!(asyncio_thread_name, m)?)?;
    m.add_function(wrap_pyfunction!(call_python, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add("RUNTIME_ATTR", pyo3_twisted::runtime_attr())?;
    let py = m.py();
    let shaped = PyModule::new(py, "synapse_shaped")?;
    m.add_submodule(&shaped)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("pyo3_twisted_test_ext.synapse_shaped", &shaped)?;
    // Its runtime submodule is named after it.
    shaped.setattr("__name__", "pyo3_twisted_test_ext.synapse_shaped")?;
    synapse_shaped::register(py, &shaped)?;
    Ok(())
}
