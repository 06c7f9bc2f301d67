"""Run async Rust inside Twisted applications.

The Rust crate ``pyo3-twisted`` ties a Tokio runtime to a Twisted reactor and turns
Rust futures into Deferreds. This package is its Python side:

- :class:`Runtime` is a handle on a reactor's runtime (start, shutdown, stats) that an
  application keeps instead of the reactor; :func:`install` configures the runtime of a
  reactor, :func:`stats` reads its counters;
- :class:`RustPanicError` and :class:`RuntimeShutdown` are the failures a bridged
  Deferred can carry besides the future's own exceptions;
- :mod:`pyo3_twisted.testing` is a memory-reactor harness for trial and pytest;
- :mod:`pyo3_twisted.probes` holds small Rust futures for tests and benchmarks.
"""

from ._native import (
    POLLS_READERS_ATTR,
    RUNTIME_ATTR,
    Runtime,
    RuntimeShutdown,
    RustPanicError,
    install,
    stats,
)

__all__ = [
    "POLLS_READERS_ATTR",
    "RUNTIME_ATTR",
    "Runtime",
    "RuntimeShutdown",
    "RustPanicError",
    "install",
    "stats",
]
