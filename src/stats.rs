//! Counters a runtime keeps, and the snapshot [`stats`](crate::stats) returns.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, bumped from any thread with relaxed atomics (they order nothing).
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub tasks_spawned: AtomicU64,
    pub tasks_completed: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub tasks_panicked: AtomicU64,
    pub tasks_cancelled: AtomicU64,
    pub tasks_aborted_at_shutdown: AtomicU64,
    pub tasks_rejected_after_shutdown: AtomicU64,
    pub awaitables_started: AtomicU64,
    pub awaitables_completed: AtomicU64,
    pub tokio_threads_live: AtomicU64,
    pub mailbox_wakeups: AtomicU64,
    pub mailbox_drains: AtomicU64,
    pub mailbox_batches: AtomicU64,
    pub mailbox_jobs: AtomicU64,
    pub mailbox_max_batch: AtomicU64,
    pub mailbox_lingers: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of one runtime's counters.
///
/// Counters only grow, except `tasks_in_flight` and `tokio_threads_live`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `"installed"`, `"running"`, `"draining"` (shutting down) or `"stopped"`.
    pub state: &'static str,
    /// `"fd"` or `"call_from_thread"` once running; `"none"` before.
    pub wake_mode: &'static str,
    /// Configured number of Tokio worker threads.
    pub worker_threads: u64,
    /// Tokio threads alive now.
    pub tokio_threads_live: u64,
    /// Futures handed to `create_deferred`.
    pub tasks_spawned: u64,
    /// Deferreds fired with a value.
    pub tasks_completed: u64,
    /// Deferreds errbacked with the future's `PyErr`.
    pub tasks_failed: u64,
    /// Deferreds errbacked with `RustPanicError`.
    pub tasks_panicked: u64,
    /// Deferreds cancelled by the caller (their futures dropped).
    pub tasks_cancelled: u64,
    /// Tasks still running when `shutdown_timeout` passed.
    pub tasks_aborted_at_shutdown: u64,
    /// `create_deferred` calls refused because shutdown had begun.
    pub tasks_rejected_after_shutdown: u64,
    /// Deferreds created and not yet fired.
    pub tasks_in_flight: u64,
    /// Python awaitables started by `run_python_awaitable`.
    pub awaitables_started: u64,
    /// Python awaitables whose outcome went back to Rust.
    pub awaitables_completed: u64,
    /// Wake signals sent to the reactor (at most one per batch).
    pub mailbox_wakeups: u64,
    /// Times the reactor drained the mailbox.
    pub mailbox_drains: u64,
    /// Drains that found at least one job.
    pub mailbox_batches: u64,
    /// Jobs run on the reactor thread.
    pub mailbox_jobs: u64,
    /// Largest number of jobs run in one drain.
    pub mailbox_max_batch: u64,
    /// Times the reactor lingered for results after handing work to Tokio.
    pub mailbox_lingers: u64,
    /// GIL acquisitions made by this crate on Tokio threads, process-wide (the
    /// design keeps it at zero).
    pub gil_acquisitions_on_tokio_threads: u64,
}

impl Stats {
    /// The snapshot as the Python dict `pyo3_twisted.stats(reactor)` returns: every
    /// counter, plus `state` and `wake_mode`.
    pub fn to_dict<'py>(
        &self,
        py: pyo3::Python<'py>,
    ) -> pyo3::PyResult<pyo3::Bound<'py, pyo3::types::PyDict>> {
        use pyo3::types::PyDictMethods;
        let dict = pyo3::types::PyDict::new(py);
        dict.set_item("state", self.state)?;
        dict.set_item("wake_mode", self.wake_mode)?;
        for (name, value) in self.counters() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// The snapshot as `(name, value)` pairs, in declaration order; numbers as `u64`,
    /// `state` and `wake_mode` excluded.
    pub fn counters(&self) -> [(&'static str, u64); 19] {
        [
            ("worker_threads", self.worker_threads),
            ("tokio_threads_live", self.tokio_threads_live),
            ("tasks_spawned", self.tasks_spawned),
            ("tasks_completed", self.tasks_completed),
            ("tasks_failed", self.tasks_failed),
            ("tasks_panicked", self.tasks_panicked),
            ("tasks_cancelled", self.tasks_cancelled),
            ("tasks_aborted_at_shutdown", self.tasks_aborted_at_shutdown),
            (
                "tasks_rejected_after_shutdown",
                self.tasks_rejected_after_shutdown,
            ),
            ("tasks_in_flight", self.tasks_in_flight),
            ("awaitables_started", self.awaitables_started),
            ("awaitables_completed", self.awaitables_completed),
            ("mailbox_wakeups", self.mailbox_wakeups),
            ("mailbox_drains", self.mailbox_drains),
            ("mailbox_batches", self.mailbox_batches),
            ("mailbox_jobs", self.mailbox_jobs),
            ("mailbox_max_batch", self.mailbox_max_batch),
            ("mailbox_lingers", self.mailbox_lingers),
            (
                "gil_acquisitions_on_tokio_threads",
                self.gil_acquisitions_on_tokio_threads,
            ),
        ]
    }
}
