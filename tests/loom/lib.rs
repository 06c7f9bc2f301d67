//! The crate's `src/wake_flag.rs` and `src/close_flag.rs`, compiled with loom's
//! atomics (run with `RUSTFLAGS="--cfg pyo3_twisted_loom"`; see `tests/model.rs` and
//! `tests/close.rs`).

#[path = "../../src/close_flag.rs"]
mod close_flag;

#[path = "../../src/wake_flag.rs"]
mod wake_flag;

pub use close_flag::CloseFlag;
pub use wake_flag::WakeFlag;
