//! In place of the `pyo3_log` crate's `init()`: the crate's [`Logger`], which never
//! takes the GIL on a Tokio worker and emits records from bridged tasks inside the
//! request's logcontext.
//!
//! Import it under pyo3-log's name and the module's existing set-up compiles as it
//! is:
//!
//! ```no_run
//! use pyo3_twisted::synapse::pyo3_log::{self, ResetHandle};
//!
//! fn logging_handle() -> ResetHandle {
//!     pyo3_log::init()
//! }
//! ```

use log::SetLoggerError;

pub use pyo3_log::ResetHandle;

use crate::logging::Logger;

/// Installs the crate's [`Logger`] as the process's `log` logger and returns the
/// handle that clears its caches of Python loggers and levels.
///
/// Unlike `pyo3_log::init`, a logger already installed (another module's) is not a
/// panic: it stays, and the handle returned belongs to a logger that was not
/// installed (resetting it does nothing). Takes the GIL.
///
/// # Panics
///
/// If Python's `logging` module cannot be imported, as `pyo3_log::init` does.
pub fn init() -> ResetHandle {
    let logger = new_logger();
    let handle = logger.reset_handle();
    // Another module's logger stays: see above.
    let _ = logger.install();
    handle
}

/// Installs the crate's [`Logger`], failing if a `log` logger is installed already.
/// Takes the GIL.
///
/// # Panics
///
/// If Python's `logging` module cannot be imported, as `pyo3_log::try_init` does.
pub fn try_init() -> Result<ResetHandle, SetLoggerError> {
    new_logger().install()
}

fn new_logger() -> Logger {
    pyo3::Python::attach(|py| match Logger::new(py) {
        Ok(logger) => logger,
        Err(err) => panic!("pyo3-twisted: cannot set up Python logging: {err}"),
    })
}
