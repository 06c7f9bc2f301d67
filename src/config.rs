//! How a runtime is configured: [`RuntimeConfig`] and its parts.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// A duration option given in seconds.
fn seconds(name: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let seconds: f64 = value.extract()?;
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a finite number of seconds >= 0, got {seconds}"
        ))
    })
}

/// Configuration of the runtime that [`install_runtime`](crate::install_runtime) (or
/// [`Runtime::install`](crate::Runtime::install)) ties to a reactor.
///
/// Build it with struct-update syntax; every field has a sensible default:
///
/// ```
/// use std::time::Duration;
/// use pyo3_twisted::{LogContextProvider, RuntimeConfig};
///
/// let config = RuntimeConfig {
///     worker_threads: 2,
///     shutdown_timeout: Duration::from_secs(5),
///     logcontext: LogContextProvider::Module("synapse.logging.context".into()),
///     ..RuntimeConfig::default()
/// };
/// assert_eq!(config.thread_name, "pyo3-twisted");
/// ```
///
/// Two configs compare equal when every field does; installing an equal config on a
/// reactor that already has a runtime is a no-op, a different one is an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Number of Tokio worker threads. Default: one fewer than the CPUs, between 1
    /// and 4, leaving a CPU to the reactor thread (every result passes through it).
    pub worker_threads: usize,
    /// Name given to every Tokio thread (Linux shows the first 15 bytes).
    /// Default: `"pyo3-twisted"`.
    pub thread_name: String,
    /// How long reactor shutdown waits for in-flight work before aborting it and
    /// failing its Deferreds with `RuntimeShutdown`. Default: 10 seconds.
    pub shutdown_timeout: Duration,
    /// Where logging contexts come from. Default: [`LogContextProvider::None`].
    pub logcontext: LogContextProvider,
    /// Charge the thread CPU time spent polling a bridged future to its logging
    /// context. Default: `true`. Has no effect without a logcontext provider.
    pub track_cpu_time: bool,
    /// How Tokio threads wake the reactor. Default: [`WakeMode::Auto`].
    pub wake: WakeMode,
    /// After handing work over, how long the receiving side keeps polling for more
    /// before going to sleep: the reactor thread for results (GIL released; real
    /// reactors only) and one Tokio worker for new tasks. A sleeping thread takes
    /// tens of microseconds to wake, which dominates a sequential round trip;
    /// lingering trades a little CPU right after activity for that latency. Each
    /// side lingers only while lately at least a third of its lingers caught
    /// something (otherwise one hand-off in 16, to notice when they would again):
    /// answers that take longer than `linger` (a database round trip) cost no
    /// spinning. Zero disables it. Default: 50 µs.
    pub linger: Duration,
    /// Which Tokio runtime runs the work. Default: [`TokioRuntime::Process`], one pool
    /// shared by every reactor in the process.
    pub tokio: TokioRuntime,
    /// Which clock [`time`](crate::time) follows. Default: [`ClockMode::Auto`].
    pub clock: ClockMode,
    /// Record the histograms [`histograms`](crate::histograms) reports (drain batch sizes,
    /// wake-to-drain latency, task run and CPU times). The counters of
    /// [`stats`](crate::stats) are kept either way. Default: `true`.
    pub metrics: bool,
    /// Poll a bridged future on the reactor thread when the reactor is what wakes
    /// it, and start it there: the first poll runs inside `create_deferred`, a
    /// Python awaitable it awaits starts at once, its answer resumes the future
    /// on the reactor thread, and a result made there fires the Deferred with no
    /// thread hop. A future woken by Tokio (sockets, Tokio's timers, channels sent
    /// from Tokio) still runs on Tokio. Makes a handler that waits on Python (a
    /// transaction through `runInteraction`) as cheap as a Python one; but the
    /// future's work between two awaits then runs on the reactor thread, so a
    /// CPU-heavy stretch stalls the reactor (polls over 10 ms are counted in
    /// `reactor_polls_slow` and logged). Default: `false`.
    pub reactor_polls: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            worker_threads: cpus.saturating_sub(1).clamp(1, 4),
            thread_name: "pyo3-twisted".to_owned(),
            shutdown_timeout: Duration::from_secs(10),
            logcontext: LogContextProvider::None,
            track_cpu_time: true,
            wake: WakeMode::Auto,
            linger: Duration::from_micros(50),
            tokio: TokioRuntime::Process,
            clock: ClockMode::Auto,
            metrics: true,
            reactor_polls: false,
        }
    }
}

/// The keyword arguments [`RuntimeConfig::from_kwargs`] understands.
pub(crate) const CONFIG_KEYWORDS: [&str; 11] = [
    "worker_threads",
    "thread_name",
    "shutdown_timeout",
    "logcontext",
    "track_cpu_time",
    "wake",
    "linger",
    "tokio",
    "clock",
    "metrics",
    "reactor_polls",
];

impl RuntimeConfig {
    /// The config that Python keyword arguments describe, as `pyo3_twisted.install`
    /// and `pyo3_twisted.Runtime` take them: `worker_threads` (int), `thread_name`
    /// (str), `shutdown_timeout` and `linger` (seconds), `logcontext` (a module name),
    /// `track_cpu_time` (bool), `wake` (`"auto"`, `"fd"`, `"call_from_thread"`),
    /// `tokio` (`"process"`, `"per_reactor"`), `clock` (`"auto"`, `"reactor"`,
    /// `"tokio"`), `metrics` and `reactor_polls` (bool). Omitted or `None` options keep their
    /// defaults. An unknown keyword is a `TypeError`, a bad value a `ValueError`.
    pub fn from_kwargs(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut config = RuntimeConfig::default();
        let Some(kwargs) = kwargs else {
            return Ok(config);
        };
        for (key, value) in kwargs.iter() {
            let key: String = key.extract()?;
            if value.is_none() && CONFIG_KEYWORDS.contains(&key.as_str()) {
                continue;
            }
            match key.as_str() {
                "worker_threads" => config.worker_threads = value.extract()?,
                "thread_name" => config.thread_name = value.extract()?,
                "shutdown_timeout" => config.shutdown_timeout = seconds(&key, &value)?,
                "logcontext" => config.logcontext = LogContextProvider::Module(value.extract()?),
                "track_cpu_time" => config.track_cpu_time = value.extract()?,
                "wake" => config.wake = WakeMode::parse(&value.extract::<String>()?)?,
                "linger" => config.linger = seconds(&key, &value)?,
                "tokio" => config.tokio = TokioRuntime::parse(&value.extract::<String>()?)?,
                "clock" => config.clock = ClockMode::parse(&value.extract::<String>()?)?,
                "metrics" => config.metrics = value.extract()?,
                "reactor_polls" => config.reactor_polls = value.extract()?,
                other => {
                    return Err(PyTypeError::new_err(format!(
                        "unexpected keyword argument {other:?}; the runtime's options are {}",
                        CONFIG_KEYWORDS.join(", ")
                    )))
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the values a caller could get wrong, with a message naming the field.
    pub fn validate(&self) -> PyResult<()> {
        if self.worker_threads == 0 || self.worker_threads > 1024 {
            return Err(PyValueError::new_err(format!(
                "worker_threads must be between 1 and 1024, got {}",
                self.worker_threads
            )));
        }
        if self.thread_name.is_empty() || self.thread_name.contains('\0') {
            return Err(PyValueError::new_err(
                "thread_name must be a non-empty string without NUL characters",
            ));
        }
        if self.linger > Duration::from_millis(10) {
            return Err(PyValueError::new_err(format!(
                "linger must be at most 10 ms, got {:?}",
                self.linger
            )));
        }
        if let LogContextProvider::Module(name) = &self.logcontext {
            if name.is_empty() {
                return Err(PyValueError::new_err(
                    "logcontext module name must not be empty (use None for no provider)",
                ));
            }
        }
        Ok(())
    }
}

/// Where the logging context that follows work across threads comes from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum LogContextProvider {
    /// Plain Twisted: no logging contexts; `create_deferred` returns a bare Deferred.
    #[default]
    None,
    /// A Python module with `current_context`, `set_current_context` and
    /// `make_deferred_yieldable`, such as
    /// `"synapse.logging.context"` or `"pyo3_twisted.logcontext"`.
    Module(String),
}

/// Which Tokio runtime a reactor's work runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TokioRuntime {
    /// A runtime of the reactor's own, built when its bridge starts and dropped at its
    /// shutdown: nothing of it outlives the reactor, and it costs `worker_threads`
    /// threads per reactor.
    PerReactor,
    /// The process-wide runtime of [`process_runtime`](crate::process_runtime), shared
    /// by every reactor that asks for it and by other libraries (pyo3-async-runtimes'
    /// `init_with_runtime`). The first install sizes it; a later one that asks for
    /// other `worker_threads` or `thread_name` is an error. It is never dropped: at
    /// shutdown a reactor's bridge stops its own tasks there and leaves the threads
    /// running.
    #[default]
    Process,
}

impl TokioRuntime {
    /// The spelling used by the Python `install(..., tokio=...)` keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            TokioRuntime::PerReactor => "per_reactor",
            TokioRuntime::Process => "process",
        }
    }

    /// Parses the spelling of [`TokioRuntime::as_str`].
    pub fn parse(s: &str) -> PyResult<Self> {
        match s {
            "per_reactor" => Ok(TokioRuntime::PerReactor),
            "process" => Ok(TokioRuntime::Process),
            other => Err(PyValueError::new_err(format!(
                "tokio must be 'per_reactor' or 'process', got {other:?}"
            ))),
        }
    }
}

/// How a Tokio thread tells the reactor that the mailbox has work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WakeMode {
    /// A file descriptor on reactors that poll them (epoll, poll, select, asyncio),
    /// `callFromThread` elsewhere (memory reactors in tests).
    #[default]
    Auto,
    /// An eventfd registered with `reactor.addReader`: no GIL on the Tokio side.
    FileDescriptor,
    /// `reactor.callFromThread`, issued by a dedicated waker thread (never a Tokio
    /// worker), once per batch.
    CallFromThread,
}

impl WakeMode {
    /// The spelling used by the Python `install(..., wake=...)` keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            WakeMode::Auto => "auto",
            WakeMode::FileDescriptor => "fd",
            WakeMode::CallFromThread => "call_from_thread",
        }
    }

    /// Parses the spelling of [`WakeMode::as_str`].
    pub fn parse(s: &str) -> PyResult<Self> {
        match s {
            "auto" => Ok(WakeMode::Auto),
            "fd" => Ok(WakeMode::FileDescriptor),
            "call_from_thread" => Ok(WakeMode::CallFromThread),
            other => Err(PyValueError::new_err(format!(
                "wake must be 'auto', 'fd' or 'call_from_thread', got {other:?}"
            ))),
        }
    }
}

/// Which clock a runtime's timers ([`time`](crate::time)) follow; decided at install.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClockMode {
    /// The reactor's clock on reactors a test drives by hand (those with an
    /// `advance` method, such as Twisted's `Clock` and `MemoryReactorClock`), Tokio's
    /// timers on every other reactor.
    #[default]
    Auto,
    /// The reactor's clock: timers fire when `reactor.seconds()` reaches their
    /// deadline, through `reactor.callLater`. On a memory reactor no real time
    /// passes; `advance(n)` fires what falls due.
    Reactor,
    /// Tokio's timers: real time, with no reactor round trip per timer.
    Tokio,
}

impl ClockMode {
    /// The spelling used by the Python `install(..., clock=...)` keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            ClockMode::Auto => "auto",
            ClockMode::Reactor => "reactor",
            ClockMode::Tokio => "tokio",
        }
    }

    /// Parses the spelling of [`ClockMode::as_str`].
    pub fn parse(s: &str) -> PyResult<Self> {
        match s {
            "auto" => Ok(ClockMode::Auto),
            "reactor" => Ok(ClockMode::Reactor),
            "tokio" => Ok(ClockMode::Tokio),
            other => Err(PyValueError::new_err(format!(
                "clock must be 'auto', 'reactor' or 'tokio', got {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        let config = RuntimeConfig::default();
        config.validate().unwrap();
        assert!((1..=4).contains(&config.worker_threads));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            RuntimeConfig {
                worker_threads: 0,
                ..RuntimeConfig::default()
            },
            RuntimeConfig {
                thread_name: String::new(),
                ..RuntimeConfig::default()
            },
            RuntimeConfig {
                logcontext: LogContextProvider::Module(String::new()),
                ..RuntimeConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn wake_mode_round_trips() {
        for mode in [
            WakeMode::Auto,
            WakeMode::FileDescriptor,
            WakeMode::CallFromThread,
        ] {
            assert_eq!(WakeMode::parse(mode.as_str()).unwrap(), mode);
        }
        assert!(WakeMode::parse("eventfd").is_err());
    }

    #[test]
    fn clock_mode_round_trips() {
        for mode in [ClockMode::Auto, ClockMode::Reactor, ClockMode::Tokio] {
            assert_eq!(ClockMode::parse(mode.as_str()).unwrap(), mode);
        }
        assert!(ClockMode::parse("virtual").is_err());
    }
}
