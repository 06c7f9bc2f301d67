//! This copy of the crate's Python API, for an extension module to expose:
//! `install`, `stats`, `Runtime`, the two exceptions and the reactor attribute
//! names. Every function here runs on the reactor thread (it is called from Python).
//!
//! Each extension module that links the crate has its own copy of it, with its own
//! runtime on each reactor; `pyo3_twisted._native` exposes its copy's API through
//! [`add_python_api`], and so can any downstream module, so that Python code can
//! configure and read the runtime that module's futures actually run on.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::config::RuntimeConfig;
use crate::errors::{RuntimeShutdown, RustPanicError};
use crate::runtime::{install_runtime, PyRuntime};

/// install(reactor, *, worker_threads=None, thread_name=None, shutdown_timeout=None,
///         logcontext=None, track_cpu_time=None, wake=None, linger=None, tokio=None,
///         clock=None, metrics=None)
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
    crate::runtime::stats(reactor)?.to_dict(py)
}

/// histograms(reactor) -> list[dict]
///
/// The histograms of the runtime installed on `reactor`: for each, `name`,
/// `labels` (a dict), `buckets` (`(upper bound, cumulative count)` pairs, the last
/// bound `inf`), `sum` and `count`. Raises RuntimeError if no runtime is installed.
#[pyfunction]
fn histograms<'py>(py: Python<'py>, reactor: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for reading in crate::runtime::histograms(reactor)? {
        let item = PyDict::new(py);
        item.set_item("name", reading.name)?;
        let labels = PyDict::new(py);
        for (label, value) in &reading.labels {
            labels.set_item(label, value)?;
        }
        item.set_item("labels", labels)?;
        item.set_item("buckets", reading.snapshot.buckets.clone())?;
        item.set_item("sum", reading.snapshot.sum)?;
        item.set_item("count", reading.snapshot.count())?;
        list.append(item)?;
    }
    Ok(list)
}

/// describe_stats() -> dict
///
/// For every key of `stats(reactor)` but `state`, `wake_mode` and `clock`: `(doc,
/// kind)`, kind `"counter"` (only grows) or `"gauge"` (a level).
#[pyfunction]
fn describe_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    for (name, doc) in crate::stats::Stats::descriptions() {
        let kind = if crate::stats::GAUGES.contains(&name) {
            "gauge"
        } else {
            "counter"
        };
        dict.set_item(name, (doc.trim(), kind))?;
    }
    Ok(dict)
}

/// Adds this copy of the crate's Python API to the extension module `m`:
///
/// | name | what it is |
/// |------|------------|
/// | `install(reactor, **config)` | [`install_runtime`] with [`RuntimeConfig::from_kwargs`] |
/// | `stats(reactor)` | [`stats`](crate::stats) as a dict |
/// | `histograms(reactor)` | [`histograms`](crate::histograms) as a list of dicts |
/// | `describe_stats()` | each figure's doc and kind (counter or gauge) |
/// | `Runtime` | [`PyRuntime`], a handle on a reactor's runtime |
/// | `RustPanicError`, `RuntimeShutdown` | the exceptions this copy raises |
/// | `RUNTIME_ATTR`, `POLLS_READERS_ATTR` | [`runtime_attr`](crate::runtime_attr) and [`POLLS_READERS_ATTR`](crate::POLLS_READERS_ATTR) |
///
/// The package `pyo3_twisted` exposes `pyo3_twisted._native`'s copy. A module of
/// your own has a copy (and a runtime per reactor) of its own; call this from its
/// `#[pymodule]` so that Python code configures the runtime your futures run on, and
/// catches the exceptions they raise.
///
/// ```no_run
/// use pyo3::prelude::*;
///
/// #[pymodule]
/// fn my_handlers(m: &Bound<'_, PyModule>) -> PyResult<()> {
///     pyo3_twisted::add_python_api(m)?;
///     // ... the module's own functions and classes
///     Ok(())
/// }
/// ```
///
/// ```python
/// import my_handlers
/// my_handlers.install(reactor, worker_threads=2, logcontext="synapse.logging.context")
/// ```
pub fn add_python_api(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(install, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(histograms, m)?)?;
    m.add_function(wrap_pyfunction!(describe_stats, m)?)?;
    m.add_class::<PyRuntime>()?;
    m.add("RustPanicError", py.get_type::<RustPanicError>())?;
    m.add("RuntimeShutdown", py.get_type::<RuntimeShutdown>())?;
    m.add("RUNTIME_ATTR", crate::bridge::runtime_attr())?;
    m.add("POLLS_READERS_ATTR", crate::wake::POLLS_READERS_ATTR)?;
    Ok(())
}
