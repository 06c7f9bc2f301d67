"""Two extension modules that each link pyo3-twisted, on one real reactor.

usage: two_extensions.py separate | shared

separate: pyo3_twisted._native and pyo3_twisted_test_ext each install a runtime on
          the same reactor; both work, each on its own threads, and call each other.
shared:   (asyncio reactor) the test extension puts pyo3-twisted on the process-wide
          pool and hands it to pyo3-async-runtimes: create_deferred futures and
          future_into_py futures run on the same worker threads.
"""

import os
import sys

mode = sys.argv[1]
if mode == "shared":
    os.environ["PYO3_TWISTED_TEST_REACTOR"] = "asyncio"

from twisted.internet import defer  # noqa: E402

from _common import emit, reactor, threads_named  # noqa: E402

import pyo3_twisted  # noqa: E402
import pyo3_twisted_test_ext as ext  # noqa: E402
from pyo3_twisted import probes  # noqa: E402

result: dict = {"mode": mode}


def later(value, delay=0.0):
    d = defer.Deferred()
    reactor.callLater(delay, d.callback, value)
    return d


async def separate():
    result["attrs_differ"] = pyo3_twisted.RUNTIME_ATTR != ext.RUNTIME_ATTR
    result["both_attrs_set"] = hasattr(reactor, pyo3_twisted.RUNTIME_ATTR) and hasattr(
        reactor, ext.RUNTIME_ATTR
    )
    shim = [probes.thread_name(reactor) for _ in range(20)]
    other = [ext.deferred_thread_name(reactor, 0.001) for _ in range(20)]
    result["shim_threads"] = sorted(set(await defer.gatherResults(shim)))
    result["ext_threads"] = sorted(set(await defer.gatherResults(other)))
    # Each calls into the other through the reactor.
    result["ext_awaits_shim"] = await ext.call_python(reactor, lambda: probes.sleep(reactor, 0.001, "shim value"))
    result["shim_awaits_ext"] = await probes.call_python(reactor, lambda: ext.deferred_thread_name(reactor, 0.001))
    result["live"] = {"shim-pool": threads_named("shim-pool"), "ext-pool": threads_named("ext-pool")}


async def shared():
    import asyncio

    # callWhenRunning runs before the asyncio loop does; future_into_py needs it.
    await later(None)
    deferreds = [ext.deferred_thread_name(reactor, 0.002) for _ in range(40)]
    futures = [ext.asyncio_thread_name(0.002) for _ in range(40)]
    names_d = await defer.gatherResults(deferreds)
    names_f = await defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.gather(*futures)))
    result["deferred_threads"] = sorted(set(names_d))
    result["future_threads"] = sorted(set(names_f))
    result["live_shared"] = threads_named("shared-pool")
    # pyo3-async-runtimes' own default pool would be called "tokio-runtime-worker".
    result["live_default_pool"] = threads_named("tokio-runtime-worker")


def start():
    d = defer.ensureDeferred(separate() if mode == "separate" else shared())
    d.addErrback(lambda f: result.__setitem__("failure", f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())


if mode == "separate":
    pyo3_twisted.install(reactor, worker_threads=1, thread_name="shim-pool", shutdown_timeout=2.0, tokio="per_reactor")
    ext.install(reactor, 2, "ext-pool")
else:
    result["shared_with_pyo3_async_runtimes"] = ext.share_with_pyo3_async_runtimes(2, "shared-pool")
    ext.install(reactor, 2, "shared-pool", process=True)
    # Asking the process-wide pool for other settings is an error.
    try:
        ext.share_with_pyo3_async_runtimes(3, "shared-pool")
    except RuntimeError as e:
        result["mismatch_error"] = str(e)

reactor.callWhenRunning(start)
reactor.run()
if mode == "separate":
    result["shim_stats"] = pyo3_twisted.stats(reactor)
result["ext_stats"] = ext.stats(reactor)
result["after_stop_shared"] = threads_named("shared-pool")
emit(result)
