//! One runtime's timers on the reactor's clock (the `reactor` clock, chosen for
//! memory reactors): deadlines in the reactor's time, all served by a single
//! `callLater` for the earliest of them.
//!
//! ```text
//!  time::sleep (Tokio worker) ──registration job──▶ mailbox ──▶ insert   (reactor)
//!  reactor.advance(n) ──the one callLater──▶ fire_due (reactor) ──wake──▶ task (worker)
//!  Sleep dropped (any thread) ──cancel job──▶ remove (reactor): last timer gone, callLater cancelled
//! ```
//!
//! Threads: a [`Timer`] is shared by its future (any thread) and the queue; every
//! `TimerQueue` method that takes `py` runs on the reactor thread; [`TimerQueue::now`]
//! and [`TimerQueue::len`] read atomics from anywhere.
//!
//! Order: deadlines are kept in nanoseconds of the reactor's time, keyed with a
//! sequence number taken at registration, so timers due together fire in deadline
//! order and, for equal deadlines, in the order they were registered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

const WAITING: u8 = 0;
const FIRED: u8 = 1;
const CANCELLED: u8 = 2;
const SHUT_DOWN: u8 = 3;

/// (deadline in nanoseconds of reactor time, registration number)
type Key = (u64, u64);

/// What a timer's future and the queue share.
#[derive(Debug, Default)]
pub(crate) struct Timer {
    state: AtomicU8,
    waker: AtomicWaker,
    /// Set by `insert`, taken by `remove`: reactor thread only.
    key: Mutex<Option<Key>>,
}

/// A timer's outcome, as its future sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerState {
    Waiting,
    Fired,
    /// Its runtime stopped (or its reactor went away) before the deadline.
    ShutDown,
}

impl Timer {
    /// The state after registering `waker` to be woken on a change.
    pub(crate) fn poll_state(&self, waker: &std::task::Waker) -> TimerState {
        if let Some(state) = self.settled() {
            return state;
        }
        self.waker.register(waker);
        // A change made between the first look and `register` woke nobody.
        self.settled().unwrap_or(TimerState::Waiting)
    }

    fn settled(&self) -> Option<TimerState> {
        match self.state.load(Ordering::Acquire) {
            FIRED => Some(TimerState::Fired),
            SHUT_DOWN => Some(TimerState::ShutDown),
            _ => None,
        }
    }

    /// Marks a waiting timer abandoned (its future was dropped); true if it was
    /// still waiting, so the queue should forget it.
    pub(crate) fn cancel(&self) -> bool {
        self.settle(CANCELLED)
    }

    /// Marks a waiting timer as ended by shutdown, and wakes its task.
    pub(crate) fn shut_down(&self) {
        if self.settle(SHUT_DOWN) {
            self.waker.wake();
        }
    }

    fn fire(&self) -> bool {
        let fired = self.settle(FIRED);
        if fired {
            self.waker.wake();
        }
        fired
    }

    fn settle(&self, to: u8) -> bool {
        self.state
            .compare_exchange(WAITING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// When a timer is due.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// This long after the reactor time at registration.
    After(Duration),
    /// At this reactor time, in nanoseconds.
    At(u64),
}

/// The timers of one runtime whose clock is its reactor's.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    /// `reactor.seconds()` in nanoseconds, as last read on the reactor thread.
    now_ns: AtomicU64,
    pending: AtomicUsize,
    fired: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<Key, Arc<Timer>>,
    next_seq: u64,
    /// The `callLater` serving the earliest entry, and that entry's deadline.
    call: Option<(u64, Py<PyAny>)>,
    closed: bool,
}

/// Reactor seconds as nanoseconds; times before the clock's zero count as zero.
pub(crate) fn seconds_to_ns(seconds: f64) -> u64 {
    if seconds.is_nan() || seconds <= 0.0 {
        0
    } else {
        // Saturates at u64::MAX (about 584 years), as `as` does for floats.
        (seconds * 1e9).round() as u64
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl TimerQueue {
    /// The reactor's time as last seen by this runtime, in nanoseconds. Any thread.
    pub(crate) fn now(&self) -> u64 {
        self.now_ns.load(Ordering::Acquire)
    }

    /// Timers waiting for their deadline. Any thread.
    pub(crate) fn len(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Timers fired so far. Any thread.
    pub(crate) fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    /// Reads `reactor.seconds()`, keeping the copy other threads read. Reactor
    /// thread.
    pub(crate) fn observe(&self, reactor: &Bound<'_, PyAny>) -> PyResult<u64> {
        let seconds: f64 = reactor
            .call_method0(intern!(reactor.py(), "seconds"))?
            .extract()?;
        let now = seconds_to_ns(seconds);
        // Time on a reactor never runs backwards; keep the copy monotonic anyway.
        Ok(self.now_ns.fetch_max(now, Ordering::AcqRel).max(now))
    }

    /// Starts `timer`; it fires once the reactor's time reaches its deadline, at once
    /// if it already has. `on_due` is the callable the queue's `callLater` runs (it
    /// must call [`fire_due`](Self::fire_due)). Reactor thread.
    pub(crate) fn insert(
        &self,
        reactor: &Bound<'_, PyAny>,
        timer: Arc<Timer>,
        deadline: Deadline,
        on_due: &Py<PyAny>,
    ) -> PyResult<()> {
        let now = self.observe(reactor)?;
        let due = match deadline {
            Deadline::After(d) => now.saturating_add(duration_ns(d)),
            Deadline::At(at) => at,
        };
        let mut inner = self.inner.lock();
        if inner.closed {
            timer.shut_down();
            return Ok(());
        }
        if timer.state.load(Ordering::Acquire) != WAITING {
            return Ok(());
        }
        if due <= now {
            drop(inner);
            if timer.fire() {
                self.fired.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        let key = (due, inner.next_seq);
        inner.next_seq += 1;
        *timer.key.lock() = Some(key);
        inner.entries.insert(key, timer);
        self.pending.store(inner.entries.len(), Ordering::Relaxed);
        let earlier = inner.call.as_ref().is_none_or(|(at, _)| due < *at);
        if earlier {
            self.schedule(reactor, &mut inner, now, on_due)?;
        }
        Ok(())
    }

    /// Forgets a cancelled timer; the last one gone takes the `callLater` with it.
    /// Reactor thread.
    pub(crate) fn remove(&self, py: Python<'_>, timer: &Timer) -> PyResult<()> {
        let Some(key) = timer.key.lock().take() else {
            return Ok(());
        };
        let mut inner = self.inner.lock();
        inner.entries.remove(&key);
        self.pending.store(inner.entries.len(), Ordering::Relaxed);
        if inner.entries.is_empty() {
            if let Some((_, call)) = inner.call.take() {
                drop(inner);
                cancel_call(py, &call)?;
            }
        }
        // Otherwise the `callLater` may now be early: when it runs it fires nothing
        // early, and schedules the next deadline.
        Ok(())
    }

    /// The queue's `callLater` ran: fires, in order, every timer due by now (and
    /// the one the call was for), then schedules the next deadline. Reactor thread.
    pub(crate) fn fire_due(&self, reactor: &Bound<'_, PyAny>, on_due: &Py<PyAny>) -> PyResult<()> {
        let now = self.observe(reactor)?;
        let mut inner = self.inner.lock();
        // A call Twisted ran is due even where float rounding put it a hair early.
        let limit = inner.call.take().map_or(now, |(at, _)| at.max(now));
        let mut due = Vec::new();
        while let Some(entry) = inner.entries.first_entry() {
            if entry.key().0 > limit {
                break;
            }
            due.push(entry.remove());
        }
        self.pending.store(inner.entries.len(), Ordering::Relaxed);
        if !inner.entries.is_empty() && !inner.closed {
            self.schedule(reactor, &mut inner, now, on_due)?;
        }
        drop(inner);
        for timer in due {
            timer.key.lock().take();
            if timer.fire() {
                self.fired.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The runtime stopped: every waiting timer ends with a shutdown error, and the
    /// `callLater` is cancelled. Later registrations end the same way. Reactor
    /// thread.
    pub(crate) fn close(&self, py: Python<'_>) -> PyResult<()> {
        let (entries, call) = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            (std::mem::take(&mut inner.entries), inner.call.take())
        };
        self.pending.store(0, Ordering::Relaxed);
        for timer in entries.into_values() {
            timer.shut_down();
        }
        match call {
            Some((_, call)) => cancel_call(py, &call),
            None => Ok(()),
        }
    }

    /// Reports the `callLater` (which refers to its reactor) to the garbage
    /// collector.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(inner) = self.inner.try_lock() {
            if let Some((_, call)) = &inner.call {
                visit.call(call)?;
            }
        }
        Ok(())
    }

    /// Points the queue's one `callLater` at the earliest entry.
    fn schedule(
        &self,
        reactor: &Bound<'_, PyAny>,
        inner: &mut Inner,
        now: u64,
        on_due: &Py<PyAny>,
    ) -> PyResult<()> {
        let py = reactor.py();
        let Some((&(due, _), _)) = inner.entries.first_key_value() else {
            return Ok(());
        };
        if let Some((_, call)) = inner.call.take() {
            cancel_call(py, &call)?;
        }
        let delay = Duration::from_nanos(due.saturating_sub(now)).as_secs_f64();
        let call = reactor.call_method1(intern!(py, "callLater"), (delay, on_due.bind(py)))?;
        inner.call = Some((due, call.unbind()));
        Ok(())
    }
}

/// Cancels a `DelayedCall` that has not run yet.
fn cancel_call(py: Python<'_>, call: &Py<PyAny>) -> PyResult<()> {
    let call = call.bind(py);
    if call.call_method0(intern!(py, "active"))?.is_truthy()? {
        call.call_method0(intern!(py, "cancel"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_convert_to_nanoseconds_without_going_negative() {
        assert_eq!(seconds_to_ns(0.0), 0);
        assert_eq!(seconds_to_ns(-3.0), 0);
        assert_eq!(seconds_to_ns(f64::NAN), 0);
        assert_eq!(seconds_to_ns(1.5), 1_500_000_000);
        assert_eq!(seconds_to_ns(3600.0), 3_600_000_000_000);
    }

    #[test]
    fn a_timer_settles_once() {
        let timer = Timer::default();
        assert!(timer.fire());
        assert!(!timer.cancel());
        timer.shut_down();
        assert_eq!(timer.settled(), Some(TimerState::Fired));

        let timer = Timer::default();
        assert!(timer.cancel());
        assert!(!timer.fire());
        assert_eq!(timer.settled(), None);
    }

    /// A reactor with Twisted's `Clock` semantics, enough for the queue.
    const FAKE_CLOCK: &std::ffi::CStr = c"
class Call:
    def __init__(self, clock, at, f):
        self.clock, self.at, self.f, self.live = clock, at, f, True
    def active(self):
        return self.live
    def cancel(self):
        self.live = False
        self.clock.calls.remove(self)

class Clock:
    def __init__(self):
        self.now, self.calls = 0.0, []
    def seconds(self):
        return self.now
    def callLater(self, delay, f):
        call = Call(self, self.now + delay, f)
        self.calls.append(call)
        return call
    def advance(self, n):
        self.now += n
        while True:
            due = sorted((c for c in self.calls if c.at <= self.now), key=lambda c: c.at)
            if not due:
                return
            call = due[0]
            self.calls.remove(call)
            call.live = False
            call.f()
";

    struct Recorder {
        order: Mutex<Vec<usize>>,
    }

    struct Wake(Arc<Recorder>, usize);

    impl std::task::Wake for Wake {
        fn wake(self: Arc<Self>) {
            self.0.order.lock().push(self.1);
        }
    }

    fn with_clock(
        test: impl for<'py> FnOnce(Python<'py>, &Bound<'py, PyAny>, Py<PyAny>, Arc<TimerQueue>),
    ) {
        Python::initialize();
        Python::attach(|py| {
            let module =
                PyModule::from_code(py, FAKE_CLOCK, c"fake_clock.py", c"fake_clock").unwrap();
            let clock = module.getattr("Clock").unwrap().call0().unwrap();
            let queue = Arc::new(TimerQueue::default());
            let for_call = Arc::clone(&queue);
            let weak_clock = clock.clone().unbind();
            let on_due: Py<PyAny> =
                pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _| {
                    let py = args.py();
                    let own = ON_DUE.with(|d| d.borrow().as_ref().map(|d| d.clone_ref(py)));
                    if let Some(own) = own {
                        for_call.fire_due(weak_clock.bind(py), &own)?;
                    }
                    Ok::<_, PyErr>(py.None())
                })
                .unwrap()
                .into_any()
                .unbind();
            ON_DUE.with(|d| *d.borrow_mut() = Some(on_due.clone_ref(py)));
            test(py, &clock, on_due, queue);
            ON_DUE.with(|d| *d.borrow_mut() = None);
        });
    }

    thread_local! {
        static ON_DUE: std::cell::RefCell<Option<Py<PyAny>>> = const { std::cell::RefCell::new(None) };
    }

    fn timer(recorder: &Arc<Recorder>, index: usize) -> Arc<Timer> {
        let timer = Arc::new(Timer::default());
        let waker = std::task::Waker::from(Arc::new(Wake(Arc::clone(recorder), index)));
        assert_eq!(timer.poll_state(&waker), TimerState::Waiting);
        timer
    }

    fn calls(clock: &Bound<'_, PyAny>) -> usize {
        clock.getattr("calls").unwrap().len().unwrap()
    }

    #[test]
    fn timers_fire_in_deadline_order_and_equal_deadlines_in_registration_order() {
        with_clock(|_py, clock, on_due, queue| {
            let recorder = Arc::new(Recorder {
                order: Mutex::new(Vec::new()),
            });
            // (index, seconds): 1, 3 and 4 share a deadline.
            let plan = [(0, 5.0), (1, 2.0), (2, 9.0), (3, 2.0), (4, 2.0), (5, 0.5)];
            for (index, seconds) in plan {
                let t = timer(&recorder, index);
                queue
                    .insert(
                        clock,
                        t,
                        Deadline::After(Duration::from_secs_f64(seconds)),
                        &on_due,
                    )
                    .unwrap();
            }
            assert_eq!(queue.len(), 6);
            assert_eq!(calls(clock), 1, "one callLater serves every timer");
            clock.call_method1("advance", (1.99,)).unwrap();
            assert_eq!(*recorder.order.lock(), vec![5]);
            clock.call_method1("advance", (0.01,)).unwrap();
            assert_eq!(*recorder.order.lock(), vec![5, 1, 3, 4]);
            clock.call_method1("advance", (10.0,)).unwrap();
            assert_eq!(*recorder.order.lock(), vec![5, 1, 3, 4, 0, 2]);
            assert_eq!((queue.len(), queue.fired(), calls(clock)), (0, 6, 0));
            assert_eq!(queue.now(), 12_000_000_000);
        });
    }

    #[test]
    fn removing_the_last_timer_cancels_the_call_and_closing_ends_the_rest() {
        with_clock(|py, clock, on_due, queue| {
            let recorder = Arc::new(Recorder {
                order: Mutex::new(Vec::new()),
            });
            let a = timer(&recorder, 0);
            let b = timer(&recorder, 1);
            for t in [&a, &b] {
                queue
                    .insert(
                        clock,
                        Arc::clone(t),
                        Deadline::After(Duration::from_secs(60)),
                        &on_due,
                    )
                    .unwrap();
            }
            assert!(a.cancel());
            queue.remove(py, &a).unwrap();
            assert_eq!((queue.len(), calls(clock)), (1, 1));
            assert!(b.cancel());
            queue.remove(py, &b).unwrap();
            assert_eq!(
                (queue.len(), calls(clock)),
                (0, 0),
                "no timer, no callLater"
            );

            let c = timer(&recorder, 2);
            queue
                .insert(clock, Arc::clone(&c), Deadline::At(90_000_000_000), &on_due)
                .unwrap();
            queue.close(py).unwrap();
            assert_eq!(c.settled(), Some(TimerState::ShutDown));
            assert_eq!(*recorder.order.lock(), vec![2], "woken to see the shutdown");
            assert_eq!(calls(clock), 0);
            let late = timer(&recorder, 3);
            queue
                .insert(
                    clock,
                    Arc::clone(&late),
                    Deadline::After(Duration::from_secs(1)),
                    &on_due,
                )
                .unwrap();
            assert_eq!(late.settled(), Some(TimerState::ShutDown), "after close");
        });
    }

    #[test]
    fn a_deadline_already_passed_fires_at_once() {
        with_clock(|_py, clock, on_due, queue| {
            clock.call_method1("advance", (10.0,)).unwrap();
            let recorder = Arc::new(Recorder {
                order: Mutex::new(Vec::new()),
            });
            let t = timer(&recorder, 0);
            queue
                .insert(clock, Arc::clone(&t), Deadline::At(9_000_000_000), &on_due)
                .unwrap();
            assert_eq!(t.settled(), Some(TimerState::Fired));
            assert_eq!(calls(clock), 0);
        });
    }
}
