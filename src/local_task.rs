//! A bridged task polled where it is woken (`RuntimeConfig::reactor_polls`).
//!
//! ```text
//!  reactor thread (GIL held)                       Tokio worker
//!  create_deferred: the first poll, here           ─ woken by Tokio (I/O, Tokio's timers,
//!  woken here (a Python awaitable answered, a        a channel sent from Tokio):
//!    reactor-clock timer, a cancel): polled here      polled on a Tokio task, as any
//!    at once; a result made here fires its Deferred    task; its result goes back
//!    here too, with no mailbox trip                    through the mailbox
//! ```
//!
//! A handler whose work waits on Python (a transaction through `runInteraction`)
//! then costs what the Python handler costs: reactor → DB thread → reactor, with no
//! Tokio hop at either end. The price: whatever the future does between two awaits
//! runs on the reactor thread when the reactor woke it, so a CPU-heavy stretch there
//! stalls the reactor. Polls longer than [`SLOW_POLL`] are counted and logged.
//!
//! [`LocalTask::wake`] runs on any thread; a poll runs on the thread that woke the
//! task, never on two threads at once.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::stats::Counters;
use crate::submit::Task;
use crate::threads;

/// A reactor-thread poll longer than this is reported: the reactor did nothing else
/// meanwhile.
pub(crate) const SLOW_POLL: Duration = Duration::from_millis(10);

const IDLE: u8 = 0;
const SCHEDULED: u8 = 1;
const RUNNING: u8 = 2;
/// Woken while running: poll again before going idle.
const NOTIFIED: u8 = 3;
const DONE: u8 = 4;

/// Work a poll leaves for right after it: firing a Deferred, whose callbacks are the
/// caller's Python code, not the future's work (and not timed as its poll).
type AfterPoll = Box<dyn FnOnce()>;

thread_local! {
    /// Inside a poll of a local task on the reactor thread (the GIL is held).
    static ON_REACTOR_POLL: Cell<bool> = const { Cell::new(false) };
    static AFTER_POLL: RefCell<Vec<AfterPoll>> = const { RefCell::new(Vec::new()) };
    /// Reactor-thread polls run on this thread so far.
    static POLLS_RUN: Cell<u64> = const { Cell::new(0) };
    /// Time the current poll spent in Python it called at once (an awaitable's
    /// factory): the caller's Python work, not the future's.
    static IN_PYTHON: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// The scope (its address) whose own logging context is current now, as a poll
    /// of a `create_coroutine` coroutine found it: an awaitable that task starts
    /// needs no switch. 0: none, or not known.
    static CONTEXT_CURRENT_FOR: Cell<usize> = const { Cell::new(0) };
}

/// Runs `poll` (a reactor-thread poll of the task whose scope is at `scope`)
/// knowing its own logging context is current as it starts.
pub(crate) fn with_own_context_current<R>(scope: usize, poll: impl FnOnce() -> R) -> R {
    let outer = CONTEXT_CURRENT_FOR.with(|s| s.replace(scope));
    let result = poll();
    CONTEXT_CURRENT_FOR.with(|s| s.set(outer));
    result
}

/// Whether the task of the scope at `scope` is being polled here with its own
/// logging context current.
pub(crate) fn own_context_current(scope: usize) -> bool {
    scope != 0 && CONTEXT_CURRENT_FOR.with(Cell::get) == scope
}

/// Something the poll started may have switched the logging context (an awaitable
/// left waiting sets the sentinel, under the rules): no longer known.
pub(crate) fn own_context_unknown() {
    CONTEXT_CURRENT_FOR.with(|s| s.set(0));
}

/// How many reactor-thread polls this thread has run: compared before and after a
/// wake, it tells whether the woken task already ran here (then nobody needs the
/// reactor to linger for its answer).
pub(crate) fn polls_run() -> u64 {
    POLLS_RUN.with(Cell::get)
}

/// Runs `f`, Python called at once from inside a reactor-thread poll, and leaves
/// its time out of the poll's (the slow-poll report is about the future's own work).
pub(crate) fn in_python<R>(f: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let result = f();
    let took = started.elapsed();
    IN_PYTHON.with(|total| total.set(total.get() + took));
    result
}

/// Whether the caller runs inside a reactor-thread poll of a local task: the GIL is
/// held and Python may be called at once.
pub(crate) fn polling_on_reactor() -> bool {
    ON_REACTOR_POLL.with(Cell::get)
}

/// Runs `job` on this thread as soon as the current reactor-thread poll returns.
/// Only inside one ([`polling_on_reactor`]).
pub(crate) fn after_poll(job: AfterPoll) {
    AFTER_POLL.with(|jobs| jobs.borrow_mut().push(job));
}

pub(crate) struct LocalTask {
    state: AtomicU8,
    future: Mutex<Option<Task>>,
    /// The reactor thread's id ([`threads::current_id`]).
    reactor_thread: u64,
    tokio: tokio::runtime::Handle,
    counters: Arc<Counters>,
}

impl LocalTask {
    /// Polls `task` now, on the reactor thread (the caller's), then wherever it is
    /// woken.
    pub(crate) fn start(
        task: Task,
        reactor_thread: u64,
        tokio: tokio::runtime::Handle,
        counters: Arc<Counters>,
    ) {
        let local = Arc::new(Self {
            state: AtomicU8::new(SCHEDULED),
            future: Mutex::new(Some(task)),
            reactor_thread,
            tokio,
            counters,
        });
        local.run_first();
    }

    /// The first poll, inside `create_deferred`, then as [`LocalTask::run`].
    fn run_first(self: Arc<Self>) {
        self.run_polls(true);
    }

    fn schedule(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = match state {
                IDLE => SCHEDULED,
                RUNNING => NOTIFIED,
                _ => return,
            };
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if next == SCHEDULED => break,
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
        if threads::current_id() == self.reactor_thread {
            Arc::clone(self).run();
        } else {
            let local = Arc::clone(self);
            // Dropped unpolled if the runtime has shut down; the task goes with it.
            drop(self.tokio.spawn(async move { local.run() }));
        }
    }

    /// Polls until the future is pending and nobody woke it meanwhile, or done.
    fn run(self: Arc<Self>) {
        self.run_polls(false);
    }

    /// `first`: this is the first poll, inside `create_deferred`. The caller's
    /// logging context (the task's) is current then, and charges this thread's CPU
    /// time itself, so the task's meter must not count it again. A poll woken on the
    /// reactor thread later runs in whatever context the waker ran (the sentinel, for
    /// an awaitable's answer) and is metered as on Tokio.
    fn run_polls(self: Arc<Self>, mut first: bool) {
        let on_reactor = threads::current_id() == self.reactor_thread;
        self.state.store(RUNNING, Ordering::Release);
        let waker = Waker::from(Arc::clone(&self));
        let mut cx = Context::from_waker(&waker);
        loop {
            let mut slot = self.future.lock();
            let Some(future) = slot.as_mut() else {
                self.state.store(DONE, Ordering::Release);
                return;
            };
            let poll = if on_reactor {
                // Charged by the context: the first poll, or a poll run inside an
                // awaitable's answer with the task's context current (`awaitable`).
                let charged = first || crate::cputime::charged_by_context();
                crate::cputime::with_context_charging(charged, || {
                    self.poll_on_reactor(future, &mut cx)
                })
            } else {
                future.as_mut().poll(&mut cx)
            };
            first = false;
            if poll.is_ready() {
                *slot = None;
                drop(slot);
                self.state.store(DONE, Ordering::Release);
                return;
            }
            drop(slot);
            match self
                .state
                .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                // Woken while we polled: again, here.
                Err(_) => self.state.store(RUNNING, Ordering::Release),
            }
        }
    }

    /// One poll on the reactor thread ([`poll_here`]), its skipped restores left to
    /// a collector (`lazy_restore`).
    fn poll_on_reactor(&self, future: &mut Task, cx: &mut Context<'_>) -> Poll<()> {
        poll_here(&self.tokio, &self.counters, || {
            crate::lazy_restore::armed(|| {
                crate::cputime::with_own_meter_mark(|| future.as_mut().poll(cx))
            })
        })
    }
}

/// One poll of a task on the reactor thread, GIL held: inside the Tokio runtime's
/// context (a future may spawn, or make Tokio timers and sockets), marked so that a
/// Python awaitable it starts runs at once, and timed (a poll longer than
/// [`SLOW_POLL`] is counted and logged). What the poll left for right after it
/// ([`after_poll`]) runs once it returns.
pub(crate) fn poll_here<R>(
    tokio: &tokio::runtime::Handle,
    counters: &Counters,
    poll: impl FnOnce() -> R,
) -> R {
    let _runtime = tokio.enter();
    let outer = ON_REACTOR_POLL.with(|flag| flag.replace(true));
    // A poll nested in another (a Deferred's callback starting a task) keeps its
    // own after-poll work.
    let outer_jobs = AFTER_POLL.with(|jobs| std::mem::take(&mut *jobs.borrow_mut()));
    let outer_python = IN_PYTHON.with(|total| total.replace(Duration::ZERO));
    // Known only to the poll that sets it, not to one nested in it.
    let outer_context = CONTEXT_CURRENT_FOR.with(|s| s.replace(0));
    POLLS_RUN.with(|n| n.set(n.get() + 1));
    let started = Instant::now();
    let result = poll();
    let took = started
        .elapsed()
        .saturating_sub(IN_PYTHON.with(|total| total.replace(outer_python)));
    ON_REACTOR_POLL.with(|flag| flag.set(outer));
    CONTEXT_CURRENT_FOR.with(|s| s.set(outer_context));
    let jobs = AFTER_POLL.with(|jobs| std::mem::replace(&mut *jobs.borrow_mut(), outer_jobs));
    // The jobs fire Deferreds: their callbacks run in the caller's context, so a
    // restore this poll left owed is made first.
    if !jobs.is_empty() && crate::lazy_restore::owing() {
        threads::attach(crate::lazy_restore::pay);
    }
    // What their callbacks poll is charged by its own rules, not by this poll's.
    crate::cputime::with_context_charging(false, || {
        for job in jobs {
            job();
        }
    });
    Counters::bump(&counters.reactor_polls);
    if took > SLOW_POLL {
        Counters::bump(&counters.reactor_polls_slow);
        log::warn!(
            "pyo3-twisted: a future polled on the reactor thread (reactor_polls, or a \
             coroutine from create_coroutine) ran for {took:?} without yielding, and the \
             reactor did nothing else meanwhile; run CPU-heavy work on a Tokio worker \
             (tokio::task::spawn_blocking, or spawn), or poll it on Tokio \
             (create_deferred without reactor_polls)"
        );
    }
    result
}

impl Wake for LocalTask {
    fn wake(self: Arc<Self>) {
        self.schedule();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.schedule();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    use crate::submit::tests::runtime;

    #[test]
    fn polled_where_woken_and_done_once() {
        let rt = runtime();
        let here = threads::current_id();
        let polls = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicUsize::new(0));
        let (tx_local, rx_local) = tokio::sync::oneshot::channel::<()>();
        let (tx_remote, rx_remote) = tokio::sync::oneshot::channel::<()>();
        let (finished_tx, finished_rx) = std::sync::mpsc::channel();
        let task: Task = {
            let (polls, done) = (Arc::clone(&polls), Arc::clone(&done));
            Box::pin(async move {
                polls.lock().push(threads::current_id());
                rx_local.await.unwrap();
                polls.lock().push(threads::current_id());
                rx_remote.await.unwrap();
                polls.lock().push(threads::current_id());
                done.fetch_add(1, Ordering::SeqCst);
                finished_tx.send(()).unwrap();
            })
        };
        let counters = Arc::new(Counters::default());
        // "Here" plays the reactor thread.
        LocalTask::start(task, here, rt.handle().clone(), Arc::clone(&counters));
        assert_eq!(*polls.lock(), vec![here], "the first poll is eager, here");
        // Woken here: polled here, at once.
        tx_local.send(()).unwrap();
        assert_eq!(*polls.lock(), vec![here, here]);
        // Woken on a Tokio worker: polled there.
        rt.spawn(async move { tx_remote.send(()).unwrap() });
        finished_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let polls = polls.lock().clone();
        assert_eq!(polls.len(), 3);
        assert_ne!(polls[2], here, "the Tokio-side wake ran on Tokio");
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(counters.reactor_polls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_and_a_dropped_waker_frees_the_future() {
        let rt = runtime();
        let here = threads::current_id();
        let polls = Arc::new(AtomicUsize::new(0));
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(100, Ordering::SeqCst);
            }
        }
        let task: Task = {
            let polls = Arc::clone(&polls);
            let guard = Counted(Arc::clone(&polls));
            Box::pin(std::future::poll_fn(move |cx| {
                let _keep = &guard;
                let n = polls.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    // Wakes itself while running: must be polled again, not lost.
                    cx.waker().wake_by_ref();
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            }))
        };
        LocalTask::start(
            task,
            here,
            rt.handle().clone(),
            Arc::new(Counters::default()),
        );
        // Three polls, then the future (and its guard) dropped.
        assert_eq!(polls.load(Ordering::SeqCst), 103);
    }
}
