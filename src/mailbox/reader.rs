//! The reactor's side of the mailbox: what a wake-up runs, and how it is set up.
//!
//! [`install`] (reactor thread) picks the wake mode ([`crate::wake`]) and registers the
//! reader: in fd mode a `MailboxReader` with `reactor.addReader`, whose `doRead`
//! drains; in call-from-thread mode a `MailboxDrain` that the waker thread hands to
//! `reactor.callFromThread`. Both run on the reactor thread and hold the mailbox weakly.

use std::sync::{Arc, Weak};

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;

use super::Mailbox;
use crate::config::WakeMode;
use crate::errors::report;
#[cfg(unix)]
use crate::wake::fd;
use crate::wake::{wants_fd, ReactorWaker, ThreadTarget};

/// What [`install`] set up: the waker, and the reader to unregister at shutdown.
pub(crate) struct Installed {
    pub waker: ReactorWaker,
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
        WakeMode::Auto => wants_fd(py, reactor)?,
    };
    if use_fd {
        install_fd(py, reactor, mailbox)
    } else {
        install_thread(py, reactor, mailbox)
    }
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
        waker: ReactorWaker::Fd(fd),
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
    let target = ThreadTarget::new(reactor, drain)?;
    Ok(Installed {
        waker: ReactorWaker::Thread(Arc::new(target)),
        reader: None,
        mode: "call_from_thread",
    })
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
