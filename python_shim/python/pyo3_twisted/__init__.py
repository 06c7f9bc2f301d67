"""Run async Rust inside Twisted applications.

The Rust crate ``pyo3-twisted`` ties a Tokio runtime to a Twisted reactor and turns
Rust futures into Deferreds. This package is its Python side:

- :class:`Runtime` is a handle on a reactor's runtime (start, shutdown, stats) that an
  application keeps instead of the reactor; :func:`install` configures the runtime of a
  reactor, :func:`stats` reads its counters and :func:`histograms` its histograms
  (:mod:`pyo3_twisted.metrics` exports both to Prometheus);
- :class:`RustPanicError` and :class:`RuntimeShutdown` are the failures a bridged
  Deferred can carry besides the future's own exceptions;
- :mod:`pyo3_twisted.testing` is a memory-reactor harness for trial and pytest;
  :mod:`pyo3_twisted.logcontext` and :mod:`pyo3_twisted.database` are a reference
  logging context and database pool.

:func:`install`, :func:`stats` and :class:`Runtime` act on the runtime of
``pyo3_twisted._native``'s copy of the crate. An extension module of your own links
its own copy, with its own runtime on each reactor: give it the same API with
``pyo3_twisted::add_python_api`` and configure that one. (The test
build of this package adds ``pyo3_twisted.probes``, Rust futures for the tests; the
released wheel has none.)
"""

from ._native import (
    POLLS_READERS_ATTR,
    RUNTIME_ATTR,
    Runtime,
    RuntimeShutdown,
    RustPanicError,
    histograms,
    install,
    stats,
)

__all__ = [
    "POLLS_READERS_ATTR",
    "RUNTIME_ATTR",
    "Runtime",
    "RuntimeShutdown",
    "RustPanicError",
    "histograms",
    "install",
    "stats",
]
