//! Synapse's Rust bridge, by name: port Synapse's `rust/` crate by changing `use`
//! lines.
//!
//! Synapse 1.163 has a bridge of its own (`deferred.rs`, `runtime.rs`,
//! `twisted_dispatch.rs`, `storage/db/`, parts of `logging/context.rs`). This module
//! offers the same names, module shapes and signatures, each a thin layer over this
//! crate's own API, so Synapse's handlers compile unchanged against it. In Synapse's
//! `lib.rs` and `storage/mod.rs`:
//!
//! ```text
//! pub use pyo3_twisted::synapse::{deferred, runtime};   // was: pub mod deferred; pub mod runtime;
//!                                                        // (and drop `pub mod twisted_dispatch;`)
//! pub use pyo3_twisted::synapse::storage::db;            // was: pub mod db;
//! use pyo3_twisted::synapse::pyo3_log::{self, ResetHandle}; // was: use pyo3_log::ResetHandle;
//! ```
//!
//! Every `use crate::deferred::create_deferred`, `crate::runtime::RustRuntime`,
//! `crate::storage::db::{...}` and `register_module` call then resolves here.
//! `docs/porting-from-synapse.md` lists each name against this crate's own, and what
//! behaves differently.
//!
//! | Synapse 1.163                                   | here                                      |
//! |-------------------------------------------------|-------------------------------------------|
//! | `runtime::RustRuntime(hs, worker_threads=4)`    | [`runtime::RustRuntime`] over [`Runtime`](crate::Runtime) |
//! | `deferred::{create_deferred, RustPanicError}`   | [`deferred`]: the crate's own             |
//! | `deferred::run_python_awaitable(&rt, f)`        | [`deferred::run_python_awaitable`]        |
//! | `storage::db::*`, `Transaction::query(&[&str])` | [`storage::db`]: views of [`crate::db`]   |
//! | `python_db_pool::PythonDatabasePoolWrapper`     | [`storage::db::python_db_pool`]           |
//! | `logging::context::{LogContextHandle, with_logcontext}` | [`logging::context`], over the crate's task scope |
//! | `pyo3_log::init()`                              | [`pyo3_log::init`]: the crate's [`Logger`](crate::Logger) |
//!
//! Nothing here is a second implementation: each item forwards to the crate's own.

pub mod deferred;
pub mod logging;
pub mod pyo3_log;
pub mod runtime;
pub mod storage;
