//! `RustRuntime`: Synapse's per-homeserver handle, over the reactor's [`Runtime`].
//!
//! ```text
//!  Python: RustRuntime(hs, worker_threads=4)      (reactor thread)
//!    └─ Runtime::install(hs.get_reactor(), config) ─▶ the reactor's runtime (shared by
//!    │                                                every homeserver on that reactor)
//!    └─ hs.register_sync_shutdown_handler(hook)    hook holds the handle weakly
//!  Rust: runtime.tokio_handle()   any thread, no GIL once started
//!        runtime.dispatch_to_twisted(f)   any thread, never the GIL: f runs on the
//!                                         reactor thread, in the sentinel context
//!  hs.shutdown() ─▶ hook (reactor thread) ─▶ this handle closes; the last open
//!                                            handle of a reactor shuts its runtime down
//! ```
//!
//! A runtime belongs to a reactor, a `RustRuntime` to a homeserver. Synapse's worker
//! tests run several homeservers on one reactor, so each `RustRuntime` is a lease on
//! the reactor's runtime: shutting one homeserver down closes its own handle (bridged
//! calls through it fail with `RuntimeShutdown`) and stops the runtime only when it
//! was the reactor's last open handle. A handle dropped without a shutdown releases its
//! lease and leaves the runtime to its reactor (which stops it at reactor shutdown or
//! when collected).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use crate::bridge::Bridge;
use crate::config::RuntimeConfig;
use crate::errors::RuntimeShutdown;
use crate::runtime::{Runtime, RuntimeRef};

/// The options a `RustRuntime` installs unless told otherwise: Synapse's logcontext,
/// and Synapse's grace period for in-flight work at shutdown (the reactor is blocked
/// meanwhile, so work that needs it cannot finish anyway).
const SYNAPSE_LOGCONTEXT: &str = "synapse.logging.context";
const SYNAPSE_SHUTDOWN_TIMEOUT: f64 = 0.1;

/// Open `RustRuntime`s per bridge (by address; an entry lives only while a handle
/// holds its bridge, so the address cannot be reused under it).
static LEASES: Lazy<Mutex<HashMap<usize, usize>>> = Lazy::new(Default::default);

fn lease_key(bridge: &Arc<Bridge>) -> usize {
    Arc::as_ptr(bridge) as usize
}

fn take_lease(bridge: &Arc<Bridge>) {
    *LEASES.lock().entry(lease_key(bridge)).or_insert(0) += 1;
}

/// Gives a lease back; true if it was the bridge's last.
fn release_lease(bridge: &Arc<Bridge>) -> bool {
    let mut leases = LEASES.lock();
    let key = lease_key(bridge);
    match leases.get_mut(&key) {
        Some(count) if *count > 1 => {
            *count -= 1;
            false
        }
        _ => {
            leases.remove(&key);
            true
        }
    }
}

/// What a [`RustRuntime`] derefs to: Synapse's `RustRuntimeInner`, over this crate's
/// [`Runtime`] handle.
pub struct RustRuntimeInner {
    runtime: Runtime,
    closed: AtomicBool,
}

impl std::fmt::Debug for RustRuntimeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustRuntimeInner")
            .field("runtime", &self.runtime)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl RustRuntimeInner {
    /// Queues `f` to run on the reactor thread with the GIL held, in the sentinel
    /// logcontext, and wakes the reactor (one wake-up per batch). Never takes the GIL,
    /// so a Tokio task may call it. A panic in `f` is caught and logged through
    /// Twisted. Fails once this homeserver's runtime has shut down; `f` is dropped.
    pub fn dispatch_to_twisted<F>(&self, f: F) -> anyhow::Result<()>
    where
        F: FnOnce(Python<'_>) + Send + 'static,
    {
        if self.is_shut_down() {
            anyhow::bail!("the homeserver's Rust runtime has shut down");
        }
        let bridge = Arc::clone(self.runtime.bridge());
        self.runtime
            .dispatch(move |py| {
                super::logging::context::in_dispatch(py, &bridge, None, || {
                    f(py);
                    Ok(())
                })
            })
            .map_err(anyhow::Error::from)
    }

    /// The Tokio runtime's handle, starting the runtime if it has not started. Fails
    /// with `RuntimeShutdown` once this homeserver's runtime has shut down.
    pub fn tokio_handle(&self) -> PyResult<tokio::runtime::Handle> {
        self.open()?.tokio_handle()
    }

    /// The reactor, unless it has been collected (a `RuntimeShutdown` error then).
    pub fn reactor<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.runtime.reactor(py).ok_or_else(|| {
            RuntimeShutdown::new_err("the reactor of this RustRuntime has been garbage-collected")
        })
    }

    /// This crate's handle on the reactor's runtime, for its own API.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Whether this handle has shut down (the reactor's runtime may still serve other
    /// homeservers).
    pub fn is_shut_down(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.runtime.is_shut_down()
    }

    /// Closes this handle, as `hs.shutdown()` does through the registered handler:
    /// bridged calls through it fail with `RuntimeShutdown` from now on. If it was the
    /// reactor's last open handle, the runtime shuts down too, giving in-flight work
    /// up to `shutdown_timeout` (100 ms by default) before failing it. A second call
    /// does nothing. Reactor thread.
    pub fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if release_lease(self.runtime.bridge()) {
            let timeout = self.runtime.bridge().config().shutdown_timeout;
            self.runtime.shutdown(py, timeout)?;
        }
        Ok(())
    }

    fn open(&self) -> PyResult<&Runtime> {
        if self.is_shut_down() {
            Err(RuntimeShutdown::new_err(
                "the homeserver's Rust runtime has shut down",
            ))
        } else {
            Ok(&self.runtime)
        }
    }
}

impl Drop for RustRuntimeInner {
    fn drop(&mut self) {
        if !*self.closed.get_mut() {
            release_lease(self.runtime.bridge());
        }
    }
}

/// Synapse's `RustRuntime`: the per-homeserver handle, cheap to clone (an `Arc`), and
/// the Python class `RustRuntime(hs, worker_threads=4, **config)`.
///
/// Construction (reactor thread) installs the reactor's runtime (`hs.get_reactor()`)
/// with `worker_threads`, Synapse's logcontext provider (`synapse.logging.context`)
/// and a 100 ms shutdown grace, unless `config` (the keywords of
/// [`RuntimeConfig::from_kwargs`]) says otherwise, and registers its shutdown with
/// `hs.register_sync_shutdown_handler(phase="after", eventType="shutdown", ...)`.
/// Nothing starts until first use. It holds neither the homeserver nor the reactor.
///
/// ```no_run
/// use pyo3::prelude::*;
/// use pyo3_twisted::synapse::deferred::create_deferred;
/// use pyo3_twisted::synapse::runtime::RustRuntime;
///
/// #[pyclass]
/// struct Handler {
///     runtime: RustRuntime,
/// }
///
/// #[pymethods]
/// impl Handler {
///     fn answer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
///         let handle = self.runtime.tokio_handle()?;
///         create_deferred(py, &self.runtime, async move {
///             handle.spawn(async { 6 * 7 }).await.map_err(|e| {
///                 pyo3::exceptions::PyRuntimeError::new_err(e.to_string())
///             })
///         })
///     }
/// }
/// ```
#[pyclass(frozen, from_py_object, module = "pyo3_twisted.synapse")]
#[derive(Clone, Debug)]
pub struct RustRuntime {
    inner: Arc<RustRuntimeInner>,
}

impl Deref for RustRuntime {
    type Target = RustRuntimeInner;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl RustRuntime {
    /// A handle on `reactor`'s runtime with `config`, without a homeserver: the owner
    /// calls [`RustRuntimeInner::shutdown`] itself. Reactor thread.
    pub fn install(reactor: &Bound<'_, PyAny>, config: RuntimeConfig) -> PyResult<Self> {
        let runtime = Runtime::install(reactor, config)?;
        take_lease(runtime.bridge());
        super::logging::context::use_runtime(runtime.bridge());
        Ok(Self {
            inner: Arc::new(RustRuntimeInner {
                runtime,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

/// Synapse's defaults under the caller's keywords.
fn synapse_config(
    py: Python<'_>,
    worker_threads: usize,
    config: Option<&Bound<'_, PyDict>>,
) -> PyResult<RuntimeConfig> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("worker_threads", worker_threads)?;
    kwargs.set_item("logcontext", SYNAPSE_LOGCONTEXT)?;
    kwargs.set_item("shutdown_timeout", SYNAPSE_SHUTDOWN_TIMEOUT)?;
    if let Some(config) = config {
        kwargs.update(config.as_mapping())?;
    }
    RuntimeConfig::from_kwargs(Some(&kwargs))
}

#[pymethods]
impl RustRuntime {
    #[new]
    #[pyo3(signature = (hs, worker_threads = 4, **config))]
    fn py_new(
        hs: &Bound<'_, PyAny>,
        worker_threads: usize,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let py = hs.py();
        let reactor = hs.call_method0(intern!(py, "get_reactor"))?;
        let runtime = Self::install(&reactor, synapse_config(py, worker_threads, config)?)?;
        let hook = Py::new(
            py,
            ShutdownHook {
                inner: Arc::downgrade(&runtime.inner),
            },
        )?;
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "phase"), intern!(py, "after"))?;
        kwargs.set_item(intern!(py, "eventType"), intern!(py, "shutdown"))?;
        kwargs.set_item(intern!(py, "shutdown_func"), hook)?;
        if let Err(err) = hs.call_method(
            intern!(py, "register_sync_shutdown_handler"),
            (),
            Some(&kwargs),
        ) {
            // Nothing would ever close this handle: give its lease back now.
            runtime.inner.closed.store(true, Ordering::Release);
            release_lease(runtime.runtime.bridge());
            return Err(err);
        }
        Ok(runtime)
    }

    /// Whether this homeserver's runtime has shut down.
    #[getter(is_shut_down)]
    fn py_is_shut_down(&self) -> bool {
        self.is_shut_down()
    }

    /// Shuts this handle down now, as `hs.shutdown()` does.
    #[pyo3(name = "shutdown")]
    fn py_shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.shutdown(py)
    }

    fn __repr__(&self) -> String {
        let stats = self.runtime.stats();
        format!(
            "<RustRuntime {} workers={} in_flight={}>",
            if self.is_shut_down() {
                "shut down"
            } else {
                stats.state
            },
            stats.worker_threads,
            stats.tasks_in_flight
        )
    }
}

/// What `hs.register_sync_shutdown_handler` calls; holds the handle weakly, so the
/// reactor's trigger list keeps nothing alive.
#[pyclass(frozen, module = "pyo3_twisted.synapse")]
struct ShutdownHook {
    inner: Weak<RustRuntimeInner>,
}

#[pymethods]
impl ShutdownHook {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        match self.inner.upgrade() {
            Some(inner) => inner.shutdown(py),
            None => Ok(()),
        }
    }
}

impl crate::runtime::sealed::Sealed for RustRuntime {}

impl RuntimeRef for RustRuntime {
    fn runtime_with_gil(&self, _py: Python<'_>) -> PyResult<Runtime> {
        self.open().cloned()
    }

    fn runtime_without_gil(&self) -> PyResult<Runtime> {
        self.open().cloned()
    }
}

/// Adds the `runtime` submodule (with [`RustRuntime`]) to `m`, registered in
/// `sys.modules` as `<m>.runtime`, as Synapse's `runtime::register_module` does.
pub fn register_module(py: Python<'_>, m: &Bound<'_, PyModule>) -> PyResult<()> {
    let child = PyModule::new(py, "runtime")?;
    child.add_class::<RustRuntime>()?;
    m.add_submodule(&child)?;
    let name = format!("{}.runtime", m.name()?);
    py.import("sys")?
        .getattr("modules")?
        .set_item(name, child)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn synapse_defaults_yield_to_keywords() {
        pyo3::Python::initialize();
        Python::attach(|py| {
            let config = synapse_config(py, 4, None).unwrap();
            assert_eq!(config.worker_threads, 4);
            assert_eq!(config.shutdown_timeout, Duration::from_millis(100));
            assert_eq!(
                config.logcontext,
                crate::LogContextProvider::Module(SYNAPSE_LOGCONTEXT.into())
            );
            let kwargs = PyDict::new(py);
            kwargs
                .set_item("logcontext", "pyo3_twisted.logcontext")
                .unwrap();
            kwargs.set_item("shutdown_timeout", 2.0).unwrap();
            let config = synapse_config(py, 2, Some(&kwargs)).unwrap();
            assert_eq!(config.worker_threads, 2);
            assert_eq!(config.shutdown_timeout, Duration::from_secs(2));
            assert_eq!(
                config.logcontext,
                crate::LogContextProvider::Module("pyo3_twisted.logcontext".into())
            );
            let bad = PyDict::new(py);
            bad.set_item("wokrer_threads", 2).unwrap();
            assert!(synapse_config(py, 2, Some(&bad)).is_err());
        });
    }
}
