//! Rust `log` records → Python `logging`, attributed to the request.
//!
//! ```text
//!  Tokio thread                                reactor thread
//!  log::info!(..) ─▶ Logger::log:              job: with the task's logcontext active,
//!    format the record (no GIL) ──mailbox──▶     pyo3-log emits it to Python logging
//!  any other thread ─▶ pyo3-log directly (it takes the GIL there)
//! ```
//!
//! [pyo3-log](https://docs.rs/pyo3-log) forwards records to Python, taking the GIL
//! on whatever thread logs. On a Tokio worker that would stall every task behind it
//! and tag the record with no request, so records from this crate's Tokio threads go
//! through the mailbox instead, in order, and are emitted inside the context of the
//! task that logged them: a `LoggingContextFilter` sees the request.

use std::sync::Arc;

use log::{LevelFilter, Log, Metadata, Record};
use pyo3::prelude::*;

use crate::scope::TaskScope;
use crate::threads;

/// A `log` logger that sends records to Python logging without ever taking the GIL
/// on a Tokio worker. Install it once per extension module, instead of
/// `pyo3_log::init()`:
///
/// ```no_run
/// use pyo3::prelude::*;
///
/// #[pymodule]
/// fn my_extension(m: &Bound<'_, PyModule>) -> PyResult<()> {
///     // Ignore the error if a logger is already installed.
///     let _ = pyo3_twisted::Logger::new(m.py())?.install();
///     Ok(())
/// }
/// ```
pub struct Logger {
    pub(crate) python: Arc<pyo3_log::Logger>,
    max_level: LevelFilter,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("max_level", &self.max_level)
            .finish_non_exhaustive()
    }
}

impl Logger {
    /// A logger forwarding records up to `Debug` to Python logging, caching Python
    /// loggers and their levels (see `pyo3_log::Caching::LoggersAndLevels`).
    pub fn new(py: Python<'_>) -> PyResult<Self> {
        Ok(Self::wrap(
            pyo3_log::Logger::new(py, pyo3_log::Caching::LoggersAndLevels)?,
            LevelFilter::Debug,
        ))
    }

    /// Wraps a configured pyo3-log logger (filters, prefix, caching) whose most
    /// verbose filter is `max_level`.
    pub fn wrap(python: pyo3_log::Logger, max_level: LevelFilter) -> Self {
        Self {
            python: Arc::new(python),
            max_level,
        }
    }

    /// The handle that clears pyo3-log's caches of this logger.
    pub fn reset_handle(&self) -> pyo3_log::ResetHandle {
        self.python.reset_handle()
    }

    /// Installs this logger as the process's `log` logger and returns the handle
    /// that clears pyo3-log's caches (call it after changing Python logging levels).
    pub fn install(self) -> Result<pyo3_log::ResetHandle, log::SetLoggerError> {
        let handle = self.python.reset_handle();
        let max_level = self.max_level;
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(max_level);
        Ok(handle)
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.python.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !threads::is_tokio_thread() {
            self.python.log(record);
            return;
        }
        if !self.python.enabled(record.metadata()) {
            return;
        }
        forward_from_tokio(&self.python, OwnedRecord::new(record));
    }

    fn flush(&self) {}
}

/// Sends `record`, made on one of this crate's Tokio threads, to the reactor thread,
/// to be emitted inside the logging context of the task that made it (the sentinel
/// outside any request). Never takes the GIL.
pub(crate) fn forward_from_tokio(python: &Arc<pyo3_log::Logger>, record: OwnedRecord) {
    let scope = TaskScope::current();
    let Some(bridge) = TaskScope::bridge_of(scope.as_ref()) else {
        return;
    };
    let python = Arc::clone(python);
    bridge.mailbox().push(Box::new(move |py| {
        let emit = |_restored: bool| {
            record.emit(&*python);
            Ok(())
        };
        match &scope {
            Some(scope) => scope.with_context(py, emit),
            None => emit(false),
        }
    }));
}

/// A record that outlives the `log!` call, to be emitted on the reactor thread.
pub(crate) struct OwnedRecord {
    pub(crate) level: log::Level,
    pub(crate) target: String,
    pub(crate) module_path: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    pub(crate) message: String,
}

impl OwnedRecord {
    fn new(record: &Record<'_>) -> Self {
        Self {
            level: record.level(),
            target: record.target().to_owned(),
            module_path: record.module_path().map(str::to_owned),
            file: record.file().map(str::to_owned),
            line: record.line(),
            message: record.args().to_string(),
        }
    }

    /// Emits the record through `logger`, on the calling thread.
    pub(crate) fn emit(&self, logger: &dyn Log) {
        logger.log(
            &Record::builder()
                .level(self.level)
                .target(&self.target)
                .module_path(self.module_path.as_deref())
                .file(self.file.as_deref())
                .line(self.line)
                .args(format_args!("{}", self.message))
                .build(),
        );
    }
}
