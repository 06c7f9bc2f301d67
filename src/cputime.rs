//! Thread CPU time spent polling a future, to charge to its logging context.
//!
//! Each poll of a metered future reads `getrusage(RUSAGE_THREAD)` before and after
//! (two system calls, a fraction of a microsecond) and adds the difference to the
//! task's [`CpuMeter`]. Runs on Tokio threads; never touches Python.
//!
//! A poll the logging context charges itself (on the reactor thread) is not read
//! at all, except for the rest of it once a Python call it started has left the
//! context (`meter_from_now`): that stretch is read the same way, from the mark to
//! the end of the poll. It is usually a microsecond or two of Rust returning
//! `Pending`, but it is the future's code, which may run on (a `join` beside the
//! Python call); timing it by the monotonic clock instead, as an earlier version
//! did to spare the two system calls (~0.14 µs each here), charged a machine's load
//! as CPU time: twice what was burned, and more, with four busy processes beside.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};

/// User and system CPU microseconds used and not yet charged, and the total.
#[derive(Default, Debug)]
pub(crate) struct CpuMeter {
    user_us: AtomicU64,
    system_us: AtomicU64,
    total_us: AtomicU64,
}

impl CpuMeter {
    fn add(&self, user_us: u64, system_us: u64) {
        self.user_us.fetch_add(user_us, Ordering::Relaxed);
        self.system_us.fetch_add(system_us, Ordering::Relaxed);
        self.total_us
            .fetch_add(user_us + system_us, Ordering::Relaxed);
    }

    /// All the CPU time used so far, charged or not.
    pub(crate) fn total(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.total_us.load(Ordering::Relaxed))
    }

    /// Takes what was used so far, in seconds, if anything was.
    pub(crate) fn take_seconds(&self) -> Option<(f64, f64)> {
        let user = self.user_us.swap(0, Ordering::Relaxed);
        let system = self.system_us.swap(0, Ordering::Relaxed);
        (user > 0 || system > 0).then(|| (user as f64 / 1e6, system as f64 / 1e6))
    }
}

/// `(user, system)` CPU microseconds of the calling thread.
#[cfg(target_os = "linux")]
pub(crate) fn thread_usage() -> Option<(u64, u64)> {
    #[cfg(test)]
    tests::READS.with(|n| n.set(n.get() + 1));
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; checked before reading.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let micros = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    Some((micros(usage.ru_utime), micros(usage.ru_stime)))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn thread_usage() -> Option<(u64, u64)> {
    None
}

thread_local! {
    /// The poll running now is already charged by the logging context itself: it
    /// runs on the reactor thread with the task's own context current (with
    /// `reactor_polls`: the first poll, inside `create_deferred`, and a poll run by
    /// the answer of an awaitable that left the task's context current).
    static CHARGED_BY_CONTEXT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    /// Inside a poll charged by the context: the thread's `(user, system)` CPU
    /// microseconds when the context stopped being current (a Python call left
    /// waiting, or a restore left owed, `lazy_restore`). The poll's task meters the
    /// rest of the poll from there.
    static METER_FROM: std::cell::Cell<Option<(u64, u64)>> = const { std::cell::Cell::new(None) };
}

/// The context charging the poll running now stops being current: meter the rest
/// of the poll, from the thread's CPU time now. No-op in a poll that is metered
/// anyway, if already noted, or where the OS does not tell a thread's CPU time
/// (nothing is metered there).
pub(crate) fn meter_from_now() {
    if charged_by_context() && METER_FROM.with(std::cell::Cell::get).is_none() {
        METER_FROM.with(|from| from.set(thread_usage()));
    }
}

/// Runs `poll` (a task's poll) with its own [`meter_from_now`] mark: an enclosing
/// poll's mark is kept for it, and whatever `poll` left unmetered (a task without a
/// meter) is dropped.
pub(crate) fn with_own_meter_mark<R>(poll: impl FnOnce() -> R) -> R {
    let outer = METER_FROM.with(|from| from.take());
    let result = poll();
    METER_FROM.with(|from| from.set(outer));
    result
}

/// Whether the code running now is charged by the logging context current on this
/// thread (set by [`with_context_charging`]).
pub(crate) fn charged_by_context() -> bool {
    CHARGED_BY_CONTEXT.with(std::cell::Cell::get)
}

/// Runs `f` (a poll) with metering off (`charged_by_context`) or on, restoring the
/// caller's setting after: a poll nested in it sets its own.
pub(crate) fn with_context_charging<R>(charged_by_context: bool, f: impl FnOnce() -> R) -> R {
    let outer = CHARGED_BY_CONTEXT.with(|flag| flag.replace(charged_by_context));
    let result = f();
    CHARGED_BY_CONTEXT.with(|flag| flag.set(outer));
    result
}

/// `fut`, adding the CPU time of each poll to `meter` (none: not metered). The
/// meter is reached through `M` (its owner, which the future keeps alive).
pub(crate) async fn metered<F, M>(fut: F, meter: Option<M>) -> F::Output
where
    F: Future,
    M: std::ops::Deref<Target = Option<CpuMeter>>,
{
    let mut fut = pin!(fut);
    std::future::poll_fn(move |cx| {
        meter_poll(meter.as_deref().and_then(Option::as_ref), || {
            fut.as_mut().poll(cx)
        })
    })
    .await
}

/// Runs `poll` (one poll of a task), adding the thread CPU time it used to `meter`
/// (none: not metered): read around it, or, where the logging context charges the
/// poll itself, from the [`meter_from_now`] mark it left, if any.
pub(crate) fn meter_poll<R>(meter: Option<&CpuMeter>, poll: impl FnOnce() -> R) -> R {
    let Some(meter) = meter else {
        return poll();
    };
    if CHARGED_BY_CONTEXT.with(std::cell::Cell::get) {
        let result = poll();
        // The context stopped charging partway (`meter_from_now`): the rest is ours.
        // Read only then: a poll the context charged throughout makes no system call.
        if let Some(from) = METER_FROM.with(std::cell::Cell::take) {
            if let Some(now) = thread_usage() {
                meter.add(now.0.saturating_sub(from.0), now.1.saturating_sub(from.1));
            }
        }
        return result;
    }
    let before = thread_usage();
    let result = poll();
    if let (Some(before), Some(after)) = (before, thread_usage()) {
        meter.add(
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1),
        );
    }
    result
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    thread_local! {
        /// `thread_usage` calls (system calls) made on this thread.
        pub(super) static READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn reads() -> usize {
        READS.with(std::cell::Cell::get)
    }

    #[test]
    fn a_poll_the_context_charges_throughout_reads_nothing() {
        let meter = CpuMeter::default();
        let before = reads();
        with_context_charging(true, || {
            with_own_meter_mark(|| meter_poll(Some(&meter), || ()))
        });
        assert_eq!(reads(), before);
        assert_eq!(meter.take_seconds(), None);
    }

    #[test]
    fn the_rest_of_a_poll_after_the_context_left_is_metered() {
        let meter = CpuMeter::default();
        let before = reads();
        with_context_charging(true, || {
            with_own_meter_mark(|| {
                meter_poll(Some(&meter), || {
                    meter_from_now();
                    // Noted once: a second switch in the same poll reads nothing.
                    meter_from_now();
                    let start = thread_usage().unwrap();
                    while thread_usage().unwrap().0 - start.0 < 20_000 {}
                })
            })
        });
        let (user, _) = meter.take_seconds().unwrap();
        assert!(user >= 0.02, "{user}");
        // The mark, the end, and the busy loop's own reads.
        assert!(reads() - before >= 2);
    }

    #[test]
    fn meter_takes_and_resets() {
        let meter = CpuMeter::default();
        assert_eq!(meter.take_seconds(), None);
        meter.add(1_500_000, 250_000);
        assert_eq!(meter.take_seconds(), Some((1.5, 0.25)));
        assert_eq!(meter.take_seconds(), None);
    }

    #[test]
    fn busy_polls_are_metered() {
        let meter = Some(CpuMeter::default());
        let busy = async {
            let start = thread_usage().unwrap();
            while thread_usage().unwrap().0 - start.0 < 50_000 {}
        };
        futures_util::FutureExt::now_or_never(metered(busy, Some(&meter))).unwrap();
        let (user, _) = meter.as_ref().and_then(CpuMeter::take_seconds).unwrap();
        assert!(user >= 0.05, "{user}");
    }
}
