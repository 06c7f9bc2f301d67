//! The mailbox's wake protocol, on its own: no Python, no queue, just the ordering.
//!
//! ```text
//!  producer:  push(job); if request_wake() { signal() }
//!  consumer:  consume the signal; begin_drain(); drain the queue
//! ```
//!
//! Compiled with loom's atomics under `--cfg pyo3_twisted_loom` by the model check
//! in `tests/loom/`, which explores every interleaving of two producers and the
//! consumer for lost and doubled wake-ups.

#[cfg(pyo3_twisted_loom)]
use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(pyo3_twisted_loom))]
use std::sync::atomic::{AtomicBool, Ordering};

/// The "wake pending" flag of the mailbox's wake protocol: at most one wake per batch,
/// never a lost one. The ordering lives here, apart from Python and the queue,
/// so it can be model-checked (`tests/loom_wake.rs`) and benchmarked.
#[derive(Debug)]
pub struct WakeFlag {
    pending: AtomicBool,
}

impl WakeFlag {
    /// A flag with no wake pending.
    pub fn new() -> Self {
        Self {
            pending: AtomicBool::new(false),
        }
    }

    /// Producer, after pushing: whether it must wake the consumer (no wake was
    /// pending). Call it after the push, never before.
    pub fn request_wake(&self) -> bool {
        !self.pending.swap(true, Ordering::AcqRel)
    }

    /// Consumer, after consuming the wake signal and before draining: later pushes
    /// wake it again. Clearing before consuming the signal could lose a wake.
    pub fn begin_drain(&self) {
        self.pending.swap(false, Ordering::AcqRel);
    }

    /// Consumer, while it polls on its own: producers push without waking.
    pub fn suppress(&self) {
        self.pending.store(true, Ordering::SeqCst);
    }

    /// Whether a wake is pending.
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }
}

impl Default for WakeFlag {
    fn default() -> Self {
        Self::new()
    }
}
