//! The bridges pyo3-twisted is measured against (benches/bench.py), our own code:
//!
//! - `naive_ready`: the straightforward Twisted bridge. The Tokio task takes the
//!   GIL on its worker when it completes and calls
//!   `reactor.callFromThread(d.callback, value)`: one GIL acquisition and one reactor
//!   wake-up per completion.
//! - `asyncio_ready`: pyo3-async-runtimes' `future_into_py` on an asyncio loop.

use std::sync::OnceLock;

use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// The same number of workers as pyo3-twisted's default, for a fair comparison.
fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .saturating_sub(1)
        .clamp(1, 4)
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers())
            .enable_all()
            .build()
            .expect("a Tokio runtime for the naive bridge")
    })
}

/// A Deferred fired with `value` by a Tokio task, the naive way.
#[pyfunction]
fn naive_ready<'py>(
    py: Python<'py>,
    reactor: Bound<'py, PyAny>,
    value: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let deferred = py
        .import("twisted.internet.defer")?
        .getattr("Deferred")?
        .call0()?;
    let callback = deferred.getattr("callback")?.unbind();
    let call_from_thread = reactor.getattr("callFromThread")?.unbind();
    runtime().spawn(async move {
        Python::attach(|py| {
            if let Err(err) = call_from_thread.call1(py, (callback, value)) {
                err.print(py);
            }
        });
    });
    Ok(deferred)
}

/// An asyncio awaitable resolved with `value` by a Tokio task (pyo3-async-runtimes).
#[pyfunction]
fn asyncio_ready(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(value) })
}

#[pymodule]
fn pyo3_twisted_bench_peers(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers()).enable_all();
    pyo3_async_runtimes::tokio::init(builder);
    m.add_function(wrap_pyfunction!(naive_ready, m)?)?;
    m.add_function(wrap_pyfunction!(asyncio_ready, m)?)?;
    Ok(())
}
