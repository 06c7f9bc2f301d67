//! Shared set-up for the Rust integration tests: an embedded CPython that sees the
//! test virtualenv's Twisted, and the package's memory-reactor harness.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};

static INIT: Once = Once::new();

/// The virtualenv `make test` builds: `$PYO3_TWISTED_VENV`, else `.venv` here.
fn venv() -> PathBuf {
    std::env::var_os("PYO3_TWISTED_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"))
}

/// Runs `f` with the GIL, Twisted importable; panics with the Python traceback on error.
pub fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> PyResult<R>) -> R {
    INIT.call_once(|| {
        Python::initialize();
        Python::attach(|py| {
            let site = py.import("site").unwrap();
            let lib = venv().join("lib");
            for entry in std::fs::read_dir(&lib)
                .unwrap_or_else(|e| panic!("no virtualenv at {lib:?} ({e}); run `make test`"))
            {
                let packages = entry.unwrap().path().join("site-packages");
                if packages.is_dir() {
                    site.call_method1("addsitedir", (packages.to_str().unwrap(),))
                        .unwrap();
                }
            }
        });
    });
    Python::attach(|py| match f(py) {
        Ok(value) => value,
        Err(err) => {
            let traceback = err
                .traceback(py)
                .and_then(|tb| tb.format().ok())
                .unwrap_or_default();
            panic!("Python error: {err}\n{traceback}")
        }
    })
}

static TESTING: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `pyo3_twisted.testing`, loaded once from its file: it needs Twisted only, not the
/// compiled extension.
pub fn testing(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let module = TESTING.get_or_try_init(py, || -> PyResult<_> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python_shim/python/pyo3_twisted/testing.py");
        let source = std::fs::read_to_string(&path)
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("{path:?}: {e}")))?;
        let source = std::ffi::CString::new(source).unwrap();
        let file_name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        Ok(PyModule::from_code(py, &source, &file_name, c"pyo3_twisted_testing")?.unbind())
    })?;
    Ok(module.bind(py).clone())
}

/// A `ThreadedMemoryReactorClock`, run if `run` (so a runtime starts at once).
pub fn memory_reactor(py: Python<'_>, run: bool) -> PyResult<Bound<'_, PyAny>> {
    let reactor = testing(py)?
        .getattr("ThreadedMemoryReactorClock")?
        .call0()?;
    if run {
        reactor.call_method0("run")?;
    }
    Ok(reactor)
}

pub fn get_success<'py>(
    reactor: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    reactor.call_method1("get_success", (d, 10.0))
}

/// The failure's exception value, asserting its type by name (`"ValueError"`, or a
/// dotted path like `"twisted.internet.defer.CancelledError"`).
pub fn get_failure_value<'py>(
    reactor: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
    exc_type: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    reactor
        .call_method1("get_failure", (d, exc_type, 10.0))?
        .getattr("value")
}

pub fn stat(reactor: &Bound<'_, PyAny>, name: &str) -> u64 {
    let stats = pyo3_twisted::stats(reactor).unwrap();
    stats
        .counters()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

/// Evaluates a Python expression with `locals`.
pub fn eval<'py>(
    py: Python<'py>,
    expr: &str,
    locals: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    let code = std::ffi::CString::new(expr).unwrap();
    py.eval(&code, None, Some(locals))
}

/// Waits on a channel with the GIL released.
pub fn recv_detached<T: Send>(
    py: Python<'_>,
    rx: &crossbeam_channel::Receiver<T>,
    timeout: Duration,
) -> Option<T> {
    py.detach(|| rx.recv_timeout(timeout).ok())
}

/// Defines a Python module from source and registers it in `sys.modules`.
pub fn define_module<'py>(
    py: Python<'py>,
    name: &str,
    source: &str,
) -> PyResult<Bound<'py, PyModule>> {
    let code = std::ffi::CString::new(source).unwrap();
    let file = std::ffi::CString::new(format!("{name}.py")).unwrap();
    let module_name = std::ffi::CString::new(name).unwrap();
    let module = PyModule::from_code(py, &code, &file, &module_name)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item(name, &module)?;
    Ok(module)
}

static LOGCONTEXT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The package's reference logcontext module, registered as
/// `pyo3_twisted_test_logcontext` (it needs Twisted only).
pub fn logcontext(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let module = LOGCONTEXT.get_or_try_init(py, || -> PyResult<_> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python_shim/python/pyo3_twisted/logcontext.py");
        let source = std::fs::read_to_string(&path)
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("{path:?}: {e}")))?;
        Ok(define_module(py, "pyo3_twisted_test_logcontext", &source)?.unbind())
    })?;
    Ok(module.bind(py).clone())
}

/// A two-worker Tokio runtime with timers and I/O, for tests that drive futures
/// themselves (the native pool's).
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Records the thread it is dropped on.
pub struct DropsOn(pub std::sync::Arc<std::sync::Mutex<Option<std::thread::ThreadId>>>);

impl Drop for DropsOn {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(std::thread::current().id());
    }
}
