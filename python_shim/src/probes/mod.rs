//! `pyo3_twisted.probes`: small Rust futures with known behaviour, which the tests,
//! benchmarks and test-only examples drive from Python. Compiled only with the
//! `probes` feature (the test build of the wheel); the released wheel has none of
//! them. Some break the crate's own rules on purpose (`touch_python` takes the GIL on
//! a Tokio worker) so that the tests can see the rule's counter move.

use pyo3::prelude::*;

mod awaitables;
mod clock;
mod coroutines;
mod futures;
mod spans;
mod store;

/// Adds the submodule `probes` to `_native`, importable as `pyo3_twisted.probes`
/// (`from pyo3_twisted import probes`).
pub(crate) fn register(parent: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = parent.py();
    let m = PyModule::new(py, "probes")?;
    futures::register(&m)?;
    awaitables::register(&m)?;
    clock::register(&m)?;
    coroutines::register(&m)?;
    store::register(&m)?;
    spans::register(&m)?;
    m.setattr("__name__", "pyo3_twisted.probes")?;
    m.setattr(
        "__doc__",
        "Rust futures with known behaviour, for tests and benchmarks (test builds only).",
    )?;
    parent.add_submodule(&m)?;
    // The package imports `_native` first, so this entry exists before anyone asks
    // for `pyo3_twisted.probes`.
    py.import("sys")?
        .getattr("modules")?
        .set_item("pyo3_twisted.probes", &m)?;
    Ok(())
}
