//! Counts the bridged futures that still exist on a pool we do not own (the
//! process-wide one), so stopping can wait until they are gone, as dropping a runtime
//! of our own would.
//!
//! ```text
//!  create_deferred (reactor thread) ── enter(): started += 1 ──▶ guard moves into the task
//!  Tokio worker: task completes (disarm), or is aborted and dropped ── finished += 1
//!  shutdown / atexit (reactor thread, GIL released) ── wait_idle(timeout) ──▶ finished == started
//! ```
//!
//! `started` is written by the reactor thread only and `finished` by the workers, on
//! cache lines of their own: counting costs each side one write to a line it keeps,
//! where one shared counter bounced between the cores on every task (measured: ~1 µs
//! per completion at 10k in flight).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A counter on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

#[derive(Default)]
pub(crate) struct LiveTasks {
    started: Padded,
    finished: Padded,
    /// A thread is in `wait_idle`: finishers notify it.
    waiting: AtomicBool,
    lock: Mutex<()>,
    idle: Condvar,
}

/// What one task holds: the `Arc` it needs anyway (its scope), through which the
/// counter is reached, so counting costs no reference of its own. It counts the task
/// out when disarmed (the task completed) or dropped (aborted, or panicked).
pub(crate) struct LiveGuard<T: HasLiveTasks> {
    owner: Option<Arc<T>>,
    counted: bool,
}

/// Something that leads to a [`LiveTasks`].
pub(crate) trait HasLiveTasks {
    fn live_tasks(&self) -> &LiveTasks;
}

impl LiveTasks {
    /// Wraps `owner` for one task, counting the task in if `count`. Reactor thread
    /// only (the only writer of `started`).
    pub(crate) fn enter<T: HasLiveTasks>(owner: Arc<T>, count: bool) -> LiveGuard<T> {
        if count {
            let live = owner.live_tasks();
            let started = live.started.0.load(Ordering::Relaxed);
            live.started.0.store(started + 1, Ordering::Release);
        }
        LiveGuard {
            owner: Some(owner),
            counted: count,
        }
    }

    fn exit(&self) {
        self.finished.0.fetch_add(1, Ordering::AcqRel);
        if self.waiting.load(Ordering::SeqCst) {
            // Taking the lock orders this with a waiter between its check and its wait.
            let _held = self.lock.lock();
            self.idle.notify_all();
        }
    }

    fn is_idle(&self) -> bool {
        self.finished.0.load(Ordering::Acquire) >= self.started.0.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for every counted task to finish; whether they all did.
    /// The thread that calls `enter` (the reactor thread). Blocks: call it without
    /// the GIL (a task may need it to finish its poll).
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock();
        self.waiting.store(true, Ordering::SeqCst);
        while !self.is_idle() {
            if self.idle.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        self.waiting.store(false, Ordering::SeqCst);
        self.is_idle()
    }

    /// In a forked child: the parent's tasks are not here, and never finish.
    pub(crate) fn forget(&self) {
        let finished = self.finished.0.load(Ordering::Acquire);
        self.started.0.store(finished, Ordering::Release);
    }
}

impl<T: HasLiveTasks> LiveGuard<T> {
    /// What the guard wraps.
    pub(crate) fn owner(&self) -> Option<&Arc<T>> {
        self.owner.as_ref()
    }

    /// The task completed: counts it out now and hands back what it wrapped.
    pub(crate) fn disarm(mut self) -> Option<Arc<T>> {
        let owner = self.owner.take();
        if let Some(owner) = &owner {
            if self.counted {
                owner.live_tasks().exit();
            }
        }
        owner
    }
}

impl<T: HasLiveTasks> Drop for LiveGuard<T> {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            if self.counted {
                owner.live_tasks().exit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Owner(LiveTasks);

    impl HasLiveTasks for Owner {
        fn live_tasks(&self) -> &LiveTasks {
            &self.0
        }
    }

    #[test]
    fn waits_for_the_last_guard() {
        let owner = Arc::new(Owner(LiveTasks::default()));
        assert!(owner.0.wait_idle(Duration::ZERO));
        let uncounted = LiveTasks::enter(Arc::clone(&owner), false);
        let guards: Vec<_> = (0..3)
            .map(|_| LiveTasks::enter(Arc::clone(&owner), true))
            .collect();
        assert!(!owner.0.wait_idle(Duration::from_millis(5)));
        let dropper = std::thread::spawn(move || {
            let mut guards = guards;
            assert!(guards.pop().and_then(LiveGuard::disarm).is_some());
            drop(guards);
        });
        assert!(owner.0.wait_idle(Duration::from_secs(10)));
        dropper.join().unwrap();
        drop(uncounted);
        assert!(owner.0.wait_idle(Duration::ZERO));
    }

    #[test]
    fn forget_drops_what_never_finishes() {
        let owner = Arc::new(Owner(LiveTasks::default()));
        let stuck = LiveTasks::enter(Arc::clone(&owner), true);
        assert!(!owner.0.wait_idle(Duration::from_millis(1)));
        owner.0.forget();
        assert!(owner.0.wait_idle(Duration::ZERO));
        std::mem::forget(stuck);
    }
}
