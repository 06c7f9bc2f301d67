//! Whether lingering has been paying off lately (`RuntimeConfig::linger`).
//!
//! ```text
//!  reactor thread: note_handoff ─ should_linger? ─ yes: callLater(0) → Mailbox::linger → record(caught)
//!                                               └ no: sleep in epoll; the answer wakes it
//!  Tokio worker (the submit pump): after its last task ─ should_linger? ─ poll / park at once
//! ```
//!
//! A linger that catches its answer spares a wake-up (tens of microseconds here); one
//! that catches nothing burns up to `linger` of a core for nothing, and on two cores
//! that core is the one the database thread or Tokio's I/O wanted. Whether answers
//! come back within `linger` is a property of the workload: a ready future, always; a
//! PostgreSQL round trip or a transaction on the Python pool's thread, almost never.
//! So each side keeps a running share of its recent lingers that caught something
//! (weight 1/8 per linger) and lingers while that share is at least a third; below it,
//! only every 16th chance lingers, a probe, and a probe that catches something opens
//! the gate again, so a workload whose answers turn quick gets lingering back within
//! 16 hand-offs. A probe lingers four times as long: with both gates closed, the
//! other side is asleep when the probe's work reaches it, and its wake-up (30–90 µs
//! here) must not make a quick answer look slow.
//!
//! Each gate is used by one thread at a time (the reactor thread, or the pump's task);
//! its atomics are relaxed, there only so the gate can live in shared structs.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// The share of lingers that caught something, in 1/1024ths.
const SCALE: u32 = 1024;
/// Linger while at least this share of recent lingers caught something.
const OPEN_AT: u32 = SCALE / 3;
/// When closed, every this many chances, linger anyway.
const PROBE_EVERY: u32 = 16;
/// A probe lingers this many times the linger.
const PROBE_STRETCH: u32 = 4;

#[derive(Debug)]
pub(crate) struct LingerGate {
    /// Running share of lingers that caught something (starts at all of them).
    caught: AtomicU32,
    /// Chances skipped since the last probe.
    skipped: AtomicU32,
    /// The linger [`LingerGate::should_linger`] allowed last is a probe.
    probing: AtomicBool,
}

impl Default for LingerGate {
    fn default() -> Self {
        Self {
            caught: AtomicU32::new(SCALE),
            skipped: AtomicU32::new(0),
            probing: AtomicBool::new(false),
        }
    }
}

impl LingerGate {
    /// Whether to linger at this chance.
    pub(crate) fn should_linger(&self) -> bool {
        if self.caught.load(Ordering::Relaxed) >= OPEN_AT {
            self.probing.store(false, Ordering::Relaxed);
            return true;
        }
        let skipped = self.skipped.load(Ordering::Relaxed) + 1;
        if skipped >= PROBE_EVERY {
            self.skipped.store(0, Ordering::Relaxed);
            self.probing.store(true, Ordering::Relaxed);
            true
        } else {
            self.skipped.store(skipped, Ordering::Relaxed);
            false
        }
    }

    /// How long the linger just allowed waits for work: `linger`, or four times it
    /// for a probe.
    pub(crate) fn idle(&self, linger: Duration) -> Duration {
        if self.probing.load(Ordering::Relaxed) {
            linger * PROBE_STRETCH
        } else {
            linger
        }
    }

    /// A linger ended: whether it caught anything. A probe that caught something
    /// opens the gate at once; the next miss closes it again.
    pub(crate) fn record(&self, caught: bool) {
        let share = self.caught.load(Ordering::Relaxed);
        let target = if caught { SCALE } else { 0 };
        let mut share = share - share / 8 + target / 8;
        if caught {
            share = share.max(OPEN_AT);
        }
        self.caught.store(share, Ordering::Relaxed);
        self.probing.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chances taken out of `n`, each linger ending as `caught` says.
    fn lingers(gate: &LingerGate, n: usize, caught: impl Fn(usize) -> bool) -> usize {
        (0..n)
            .filter(|&i| {
                let linger = gate.should_linger();
                if linger {
                    gate.record(caught(i));
                }
                linger
            })
            .count()
    }

    #[test]
    fn lingers_that_pay_off_go_on() {
        let gate = LingerGate::default();
        assert_eq!(lingers(&gate, 1000, |_| true), 1000);
        assert_eq!(
            gate.idle(Duration::from_micros(50)),
            Duration::from_micros(50)
        );
        // Half of them paying off is still worth it.
        assert_eq!(lingers(&gate, 1000, |i| i % 2 == 0), 1000);
    }

    #[test]
    fn lingers_that_never_pay_off_shrink_to_probes_and_come_back() {
        let gate = LingerGate::default();
        let taken = lingers(&gate, 1600, |_| false);
        // Nine before the share falls under a third, then one in 16.
        assert!((100..=115).contains(&taken), "{taken}");
        // Answers turn quick: the next probe catches one and lingering resumes.
        let taken = lingers(&gate, 100, |_| true);
        assert!(taken >= 100 - PROBE_EVERY as usize, "{taken}");
        assert!(gate.should_linger());
    }

    #[test]
    fn a_probe_lingers_longer() {
        let linger = Duration::from_micros(50);
        let gate = LingerGate::default();
        lingers(&gate, 50, |_| false);
        let skipped = (0..PROBE_EVERY)
            .take_while(|_| !gate.should_linger())
            .count();
        assert!(skipped < PROBE_EVERY as usize);
        assert_eq!(gate.idle(linger), linger * PROBE_STRETCH);
        gate.record(true);
        assert!(gate.should_linger());
        assert_eq!(gate.idle(linger), linger);
    }

    #[test]
    fn rarely_paying_lingers_stay_mostly_off() {
        let gate = LingerGate::default();
        // One in ten pays off: below the third, so mostly skipped.
        let taken = lingers(&gate, 10_000, |i| i % 10 == 0);
        assert!(taken < 2_000, "{taken}");
    }
}
