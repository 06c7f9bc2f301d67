//! Every live bridge, by reactor address: found without the GIL by Tokio threads
//! (`run_python_awaitable` given a reactor), and stopped by one `atexit` hook before
//! CPython finalizes (a Tokio thread that re-took the GIL during finalization would be
//! killed while running Rust frames, CPython gh-87135, aborting the process).
//!
//! Entries are weak and leave when their bridge stops, so the directory keeps
//! nothing alive; a reactor address reused after a collection finds only its new
//! bridge.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;

use super::Bridge;

static BRIDGES: Mutex<Option<HashMap<usize, Weak<Bridge>>>> = Mutex::new(None);
static HOOK: PyOnceLock<()> = PyOnceLock::new();

/// Adds `bridge`; registers the exit hook on first use. Reactor thread.
pub(super) fn track(py: Python<'_>, bridge: &Arc<Bridge>) -> PyResult<()> {
    HOOK.get_or_try_init(py, || -> PyResult<()> {
        let hook = PyCFunction::new_closure(
            py,
            Some(c"pyo3_twisted_stop_runtimes"),
            None,
            |args, _kwargs| {
                let live: Vec<Arc<Bridge>> = BRIDGES
                    .lock()
                    .take()
                    .unwrap_or_default()
                    .values()
                    .filter_map(Weak::upgrade)
                    .collect();
                for bridge in live {
                    bridge.stop_for_exit(args.py());
                }
            },
        )?;
        py.import("atexit")?.call_method1("register", (hook,))?;
        Ok(())
    })?;
    BRIDGES
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(bridge.reactor_address, Arc::downgrade(bridge));
    Ok(())
}

/// Just before this process forks (parent, GIL held): each bridge notes whether its
/// reactor is running, so a child can tell a reactor its parent goes on running
/// (whose file descriptors it must not touch) from one that never ran there.
pub(super) fn note_fork(py: Python<'_>) {
    let live: Vec<Arc<Bridge>> = BRIDGES
        .lock()
        .as_ref()
        .map(|bridges| bridges.values().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    for bridge in live {
        bridge.note_fork(py);
    }
}

/// The live bridge of the reactor at `address`. Any thread, no GIL.
pub(crate) fn find(address: usize) -> Option<Arc<Bridge>> {
    BRIDGES.lock().as_ref()?.get(&address)?.upgrade()
}

/// Removes `bridge`, unless its address now belongs to another bridge.
pub(super) fn forget(bridge: &Bridge) {
    if let Some(bridges) = BRIDGES.lock().as_mut() {
        let ours = bridges
            .get(&bridge.reactor_address)
            .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), bridge));
        if ours {
            bridges.remove(&bridge.reactor_address);
        }
    }
}
