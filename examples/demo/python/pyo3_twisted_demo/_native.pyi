"""Type stubs for the compiled module ``pyo3_twisted_demo._native``."""

from typing import Any, Coroutine, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore

# `pyo3_twisted::add_python_api`: the same API as `pyo3_twisted._native`, acting on
# this module's own copy of the crate (its own runtime on each reactor).
from pyo3_twisted._native import POLLS_READERS_ATTR as POLLS_READERS_ATTR
from pyo3_twisted._native import RUNTIME_ATTR as RUNTIME_ATTR
from pyo3_twisted._native import Runtime as Runtime
from pyo3_twisted._native import describe_stats as describe_stats
from pyo3_twisted._native import histograms as histograms
from pyo3_twisted._native import install as install
from pyo3_twisted._native import stats as stats

class RustPanicError(Exception):
    """A Rust future of this module panicked; the message is the panic's."""

class RuntimeShutdown(RuntimeError):
    """This module's runtime shut down before the work could finish."""

class VersionsHandler:
    def __init__(
        self,
        pool: Any,
        reactor: IReactorCore,
        known_features: Sequence[str],
        rust_work_ms: int = ...,
        native_dsn: str | None = ...,
        native_connections: int = ...,
        coroutine: bool = ...,
        interaction: bool = ...,
    ) -> None: ...
    def handle(
        self, reactor: IReactorCore, user_id: str
    ) -> Deferred[dict[str, Any]] | Coroutine[Any, Any, dict[str, Any]]: ...

def greet(reactor: IReactorCore, name: str, seconds: float) -> Deferred[str]: ...
def sum_of_squares(reactor: IReactorCore, n: int) -> Deferred[int]: ...
def parse_port(reactor: IReactorCore, text: str) -> Deferred[int]: ...
def divide(reactor: IReactorCore, a: int, b: int) -> Deferred[int]: ...
