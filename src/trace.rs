//! Rust `tracing` events → Python `logging`, attributed to the request, the way
//! [`Logger`](crate::Logger) forwards `log` records.
//!
//! ```text
//!  Tokio thread                                    reactor thread
//!  tracing::info!(..) ─▶ PythonLayer::on_event:    job: with the task's logcontext active,
//!    format event + span fields (no GIL) ─mailbox─▶  pyo3-log emits it to Python logging
//!  any other thread ─▶ pyo3-log directly (it takes the GIL there)
//! ```
//!
//! A record's message is the event's, prefixed by its spans from the root, each with
//! its fields (`request{user=@alice:example.org}: computed answer=42`), as
//! `tracing-subscriber`'s own formatter writes them. The span a task runs in follows
//! it: [`create_deferred`](crate::create_deferred) and [`spawn`](crate::spawn) carry
//! the caller's current span into the task, and
//! [`run_python_awaitable`](crate::run_python_awaitable) enters the calling task's
//! span on the reactor thread while the factory runs, so Rust called back from that
//! Python code starts under it.
//!
//! Beside Synapse's opentracing: opentracing's scope rides on Synapse's logcontext,
//! which this crate already carries into Rust tasks and back; `tracing` spans are
//! Rust's own, and reach Python only as the text of these records. Neither replaces
//! the other.

use std::fmt::Write as _;
use std::sync::Arc;

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use crate::logging::{forward_from_tokio, OwnedRecord};
use crate::threads;

/// A `tracing-subscriber` layer that sends events to Python logging without ever
/// taking the GIL on a Tokio worker, inside the logging context of the task that
/// made them. Compose it with your own subscriber, or install it alone with
/// [`try_init`].
///
/// ```no_run
/// use pyo3::prelude::*;
/// use tracing_subscriber::prelude::*;
///
/// #[pymodule]
/// fn my_extension(m: &Bound<'_, PyModule>) -> PyResult<()> {
///     let layer = pyo3_twisted::trace::PythonLayer::new(m.py())?;
///     // Ignore the error if a subscriber is already installed.
///     let _ = tracing_subscriber::registry().with(layer).try_init();
///     Ok(())
/// }
/// ```
pub struct PythonLayer {
    python: Arc<pyo3_log::Logger>,
}

impl std::fmt::Debug for PythonLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonLayer").finish_non_exhaustive()
    }
}

impl PythonLayer {
    /// A layer forwarding events up to `DEBUG`, caching Python loggers and their
    /// levels (see `pyo3_log::Caching::LoggersAndLevels`).
    pub fn new(py: Python<'_>) -> PyResult<Self> {
        Ok(Self::wrap(pyo3_log::Logger::new(
            py,
            pyo3_log::Caching::LoggersAndLevels,
        )?))
    }

    /// Wraps a configured pyo3-log logger (filters, prefix, caching).
    pub fn wrap(python: pyo3_log::Logger) -> Self {
        Self {
            python: Arc::new(python),
        }
    }

    /// The handle that clears pyo3-log's caches of this layer's logger.
    pub fn reset_handle(&self) -> pyo3_log::ResetHandle {
        self.python.reset_handle()
    }
}

/// Installs a subscriber made of [`PythonLayer`] alone as this process's (this copy
/// of `tracing`'s) global default. Returns the handle that clears the layer's
/// caches, or `None` if a global subscriber was already set (which is left alone).
pub fn try_init(py: Python<'_>) -> PyResult<Option<pyo3_log::ResetHandle>> {
    let layer = PythonLayer::new(py)?;
    let handle = layer.reset_handle();
    Ok(tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .ok()
        .map(|()| handle))
}

fn log_level(level: &Level) -> log::Level {
    match *level {
        Level::ERROR => log::Level::Error,
        Level::WARN => log::Level::Warn,
        Level::INFO => log::Level::Info,
        Level::DEBUG => log::Level::Debug,
        Level::TRACE => log::Level::Trace,
    }
}

/// A span's fields as `key=value` text, kept in the span's extensions.
#[derive(Debug, Default)]
struct SpanFields(String);

/// Writes fields as `key=value` pairs separated by spaces; the `message` field
/// first, bare.
#[derive(Default)]
struct FieldWriter {
    message: String,
    fields: String,
}

impl FieldWriter {
    fn push(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        if field.name() == "message" {
            let _ = self.message.write_fmt(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={}", field.name(), value);
        }
    }
}

impl Visit for FieldWriter {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, format_args!("{value:?}"));
    }
}

impl<S> Layer<S> for PythonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut writer = FieldWriter::default();
        attrs.record(&mut writer);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(writer.fields));
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut writer = FieldWriter::default();
        values.record(&mut writer);
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(fields) => {
                if !fields.0.is_empty() && !writer.fields.is_empty() {
                    fields.0.push(' ');
                }
                fields.0.push_str(&writer.fields);
            }
            None => extensions.insert(SpanFields(writer.fields)),
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = log_level(meta.level());
        let log_meta = log::Metadata::builder()
            .level(level)
            .target(meta.target())
            .build();
        if !log::Log::enabled(&*self.python, &log_meta) {
            return;
        }
        let mut text = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                text.push_str(span.name());
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    if !fields.0.is_empty() {
                        let _ = write!(text, "{{{}}}", fields.0);
                    }
                }
                text.push_str(": ");
            }
        }
        let mut writer = FieldWriter::default();
        event.record(&mut writer);
        text.push_str(&writer.message);
        if !writer.fields.is_empty() {
            if !writer.message.is_empty() {
                text.push(' ');
            }
            text.push_str(&writer.fields);
        }
        let record = OwnedRecord {
            level,
            target: meta.target().to_owned(),
            module_path: meta.module_path().map(str::to_owned),
            file: meta.file().map(str::to_owned),
            line: meta.line(),
            message: text,
        };
        if threads::is_tokio_thread() {
            forward_from_tokio(&self.python, record);
        } else {
            record.emit(&*self.python);
        }
    }
}
