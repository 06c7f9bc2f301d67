//! How a Tokio thread tells the reactor that the mailbox has work.
//!
//! ```text
//!  fd mode (real reactors)                 call-from-thread mode (memory reactors)
//!  Tokio thread                            Tokio thread
//!    write(eventfd, 1)   no GIL              try_send(token)   no GIL
//!          │                                       │
//!  reactor thread                          waker thread "pyo3-twisted-wake"
//!    MailboxReader.doRead():                 takes the GIL, calls
//!      read(eventfd); Mailbox::drain          reactor.callFromThread(MailboxDrain)
//!                                                  │
//!                                          reactor thread: MailboxDrain() → drain
//! ```
//!
//! [`Waker::wake`] runs on any thread and never takes the GIL. The waker thread is the
//! only thread of this crate that waits for the GIL, and it is not a Tokio thread.

use std::sync::{Arc, Weak};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;

use crate::config::WakeMode;
use crate::errors::report;
use crate::mailbox::Mailbox;
use crate::threads;

/// A way to wake the reactor; owned by the [`Mailbox`].
pub(crate) enum Waker {
    #[cfg(unix)]
    Fd(Arc<fd::WakeFd>),
    Thread(Sender<()>),
}

impl Waker {
    /// Any thread; never blocks, never takes the GIL.
    pub fn wake(&self) {
        match self {
            #[cfg(unix)]
            Waker::Fd(fd) => fd.signal(),
            // Full: a wake is already on its way, which is all we need.
            Waker::Thread(tx) => match tx.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
            },
        }
    }
}

/// What [`install`] set up: the waker, and the reader to unregister at shutdown.
pub(crate) struct Installed {
    pub waker: Waker,
    pub reader: Option<Py<PyAny>>,
    pub mode: &'static str,
}

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
        WakeMode::Auto => polls_file_descriptors(py, reactor)?,
    };
    if use_fd {
        install_fd(py, reactor, mailbox)
    } else {
        install_thread(py, reactor, mailbox)
    }
}

/// Reactors built on `PosixReactorBase` (epoll, poll, select, asyncio) really poll
/// what `addReader` gives them; memory reactors only record it.
fn polls_file_descriptors(py: Python<'_>, reactor: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !cfg!(unix) {
        return Ok(false);
    }
    let base = py
        .import("twisted.internet.posixbase")?
        .getattr("PosixReactorBase")?;
    reactor.is_instance(&base)
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

fn install_thread(
    py: Python<'_>,
    reactor: &Bound<'_, PyAny>,
    mailbox: &Arc<Mailbox>,
) -> PyResult<Installed> {
    let drain = Py::new(
        py,
        MailboxDrain {
            mailbox: Arc::downgrade(mailbox),
        },
    )?
    .into_any();
    let call_from_thread = reactor.getattr(intern!(py, "callFromThread"))?.unbind();
    // Capacity one: a token in the channel means a wake is already on its way.
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("pyo3-twisted-wake".to_owned())
        .spawn(move || waker_thread(rx, call_from_thread, drain))
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the waker thread: {e}")))?;
    Ok(Installed {
        waker: Waker::Thread(tx),
        reader: None,
        mode: "call_from_thread",
    })
}

/// Ends when the mailbox drops its sender (runtime shutdown) or the interpreter is
/// finalizing.
fn waker_thread(rx: Receiver<()>, call_from_thread: Py<PyAny>, drain: Py<PyAny>) {
    while rx.recv().is_ok() {
        let delivered = threads::attach(|py| {
            if let Err(err) = call_from_thread.call1(py, (drain.bind(py),)) {
                report(py, err, "pyo3-twisted: reactor.callFromThread failed");
            }
        });
        if delivered.is_none() {
            break;
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
