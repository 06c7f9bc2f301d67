"""Logging contexts with Synapse's rules, for programs that are not Synapse.

A logging context names the unit of work (usually a request) that the current code
runs for. Log records are tagged with it and the resources the work uses — CPU time,
database transactions — are charged to it. It lives in a thread-local; the rules
that keep it right under Twisted are Synapse's:

1. The reactor runs in the *sentinel* context (falsy, charged to nobody). Code that
   gives control back to the reactor must first reset the sentinel, and re-enter its
   own context when it resumes: :func:`make_deferred_yieldable` does both for a
   Deferred you are about to await, :class:`PreserveLoggingContext` for a block.
2. Work started and not awaited keeps the caller's context while it runs its first
   step, and the caller's context is restored afterwards: :func:`run_in_background`.
3. A context is only started and stopped on the thread that created it; CPU time is
   measured with ``getrusage(RUSAGE_THREAD)`` at each switch, and usage flows up to
   parent contexts.

A broken rule calls :func:`logcontext_error`, which logs a warning. Tests replace it
with one that raises, so a mistake fails the test::

    pyo3_twisted.logcontext.logcontext_error = my_raising_hook

Install it as the bridge's provider with ``install(reactor, logcontext=
"pyo3_twisted.logcontext")``; Synapse passes ``"synapse.logging.context"`` instead.
"""

from __future__ import annotations

import logging
import resource
import threading
from types import TracebackType
from typing import Any, Awaitable, Callable, Optional, TypeVar, Union, overload

from twisted.internet import defer

__all__ = [
    "SENTINEL_CONTEXT",
    "ContextResourceUsage",
    "LoggingContext",
    "LoggingContextFilter",
    "PreserveLoggingContext",
    "current_context",
    "logcontext_error",
    "make_deferred_yieldable",
    "run_in_background",
    "set_current_context",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def logcontext_error(msg: str) -> None:
    """Called when a logging-context rule is broken. Replace it to change what
    happens (tests make it raise)."""
    logger.warning(msg)


def _report(msg: str) -> None:
    # Looked up at call time so a replaced hook takes effect.
    globals()["logcontext_error"](msg)


def _thread_rusage() -> Optional[tuple[float, float]]:
    """(user, system) CPU seconds of the calling thread, where the OS tells."""
    try:
        usage = resource.getrusage(resource.RUSAGE_THREAD)
    except (AttributeError, OSError):
        return None
    return usage.ru_utime, usage.ru_stime


class ContextResourceUsage:
    """What a context used: CPU seconds and database work."""

    __slots__ = (
        "ru_utime",
        "ru_stime",
        "db_txn_count",
        "db_txn_duration_sec",
        "db_sched_duration_sec",
        "evt_db_fetch_count",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ru_utime = 0.0
        self.ru_stime = 0.0
        self.db_txn_count = 0
        self.db_txn_duration_sec = 0.0
        self.db_sched_duration_sec = 0.0
        self.evt_db_fetch_count = 0

    def copy(self) -> "ContextResourceUsage":
        other = ContextResourceUsage()
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        return other

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"ContextResourceUsage({fields})"


class _Sentinel:
    """The context of the reactor itself: charged to nobody, falsy."""

    __slots__ = ()

    name = "sentinel"
    server_name = "unknown_server_from_sentinel_context"
    previous_context = None
    parent_context = None
    request = None
    scope = None
    tag = None
    finished = False

    def __str__(self) -> str:
        return "sentinel"

    def __repr__(self) -> str:
        return "SENTINEL_CONTEXT"

    def __bool__(self) -> bool:
        return False

    def start(self, rusage: Optional[tuple[float, float]]) -> None:
        pass

    def stop(self, rusage: Optional[tuple[float, float]]) -> None:
        pass

    def add_cputime(self, utime_delta: float, stime_delta: float) -> None:
        pass

    def add_database_transaction(self, duration_sec: float) -> None:
        pass

    def add_database_scheduled(self, sched_sec: float) -> None:
        pass

    def record_event_fetch(self, event_count: int) -> None:
        pass


SENTINEL_CONTEXT = _Sentinel()
LoggingContextOrSentinel = Union["LoggingContext", _Sentinel]

class _ThreadContext(threading.local):
    # A class-level default: reading an attribute a thread never set would
    # otherwise raise and catch AttributeError, costing a microsecond on every
    # lookup from the reactor thread, which lives in the sentinel.
    context: LoggingContextOrSentinel = SENTINEL_CONTEXT


_local = _ThreadContext()


def current_context() -> LoggingContextOrSentinel:
    """The calling thread's context (the sentinel if none)."""
    return _local.context


def set_current_context(context: LoggingContextOrSentinel) -> LoggingContextOrSentinel:
    """Make ``context`` the calling thread's context; return the previous one.

    CPU time used since the previous switch is charged to the context being left.
    """
    if context is None:
        raise TypeError("set_current_context: context may not be None (use SENTINEL_CONTEXT)")
    previous = _local.context
    if previous is not context:
        rusage = _thread_rusage()
        previous.stop(rusage)
        _local.context = context
        context.start(rusage)
    return previous


class LoggingContext:
    """A named unit of work. Use as a context manager to make it current.

    Resource usage is recorded here and added to every ancestor through
    ``parent_context``.
    """

    def __init__(
        self,
        name: str,
        server_name: str = "",
        parent_context: Optional["LoggingContext"] = None,
        request: Optional[Any] = None,
    ) -> None:
        self.name = name
        self.server_name = server_name
        self.parent_context = parent_context
        self.request = request if request is not None else getattr(parent_context, "request", None)
        self.previous_context: LoggingContextOrSentinel = current_context()
        self.main_thread = threading.get_ident()
        self.finished = False
        self.scope = None
        self.tag = None
        self._resource_usage = ContextResourceUsage()
        self._usage_start: Optional[tuple[float, float]] = None

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"LoggingContext({self.name!r})"

    def __enter__(self) -> "LoggingContext":
        previous = set_current_context(self)
        if previous is not self.previous_context:
            _report(
                f"Expected previous context {self.previous_context!r} when entering "
                f"{self!r}, found {previous!r}"
            )
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        current = set_current_context(self.previous_context)
        if current is not self:
            _report(f"Expected logging context {self!r} on exit, found {current!r}")
        self.finished = True

    def start(self, rusage: Optional[tuple[float, float]]) -> None:
        """Record that this context runs on the calling thread from now on. Called by
        :func:`set_current_context`."""
        if threading.get_ident() != self.main_thread:
            _report(f"Started logcontext {self!r} on a thread other than its own")
            return
        if self.finished:
            _report(f"Re-starting finished logcontext {self!r}")
        if self._usage_start is not None:
            _report(f"Re-starting already-active logcontext {self!r}")
        self._usage_start = rusage

    def stop(self, rusage: Optional[tuple[float, float]]) -> None:
        """Record that this context stops running; charge the CPU time since
        :meth:`start`. Called by :func:`set_current_context`."""
        if threading.get_ident() != self.main_thread:
            _report(f"Stopped logcontext {self!r} on a thread other than its own")
            return
        start, self._usage_start = self._usage_start, None
        if start is None or rusage is None:
            if start is None and rusage is not None:
                _report(f"Stopped logcontext {self!r} that was never started")
            return
        utime, stime = rusage[0] - start[0], rusage[1] - start[1]
        if utime < 0 or stime < 0:
            _report(f"CPU time went backwards in logcontext {self!r}: {utime}, {stime}")
            return
        self.add_cputime(utime, stime)

    def get_resource_usage(self) -> ContextResourceUsage:
        """A copy of what this context used so far, including the current run if
        it is running on the calling thread."""
        usage = self._resource_usage.copy()
        if self._usage_start is not None and threading.get_ident() == self.main_thread:
            now = _thread_rusage()
            if now is not None:
                usage.ru_utime += max(0.0, now[0] - self._usage_start[0])
                usage.ru_stime += max(0.0, now[1] - self._usage_start[1])
        return usage

    def add_cputime(self, utime_delta: float, stime_delta: float) -> None:
        """Charge CPU seconds to this context and its ancestors."""
        context: Optional[LoggingContext] = self
        while context is not None:
            context._resource_usage.ru_utime += utime_delta
            context._resource_usage.ru_stime += stime_delta
            context = context.parent_context

    def add_database_transaction(self, duration_sec: float) -> None:
        """Charge one database transaction that took ``duration_sec``."""
        if duration_sec < 0:
            raise ValueError("DB txn time can only be non-negative")
        context: Optional[LoggingContext] = self
        while context is not None:
            context._resource_usage.db_txn_count += 1
            context._resource_usage.db_txn_duration_sec += duration_sec
            context = context.parent_context

    def add_database_scheduled(self, sched_sec: float) -> None:
        """Charge ``sched_sec`` spent waiting for a database connection."""
        if sched_sec < 0:
            raise ValueError("DB scheduling time can only be non-negative")
        context: Optional[LoggingContext] = self
        while context is not None:
            context._resource_usage.db_sched_duration_sec += sched_sec
            context = context.parent_context

    def record_event_fetch(self, event_count: int) -> None:
        context: Optional[LoggingContext] = self
        while context is not None:
            context._resource_usage.evt_db_fetch_count += event_count
            context = context.parent_context


class LoggingContextFilter(logging.Filter):
    """Adds the current context to each record: ``record.request`` is its name
    (``request`` if none is current) and ``record.server_name`` its server."""

    def __init__(self, request: str = "") -> None:
        super().__init__()
        self._default_request = request

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_context()
        if context:
            record.request = str(context)
            record.server_name = context.server_name
        else:
            if not hasattr(record, "request"):
                record.request = self._default_request
            if not hasattr(record, "server_name"):
                record.server_name = SENTINEL_CONTEXT.server_name
        return True


class PreserveLoggingContext:
    """Switch to ``new_context`` (the sentinel by default) for a block, and back to
    the previous context afterwards — around code that hands control to the
    reactor."""

    __slots__ = ("_new_context", "_old_context")

    def __init__(self, new_context: LoggingContextOrSentinel = SENTINEL_CONTEXT) -> None:
        self._new_context = new_context

    def __enter__(self) -> None:
        self._old_context = set_current_context(self._new_context)

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        context = set_current_context(self._old_context)
        if context is not self._new_context:
            if not context:
                _report(f"Expected logging context {self._new_context!r} was lost")
            else:
                _report(f"Expected logging context {self._new_context!r} but found {context!r}")


def _set_context_cb(result: T, context: LoggingContextOrSentinel) -> T:
    set_current_context(context)
    return result


@overload
def run_in_background(
    f: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
) -> "defer.Deferred[T]": ...


@overload
def run_in_background(f: Callable[..., T], *args: Any, **kwargs: Any) -> "defer.Deferred[T]": ...


def run_in_background(
    f: Callable[..., Union[T, Awaitable[T]]], *args: Any, **kwargs: Any
) -> "defer.Deferred[T]":
    """Start ``f(*args, **kwargs)`` in the current context without waiting for it.

    Returns a Deferred for its result that does *not* follow the rules (it fires in
    the sentinel); wrap it in :func:`make_deferred_yieldable` to await it. An
    exception from ``f`` becomes a failed Deferred. Coroutines and other awaitables
    are driven with ``ensureDeferred``.
    """
    calling_context = current_context()
    try:
        result = f(*args, **kwargs)
    except Exception:
        return defer.fail()

    if isinstance(result, defer.Deferred):
        d = result
    elif hasattr(result, "__await__"):
        d = defer.ensureDeferred(_await(result))
    else:
        return defer.succeed(result)

    if d.called and not d.paused:
        # Finished synchronously: f had to keep our context, nothing to restore.
        if current_context() is not calling_context:
            _report(
                f"run_in_background: {f!r} finished but did not keep the calling "
                f"context {calling_context!r} (found {current_context()!r})"
            )
        return d

    # f is waiting for the reactor: put the caller's context back now, and let the
    # reactor have the sentinel once d finishes.
    set_current_context(calling_context)
    d.addBoth(_set_context_cb, SENTINEL_CONTEXT)
    return d


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def make_deferred_yieldable(deferred: "defer.Deferred[T]") -> "defer.Deferred[T]":
    """Make ``deferred`` safe to await under these rules.

    If it has fired, nothing changes. Otherwise the sentinel is set now (control is
    about to go back to the reactor) and the current context is restored before the
    Deferred's next callbacks run.
    """
    if deferred.called and not deferred.paused:
        return deferred
    previous = set_current_context(SENTINEL_CONTEXT)
    deferred.addBoth(_set_context_cb, previous)
    return deferred
