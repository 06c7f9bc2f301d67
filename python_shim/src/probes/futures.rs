//! Rust futures with known behaviour, for the tests and benchmarks to drive.
//!
//! Each returns a Deferred made by `pyo3_twisted::create_deferred`; they are what a
//! downstream crate's handlers look like, reduced to one behaviour each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drop_flag::Flag;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_twisted::create_deferred;

/// Fires with `value` as soon as a worker polls it.
#[pyfunction]
fn ready<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    value: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move { Ok(value) })
}

/// Fires with `value` after `seconds` of Tokio sleep.
#[pyfunction]
fn sleep<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    seconds: f64,
    value: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let duration = seconds_to_duration(seconds)?;
    create_deferred(py, reactor, async move {
        tokio::time::sleep(duration).await;
        Ok(value)
    })
}

/// Fails with `ValueError(message)`, raised in Rust.
#[pyfunction]
fn fail<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    message: String,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        Err::<(), _>(PyValueError::new_err(message))
    })
}

/// Panics with `message` on a Tokio worker.
#[pyfunction]
fn panic<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    message: String,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        if !message.is_empty() {
            panic!("{message}");
        }
        Ok(())
    })
}

/// Never finishes; returns `(deferred, flag)` where `flag` is set when the future is
/// dropped (cancellation, shutdown).
#[pyfunction]
fn pending<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, DropFlag)> {
    let flag = DropFlag {
        inner: Arc::new(Flag::default()),
    };
    let guard = SetOnDrop(Arc::clone(&flag.inner));
    let deferred = create_deferred(py, reactor, async move {
        let _guard = guard;
        std::future::pending::<()>().await;
        Ok(())
    })?;
    Ok((deferred, flag))
}

/// For `seconds`, takes the GIL from its worker every millisecond (what a careless
/// user future might do), then fires with the number of times it did.
#[pyfunction]
fn touch_python<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    seconds: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let duration = seconds_to_duration(seconds)?;
    create_deferred(py, reactor, async move {
        let start = Instant::now();
        let mut touches = 0_u64;
        while start.elapsed() < duration {
            Python::attach(|py| py.None());
            touches += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(touches)
    })
}

/// Fires with the name of the thread that polled it.
#[pyfunction]
fn thread_name<'py>(py: Python<'py>, reactor: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        Ok(std::thread::current().name().unwrap_or("").to_owned())
    })
}

/// Fires with the sum of what two `pyo3_twisted::spawn`ed children return.
#[pyfunction]
fn spawn_children<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    a: i64,
    b: i64,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        let first = pyo3_twisted::spawn(async move { a });
        let second = pyo3_twisted::spawn(async move { b });
        let first = first
            .await
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let second = second
            .await
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(first + second)
    })
}

pub(super) fn seconds_to_duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err(format!("bad duration: {seconds}")))
}

/// Set when the future that owns its guard is dropped.
#[pyclass(frozen, module = "pyo3_twisted.probes")]
pub(super) struct DropFlag {
    inner: Arc<Flag>,
}

#[pymethods]
impl DropFlag {
    /// Whether the future has been dropped.
    #[getter]
    fn dropped(&self) -> bool {
        self.inner.is_set()
    }

    /// Waits (GIL released) until the future is dropped or `timeout` seconds pass;
    /// returns whether it was dropped.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let timeout = seconds_to_duration(timeout)?;
        let inner = Arc::clone(&self.inner);
        Ok(py.detach(move || inner.wait(timeout)))
    }
}

pub(super) struct SetOnDrop(Arc<Flag>);

/// A flag and the guard that sets it when dropped.
pub(super) fn drop_flag() -> (DropFlag, SetOnDrop) {
    let inner = Arc::new(Flag::default());
    (
        DropFlag {
            inner: Arc::clone(&inner),
        },
        SetOnDrop(inner),
    )
}

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

mod drop_flag {
    //! A one-shot flag that a thread can wait on.
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    #[derive(Default)]
    pub struct Flag {
        set: Mutex<bool>,
        changed: Condvar,
    }

    impl Flag {
        pub fn set(&self) {
            let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
            *set = true;
            self.changed.notify_all();
        }

        pub fn is_set(&self) -> bool {
            *self.set.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub fn wait(&self, timeout: Duration) -> bool {
            let set = self.set.lock().unwrap_or_else(|e| e.into_inner());
            let (set, _) = self
                .changed
                .wait_timeout_while(set, timeout, |set| !*set)
                .unwrap_or_else(|e| e.into_inner());
            *set
        }
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ready, m)?)?;
    m.add_function(wrap_pyfunction!(sleep, m)?)?;
    m.add_function(wrap_pyfunction!(fail, m)?)?;
    m.add_function(wrap_pyfunction!(panic, m)?)?;
    m.add_function(wrap_pyfunction!(pending, m)?)?;
    m.add_function(wrap_pyfunction!(touch_python, m)?)?;
    m.add_function(wrap_pyfunction!(thread_name, m)?)?;
    m.add_function(wrap_pyfunction!(spawn_children, m)?)?;
    m.add_class::<DropFlag>()?;
    Ok(())
}
