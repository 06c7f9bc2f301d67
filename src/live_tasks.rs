//! Counts the bridged futures that still exist, so a runtime we cannot drop (the
//! process-wide pool) can still be waited on at interpreter exit.
//!
//! ```text
//!  create_deferred (reactor thread) ── LiveTasks::enter ──▶ guard moves into the task
//!  Tokio worker: task finishes, or is aborted and dropped ── guard drops ──▶ count - 1
//!  atexit (reactor thread, GIL released) ── wait_idle(timeout) ──▶ count == 0
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
pub(crate) struct LiveTasks {
    count: AtomicU64,
    lock: Mutex<()>,
    idle: Condvar,
}

/// Held by one task; dropping it (with the task's future) counts the task out.
pub(crate) struct LiveGuard(Arc<LiveTasks>);

impl LiveTasks {
    pub fn enter(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        LiveGuard(Arc::clone(self))
    }

    /// Waits up to `timeout` for every guard to drop; whether they all did.
    /// Blocks: call it without the GIL (a task may need it to finish its poll).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock();
        while self.count.load(Ordering::Acquire) > 0 {
            if self.idle.wait_until(&mut guard, deadline).timed_out() {
                return self.count.load(Ordering::Acquire) == 0;
            }
        }
        true
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Taking the lock orders this with a waiter between its check and its wait.
            let _held = self.0.lock.lock();
            self.0.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_last_guard() {
        let live = Arc::new(LiveTasks::default());
        assert!(live.wait_idle(Duration::ZERO));
        let guards: Vec<LiveGuard> = (0..3).map(|_| live.enter()).collect();
        assert!(!live.wait_idle(Duration::from_millis(5)));
        let dropper = std::thread::spawn(move || drop(guards));
        assert!(live.wait_idle(Duration::from_secs(10)));
        dropper.join().unwrap();
    }
}
