//! The exceptions this crate raises into Python, and how a panic becomes one.

use std::any::Any;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError};
use pyo3::prelude::*;

create_exception!(
    pyo3_twisted,
    RustPanicError,
    PyException,
    "A Rust future panicked. The exception's message is the panic's message.\n\n\
     The process survives: the panic is caught on the Tokio thread and delivered to \
     the Deferred like any other failure."
);

create_exception!(
    pyo3_twisted,
    RuntimeShutdown,
    PyRuntimeError,
    "The pyo3-twisted runtime shut down before this work could finish.\n\n\
     Raised for work still in flight when `shutdown_timeout` passed during reactor \
     shutdown, and for work submitted after shutdown began."
);

/// The message of a panic payload, as `std` formats it for `&str` and `String` panics.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Rust panic with a non-string payload".to_owned()
    }
}

/// Reports an error that has no Deferred to go to, through Twisted's log so that trial
/// flags it, falling back to `sys.unraisablehook`.
pub(crate) fn report(py: Python<'_>, err: PyErr, why: &str) {
    let logged = (|| -> PyResult<()> {
        let failure = crate::twisted::failure_class(py)?.call1((err.value(py),))?;
        crate::twisted::log_err(py)?.call1((failure, why))?;
        Ok(())
    })();
    if logged.is_err() {
        err.write_unraisable(py, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages() {
        let p = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(&*p), "plain");
        let n = 3;
        let p = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(&*p), "formatted 3");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(42_u8)).unwrap_err();
        assert_eq!(panic_message(&*p), "Rust panic with a non-string payload");
    }
}
