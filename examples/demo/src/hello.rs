//! What `examples/hello_twisted.py` awaits: one Rust future per behaviour a Twisted
//! programmer relies on, as a downstream module writes them.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_twisted::{create_deferred, spawn};

/// greet(reactor, name, seconds) -> Deferred[str]: sleeps on Tokio, then greets
/// `name` from the worker thread it ran on.
#[pyfunction]
fn greet<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    name: String,
    seconds: f64,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let thread = std::thread::current();
        Ok(format!(
            "hello {name}, from Tokio thread {:?}",
            thread.name().unwrap_or("unnamed")
        ))
    })
}

/// sum_of_squares(reactor, n) -> Deferred[int]: 1² + … + n², each square computed in
/// a child task started with `pyo3_twisted::spawn` (which keeps the caller's
/// logcontext).
#[pyfunction]
fn sum_of_squares<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    n: u64,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        let children: Vec<_> = (1..=n).map(|i| spawn(async move { i * i })).collect();
        let mut total = 0_u64;
        for child in children {
            total += child
                .await
                .map_err(|e| PyValueError::new_err(format!("a child task failed: {e}")))?;
        }
        Ok(total)
    })
}

/// parse_port(reactor, text) -> Deferred[int]: fails with `ValueError` unless `text`
/// is a port number, as a Rust error becomes a Python exception.
#[pyfunction]
fn parse_port<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    text: String,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        text.trim()
            .parse::<u16>()
            .map_err(|e| PyValueError::new_err(format!("not a port number: {text:?} ({e})")))
    })
}

/// divide(reactor, a, b) -> Deferred[int]: `a / b` in Rust. Dividing by zero panics;
/// the Deferred fails with `RustPanicError` and the process carries on.
#[pyfunction]
fn divide<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    a: i64,
    b: i64,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move { Ok(a / b) })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(greet, m)?)?;
    m.add_function(wrap_pyfunction!(sum_of_squares, m)?)?;
    m.add_function(wrap_pyfunction!(parse_port, m)?)?;
    m.add_function(wrap_pyfunction!(divide, m)?)?;
    Ok(())
}
