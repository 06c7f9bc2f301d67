//! The mailbox's close protocol, on its own: no Python, no queue, just the ordering.
//!
//! ```text
//!  producer:  if closed_before_push() { drop(job) } else {
//!                push(job); if closed_after_push() { sweep the queue } }
//!  closer:    close(); sweep the queue
//! ```
//!
//! A producer that found the mailbox open may push after the closer's sweep; it then
//! sees the flag set, because its check comes after a fence that pairs with the one in
//! [`CloseFlag::close`], and sweeps the queue itself. Either way nothing stays queued
//! in a closed mailbox, where nobody would ever run or drop it. Compiled with loom's
//! atomics under `--cfg pyo3_twisted_loom` by the model check in `tests/loom/`.

#[cfg(pyo3_twisted_loom)]
use loom::sync::atomic::{fence, AtomicBool, Ordering};
#[cfg(not(pyo3_twisted_loom))]
use std::sync::atomic::{fence, AtomicBool, Ordering};

/// Whether the mailbox has closed, with the fences of the close protocol.
#[derive(Debug)]
pub struct CloseFlag {
    closed: AtomicBool,
}

impl CloseFlag {
    /// An open mailbox's flag.
    pub fn new() -> Self {
        Self {
            closed: AtomicBool::new(false),
        }
    }

    /// Producer, before pushing: whether the job should be dropped instead.
    pub fn closed_before_push(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Producer, after pushing: whether the mailbox closed meanwhile, so that the
    /// producer must sweep the queue (its job may have missed the closer's sweep).
    pub fn closed_after_push(&self) -> bool {
        // Pairs with the fence in `close`.
        fence(Ordering::SeqCst);
        self.closed.load(Ordering::Relaxed)
    }

    /// Closer, before its sweep: from now on producers drop their jobs or sweep.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Whether the mailbox has closed (for waiters; no pairing implied).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Default for CloseFlag {
    fn default() -> Self {
        Self::new()
    }
}
