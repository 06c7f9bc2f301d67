"""Rust futures with known behaviour, for tests and benchmarks.

Each function takes the reactor first and returns a Deferred made by the crate's
``create_deferred``, the way a downstream crate's handler would.
"""

from ._native import (
    DropFlag,
    fail,
    panic,
    pending,
    ready,
    sleep,
    spawn_children,
    thread_name,
    touch_python,
)

__all__ = [
    "DropFlag",
    "fail",
    "panic",
    "pending",
    "ready",
    "sleep",
    "spawn_children",
    "thread_name",
    "touch_python",
]
