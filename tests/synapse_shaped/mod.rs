//! Handlers written the way Synapse 1.163 writes its Rust code, compiled against
//! `pyo3_twisted::synapse`: the tests (`tests/synapse.rs`) and the benchmark
//! extension (`tests/ext`) both include this module.
//!
//! The three re-exports below are the whole port: Synapse's own `deferred`, `runtime`
//! and `storage::db` modules replaced by this crate's. Everything else is written
//! against those paths as Synapse's handlers are.

#![allow(dead_code)]

pub use pyo3_twisted::synapse::{deferred, runtime};

pub mod storage {
    pub use pyo3_twisted::synapse::storage::db;

    #[path = "store.rs"]
    pub mod store;
}

pub mod handlers;
pub mod http_client;
pub mod work;

use pyo3::prelude::*;

/// Registers the runtime submodule and the handler classes on `m`, as Synapse's
/// `lib.rs` registers its own.
pub fn register(py: Python<'_>, m: &Bound<'_, PyModule>) -> PyResult<()> {
    deferred::register_module(py, m)?;
    runtime::register_module(py, m)?;
    m.add_class::<handlers::RustHandlers>()?;
    m.add_class::<handlers::versions::VersionsHandler>()?;
    m.add_class::<http_client::HttpClient>()?;
    m.add_class::<work::Work>()?;
    Ok(())
}
