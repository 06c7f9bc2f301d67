"""Awaitables on Twisted's asyncio reactor (loaded by src/asyncio.rs).

There a coroutine may await Deferreds *and* asyncio futures. Twisted's driver
(ensureDeferred) keeps the logcontext rules -- a coroutine resumes inside the
callback chain of the Deferred it awaited -- but knows nothing of asyncio futures;
an asyncio Task knows futures but resumes a loop turn later, after logcontext
callbacks have already run. So Twisted drives, and `_relay` turns every asyncio
future the coroutine waits on into a Deferred, made yieldable when a logcontext
provider is configured (the coroutine resumes in the context it yielded from).

Code that must run inside an asyncio Task (asyncio.timeout, TaskGroup,
current_task) should be wrapped by the caller: return asyncio.ensure_future(coro).
"""

import asyncio
import types

from twisted.internet.defer import Deferred, ensureDeferred


def adapt(obj, loop, make_yieldable):
    """A Deferred for a coroutine or an asyncio future; anything else unchanged."""
    if isinstance(obj, Deferred):
        return obj
    if asyncio.isfuture(obj):
        return from_future(obj, loop)
    if asyncio.iscoroutine(obj):
        return ensureDeferred(_drive(obj, loop, make_yieldable))
    return obj


def from_future(future, loop):
    if future.get_loop() is not loop:
        raise ValueError(
            f"{future!r} belongs to another asyncio event loop than the reactor's: "
            "create it on the reactor's loop (asyncio.get_running_loop() on the "
            "reactor thread)"
        )
    return Deferred.fromFuture(future)


async def _drive(coro, loop, make_yieldable):
    return await _relay(coro, loop, make_yieldable)


def _next_turn(loop):
    d = Deferred()
    loop.call_soon(d.callback, None)
    return d


@types.coroutine
def _relay(coro, loop, make_yieldable):
    value, error = None, None
    while True:
        try:
            if error is not None:
                yielded = coro.throw(error)
            else:
                yielded = coro.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        if isinstance(yielded, Deferred):
            # Twisted resumes us inside the Deferred's callback chain: relay as is.
            try:
                value = yield yielded
            except BaseException as e:
                error = e
            continue
        if asyncio.isfuture(yielded):
            # Future.__await__ yielded itself with this flag set, as a Task expects.
            yielded._asyncio_future_blocking = False
            waiter = from_future(yielded, loop)
        elif yielded is None:
            # asyncio.sleep(0): give the loop a turn instead of spinning.
            waiter = _next_turn(loop)
        else:
            error = RuntimeError(
                f"a coroutine run by pyo3-twisted awaited {yielded!r}, which is "
                "neither a Deferred nor an asyncio future"
            )
            continue
        if make_yieldable is not None:
            waiter = make_yieldable(waiter)
        try:
            yield waiter
        except BaseException as e:
            # Cancelled from the Twisted side. A future that is done raises its own
            # outcome when the coroutine resumes; otherwise pass the error in.
            if not (asyncio.isfuture(yielded) and yielded.done()):
                error = e
