//! Which thread is this? The crate's rules are rules about threads.
//!
//! ```text
//!  reactor thread ── owns Deferreds, logcontexts, the mailbox drain
//!  Tokio threads  ── poll futures; never take the GIL on this crate's behalf
//!  other threads  ── the call-from-thread waker, Twisted's thread pool, …
//! ```
//!
//! Every place where this crate takes the GIL goes through [`attach`], which counts
//! the acquisitions made on Tokio threads. That counter is what the tests assert to
//! be zero: the design promises that no Tokio worker waits for the GIL to hand work
//! to Python.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::Python;

static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

/// GIL acquisitions made through [`attach`] on threads of a runtime of this crate.
static GIL_ON_TOKIO_THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_ID: u64 = NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed);
    static IS_TOKIO_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// A process-unique id of the calling thread (cheap; no syscall).
pub(crate) fn current_id() -> u64 {
    THREAD_ID.with(|id| *id)
}

/// Called by each Tokio thread of our runtimes when it starts.
pub(crate) fn mark_tokio_thread() {
    IS_TOKIO_THREAD.with(|flag| flag.set(true));
}

/// Whether the calling thread belongs to a runtime of this crate.
pub(crate) fn is_tokio_thread() -> bool {
    IS_TOKIO_THREAD.with(Cell::get)
}

/// Takes the GIL unless the interpreter is finalizing (then returns `None` instead of
/// letting CPython kill this thread while it runs Rust frames: gh-87135).
pub(crate) fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    if is_tokio_thread() {
        GIL_ON_TOKIO_THREADS.fetch_add(1, Ordering::Relaxed);
    }
    Python::try_attach(f)
}

/// How many times [`attach`] ran on a Tokio thread of this crate, process-wide.
pub(crate) fn gil_acquisitions_on_tokio_threads() -> u64 {
    GIL_ON_TOKIO_THREADS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_ids_are_distinct_and_stable() {
        let here = current_id();
        assert_eq!(here, current_id());
        let there = std::thread::spawn(current_id).join().unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn attach_on_a_tokio_thread_is_counted() {
        Python::initialize();
        let before = gil_acquisitions_on_tokio_threads();
        assert!(attach(|_py| ()).is_some());
        assert_eq!(
            gil_acquisitions_on_tokio_threads(),
            before,
            "not a Tokio thread"
        );
        std::thread::spawn(|| {
            mark_tokio_thread();
            attach(|_py| ()).unwrap();
        })
        .join()
        .unwrap();
        assert!(gil_acquisitions_on_tokio_threads() > before);
    }

    #[test]
    fn tokio_flag_is_per_thread() {
        let flagged = std::thread::spawn(|| {
            mark_tokio_thread();
            is_tokio_thread()
        })
        .join()
        .unwrap();
        assert!(flagged);
        assert!(!is_tokio_thread());
    }
}
