"""The pyo3-twisted demo: a Twisted web service whose hot path is async Rust.

It is built the way a downstream application is: an extension module of its own
(``pyo3_twisted_demo._native``) links the crate, exposes its copy's Python API with
``pyo3_twisted::add_python_api``, and adds its handlers; the Python side uses the
``pyo3_twisted`` package's logcontext and database pool. Run it with
``python -m pyo3_twisted_demo`` (``make demo``). ``examples/hello_twisted.py``
(``make example``) is the smallest program on the same module.
"""
