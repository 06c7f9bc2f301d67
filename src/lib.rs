//! Async Rust inside Twisted applications.
//!
//! A Twisted program has one event loop, the reactor, on one thread; Rust's async
//! code wants Tokio, whose workers are other threads. This crate joins the two
//! without letting either block the other:
//!
//! ```text
//!  Python (reactor thread) ──submit──▶ Tokio workers ──mailbox──▶ Python (reactor thread)
//!        create_deferred                 your future               Deferred fires
//! ```
//!
//! - [`install_runtime`] ties a Tokio runtime to a reactor: it starts when the reactor
//!   runs and stops at reactor shutdown (waiting up to `shutdown_timeout` for
//!   in-flight work, then failing the rest with [`RuntimeShutdown`]).
//! - [`create_deferred`] runs a Rust future on that runtime and hands Python a
//!   `Deferred` for its result. Errors, panics ([`RustPanicError`]) and `d.cancel()`
//!   all behave as a Twisted programmer expects.
//! - [`spawn`] starts a child task that keeps the request's context.
//!
//! # Which thread runs what
//!
//! | thread         | runs                                                        |
//! |----------------|-------------------------------------------------------------|
//! | reactor        | `create_deferred`, `install_runtime`, every Deferred and every Python object this crate touches, the mailbox drain |
//! | Tokio workers  | your futures; they never wait for the GIL on this crate's behalf |
//! | `pyo3-twisted-wake` | only with memory reactors: one `callFromThread` per batch |
//!
//! Results come back through one queue, the mailbox: a worker pushes and moves on,
//! the reactor is woken at most once per batch and runs the whole batch under one GIL
//! hold, converting each result to Python there.
//!
//! # Rules for callers
//!
//! - Call [`create_deferred`] and [`install_runtime`] on the reactor thread.
//! - Inside a future, do not take the GIL (`Python::attach`) to talk to Python: the
//!   reactor thread may hold it for a long time, and a worker waiting for it stalls
//!   every task behind it.
//! - Build extension modules with `panic = "unwind"` (the default): a panic becomes a
//!   [`RustPanicError`] only if it can unwind.
//!
//! # Example
//!
//! ```no_run
//! use pyo3::prelude::*;
//!
//! /// `d = sleep_then_add(reactor, 1, 2)` fires with 3 about 10 ms later.
//! #[pyfunction]
//! fn sleep_then_add<'py>(py: Python<'py>, reactor: Bound<'py, PyAny>, a: i64, b: i64)
//!     -> PyResult<Bound<'py, PyAny>>
//! {
//!     pyo3_twisted::create_deferred(py, &reactor, async move {
//!         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//!         Ok(a + b)
//!     })
//! }
//! ```
#![warn(missing_docs)]

mod config;
mod deferred;
mod errors;
mod mailbox;
mod registry;
mod runtime;
mod stats;
mod submit;
mod task;
mod threads;
mod wake;

pub use config::{LogContextProvider, RuntimeConfig, WakeMode};
pub use deferred::create_deferred;
pub use errors::{RuntimeShutdown, RustPanicError};
pub use runtime::{install_runtime, stats, RUNTIME_ATTR};
pub use stats::Stats;
pub use task::spawn;
