//! How a Tokio thread tells the reactor that the mailbox has work: a signal only.
//!
//! ```text
//!  fd mode (real reactors, and memory      call-from-thread mode (other memory reactors)
//!  reactors that poll their readers)
//!  Tokio thread                            Tokio thread
//!    write(eventfd, 1)   no GIL              send(target)   no GIL
//!          │                                       │
//!  reactor thread                          the process's one waker thread "pyo3-twisted-wake"
//!    the fd's reader (the mailbox's)         takes the GIL, calls that reactor's
//!    drains                                  callFromThread(drain) (the mailbox's)
//! ```
//!
//! [`ReactorWaker::wake`] runs on any thread and never takes the GIL. The waker thread is the
//! only thread of this crate that waits for the GIL, it is not a Tokio thread, and
//! there is one per process whatever the number of reactors; it holds each reactor
//! weakly. What the reactor runs once woken belongs to the mailbox (`mailbox/reader.rs`).

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;

use crate::errors::report;
use crate::threads;

/// A way to wake the reactor; owned by the mailbox. Cheap to clone.
#[derive(Clone)]
pub(crate) enum ReactorWaker {
    #[cfg(unix)]
    Fd(Arc<fd::WakeFd>),
    Thread(Arc<ThreadTarget>),
}

impl ReactorWaker {
    /// Any thread; never blocks, never takes the GIL.
    pub(crate) fn wake(&self) {
        match self {
            #[cfg(unix)]
            ReactorWaker::Fd(fd) => fd.signal(),
            ReactorWaker::Thread(target) => waker_thread::send(Arc::clone(target)),
        }
    }
}

/// The attribute by which a memory reactor says that its `advance()` polls the
/// file descriptors of its readers (as `pyo3_twisted.testing`'s does), so the bridge
/// can wake it through an eventfd reader and needs no thread.
pub const POLLS_READERS_ATTR: &str = "pyo3_twisted_polls_readers";

/// Reactors built on `PosixReactorBase` (epoll, poll, select, asyncio) really poll
/// what `addReader` gives them; so do memory reactors that say so
/// ([`POLLS_READERS_ATTR`]). A reactor without `callFromThread` (Twisted's plain
/// `MemoryReactorClock`) can only be woken through a reader, which its test drives.
pub(crate) fn wants_fd(py: Python<'_>, reactor: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !cfg!(unix) {
        return Ok(false);
    }
    let base = py
        .import("twisted.internet.posixbase")?
        .getattr("PosixReactorBase")?;
    if reactor.is_instance(&base)? {
        return Ok(true);
    }
    if let Some(flag) = reactor.getattr_opt(POLLS_READERS_ATTR)? {
        if flag.is_truthy()? {
            return Ok(true);
        }
    }
    Ok(!reactor.hasattr(intern!(py, "callFromThread"))?)
}

/// One reactor, as the waker thread knows it: weakly.
pub(crate) struct ThreadTarget {
    reactor: Py<PyWeakrefReference>,
    drain: Py<PyAny>,
}

impl ThreadTarget {
    /// `reactor`, to be woken by `reactor.callFromThread(drain)`. Reactor thread.
    pub(crate) fn new(reactor: &Bound<'_, PyAny>, drain: Py<PyAny>) -> PyResult<Self> {
        Ok(Self {
            reactor: PyWeakrefReference::new(reactor)?.unbind(),
            drain,
        })
    }
}

mod waker_thread {
    //! The process's one call-from-thread waker. It is started on first use, again
    //! in a forked child (which has none of its parent's threads), and ends when the
    //! interpreter finalizes.

    use super::*;

    struct Thread {
        tx: Sender<Arc<ThreadTarget>>,
        generation: u64,
    }

    static THREAD: Mutex<Option<Thread>> = Mutex::new(None);

    /// Asks the waker thread to wake `target`'s reactor. Any thread; no GIL.
    pub(super) fn send(target: Arc<ThreadTarget>) {
        let generation = crate::fork::generation();
        let mut slot = THREAD.lock();
        let current = slot.as_ref().filter(|t| t.generation == generation);
        let tx = match current {
            Some(thread) => thread.tx.clone(),
            None => {
                let (tx, rx) = crossbeam_channel::unbounded();
                let spawned = std::thread::Builder::new()
                    .name("pyo3-twisted-wake".to_owned())
                    .spawn(move || run(rx));
                if let Err(err) = spawned {
                    log::error!("pyo3-twisted: cannot start the waker thread: {err}");
                    return;
                }
                *slot = Some(Thread {
                    tx: tx.clone(),
                    generation,
                });
                tx
            }
        };
        drop(slot);
        // Cannot fail while the thread runs; if it ended (finalizing), nobody drains.
        let _ = tx.send(target);
    }

    fn run(rx: Receiver<Arc<ThreadTarget>>) {
        while let Ok(target) = rx.recv() {
            let delivered = threads::attach(move |py| {
                // A collected reactor needs no wake-up.
                let Some(reactor) = target.reactor.bind(py).upgrade() else {
                    return;
                };
                if let Err(err) =
                    reactor.call_method1(intern!(py, "callFromThread"), (target.drain.bind(py),))
                {
                    report(py, err, "pyo3-twisted: reactor.callFromThread failed");
                }
                drop(target);
            });
            if delivered.is_none() {
                break;
            }
        }
    }
}

#[cfg(unix)]
pub(crate) mod fd {
    //! A non-blocking wake file descriptor: an eventfd on Linux, a pipe elsewhere.

    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    pub(crate) struct WakeFd {
        read: OwnedFd,
        #[cfg(not(target_os = "linux"))]
        write: OwnedFd,
    }

    impl WakeFd {
        #[cfg(target_os = "linux")]
        pub(crate) fn new() -> io::Result<Self> {
            // SAFETY: plain syscall; the result is checked before use.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let read = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Self { read })
        }

        #[cfg(not(target_os = "linux"))]
        pub fn new() -> io::Result<Self> {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors pipe() writes.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both descriptors are fresh and owned by nobody else.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            for fd in [&read, &write] {
                // SAFETY: fcntl on a descriptor we own.
                unsafe {
                    let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                    libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
                    libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(Self { read, write })
        }

        pub(crate) fn raw(&self) -> RawFd {
            self.read.as_raw_fd()
        }

        fn write_fd(&self) -> RawFd {
            #[cfg(target_os = "linux")]
            return self.read.as_raw_fd();
            #[cfg(not(target_os = "linux"))]
            return self.write.as_raw_fd();
        }

        /// Makes the fd readable. A full counter or pipe (EAGAIN) already is.
        pub(crate) fn signal(&self) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
            unsafe {
                libc::write(self.write_fd(), (&one as *const u64).cast(), 8);
            }
        }

        /// Makes the fd unreadable again. Nothing to read (EAGAIN) is fine.
        pub(crate) fn consume(&self) {
            let mut buf = [0_u8; 64];
            // SAFETY: reads into a live buffer of the length given.
            unsafe {
                libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
            }
        }
    }
}
