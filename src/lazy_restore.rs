//! Setting the caller's logging context back, left to whoever comes next.
//!
//! ```text
//!  reactor thread only (GIL held)
//!  create_deferred / an awaitable's answer ── collecting(|| poll the task here) ──▶ Owed
//!     └ the task's poll, armed ── with_context: the awaitable parked in the
//!                                 sentinel; the caller's context is owed, not set
//!  then the collector either sets what comes next anyway (the sentinel, for a
//!  handler's Deferred that waits) and drops the debt, or pays it: sets it back
//! ```
//!
//! Under the logcontext rules an awaitable that parks leaves the sentinel current,
//! `with_context` sets the task's context back, and right after the poll the
//! bridge sets the sentinel again (the handler's own Deferred waits too): two
//! switches that cancel out, each a `getrusage` and the provider's bookkeeping.
//! While a collector runs, a poll records the restore instead of making it; the
//! collector knows what it sets next. Every Python entry point of a task
//! (`run_python_awaitable`'s factory, a Rust log line) sets the task's context
//! itself, so nothing in the rest of the poll needs it current; the poll's CPU time
//! from the skipped restore on is metered instead ([`crate::cputime`]). A poll that
//! leaves work for right after it (firing a Deferred: the caller's callbacks) pays
//! the debt first ([`pay`]).
//!
//! Every function here runs on the reactor thread.

use std::cell::RefCell;

use pyo3::prelude::*;

use crate::errors::report;

/// A restore not made: `set_current_context(context)`.
pub(crate) struct Owed {
    set_current_context: Py<PyAny>,
    context: Py<PyAny>,
}

impl Owed {
    /// The context that was to be set back.
    pub(crate) fn context(&self) -> &Py<PyAny> {
        &self.context
    }

    /// Makes the restore now.
    pub(crate) fn pay(self, py: Python<'_>) {
        if let Err(err) = self.set_current_context.bind(py).call1((self.context,)) {
            report(py, err, "pyo3-twisted: restoring the logcontext");
        }
    }
}

#[derive(Default)]
struct Slot {
    /// Inside a poll of the collector's task: restores may be skipped.
    armed: bool,
    owed: Option<Owed>,
}

thread_local! {
    /// The innermost collector's slot; `None` outside any.
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

/// Runs `f`, which may poll a task on this thread, and hands back the restore its
/// polls left unmade: the caller must set a context next (or pay it).
pub(crate) fn collecting<R>(f: impl FnOnce() -> R) -> (R, Option<Owed>) {
    let outer = SLOT.with(|slot| slot.replace(Some(Slot::default())));
    let result = f();
    let mine = SLOT.with(|slot| slot.replace(outer));
    (result, mine.and_then(|slot| slot.owed))
}

/// Runs `poll` (a reactor-thread poll) with restores skippable if a collector waits
/// for it. A poll nested inside (a callback starting another task) is not armed
/// unless it collects for itself.
pub(crate) fn armed<R>(poll: impl FnOnce() -> R) -> R {
    let outer = set_armed(true);
    let result = poll();
    set_armed(outer);
    result
}

fn set_armed(armed: bool) -> bool {
    SLOT.with(|slot| match slot.borrow_mut().as_mut() {
        Some(slot) => std::mem::replace(&mut slot.armed, armed),
        None => false,
    })
}

/// Called by `with_context` in place of `set_current_context(previous)`: true if
/// the restore is now owed to the collector (the first one in its poll), false if
/// the caller must make it.
pub(crate) fn skip(
    py: Python<'_>,
    set_current_context: &Py<PyAny>,
    previous: &Bound<'_, PyAny>,
) -> bool {
    SLOT.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_mut() {
            Some(slot) if slot.armed && slot.owed.is_none() => {
                slot.owed = Some(Owed {
                    set_current_context: set_current_context.clone_ref(py),
                    context: previous.clone().unbind(),
                });
                // Charged by the context so far; metered from here on.
                crate::cputime::meter_from_now();
                true
            }
            _ => false,
        }
    })
}

/// Pays what the current collector is owed now, before a poll's after-work runs
/// Python (a Deferred's callbacks). Disarms the rest of the poll.
pub(crate) fn pay(py: Python<'_>) {
    let owed = SLOT.with(|slot| {
        slot.borrow_mut().as_mut().and_then(|slot| {
            slot.armed = false;
            slot.owed.take()
        })
    });
    if let Some(owed) = owed {
        owed.pay(py);
    }
}

/// Whether a collector holds an unpaid restore.
pub(crate) fn owing() -> bool {
    SLOT.with(|slot| {
        slot.borrow()
            .as_ref()
            .is_some_and(|slot| slot.owed.is_some())
    })
}
