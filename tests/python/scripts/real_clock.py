"""pyo3_twisted::time on a real reactor: Tokio's timers, real time, no callLater."""

import time

from _common import emit, reactor
from twisted.internet import defer

import pyo3_twisted
from pyo3_twisted import probes

pyo3_twisted.install(reactor, worker_threads=2)
result: dict = {}


async def main() -> None:
    started = time.monotonic()
    woke_at = await probes.clock_sleep(reactor, 0.05)
    result["elapsed"] = time.monotonic() - started
    result["woke_at"] = woke_at
    result["wall_now"] = time.time()
    result["delayed_calls"] = len(reactor.getDelayedCalls())
    try:
        await probes.clock_timeout_never(reactor, 0.02)
    except TimeoutError as e:
        result["timeout"] = str(e)
    result["timeout_inner"] = await probes.clock_timeout_sleep(reactor, 5.0, 0.01)
    result["stats"] = pyo3_twisted.stats(reactor)


def run() -> None:
    d = defer.ensureDeferred(main())
    d.addErrback(lambda f: result.setdefault("error", f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())


reactor.callWhenRunning(run)
reactor.run()
emit(result)
