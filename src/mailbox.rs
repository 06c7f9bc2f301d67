//! Tokio → reactor: the one road into the reactor thread.
//!
//! ```text
//!  Tokio thread(s)                               reactor thread (GIL held)
//!  ───────────────                               ─────────────────────────
//!  push(job) ─▶ [ lock-free queue ] ─────────────▶ drain(): run every job in one
//!      │                                            GIL hold, up to MAX_BATCH
//!      └─ wake_pending: false→true? ──▶ ReactorWaker ──▶ eventfd readable / callFromThread
//!         (true already: someone woke it; done)
//! ```
//!
//! Everything that must happen on the reactor thread — fire a Deferred, start a
//! Python awaitable, emit a log record in a logcontext, drop Python objects — is a
//! [`Job`] pushed here. [`Mailbox::push`] runs on any thread, never blocks and never
//! takes the GIL; [`Mailbox::drain`] runs on the reactor thread only.
//!
//! The wake protocol (at most one wake per batch, never a lost wake):
//! - producer: push the job, then `swap(wake_pending, true)`; wake only if it was
//!   `false`.
//! - consumer: first consume the wake signal (the caller of `drain` has read the
//!   eventfd, or the waker thread has taken its token), then `swap(wake_pending,
//!   false)`, then drain. Clearing the flag before consuming the signal would let the
//!   read swallow a racing producer's wake while the flag stays set: nobody would
//!   wake the reactor again.
//!
//! The swaps are read-modify-writes on one atomic, so a producer whose swap saw
//! `true` is ordered before the consumer's clearing swap, which therefore sees its
//! job.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;

use crate::close_flag::CloseFlag;
use crate::errors::{panic_message, report, RustPanicError};
use crate::stats::{Counters, Histograms};
use crate::wake::ReactorWaker;
pub use crate::wake_flag::WakeFlag;

mod reader;
pub(crate) use reader::install;

/// Work for the reactor thread. Its error, if any, is reported through Twisted's log.
pub(crate) type Job = Box<dyn for<'py> FnOnce(Python<'py>) -> PyResult<()> + Send>;

/// Most jobs one drain runs before it lets the reactor service other events; the rest
/// go in the next drain, which this drain schedules.
pub(crate) const MAX_BATCH: usize = 4096;

pub(crate) struct Mailbox {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    wake_pending: WakeFlag,
    closed: CloseFlag,
    waker: RwLock<Option<ReactorWaker>>,
    /// A reactor thread blocked in [`Mailbox::wait_until`] (an explicit, blocking
    /// shutdown), unparked by every push while it waits.
    waiting: AtomicBool,
    waiter: Mutex<Option<std::thread::Thread>>,
    counters: Arc<Counters>,
    histograms: Arc<Histograms>,
}

impl Mailbox {
    pub(crate) fn new(counters: Arc<Counters>, histograms: Arc<Histograms>) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            tx,
            rx,
            wake_pending: WakeFlag::new(),
            closed: CloseFlag::new(),
            waker: RwLock::new(None),
            waiting: AtomicBool::new(false),
            waiter: Mutex::new(None),
            counters,
            histograms,
        }
    }

    /// Queues `job` for the reactor thread. Any thread; never blocks on the GIL.
    ///
    /// After [`close`](Self::close) the job is dropped instead, on this thread: whoever
    /// waits for it sees its channel close rather than hanging.
    pub(crate) fn push(&self, job: Job) {
        if self.closed.closed_before_push() {
            return;
        }
        // Cannot fail: `self.rx` keeps the channel open.
        let _ = self.tx.send(job);
        // Either we see the close, or the closer's sweep sees our job
        // (src/close_flag.rs, model-checked).
        if self.closed.closed_after_push() {
            self.discard_queued();
            return;
        }
        // After the fence (in `closed_after_push`), as in `wait_until`: a waiter
        // either sees our job or is seen here.
        if self.waiting.load(Ordering::Relaxed) {
            if let Some(waiter) = &*self.waiter.lock() {
                waiter.unpark();
            }
        }
        if self.wake_pending.request_wake() {
            if self.histograms.enabled {
                self.histograms
                    .batch_started
                    .store(crate::histogram::now_ns(), Ordering::Release);
            }
            self.wake();
        }
    }

    fn wake(&self) {
        // Signalled after the lock is released: the reactor thread this wakes may
        // fork at once, and a child must not inherit the lock held.
        let waker = self.waker.read().clone();
        if let Some(waker) = waker {
            Counters::bump(&self.counters.mailbox_wakeups);
            waker.wake();
        }
        // No waker yet: `set_waker` sees `wake_pending` and wakes on our behalf.
    }

    /// Blocks the calling (reactor) thread until a job is queued or `deadline`
    /// passes; call it without the GIL. Whether a job is queued.
    pub(crate) fn wait_until(&self, deadline: Instant) -> bool {
        *self.waiter.lock() = Some(std::thread::current());
        self.waiting.store(true, Ordering::SeqCst);
        // Pairs with the fence in `push`.
        fence(Ordering::SeqCst);
        while self.rx.is_empty() && !self.closed.is_closed() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
        self.waiting.store(false, Ordering::SeqCst);
        self.waiter.lock().take();
        !self.rx.is_empty()
    }

    /// Installs the wake mechanism, replacing any earlier one (a forked child's), and
    /// delivers any wake that was asked for before it existed.
    pub(crate) fn set_waker(&self, waker: ReactorWaker) {
        *self.waker.write() = Some(waker);
        if self.wake_pending.is_pending() {
            self.wake();
        }
    }

    /// Runs queued jobs on the reactor thread. The caller has already consumed the
    /// wake signal (see the module docs for why that order matters).
    ///
    /// Errors of individual jobs are reported and the batch goes on. A
    /// `KeyboardInterrupt` or `SystemExit` is held until the batch is done, then
    /// returned, so no job is lost to it.
    pub(crate) fn drain(&self, py: Python<'_>) -> PyResult<usize> {
        Counters::bump(&self.counters.mailbox_drains);
        self.wake_pending.begin_drain();
        self.note_drain_start();
        self.run_jobs(py)
    }

    /// Keeps the reactor thread polling the mailbox, GIL released, while results
    /// are expected: from now until `idle` passes without a job (at most `budget`
    /// in all). Producers meanwhile push without waking anyone, sparing the
    /// eventfd write, the epoll wake-up and, above all, the cross-thread wake-up
    /// latency of a sleeping reactor. Reactor thread.
    pub(crate) fn linger(
        &self,
        py: Python<'_>,
        idle: Duration,
        budget: Duration,
    ) -> PyResult<usize> {
        let start = Instant::now();
        // Producers that see the flag set push silently; we poll instead.
        self.wake_pending.suppress();
        let mut ran = 0;
        let outcome = loop {
            match self.run_jobs(py) {
                Ok(0) => {}
                Ok(n) => ran += n,
                Err(err) => break Err(err),
            }
            let now = Instant::now();
            if now.duration_since(start) >= budget {
                break Ok(ran);
            }
            let until = (now + idle).min(start + budget);
            let arrived = py.detach(|| {
                let mut spins = 0_u32;
                while self.rx.is_empty() {
                    if Instant::now() >= until {
                        return false;
                    }
                    spins += 1;
                    if spins % 64 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                true
            });
            if !arrived {
                break Ok(ran);
            }
        };
        // Back to the wake protocol: clear the flag, then take what was pushed
        // before the clear (whoever pushes after it wakes the reactor).
        self.wake_pending.begin_drain();
        self.note_drain_start();
        let last = self.run_jobs(py);
        Counters::bump(&self.counters.mailbox_lingers);
        match (outcome, last) {
            (Ok(n), Ok(m)) => Ok(n + m),
            (Err(err), _) | (_, Err(err)) => Err(err),
        }
    }

    /// Jobs queued right now. Any thread.
    pub(crate) fn depth(&self) -> usize {
        self.rx.len()
    }

    /// A drain starts: the wake-up that asked for it, if any, took this long.
    fn note_drain_start(&self) {
        let started = self.histograms.batch_started.swap(0, Ordering::Acquire);
        if started != 0 {
            let waited = crate::histogram::now_ns().saturating_sub(started);
            self.histograms.wake_to_drain.observe(waited);
        }
    }

    /// Runs up to `MAX_BATCH` queued jobs; schedules a wake-up if more remain.
    fn run_jobs(&self, py: Python<'_>) -> PyResult<usize> {
        let mut ran = 0;
        let mut interrupt = None;
        while ran < MAX_BATCH {
            let Ok(job) = self.rx.try_recv() else { break };
            // Counted as they run: a callback that reads the stats mid-batch sees
            // its own delivery.
            if ran == 0 {
                Counters::bump(&self.counters.mailbox_batches);
            }
            Counters::bump(&self.counters.mailbox_jobs);
            ran += 1;
            let err = match catch_unwind(AssertUnwindSafe(|| job(py))) {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => err,
                Err(payload) => RustPanicError::new_err(panic_message(&*payload)),
            };
            if interrupt.is_none()
                && (err.is_instance_of::<PyKeyboardInterrupt>(py)
                    || err.is_instance_of::<PySystemExit>(py))
            {
                interrupt = Some(err);
            } else {
                report(py, err, "pyo3-twisted: a mailbox job failed");
            }
        }
        if ran == MAX_BATCH && !self.rx.is_empty() && self.wake_pending.request_wake() {
            self.wake();
        }
        self.counters
            .mailbox_max_batch
            .fetch_max(ran as u64, Ordering::Relaxed);
        if ran > 0 && self.histograms.enabled {
            self.histograms.drain_batch.observe(ran as u64);
        }
        match interrupt {
            Some(err) => Err(err),
            None => Ok(ran),
        }
    }

    /// Stops accepting jobs, drops the waker (ending the waker thread, if any) and
    /// drops every queued job. Reactor thread, GIL held, so the jobs' Python objects
    /// are released here and now.
    pub(crate) fn close(&self, _py: Python<'_>) {
        self.closed.close();
        self.waker.write().take();
        self.discard_queued();
    }

    /// In a forked child: drops what the parent's threads queued (nobody waits for
    /// it here). Reactor thread, GIL held.
    pub(crate) fn discard_after_fork(&self, _py: Python<'_>) {
        self.discard_queued();
    }

    fn discard_queued(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn mailbox() -> Mailbox {
        Mailbox::new(
            Arc::new(Counters::default()),
            Arc::new(Histograms::new(true)),
        )
    }

    #[test]
    fn jobs_of_each_sender_run_in_order() {
        Python::initialize();
        let mb = Arc::new(mailbox());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let senders: Vec<_> = (0..4)
            .map(|sender| {
                let (mb, seen) = (Arc::clone(&mb), Arc::clone(&seen));
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let seen = Arc::clone(&seen);
                        mb.push(Box::new(move |_py| {
                            seen.lock().push((sender, i));
                            Ok(())
                        }));
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.join().unwrap();
        }
        let ran = Python::attach(|py| mb.drain(py).unwrap());
        assert_eq!(ran, 4000);
        let seen = seen.lock();
        for sender in 0..4 {
            let order: Vec<i32> = seen
                .iter()
                .filter(|(s, _)| *s == sender)
                .map(|(_, i)| *i)
                .collect();
            assert_eq!(order, (0..1000).collect::<Vec<_>>(), "sender {sender}");
        }
    }

    #[test]
    fn a_drain_runs_at_most_a_batch_and_asks_for_another() {
        Python::initialize();
        let mb = mailbox();
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..MAX_BATCH + 10 {
            let ran = Arc::clone(&ran);
            mb.push(Box::new(move |_py| {
                ran.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }));
        }
        Python::attach(|py| {
            assert_eq!(mb.drain(py).unwrap(), MAX_BATCH);
            // The rest is left for a wake-up of its own, and the flag says so.
            assert!(mb.wake_pending.is_pending());
            assert_eq!(mb.drain(py).unwrap(), 10);
        });
        assert_eq!(ran.load(Ordering::Relaxed), MAX_BATCH + 10);
    }

    #[test]
    fn a_failing_job_does_not_stop_the_batch() {
        Python::initialize();
        let mb = mailbox();
        let ran = Arc::new(AtomicUsize::new(0));
        for i in 0..10 {
            let ran = Arc::clone(&ran);
            mb.push(Box::new(move |_py| {
                ran.fetch_add(1, Ordering::Relaxed);
                if i == 3 {
                    Err(pyo3::exceptions::PyValueError::new_err("job 3 fails"))
                } else if i == 5 {
                    panic!("job 5 panics")
                } else {
                    Ok(())
                }
            }));
        }
        Python::attach(|py| assert_eq!(mb.drain(py).unwrap(), 10));
        assert_eq!(ran.load(Ordering::Relaxed), 10);
    }

    /// Counts its drops: a job's captured state must be released, never leaked.
    struct Tracked(Arc<AtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn close_drops_queued_and_later_jobs_without_running_them() {
        Python::initialize();
        let mb = mailbox();
        let ran = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let job = |ran: &Arc<AtomicUsize>, dropped: &Arc<AtomicUsize>| -> Job {
            let (ran, tracked) = (Arc::clone(ran), Tracked(Arc::clone(dropped)));
            Box::new(move |_py| {
                let _keep = &tracked;
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        };
        for _ in 0..5 {
            mb.push(job(&ran, &dropped));
        }
        Python::attach(|py| {
            mb.close(py);
            assert_eq!(dropped.load(Ordering::SeqCst), 5, "queued jobs not dropped");
            mb.push(job(&ran, &dropped));
            assert_eq!(dropped.load(Ordering::SeqCst), 6, "a late job was kept");
            assert_eq!(mb.drain(py).unwrap(), 0);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
