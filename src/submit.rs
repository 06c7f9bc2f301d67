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
    /// without waking a sleeping worker.
    pub(crate) fn start(handle: &Handle, linger: Duration) -> Self {
        let (tx, mut rx) = unbounded_channel::<Task>();
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
