//! Every interleaving of two producers and the reactor closing the mailbox, explored
//! by loom: once all are done, no job is left queued in the closed mailbox (where
//! nobody would run or release it), and no job is both run and dropped.
//!
//! Run with `RUSTFLAGS="--cfg pyo3_twisted_loom" cargo test -p pyo3-twisted-loom`.
#![cfg(pyo3_twisted_loom)]

use loom::sync::{Arc, Mutex};
use loom::thread;
use pyo3_twisted_loom::CloseFlag;

/// The mailbox, reduced: a queue and the close flag.
struct Model {
    queue: Mutex<Vec<u32>>,
    closed: CloseFlag,
    dropped: Mutex<Vec<u32>>,
}

impl Model {
    fn sweep(&self) {
        let mut queue = self.queue.lock().unwrap();
        self.dropped.lock().unwrap().append(&mut queue);
    }

    /// `Mailbox::push`; `recheck: false` is the order the fence pairing exists for:
    /// checking only before the push.
    fn push(&self, job: u32, recheck: bool) {
        if self.closed.closed_before_push() {
            self.dropped.lock().unwrap().push(job);
            return;
        }
        self.queue.lock().unwrap().push(job);
        if recheck && self.closed.closed_after_push() {
            self.sweep();
        }
    }

    /// `Mailbox::close`.
    fn close(&self) {
        self.closed.close();
        self.sweep();
    }
}

fn check(recheck: bool) {
    loom::model(move || {
        let model = Arc::new(Model {
            queue: Mutex::new(Vec::new()),
            closed: CloseFlag::new(),
            dropped: Mutex::new(Vec::new()),
        });
        let producers: Vec<_> = (0..2)
            .map(|job| {
                let model = Arc::clone(&model);
                thread::spawn(move || model.push(job, recheck))
            })
            .collect();
        model.close();
        for producer in producers {
            producer.join().unwrap();
        }
        let left = model.queue.lock().unwrap().clone();
        assert!(left.is_empty(), "job(s) {left:?} left in a closed mailbox");
        let mut dropped = model.dropped.lock().unwrap().clone();
        dropped.sort_unstable();
        assert_eq!(dropped, [0, 1], "every job dropped exactly once");
    });
}

#[test]
fn rechecking_after_the_push_leaves_nothing_in_a_closed_mailbox() {
    check(true);
}

#[test]
fn checking_only_before_the_push_is_caught() {
    let found = std::panic::catch_unwind(|| check(false)).is_err();
    assert!(
        found,
        "loom should have found a job left in the closed mailbox without the recheck"
    );
}
