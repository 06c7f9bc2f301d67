//! How a Tokio thread tells the reactor that the mailbox has work.
//!
//! ```text
//!  fd mode (real reactors, and memory      call-from-thread mode (other memory reactors)
//!  reactors that poll their readers)
//!  Tokio thread                            Tokio thread
//!    write(eventfd, 1)   no GIL              send(target)   no GIL
//!          │                                       │
//!  reactor thread                          the process's one waker thread "pyo3-twisted-wake"
//!    MailboxReader.doRead():                 takes the GIL, calls that reactor's
//!      read(eventfd); Mailbox::drain          callFromThread(MailboxDrain)
//!                                                  │
//!                                          reactor thread: MailboxDrain() → drain
//! ```
//!
//! [`Waker::wake`] runs on any thread and never takes the GIL. The waker thread is the
//! only thread of this crate that waits for the GIL, it is not a Tokio thread, and
//! there is one per process whatever the number of reactors; it holds each reactor
//! weakly. [`install`] runs on the reactor thread.

use std::sync::{Arc, Weak};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;

use crate::config::WakeMode;
use crate::errors::report;
use crate::mailbox::Mailbox;
use crate::threads;

/// A way to wake the reactor; owned by the [`Mailbox`]. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Waker {
    #[cfg(unix)]
    Fd(Arc<fd::WakeFd>),
    Thread(Arc<ThreadTarget>),
}

impl Waker {
    /// Any thread; never blocks, never takes the GIL.
    pub fn wake(&self) {
        match self {
            #[cfg(unix)]
            Waker::Fd(fd) => fd.signal(),
            Waker::Thread(target) => waker_thread::send(Arc::clone(target)),
        }
    }
}

/// What [`install`] set up: the waker, and the reader to unregister at shutdown.
pub(crate) struct Installed {
    pub waker: Waker,
    pub reader: Option<Py<PyAny>>,
    pub mode: &'static str,
}

/// The attribute by which a memory reactor says that its `advance()` polls the
/// file descriptors of its readers (as `pyo3_twisted.testing`'s does), so the bridge
/// can wake it through an eventfd reader and needs no thread.
pub const POLLS_READERS_ATTR: &str = "pyo3_twisted_polls_readers";

/// Chooses and sets up the wake mechanism for `reactor`. Reactor thread.
pub(crate) fn install(
    py: Python<'_>,
    reactor: &Bound<'_, PyAny>,
    mode: WakeMode,
    mailbox: &Arc<Mailbox>,
) -> PyResult<Installed> {
    let use_fd = match mode {
        WakeMode::FileDescriptor => true,
        WakeMode::CallFromThread => false,
        WakeMode::Auto => wants_fd(py, reactor)?,
    };
    if use_fd {
        install_fd(py, reactor, mailbox)
    } else {
        install_thread(py, reactor, mailbox)
    }
}

/// Reactors built on `PosixReactorBase` (epoll, poll, select, asyncio) really poll
/// what `addReader` gives them; so do memory reactors that say so
/// ([`POLLS_READERS_ATTR`]). A reactor without `callFromThread` (Twisted's plain
/// `MemoryReactorClock`) can only be woken through a reader, which its test drives.
fn wants_fd(py: Python<'_>, reactor: &Bound<'_, PyAny>) -> PyResult<bool> {
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

#[cfg(unix)]
fn install_fd(
    py: Python<'_>,
    reactor: &Bound<'_, PyAny>,
    mailbox: &Arc<Mailbox>,
) -> PyResult<Installed> {
    let fd = Arc::new(
        fd::WakeFd::new()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot create wake fd: {e}")))?,
    );
    let reader = Py::new(
        py,
        MailboxReader {
            fd: Arc::clone(&fd),
            mailbox: Arc::downgrade(mailbox),
        },
    )?
    .into_any();
    reactor.call_method1(intern!(py, "addReader"), (reader.bind(py),))?;
    Ok(Installed {
        waker: Waker::Fd(fd),
        reader: Some(reader),
        mode: "fd",
    })
}

#[cfg(not(unix))]
fn install_fd(
    _py: Python<'_>,
    _reactor: &Bound<'_, PyAny>,
    _mailbox: &Arc<Mailbox>,
) -> PyResult<Installed> {
    Err(PyRuntimeError::new_err(
        "wake='fd' needs a Unix platform; use 'auto' or 'call_from_thread'",
    ))
}

/// One reactor, as the waker thread knows it: weakly.
pub(crate) struct ThreadTarget {
    reactor: Py<PyWeakrefReference>,
    drain: Py<PyAny>,
}

fn install_thread(
    py: Python<'_>,
    reactor: &Bound<'_, PyAny>,
    mailbox: &Arc<Mailbox>,
) -> PyResult<Installed> {
    if !reactor.hasattr(intern!(py, "callFromThread"))? {
        return Err(PyRuntimeError::new_err(
            "wake='call_from_thread' needs a reactor with callFromThread; use 'auto' or 'fd'",
        ));
    }
    let drain = Py::new(
        py,
        MailboxDrain {
            mailbox: Arc::downgrade(mailbox),
        },
    )?
    .into_any();
    let target = ThreadTarget {
        reactor: PyWeakrefReference::new(reactor)?.unbind(),
        drain,
    };
    Ok(Installed {
        waker: Waker::Thread(Arc::new(target)),
        reader: None,
        mode: "call_from_thread",
    })
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
        let generation = crate::bridge::fork_generation();
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

/// The callable handed to `reactor.callFromThread`: drains the mailbox.
#[pyclass(frozen, module = "pyo3_twisted")]
struct MailboxDrain {
    mailbox: Weak<Mailbox>,
}

#[pymethods]
impl MailboxDrain {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        match self.mailbox.upgrade() {
            Some(mailbox) => mailbox.drain(py).map(drop),
            None => Ok(()),
        }
    }
}

/// The `IReadDescriptor` registered with `reactor.addReader`: the wake fd.
#[cfg(unix)]
#[pyclass(frozen, module = "pyo3_twisted")]
struct MailboxReader {
    fd: Arc<fd::WakeFd>,
    mailbox: Weak<Mailbox>,
}

#[cfg(unix)]
#[pymethods]
impl MailboxReader {
    fn fileno(&self) -> i32 {
        self.fd.raw()
    }

    #[pyo3(name = "doRead")]
    fn do_read(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        // Consume the signal before draining: see the mailbox's wake protocol.
        self.fd.consume();
        if let Some(mailbox) = self.mailbox.upgrade() {
            // Returning anything but None would make Twisted unregister this reader
            // and the bridge would stop; report instead.
            if let Err(err) = mailbox.drain(py) {
                report(
                    py,
                    err,
                    "pyo3-twisted: interrupted while draining the mailbox",
                );
            }
        }
        None
    }

    #[pyo3(name = "connectionLost")]
    fn connection_lost(&self, _reason: &Bound<'_, PyAny>) {}

    #[pyo3(name = "logPrefix")]
    fn log_prefix(&self) -> &'static str {
        "pyo3-twisted-mailbox"
    }
}

#[cfg(unix)]
mod fd {
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
        pub fn new() -> io::Result<Self> {
            // SAFETY: plain syscall; the result is checked before use.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            Ok(Self {
                read: unsafe { OwnedFd::from_raw_fd(fd) },
            })
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

        pub fn raw(&self) -> RawFd {
            self.read.as_raw_fd()
        }

        fn write_fd(&self) -> RawFd {
            #[cfg(target_os = "linux")]
            return self.read.as_raw_fd();
            #[cfg(not(target_os = "linux"))]
            return self.write.as_raw_fd();
        }

        /// Makes the fd readable. A full counter or pipe (EAGAIN) already is.
        pub fn signal(&self) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
            unsafe {
                libc::write(self.write_fd(), (&one as *const u64).cast(), 8);
            }
        }

        /// Makes the fd unreadable again. Nothing to read (EAGAIN) is fine.
        pub fn consume(&self) {
            let mut buf = [0_u8; 64];
            // SAFETY: reads into a live buffer of the length given.
            unsafe {
                libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
            }
        }
    }
}
