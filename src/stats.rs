//! Counters a runtime keeps, and the snapshot [`stats`](crate::stats) returns.
//!
//! Every figure is declared once, in the `stats!` invocation below, with its doc:
//! the live atomic [`Counters`], the public [`Stats`] fields, their Python keys
//! (the field names) and [`Stats::counters`] are all generated from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::histogram::{Histogram, HistogramSnapshot, Unit, COUNT_BOUNDS, SECONDS_BOUNDS_NS};

macro_rules! stats {
    (
        // Figures the bridge computes when it takes a snapshot.
        computed { $( $(#[doc = $cdoc:literal])+ $computed:ident, )* }
        // Figures kept as live atomic counters, bumped from any thread.
        counted { $( $(#[doc = $kdoc:literal])+ $counted:ident, )* }
    ) => {
        /// Live counters, bumped from any thread with relaxed atomics (they order
        /// nothing).
        #[derive(Default, Debug)]
        pub(crate) struct Counters {
            $( $(#[doc = $kdoc])+ pub(crate) $counted: AtomicU64, )*
        }

        impl Counters {
            /// Copies every live counter into `stats`.
            pub(crate) fn load_into(&self, stats: &mut Stats) {
                $( stats.$counted = self.$counted.load(Ordering::Relaxed); )*
            }
        }

        /// How many figures a [`Stats`] has, `state`, `wake_mode` and `clock` aside.
        const FIGURES: usize = [$(stringify!($computed),)* $(stringify!($counted),)*].len();

        /// A snapshot of one runtime's counters.
        ///
        /// Counters only grow, except `tasks_in_flight`, `timers_pending`,
        /// `mailbox_depth` and `tokio_threads_live`.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            /// `"installed"`, `"running"`, `"draining"` (shutting down) or `"stopped"`.
            pub state: &'static str,
            /// `"fd"` or `"call_from_thread"` once running; `"none"` before.
            pub wake_mode: &'static str,
            /// Which clock [`time`](crate::time) follows: `"reactor"` or `"tokio"`.
            pub clock: &'static str,
            $( $(#[doc = $cdoc])+ pub $computed: u64, )*
            $( $(#[doc = $kdoc])+ pub $counted: u64, )*
        }

        impl Stats {
            /// Every figure's name and doc, in the order of [`Stats::counters`].
            pub fn descriptions() -> [(&'static str, &'static str); FIGURES] {
                [
                    $( (stringify!($computed), concat!($($cdoc),+)), )*
                    $( (stringify!($counted), concat!($($kdoc),+)), )*
                ]
            }

            /// The snapshot as `(name, value)` pairs, in declaration order; the names
            /// are the Python dict's keys. `state`, `wake_mode` and `clock` excluded.
            pub fn counters(&self) -> [(&'static str, u64); FIGURES] {
                [
                    $( (stringify!($computed), self.$computed), )*
                    $( (stringify!($counted), self.$counted), )*
                ]
            }
        }
    };
}

stats! {
    computed {
        /// Configured number of Tokio worker threads.
        worker_threads,
        /// Deferreds created and not yet fired.
        tasks_in_flight,
        /// Timers of [`time`](crate::time) waiting on the reactor's clock.
        timers_pending,
        /// Jobs queued in the mailbox for the reactor thread right now.
        mailbox_depth,
        /// Timers of [`time`](crate::time) fired by the reactor's clock.
        timers_fired,
        /// GIL acquisitions made by this crate on Tokio threads, process-wide (the
        /// design keeps it at zero).
        gil_acquisitions_on_tokio_threads,
    }
    counted {
        /// Tokio threads alive now (on the process-wide pool: that pool's).
        tokio_threads_live,
        /// Futures handed to `create_deferred`.
        tasks_spawned,
        /// Deferreds fired with a value.
        tasks_completed,
        /// Deferreds errbacked with the future's `PyErr`.
        tasks_failed,
        /// Deferreds errbacked with `RustPanicError`.
        tasks_panicked,
        /// Deferreds cancelled by the caller (their futures dropped).
        tasks_cancelled,
        /// Tasks still running when `shutdown_timeout` passed.
        tasks_aborted_at_shutdown,
        /// `create_deferred` calls refused because shutdown had begun.
        tasks_rejected_after_shutdown,
        /// Python awaitables started by `run_python_awaitable`.
        awaitables_started,
        /// Python awaitables whose outcome went back to Rust.
        awaitables_completed,
        /// Wake signals sent to the reactor (at most one per batch).
        mailbox_wakeups,
        /// Times the reactor drained the mailbox.
        mailbox_drains,
        /// Drains that found at least one job.
        mailbox_batches,
        /// Jobs run on the reactor thread.
        mailbox_jobs,
        /// Largest number of jobs run in one drain.
        mailbox_max_batch,
        /// Times the reactor lingered for results after handing work to Tokio.
        mailbox_lingers,
        /// Hand-offs after which the reactor did not linger, because lately its
        /// lingers had not been catching their answers (all but every 16th, while
        /// under a third of them do).
        mailbox_lingers_skipped,
        /// Polls of bridged futures run on the reactor thread (`reactor_polls`).
        reactor_polls,
        /// Of those, polls that held the reactor thread longer than 10 ms.
        reactor_polls_slow,
    }
}

/// The figures of [`Stats`] that are levels (they may go down, or report a
/// maximum), exported as gauges; every other figure only grows, a counter.
pub const GAUGES: [&str; 6] = [
    "worker_threads",
    "tasks_in_flight",
    "timers_pending",
    "mailbox_depth",
    "tokio_threads_live",
    "mailbox_max_batch",
];

/// How a bridged task ended, for the run-time histogram's `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskOutcome {
    Completed = 0,
    Failed = 1,
    Panicked = 2,
}

/// The `outcome` label of each [`TaskOutcome`], in order.
pub(crate) const TASK_OUTCOMES: [&str; 3] = ["completed", "failed", "panicked"];

/// One runtime's histograms, recorded from any thread without the GIL. With
/// `RuntimeConfig::metrics` off, nothing is recorded (the counters still are).
#[derive(Debug)]
pub(crate) struct Histograms {
    pub(crate) enabled: bool,
    /// Jobs run by each drain that found any.
    pub(crate) drain_batch: Histogram,
    /// From the push that asked for a wake-up to the start of the drain it caused.
    pub(crate) wake_to_drain: Histogram,
    /// From `create_deferred` to the future's outcome, by [`TaskOutcome`].
    pub(crate) task_run: [Histogram; 3],
    /// Thread CPU time a task used, where CPU time is metered (a logcontext
    /// provider with `track_cpu_time`).
    pub(crate) task_cpu: Histogram,
    /// When the first push of the pending batch asked for a wake-up (`now_ns`), or 0.
    pub(crate) batch_started: AtomicU64,
    /// `run_interaction` time, whole (every attempt), by pool, transaction name and
    /// outcome (`committed`, `retried` then committed, `failed`).
    interactions: parking_lot::Mutex<Vec<(InteractionKey, Arc<Histogram>)>>,
    /// Waits for a connection of the native PostgreSQL pool.
    pub(crate) checkout: Histogram,
}

type InteractionKey = (&'static str, &'static str, &'static str);

/// A histogram's labels, `(name, value)` in the exported order.
pub(crate) type Labels = Vec<(&'static str, &'static str)>;

impl Histograms {
    pub(crate) fn new(enabled: bool) -> Self {
        let seconds = || Histogram::new(SECONDS_BOUNDS_NS, Unit::Nanoseconds);
        Self {
            enabled,
            drain_batch: Histogram::new(COUNT_BOUNDS, Unit::Count),
            wake_to_drain: seconds(),
            task_run: [seconds(), seconds(), seconds()],
            task_cpu: seconds(),
            batch_started: AtomicU64::new(0),
            interactions: parking_lot::Mutex::new(Vec::new()),
            checkout: seconds(),
        }
    }

    /// Counts one whole `run_interaction`. Any thread; a short lock, taken once per
    /// transaction.
    pub(crate) fn observe_interaction(
        &self,
        pool: &'static str,
        name: &'static str,
        outcome: &'static str,
        elapsed: std::time::Duration,
    ) {
        if !self.enabled {
            return;
        }
        let key = (pool, name, outcome);
        // The same call site passes the same static texts: their addresses are
        // compared before their bytes.
        let same = |k: &(&str, &str, &str)| {
            (std::ptr::eq(k.0, pool) && std::ptr::eq(k.1, name) && std::ptr::eq(k.2, outcome))
                || *k == key
        };
        let mut all = self.interactions.lock();
        match all.iter().find(|(k, _)| same(k)) {
            Some((_, h)) => h.observe_duration(elapsed),
            None => {
                let h = Arc::new(Histogram::new(SECONDS_BOUNDS_NS, Unit::Nanoseconds));
                h.observe_duration(elapsed);
                all.push((key, h));
            }
        }
    }

    /// Every histogram by its exported name, with its labels.
    pub(crate) fn snapshot(&self) -> Vec<(&'static str, Labels, HistogramSnapshot)> {
        let mut all: Vec<(&'static str, Labels, HistogramSnapshot)> = vec![
            ("drain_batch_size", vec![], self.drain_batch.snapshot()),
            (
                "wake_to_drain_seconds",
                vec![],
                self.wake_to_drain.snapshot(),
            ),
        ];
        for (outcome, h) in TASK_OUTCOMES.iter().zip(&self.task_run) {
            all.push((
                "task_run_seconds",
                vec![("outcome", *outcome)],
                h.snapshot(),
            ));
        }
        all.push(("task_cpu_seconds", vec![], self.task_cpu.snapshot()));
        all.push((
            "pool_checkout_seconds",
            vec![("pool", "postgres")],
            self.checkout.snapshot(),
        ));
        let interactions: Vec<_> = self.interactions.lock().clone();
        for ((pool, name, outcome), h) in interactions {
            all.push((
                "run_interaction_seconds",
                vec![("pool", pool), ("name", name), ("outcome", outcome)],
                h.snapshot(),
            ));
        }
        all
    }
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Stats {
    /// The snapshot as the Python dict `pyo3_twisted.stats(reactor)` returns: every
    /// counter, plus `state`, `wake_mode` and `clock`.
    pub fn to_dict<'py>(
        &self,
        py: pyo3::Python<'py>,
    ) -> pyo3::PyResult<pyo3::Bound<'py, pyo3::types::PyDict>> {
        use pyo3::types::PyDictMethods;
        let dict = pyo3::types::PyDict::new(py);
        dict.set_item("state", self.state)?;
        dict.set_item("wake_mode", self.wake_mode)?;
        dict.set_item("clock", self.clock)?;
        for (name, value) in self.counters() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_reaches_the_snapshot_under_its_own_name() {
        let counters = Counters::default();
        counters.tasks_spawned.store(3, Ordering::Relaxed);
        counters.mailbox_max_batch.store(7, Ordering::Relaxed);
        let mut stats = Stats {
            worker_threads: 2,
            ..Stats::default()
        };
        counters.load_into(&mut stats);
        let figures = stats.counters();
        let get = |name: &str| figures.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(get("tasks_spawned"), Some(3));
        assert_eq!(get("mailbox_max_batch"), Some(7));
        assert_eq!(get("worker_threads"), Some(2));
        assert_eq!(get("tasks_completed"), Some(0));
        let mut names: Vec<_> = figures.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FIGURES, "a figure is listed twice");
    }

    #[test]
    fn every_figure_has_a_doc_and_every_gauge_is_a_figure() {
        let described = Stats::descriptions();
        assert!(described.iter().all(|(_, doc)| !doc.trim().is_empty()));
        let names: Vec<_> = Stats::default()
            .counters()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(described.iter().map(|(n, _)| *n).collect::<Vec<_>>(), names);
        for gauge in GAUGES {
            assert!(names.contains(&gauge), "{gauge} is not a figure");
        }
    }
}
