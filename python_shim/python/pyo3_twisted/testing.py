"""A memory-reactor harness for code that bridges Rust and Twisted.

Twisted's ``MemoryReactorClock`` runs everything on the test's thread, which is what
makes tests deterministic. Bridged work finishes on other threads, though, and comes
back through a file descriptor the reactor reads (or ``reactor.callFromThread``).
:class:`ThreadedMemoryReactorClock` polls its readers' file descriptors in
``advance()``, accepts ``callFromThread`` from any thread, and wakes a test that waits
for either; :meth:`get_success` and :meth:`get_failure` wait with the GIL released (no
busy loop) until a Deferred fires; :meth:`shutdown` fires the reactor's shutdown
triggers the way a real reactor does.

The reactor need not be run, nor shut down: bridged work starts on first use, and a
reactor that nobody references any more is garbage-collected with its runtime's state
(its in-flight tasks are aborted). A suite that makes one reactor per test and never
stops them (as Synapse's ``HomeserverTestCase`` does) keeps one Tokio pool for the
whole process. An application object that owns a ``pyo3_twisted.Runtime`` stops it
with ``runtime.shutdown_blocking()``.

From trial::

    class MyTests(ReactorTestCase):
        def test_answer(self):
            my_extension.install(self.reactor)
            self.assertEqual(self.get_success(my_extension.answer(self.reactor)), 42)

From pytest::

    @pytest.fixture
    def reactor():
        with memory_reactor() as reactor:
            yield reactor

Rust timers (``pyo3_twisted::time``) follow this reactor's clock, as ``callLater``
does: no real time passes, and ``advance(n)`` fires what falls due. A timer starts
when the reactor thread registers it, so let the task reach its sleep before
advancing (:meth:`ThreadedMemoryReactorClock.pump_until`)::

    def test_retry_waits_an_hour(reactor):
        d = my_extension.retry_in_an_hour(reactor)          # sleeps 3600 s in Rust
        reactor.pump_until(lambda: my_extension.stats(reactor)["timers_pending"] == 1)
        reactor.advance(3599)
        assert not d.called
        reactor.advance(1)
        assert reactor.get_success(d) == "retried"

This module depends on Twisted only (not on the compiled extension), so it serves any
extension crate built on pyo3-twisted. It works on Twisted 24.11 and later.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import select
import socket
import threading
import time
from typing import Any, Callable, Iterator, cast

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python import log
from twisted.python.failure import Failure
from twisted.trial import unittest

__all__ = [
    "REACTOR_ENV",
    "ReactorTestCase",
    "ThreadedMemoryReactorClock",
    "capture_logged_errors",
    "install_reactor",
    "memory_reactor",
]

_NOT_FIRED = object()


class ThreadedMemoryReactorClock(MemoryReactorClock):
    """A ``MemoryReactorClock`` with a thread-safe ``callFromThread`` that also polls
    the file descriptors of its readers.

    Calls from other threads are queued and run on the test's thread by
    :meth:`advance` (and so by :meth:`turn` and everything that waits:
    :meth:`get_success`, :meth:`get_failure`, :meth:`shutdown`). ``advance`` also runs
    ``doRead`` on every reader whose file descriptor is readable, as a real reactor
    would; it says so with ``pyo3_twisted_polls_readers = True``, and a pyo3-twisted
    runtime then wakes it through an eventfd, with no thread of its own. The reactor
    never needs to be ``run()``: bridged work starts on first use. The clock moves
    only when told to (:meth:`advance`, :meth:`turn` with seconds), except during
    :meth:`shutdown`, which lets it follow real time so that shutdown timeouts can
    pass.
    """

    #: Tells pyo3-twisted that :meth:`advance` polls the readers' file descriptors.
    pyo3_twisted_polls_readers = True

    def __init__(self, logcontext: Any = None) -> None:
        """``logcontext``: a logcontext provider module (such as
        ``pyo3_twisted.logcontext``); if given, every reactor turn must leave the
        reactor thread in its sentinel (falsy) context, or the test fails."""
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's is untyped
        self.logcontext = logcontext
        # Twisted 24.11 starts these at True; later versions at False. False is
        # right for a reactor that has not run.
        self.hasRun = self.hasStopped = self.hasCrashed = False
        self._thread_calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = (
            collections.deque()
        )
        self._thread_calls_lock = threading.Lock()
        # Written by callFromThread so that a waiting test wakes; made on first use,
        # closed when the reactor is collected.
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self.is_shut_down = False

    def _wakeup_pair(self) -> tuple[socket.socket, socket.socket]:
        with self._thread_calls_lock:
            if self._wakeup is None:
                read, write = socket.socketpair()
                read.setblocking(False)
                write.setblocking(False)
                self._wakeup = (read, write)
            return self._wakeup

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``callable`` for the reactor's thread; safe from any thread."""
        with self._thread_calls_lock:
            self._thread_calls.append((callable, args, kwargs))
            wakeup = self._wakeup
        if wakeup is not None:
            try:
                wakeup[1].send(b"x")
            except (BlockingIOError, OSError):
                pass  # Full: a wake-up is pending already.

    def run_thread_calls(self) -> int:
        """Run the queued ``callFromThread`` calls; return how many ran.

        Like a real reactor, an exception from one call is logged and the rest run.
        """
        ran = 0
        while True:
            with self._thread_calls_lock:
                if not self._thread_calls:
                    return ran
                callable, args, kwargs = self._thread_calls.popleft()
            ran += 1
            try:
                callable(*args, **kwargs)
            except BaseException:
                log.err(None, "Error in a callFromThread call")  # type: ignore[no-untyped-call]

    def _pollable_readers(self) -> list[Any]:
        readers = []
        for reader in list(self.readers):
            try:
                fd = reader.fileno()
            except Exception:
                continue
            if isinstance(fd, int) and fd >= 0:
                readers.append(reader)
        return readers

    def poll_readers(self) -> int:
        """Run ``doRead`` on each reader whose file descriptor is readable now;
        return how many ran. An exception is logged, as a real reactor would."""
        readers = self._pollable_readers()
        if not readers:
            return 0
        ready, _, _ = select.select(readers, [], [], 0)
        ran = 0
        for reader in ready:
            if reader not in self.readers:
                continue
            ran += 1
            try:
                reader.doRead()
            except BaseException:
                log.err(None, "Error in a reader's doRead")  # type: ignore[no-untyped-call]
        return ran

    def advance(self, amount: float) -> None:
        """Move the clock by ``amount`` seconds and run the delayed calls that fall
        due, then the thread calls and readable readers, and the delayed calls
        those made due, until nothing more is ready."""
        super().advance(amount)
        while self.run_thread_calls() + self.poll_readers():
            super().advance(0)

    def turn(self, seconds: float = 0.0) -> None:
        """One reactor turn: advance the clock by ``seconds``, running everything
        that is ready (see :meth:`advance`), then check the logcontext rule.
        (Twisted's ``pump(timings)`` keeps its meaning: one :meth:`advance` per
        timing.)"""
        self.advance(seconds)
        self.check_logcontext()

    def pump_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Turn the reactor, moving no virtual time, until ``condition()`` holds:
        the way to wait for bridged work to reach a state (a Rust task at its
        sleep, say) before advancing the clock. Waits for work with the GIL
        released between turns; raises ``TimeoutError`` after ``timeout`` seconds
        of real time."""
        deadline = time.monotonic() + timeout
        while True:
            self.turn()
            if condition():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{condition!r} did not hold within {timeout} s")
            self.wait_for_work(min(remaining, 0.005))

    def check_logcontext(self) -> None:
        """With a ``logcontext`` module: fail unless the reactor thread is in the
        sentinel context, as it must be between reactor turns."""
        if self.logcontext is not None:
            context = self.logcontext.current_context()
            if context:
                raise AssertionError(
                    f"a reactor turn left the reactor thread in logcontext {context!r}"
                )

    def wait_for_work(self, timeout: float) -> bool:
        """Block (GIL released) until a ``callFromThread`` call is queued or a reader
        is readable, or ``timeout`` seconds pass; return whether work is ready."""
        wakeup_read, _ = self._wakeup_pair()
        with self._thread_calls_lock:
            if self._thread_calls:
                return True
        ready, _, _ = select.select([wakeup_read, *self._pollable_readers()], [], [], max(0.0, timeout))
        try:
            while wakeup_read.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._thread_calls_lock:
            queued = bool(self._thread_calls)
        return queued or any(r is not wakeup_read for r in ready)

    #: The earlier name of :meth:`wait_for_work`.
    wait_for_thread_call = wait_for_work

    def wait_for(self, d: Deferred[Any], timeout: float = 10.0) -> Any:
        """Pump until ``d`` has fired; return its result (a value or a
        :class:`Failure`) and take it out of ``d``'s chain.

        Raises ``TimeoutError`` if ``d`` has not fired after ``timeout`` seconds.
        """
        outcome: list[Any] = []

        def capture(result: Any) -> None:
            outcome.append(result)

        d.addBoth(capture)
        deadline = time.monotonic() + timeout
        while True:
            self.turn()
            if outcome:
                return outcome[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{d!r} did not fire within {timeout} s")
            self.wait_for_work(remaining)

    def get_success(self, d: Deferred[Any], timeout: float = 10.0) -> Any:
        """Wait for ``d`` and return its value; fail the test if it failed."""
        result = self.wait_for(d, timeout)
        if isinstance(result, Failure):
            raise AssertionError(
                f"Deferred failed instead of succeeding:\n{result.getTraceback()}"
            )
        return result

    def get_failure(self, d: Deferred[Any], exc_type: type, timeout: float = 10.0) -> Failure:
        """Wait for ``d`` and return its :class:`Failure`, which must be an
        ``exc_type``; fail the test otherwise."""
        result = self.wait_for(d, timeout)
        if not isinstance(result, Failure):
            raise AssertionError(f"Deferred succeeded with {result!r}, expected {exc_type}")
        if not result.check(exc_type):  # type: ignore[no-untyped-call]
            raise AssertionError(
                f"Deferred failed with {result.type}, expected {exc_type}:\n"
                f"{result.getTraceback()}"
            )
        return result

    def fire_shutdown_phase(self, phase: str, timeout: float) -> None:
        """Call this phase's ``shutdown`` triggers and wait for the Deferreds they
        return, letting the clock follow real time meanwhile."""
        triggers = self.triggers.get(phase, {}).get("shutdown", [])
        pending = []
        for callable, args, kwargs in list(triggers):
            result = callable(*args, **kwargs)
            if isinstance(result, Deferred):
                pending.append(result)
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        for d in pending:
            fired: list[Any] = []
            d.addBoth(fired.append)
            while not fired:
                now = time.monotonic()
                self.turn(now - last)
                last = now
                if fired:
                    break
                remaining = deadline - now
                if remaining <= 0:
                    raise TimeoutError(f"the {phase}-shutdown trigger {d!r} never fired")
                # Wake for the next thread call, or in time for the next delayed call.
                next_call = min(
                    (c.getTime() - self.seconds() for c in self.getDelayedCalls()),
                    default=remaining,
                )
                self.wait_for_work(max(0.0, min(remaining, next_call)))
            if isinstance(fired[0], Failure):
                log.err(fired[0], f"{phase}-shutdown trigger failed")  # type: ignore[no-untyped-call]

    def shutdown(self, timeout: float = 60.0) -> None:
        """Shut the reactor down as ``reactor.stop()`` would: fire the before,
        during and after ``shutdown`` triggers, waiting for each phase. Idempotent."""
        if self.is_shut_down:
            return
        self.is_shut_down = True
        for phase in ("before", "during", "after"):
            self.fire_shutdown_phase(phase, timeout)
        self.running = False


@contextlib.contextmanager
def memory_reactor(run: bool = True, logcontext: Any = None) -> Iterator[ThreadedMemoryReactorClock]:
    """A :class:`ThreadedMemoryReactorClock`, run (unless ``run`` is false) and shut
    down on exit: the pytest-fixture form of :class:`ReactorTestCase`."""
    reactor = ThreadedMemoryReactorClock(logcontext)
    if run:
        reactor.run()  # type: ignore[no-untyped-call]
    try:
        yield reactor
    finally:
        reactor.shutdown()


class LoggedErrors(list[dict[str, Any]]):
    """Error events captured by :func:`capture_logged_errors`."""

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        out = []
        for event in self:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            out.append(text)
        return out


@contextlib.contextmanager
def capture_logged_errors() -> Iterator[LoggedErrors]:
    """Collect the error events Twisted logs inside the block, including
    "Unhandled error in Deferred" (a garbage collection runs at exit to flush
    those)."""
    errors = LoggedErrors()

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    try:
        yield errors
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, observer))


class ReactorTestCase(unittest.TestCase):
    """A trial ``TestCase`` with a run :class:`ThreadedMemoryReactorClock` in
    ``self.reactor``, shut down after each test."""

    def setUp(self) -> None:
        super().setUp()
        self.reactor = ThreadedMemoryReactorClock()
        self.reactor.run()  # type: ignore[no-untyped-call]
        self.addCleanup(self.reactor.shutdown)

    def get_success(self, d: Deferred[Any], timeout: float = 10.0) -> Any:
        """See :meth:`ThreadedMemoryReactorClock.get_success`."""
        return self.reactor.get_success(d, timeout)

    def get_failure(self, d: Deferred[Any], exc_type: type, timeout: float = 10.0) -> Failure:
        """See :meth:`ThreadedMemoryReactorClock.get_failure`."""
        return self.reactor.get_failure(d, exc_type, timeout)


#: Names the real reactor that test processes install: ``epoll`` (default) or
#: ``asyncio`` (Twisted's ``AsyncioSelectorReactor``).
REACTOR_ENV = "PYO3_TWISTED_TEST_REACTOR"


def install_reactor(name: str | None = None) -> str:
    """Installs the global Twisted reactor ``name`` (``"epoll"`` or ``"asyncio"``),
    by default the one :data:`REACTOR_ENV` names, and returns the name.

    Call it before anything imports ``twisted.internet.reactor``. Lets one test
    suite run on either reactor: ``PYO3_TWISTED_TEST_REACTOR=asyncio pytest``.
    """
    import os

    name = name or os.environ.get(REACTOR_ENV) or "epoll"
    if name == "epoll":
        from twisted.internet import epollreactor

        epollreactor.install()  # type: ignore[no-untyped-call]
    elif name == "asyncio":
        import asyncio

        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)  # type: ignore[no-untyped-call]
    else:
        raise ValueError(f"{REACTOR_ENV} must be 'epoll' or 'asyncio', got {name!r}")
    return name
