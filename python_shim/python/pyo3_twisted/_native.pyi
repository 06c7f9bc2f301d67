"""Type stubs for the compiled module ``pyo3_twisted._native``."""

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore

RUNTIME_ATTR: str
POLLS_READERS_ATTR: str

class Runtime:
    """A handle on a reactor's pyo3-twisted runtime; keeps the reactor weakly."""

    def __init__(
        self,
        reactor: IReactorCore,
        *,
        worker_threads: Optional[int] = ...,
        thread_name: Optional[str] = ...,
        shutdown_timeout: Optional[float] = ...,
        logcontext: Optional[str] = ...,
        track_cpu_time: Optional[bool] = ...,
        wake: Optional[str] = ...,
        linger: Optional[float] = ...,
        tokio: Optional[str] = ...,
        clock: Optional[str] = ...,
        metrics: Optional[bool] = ...,
        reactor_polls: Optional[bool] = ...,
    ) -> None: ...
    @property
    def reactor(self) -> Optional[IReactorCore]: ...
    @property
    def is_shut_down(self) -> bool: ...
    def start(self) -> None: ...
    def shutdown(self, timeout: Optional[float] = ...) -> Deferred[None]: ...
    def shutdown_blocking(self, timeout: Optional[float] = ...) -> None: ...
    def stats(self) -> dict[str, Any]: ...

class RustPanicError(Exception):
    """A Rust future panicked; the message is the panic's."""

class RuntimeShutdown(RuntimeError):
    """The runtime shut down before this work could finish."""

def install(
    reactor: IReactorCore,
    *,
    worker_threads: Optional[int] = ...,
    thread_name: Optional[str] = ...,
    shutdown_timeout: Optional[float] = ...,
    logcontext: Optional[str] = ...,
    track_cpu_time: Optional[bool] = ...,
    wake: Optional[str] = ...,
    linger: Optional[float] = ...,
    tokio: Optional[str] = ...,
    clock: Optional[str] = ...,
    metrics: Optional[bool] = ...,
    reactor_polls: Optional[bool] = ...,
) -> None: ...
def stats(reactor: IReactorCore) -> dict[str, Any]: ...
def histograms(reactor: IReactorCore) -> list[dict[str, Any]]: ...
def describe_stats() -> dict[str, tuple[str, str]]: ...
def reset_log_cache() -> None: ...
def convert_placeholders(sql: str, style: str) -> str: ...
