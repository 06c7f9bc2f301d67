//! `pyo3_twisted_demo._native`: the demo service's Rust half, built as any
//! downstream extension module is. It links its own copy of pyo3-twisted, exposes
//! that copy's Python API (`install`, `stats`, `Runtime`, the exceptions) with
//! `pyo3_twisted::add_python_api`, forwards Rust `log` records to Python logging,
//! and adds its handlers: `VersionsHandler` (`GET /versions`) and the small functions
//! `examples/hello_twisted.py` awaits.

use pyo3::prelude::*;

mod hello;
mod store;
mod versions;

// The library is named for the package (a workspace cannot hold two `_native`
// libraries: their files would collide in target/); the module is `_native`.
#[pymodule(name = "_native")]
fn demo_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    pyo3_twisted::add_python_api(m)?;
    versions::register(m)?;
    hello::register(m)?;
    // This module's Rust `log` records reach Python logging, in the request's
    // logcontext. Another module of the process may have set a logger already.
    let _ = pyo3_twisted::Logger::new(m.py())?.install();
    // And its `tracing` events, unless a subscriber is already set.
    let _ = pyo3_twisted::trace::try_init(m.py())?;
    Ok(())
}
