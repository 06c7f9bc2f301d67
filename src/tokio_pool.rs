//! Tokio worker pools: one for the whole process (the default), which every reactor
//! and other libraries can share, or one per reactor.
//!
//! ```text
//!  TokioRuntime::Process      first start, or process_runtime() ──▶ build ──▶ &'static Runtime
//!   (the default)               ├─▶ every reactor's bridge spawns here; at shutdown it
//!                               │   stops its own tasks and leaves the pool running
//!                               └─▶ pyo3_async_runtimes::tokio::init_with_runtime(rt)
//!  TokioRuntime::PerReactor   bridge starts ──▶ build ──▶ Runtime owned by the bridge,
//!                                                          dropped at its shutdown
//! ```
//!
//! [`build`] runs on the reactor thread with the GIL released (it waits for the
//! workers to start); [`process_runtime`] on any thread. The thread hooks run on the
//! new Tokio threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::config::RuntimeConfig;
use crate::threads;

/// How long building waits for the worker threads to come up before going on.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra work for each new Tokio thread, on top of marking it as ours.
pub(crate) type ThreadHook = Arc<dyn Fn() + Send + Sync>;

/// Builds a multi-thread runtime with `config`'s workers and thread name, and returns
/// once every worker runs, so "started" means the threads exist and carry the name.
/// Blocks: call it without the GIL.
pub(crate) fn build(
    config: &RuntimeConfig,
    on_start: ThreadHook,
    on_stop: ThreadHook,
) -> PyResult<Runtime> {
    let started = Arc::new((std::sync::Mutex::new(0_usize), std::sync::Condvar::new()));
    let on_started = Arc::clone(&started);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .thread_name(config.thread_name.clone())
        .enable_all()
        .on_thread_start(move || {
            threads::mark_tokio_thread();
            on_start();
            let (count, changed) = &*on_started;
            *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            changed.notify_all();
        })
        .on_thread_stop(move || on_stop())
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the Tokio runtime: {e}")))?;
    let workers = config.worker_threads;
    let (count, changed) = &*started;
    let count = count.lock().unwrap_or_else(|e| e.into_inner());
    let (count, _) = changed
        .wait_timeout_while(count, WORKER_START_TIMEOUT, |n| *n < workers)
        .unwrap_or_else(|e| e.into_inner());
    if *count < workers {
        log::warn!(
            "pyo3-twisted: not all {workers} Tokio workers started within {WORKER_START_TIMEOUT:?}"
        );
    }
    Ok(runtime)
}

/// The process-wide pool and what it was built with.
struct Process {
    runtime: Runtime,
    worker_threads: usize,
    thread_name: String,
    /// The fork generation it was built in: a forked child has none of its threads,
    /// so it builds a pool of its own.
    generation: u64,
}

static PROCESS: Mutex<Option<&'static Process>> = Mutex::new(None);
static PROCESS_THREADS_LIVE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IN_PROCESS_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The process-wide Tokio runtime, built on the first call with `config`'s
/// `worker_threads` and `thread_name`; it is never dropped.
///
/// Every reactor whose runtime uses [`TokioRuntime::Process`](crate::TokioRuntime::Process)
/// (the default) runs its futures here, so a process that makes many reactors (a test
/// suite that makes one per test) has one pool of threads, not one per reactor. It is
/// also the way to run this crate and another Tokio-based bridge on **one** pool: hand
/// the same runtime to the other library, e.g.
/// `pyo3_async_runtimes::tokio::init_with_runtime`, which needs a `&'static Runtime`:
///
/// ```no_run
/// use pyo3::prelude::*;
/// use pyo3_twisted::{install_runtime, process_runtime, RuntimeConfig};
///
/// # fn f(reactor: &Bound<'_, PyAny>) -> PyResult<()> {
/// let config = RuntimeConfig::default();
/// let runtime = process_runtime(reactor.py(), &config)?;
/// // pyo3_async_runtimes::tokio::init_with_runtime(runtime).ok();
/// install_runtime(reactor, config)?;
/// # let _ = runtime; Ok(()) }
/// ```
///
/// What a caller may rely on:
/// - Later calls return the same runtime; asking for different `worker_threads` or
///   `thread_name` than it was built with is an error that names both (the first
///   install sizes the pool; a reactor that needs other threads installs with
///   [`TokioRuntime::PerReactor`](crate::TokioRuntime::PerReactor)).
/// - The pool outlives reactors. At reactor shutdown the bridge stops *its* tasks
///   but the threads stay, running whatever else was spawned there, until the
///   process exits. Tasks of other libraries must not be taking the GIL while the
///   interpreter finalizes.
/// - In a process forked after the pool was built, the first call builds a new pool
///   for the child (the parent's threads do not exist there; its runtime is leaked,
///   never dropped). A runtime handed to another library before the fork stays the
///   parent's: hand it over after forking.
///
/// Takes the GIL token only to release it while the workers start.
pub fn process_runtime(py: Python<'_>, config: &RuntimeConfig) -> PyResult<&'static Runtime> {
    config.validate()?;
    py.detach(|| shared_pool(config))
}

/// Whether `config` fits the shared pool as built in this process (or it is not
/// built yet): an install checks before it changes anything.
pub(crate) fn check_shared(config: &RuntimeConfig) -> PyResult<()> {
    let generation = crate::fork::generation();
    match *PROCESS.lock() {
        Some(process)
            if process.generation == generation
                && (process.worker_threads != config.worker_threads
                    || process.thread_name != config.thread_name) =>
        {
            Err(mismatch(process, config))
        }
        _ => Ok(()),
    }
}

fn mismatch(process: &Process, config: &RuntimeConfig) -> PyErr {
    PyRuntimeError::new_err(format!(
        "the process-wide Tokio pool was already built with worker_threads={} and \
         thread_name={:?}; this runtime asks for worker_threads={} and thread_name={:?}. \
         Every reactor on the shared pool must ask for the same threads (the first install \
         sizes it), or install with tokio='per_reactor' (TokioRuntime::PerReactor) for a \
         pool of its own.",
        process.worker_threads, process.thread_name, config.worker_threads, config.thread_name
    ))
}

/// [`process_runtime`] without the GIL. Blocks while the workers start.
pub(crate) fn shared_pool(config: &RuntimeConfig) -> PyResult<&'static Runtime> {
    let generation = crate::fork::generation();
    let mut slot = PROCESS.lock();
    if let Some(process) = *slot {
        if process.generation == generation {
            if process.worker_threads != config.worker_threads
                || process.thread_name != config.thread_name
            {
                return Err(mismatch(process, config));
            }
            return Ok(&process.runtime);
        }
        // Built by the parent of this forked process: its threads are not here.
        PROCESS_THREADS_LIVE.store(0, Ordering::Relaxed);
    }
    let runtime = build(
        config,
        Arc::new(|| {
            IN_PROCESS_POOL.with(|flag| flag.set(true));
            PROCESS_THREADS_LIVE.fetch_add(1, Ordering::Relaxed);
        }),
        Arc::new(|| {
            PROCESS_THREADS_LIVE.fetch_sub(1, Ordering::Relaxed);
        }),
    )?;
    let process: &'static Process = Box::leak(Box::new(Process {
        runtime,
        worker_threads: config.worker_threads,
        thread_name: config.thread_name.clone(),
        generation,
    }));
    *slot = Some(process);
    Ok(&process.runtime)
}

/// Whether the calling thread is a worker of the process-wide pool.
pub(crate) fn in_process_pool() -> bool {
    IN_PROCESS_POOL.with(std::cell::Cell::get)
}

/// Live threads of the process-wide pool.
pub(crate) fn process_threads_live() -> u64 {
    PROCESS_THREADS_LIVE.load(Ordering::Relaxed)
}
