//! Reactor → Tokio: futures handed to the runtime in batches.
//!
//! ```text
//!  reactor thread                         Tokio worker
//!  submit(task) ─▶ [ unbounded channel ] ─▶ pump: recv_many(256) → tokio::spawn each
//! ```
//!
//! `Handle::spawn` from a thread outside the runtime pays an inject-queue push and an
//! unpark for every task. Sending into a channel wakes the pump once per batch, and
//! the pump's spawns are local to its worker (other workers steal from there).
//! [`Submitter::submit`] runs on the reactor thread; the pump on a Tokio worker.

use std::future::Future;
use std::pin::Pin;

use std::time::{Duration, Instant};
use tokio::runtime::Handle;

use crate::linger_gate::LingerGate;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// A type-erased task, ready to spawn.
pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

const BATCH: usize = 256;

pub(crate) struct Submitter {
    tx: UnboundedSender<Task>,
    /// The pump, stopped explicitly on a runtime that outlives the bridge.
    pump: tokio::task::AbortHandle,
}

impl Submitter {
    /// Starts the pump on `handle`.
    ///
    /// After a batch the pump keeps polling for `linger` (yielding to the tasks it
    /// spawned in between) before it parks: a task submitted meanwhile starts
    /// without waking a sleeping worker. Unless lately those lingers have not been
    /// catching a task (`linger_gate`): then it parks at once.
    pub(crate) fn start(handle: &Handle, linger: Duration) -> Self {
        let (tx, mut rx) = unbounded_channel::<Task>();
        let pump = handle.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let gate = LingerGate::default();
            // Work was just done: linger next time the channel is empty, if the gate
            // says so.
            let mut worked = false;
            // When the current linger ends.
            let mut linger_until: Option<Instant> = None;
            loop {
                match rx.try_recv() {
                    Ok(task) => {
                        tokio::spawn(task);
                        if linger_until.take().is_some() {
                            gate.record(true);
                        }
                        worked = true;
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        if let Some(until) = linger_until {
                            if Instant::now() < until {
                                tokio::task::yield_now().await;
                                continue;
                            }
                            linger_until = None;
                            gate.record(false);
                        } else if std::mem::take(&mut worked)
                            && !linger.is_zero()
                            && gate.should_linger()
                        {
                            linger_until = Some(Instant::now() + gate.idle(linger));
                            continue;
                        }
                    }
                }
                if rx.recv_many(&mut batch, BATCH).await == 0 {
                    break;
                }
                for task in batch.drain(..) {
                    tokio::spawn(task);
                }
                worked = true;
            }
        });
        Self {
            tx,
            pump: pump.abort_handle(),
        }
    }

    /// Hands `task` to the runtime. Fails only once the pump is gone; the task comes
    /// back so the caller can fail its Deferred.
    pub(crate) fn submit(&self, task: Task) -> Result<(), Task> {
        self.tx.send(task).map_err(|err| err.0)
    }

    /// Stops the pump; tasks not yet spawned are dropped with it.
    pub(crate) fn stop(&self) {
        self.pump.abort();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A two-worker runtime for the crate's unit tests.
    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn every_submitted_task_runs_with_or_without_linger() {
        let rt = runtime();
        for linger in [Duration::ZERO, Duration::from_micros(50)] {
            let submitter = Submitter::start(rt.handle(), linger);
            let ran = Arc::new(AtomicUsize::new(0));
            let (tx, rx) = std::sync::mpsc::channel();
            // More than a batch at once, then one at a time.
            for i in 0..(3 * BATCH + 1) {
                let (ran, tx) = (Arc::clone(&ran), tx.clone());
                let task: Task = Box::pin(async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(i);
                });
                assert!(submitter.submit(task).is_ok());
            }
            let mut seen: Vec<usize> = (0..(3 * BATCH + 1))
                .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..(3 * BATCH + 1)).collect::<Vec<_>>());
            assert_eq!(ran.load(Ordering::SeqCst), 3 * BATCH + 1);
            submitter.stop();
        }
    }

    #[test]
    fn a_stopped_pump_gives_the_task_back() {
        let rt = runtime();
        let submitter = Submitter::start(rt.handle(), Duration::ZERO);
        submitter.stop();
        // The pump's end drops the receiver; a send after that returns the task.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let task: Task = Box::pin(async {});
            match submitter.submit(task) {
                Err(_) => break,
                Ok(()) => {
                    assert!(Instant::now() < deadline, "the pump never stopped");
                    std::thread::yield_now();
                }
            }
        }
    }
}
