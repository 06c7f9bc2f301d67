//! Async Rust inside Twisted applications.
//!
//! A Twisted program has one event loop, the reactor, on one thread; Rust's async
//! code wants Tokio, whose workers are other threads. This crate joins the two
//! without letting either block the other:
//!
//! ```text
//!  Python (reactor thread) ──submit──▶ Tokio workers ──mailbox──▶ Python (reactor thread)
//!        create_deferred                 your future               Deferred fires
//!                                        run_python_awaitable ──▶  awaitable runs
//!                                              ◀──── result ─────
//! ```
//!
//! - [`install_runtime`] (or [`Runtime::install`], which returns a handle) ties a
//!   runtime to a reactor: it starts when the reactor runs or at its first use (a
//!   memory reactor need never run), and stops at reactor shutdown or
//!   [`Runtime::shutdown`] (waiting up to `shutdown_timeout` for in-flight work, then
//!   failing the rest with [`RuntimeShutdown`]). Every reactor of a process shares one
//!   Tokio pool by default, and nothing the runtime holds keeps its reactor alive.
//! - [`create_deferred`] runs a Rust future on that runtime and hands Python a
//!   `Deferred` for its result. Errors, panics ([`RustPanicError`]) and `d.cancel()`
//!   all behave as a Twisted programmer expects.
//! - [`create_coroutine`] runs a Rust future as a Python coroutine instead: awaited
//!   from a coroutine on the reactor thread, it is polled there, in the caller's
//!   steps and logging context, with no Deferred for its result.
//! - [`run_python_awaitable`] (or a [`Runtime`] handle) goes the other way: from a
//!   Tokio task, run a coroutine or Deferred on the reactor and await its result.
//! - [`spawn`] starts a child task that keeps the request's context.
//! - [`synapse`] mirrors Synapse 1.163's own bridge by name (`RustRuntime`,
//!   `create_deferred(py, &runtime, fut)`, `Transaction::query(sql, &[&str])`...), so
//!   Synapse's Rust code ports by changing `use` lines.
//! - With a logcontext provider ([`LogContextProvider`], e.g. Synapse's
//!   `synapse.logging.context`), the request's logging context follows the work:
//!   Python called back from Rust runs in it (so its database time is charged to the
//!   request), the CPU time spent polling the future is added to it, and Rust `log`
//!   lines ([`Logger`]) and `tracing` events ([`trace::PythonLayer`]) are emitted
//!   inside it.
//! - [`time`] has timers on the reactor's clock (virtual time in tests), and
//!   [`histograms`] with [`stats`] feed the Prometheus collector
//!   `pyo3_twisted.metrics`.
//!
//! # Which thread runs what
//!
//! | thread         | runs                                                        |
//! |----------------|-------------------------------------------------------------|
//! | reactor        | `create_deferred`, `install_runtime`, every Deferred, logcontext switch and Python object this crate touches, the mailbox drain |
//! | Tokio workers  | your futures; they never wait for the GIL on this crate's behalf |
//! | `pyo3-twisted-wake` | one per process, only for memory reactors that do not poll their readers: one `callFromThread` per batch |
//!
//! Results, Python calls and log records all travel back through one queue, the
//! mailbox: a worker pushes and moves on; the reactor is woken at most once per batch
//! and runs the whole batch under one GIL hold.
//!
//! # Rules for callers
//!
//! - Call [`create_deferred`], [`install_runtime`] and [`Runtime::shutdown`] on the
//!   reactor thread; they take a [`Runtime`] handle or the reactor ([`RuntimeRef`]).
//! - Inside a future, reach Python through [`run_python_awaitable`] rather than
//!   `Python::attach`: the reactor thread may hold the GIL for a long time, and a
//!   worker waiting for it stalls every task behind it.
//! - Spawn children with [`spawn`], not `tokio::spawn`, to keep the request's context.
//! - Build extension modules with `panic = "unwind"` (the default): a panic becomes a
//!   [`RustPanicError`] only if it can unwind.
//!
//! # Other Tokio users, other extension modules
//!
//! - To share one pool with pyo3-async-runtimes, build [`process_runtime`], give it
//!   to `pyo3_async_runtimes::tokio::init_with_runtime`, and install with
//!   [`TokioRuntime::Process`]. That pool outlives the reactor.
//! - Each extension module that links this crate has its own copy of it and of Tokio,
//!   so each keeps its own runtime on a reactor ([`runtime_attr`]); they work side by
//!   side and never share one. [`add_python_api`] gives a module its copy's
//!   `install`, `stats`, `Runtime` and exceptions.
//! - On Twisted's asyncio reactor, [`run_python_awaitable`] also takes asyncio
//!   coroutines, futures and Tasks.
//!
//! # Example
//!
//! ```no_run
//! use pyo3::prelude::*;
//!
//! /// `d = user_display_name(reactor, store, "@alice:example.org")`
//! #[pyfunction]
//! fn user_display_name<'py>(
//!     py: Python<'py>,
//!     reactor: Bound<'py, PyAny>,
//!     store: Py<PyAny>,
//!     user_id: String,
//! ) -> PyResult<Bound<'py, PyAny>> {
//!     let reactor_ref = reactor.clone().unbind();
//!     pyo3_twisted::create_deferred(py, &reactor, async move {
//!         // A Python coroutine, run on the reactor in this request's logcontext.
//!         let profile = pyo3_twisted::run_python_awaitable(reactor_ref, move |py| {
//!             store.bind(py).call_method1("get_profile", (user_id,))
//!         })
//!         .await?;
//!         Ok(profile)
//!     })
//! }
//! ```
// Tokio's lint set. Dependencies are checked outside the unit-test build, which also
// links the dev-dependencies the integration tests and benches use.
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::undocumented_unsafe_blocks
)]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod asyncio;
mod awaitable;
mod bridge;
mod close_flag;
mod config;
mod coroutine;
mod cputime;
pub mod db;
mod deferred;
mod errors;
mod fork;
mod histogram;
mod lazy_restore;
mod linger_gate;
mod live_tasks;
mod local_task;
mod logcontext;
mod logging;
pub(crate) mod mailbox;
mod python_api;
mod registry;
mod runtime;
mod rust_coroutine;
mod scope;
mod stats;
mod submit;
pub mod synapse;
mod task;
mod threads;
pub mod time;
mod timer_queue;
mod tokio_pool;
pub mod trace;
mod twisted;
mod wake;
mod wake_flag;

pub use bridge::runtime_attr;
pub use config::{ClockMode, LogContextProvider, RuntimeConfig, TokioRuntime, WakeMode};
pub use deferred::create_deferred;
pub use errors::{RuntimeShutdown, RustPanicError};
pub use histogram::HistogramSnapshot;
pub use logging::Logger;
pub use python_api::add_python_api;
pub use runtime::{
    histograms, install_runtime, run_python_awaitable, stats, HistogramReading, PyRuntime,
    ReactorHandle, Runtime, RuntimeRef,
};
pub use rust_coroutine::create_coroutine;
pub use stats::{Stats, GAUGES};
pub use task::spawn;
pub use tokio_pool::process_runtime;
pub use wake::POLLS_READERS_ATTR;

/// Internals exposed for this crate's benchmarks and model checks; not a stable
/// API.
#[doc(hidden)]
pub mod __private {
    pub use crate::close_flag::CloseFlag;
    pub use crate::mailbox::WakeFlag;
}
