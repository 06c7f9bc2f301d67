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
//! Before the runtime starts, the channel simply holds the tasks: work submitted
//! early starts with the runtime.

use std::future::Future;
use std::pin::Pin;

use parking_lot::Mutex;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// A type-erased task, ready to spawn.
pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

const BATCH: usize = 256;

pub(crate) struct Submitter {
    tx: UnboundedSender<Task>,
    rx: Mutex<Option<UnboundedReceiver<Task>>>,
    /// The pump, stopped explicitly on a runtime that outlives the bridge.
    pump: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Submitter {
    pub fn new() -> Self {
        let (tx, rx) = unbounded_channel();
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            pump: Mutex::new(None),
        }
    }

    /// Hands `task` to the runtime, or to the queue that waits for it. Fails only once
    /// the runtime is gone; the task comes back so the caller can fail its Deferred.
    pub fn submit(&self, task: Task) -> Result<(), Task> {
        self.tx.send(task).map_err(|err| err.0)
    }

    /// Starts the pump on `handle`; tasks queued so far start now.
    ///
    /// After a batch the pump keeps polling for `linger` (yielding to the tasks it
    /// spawned in between) before it parks: a task submitted meanwhile starts
    /// without waking a sleeping worker.
    pub fn start(&self, handle: &Handle, linger: Duration) {
        if let Some(mut rx) = self.rx.lock().take() {
            let pump = handle.spawn(async move {
                let mut batch = Vec::with_capacity(BATCH);
                let mut last_work = Instant::now();
                loop {
                    match rx.try_recv() {
                        Ok(task) => {
                            tokio::spawn(task);
                            last_work = Instant::now();
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break,
                        Err(TryRecvError::Empty) if last_work.elapsed() < linger => {
                            tokio::task::yield_now().await;
                            continue;
                        }
                        Err(TryRecvError::Empty) => {}
                    }
                    if rx.recv_many(&mut batch, BATCH).await == 0 {
                        break;
                    }
                    for task in batch.drain(..) {
                        tokio::spawn(task);
                    }
                    last_work = Instant::now();
                }
            });
            *self.pump.lock() = Some(pump.abort_handle());
        }
    }

    /// Stops the pump (tasks not yet spawned are dropped) and anything queued.
    pub fn stop(&self) {
        if let Some(pump) = self.pump.lock().take() {
            pump.abort();
        }
        self.discard_unstarted();
    }

    /// Drops the tasks of a runtime that never started.
    pub fn discard_unstarted(&self) {
        self.rx.lock().take();
    }
}
