"""Rust futures with known behaviour, for tests and benchmarks.

Each function takes the reactor first and returns a Deferred made by the crate's
``create_deferred``, the way a downstream crate's handler would. ``RustStore`` is a
feature-flag store written once against ``pyo3_twisted::db`` and run on any pool.
"""

from ._native import (
    DropFlag,
    ForeignCall,
    Gate,
    RustStore,
    burn_cpu,
    call_python,
    call_python_in_thread,
    call_python_many,
    call_python_sequentially,
    fail,
    log_messages,
    panic,
    pending,
    ready,
    sleep,
    spawn_children,
    thread_name,
    three_calls,
    touch_python,
    yield_many,
)

__all__ = [
    "DropFlag",
    "ForeignCall",
    "Gate",
    "RustStore",
    "burn_cpu",
    "call_python",
    "call_python_in_thread",
    "call_python_many",
    "call_python_sequentially",
    "fail",
    "log_messages",
    "panic",
    "pending",
    "ready",
    "sleep",
    "spawn_children",
    "thread_name",
    "three_calls",
    "touch_python",
    "yield_many",
]
