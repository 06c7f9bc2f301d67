//! Probes for the `tracing` bridge (`pyo3_twisted::trace`): events inside spans, in
//! bridged tasks, their children, across a call into Python, and off Tokio.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_twisted::{create_deferred, run_python_awaitable};
use tracing::Instrument;

const TARGET: &str = "pyo3_twisted::probes";

/// In a span `request{user=...}`, a spawned child logs `computed answer=42`.
#[pyfunction]
fn trace_in_span<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    user: String,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        let span = tracing::info_span!(target: TARGET, "request", user = %user);
        async {
            pyo3_twisted::spawn(async {
                tracing::info!(target: TARGET, answer = 42, "computed");
            })
            .await
            .map_err(|e| PyValueError::new_err(e.to_string()))
        }
        .instrument(span)
        .await
    })
}

/// Logs `message` at INFO from a bridged task (in whatever span the caller is in).
#[pyfunction]
fn trace_event<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    message: String,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        tracing::info!(target: TARGET, "{message}");
        Ok(())
    })
}

/// In a span `outer{id=...}`, awaits `factory()` on the reactor: what the factory
/// starts in Rust runs under that span.
#[pyfunction]
fn trace_across_python<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    id: u64,
    factory: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let handle = reactor.clone().unbind();
    create_deferred(py, reactor, async move {
        let span = tracing::info_span!(target: TARGET, "outer", id);
        run_python_awaitable(handle, move |py| factory.bind(py).call0())
            .instrument(span)
            .await
    })
}

/// Logs `message` from a thread of its own (not Tokio's), and waits for it.
#[pyfunction]
fn trace_from_thread(py: Python<'_>, message: String) -> PyResult<()> {
    py.detach(move || {
        std::thread::spawn(move || tracing::warn!(target: TARGET, "{message}"))
            .join()
            .map_err(|_| PyValueError::new_err("the logging thread panicked"))
    })
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(trace_in_span, m)?)?;
    m.add_function(wrap_pyfunction!(trace_event, m)?)?;
    m.add_function(wrap_pyfunction!(trace_across_python, m)?)?;
    m.add_function(wrap_pyfunction!(trace_from_thread, m)?)?;
    Ok(())
}
