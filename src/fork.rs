//! Counts forks, so a child can tell an engine started in its parent (whose threads
//! it does not have) from one of its own. The counter is bumped by
//! `os.register_at_fork(after_in_child=...)`, in the child, on the forking thread.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyDict};

static GENERATION: AtomicU64 = AtomicU64::new(0);
static WATCHING: PyOnceLock<()> = PyOnceLock::new();

/// How many times this process has forked since the crate loaded (0 in the
/// original process).
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Registers the fork hooks once per process: `before_fork` runs in the parent on
/// the forking thread, with the GIL, just before it forks.
pub(crate) fn watch(py: Python<'_>, before_fork: fn(Python<'_>)) -> PyResult<()> {
    WATCHING
        .get_or_try_init(py, || -> PyResult<()> {
            let before = PyCFunction::new_closure(
                py,
                Some(c"pyo3_twisted_before_fork"),
                None,
                move |args, _kwargs| before_fork(args.py()),
            )?;
            let in_child = PyCFunction::new_closure(
                py,
                Some(c"pyo3_twisted_after_fork_in_child"),
                None,
                |_args, _kwargs| {
                    GENERATION.fetch_add(1, Ordering::AcqRel);
                },
            )?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("before", before)?;
            kwargs.set_item("after_in_child", in_child)?;
            py.import("os")?
                .call_method("register_at_fork", (), Some(&kwargs))?;
            Ok(())
        })
        .map(drop)
}
