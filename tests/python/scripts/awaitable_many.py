"""N concurrent run_python_awaitable round trips from Tokio on the real reactor."""

import sys

from twisted.internet import defer

from _common import emit, reactor

import pyo3_twisted
from pyo3_twisted import probes

N = int(sys.argv[1])
pyo3_twisted.install(reactor, worker_threads=2, logcontext="pyo3_twisted.logcontext")
result: dict = {}


def factory(i):
    # Half plain values, half Deferreds fired on a later reactor turn.
    if i % 2:
        return i
    d = defer.Deferred()
    reactor.callLater(0, d.callback, i)
    return d


def start():
    d = probes.call_python_many(reactor, N, factory)
    d.addCallback(lambda total: result.__setitem__("total", total))
    d.addErrback(lambda f: result.__setitem__("error", f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())


reactor.callWhenRunning(start)
reactor.run()
result["stats"] = pyo3_twisted.stats(reactor)
emit(result)
