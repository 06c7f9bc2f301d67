//! The crate's `src/wake_flag.rs`, compiled with loom's atomics (run with
//! `RUSTFLAGS="--cfg pyo3_twisted_loom"`; see `tests/model.rs`).

#[path = "../../src/wake_flag.rs"]
mod wake_flag;

pub use wake_flag::WakeFlag;
