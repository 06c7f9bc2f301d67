"""10,000 concurrent completions on the real epoll reactor: how many wake-ups?"""

from _common import emit, reactor

import pyo3_twisted
from pyo3_twisted import probes

N = 10_000
pyo3_twisted.install(reactor, worker_threads=2)
done = {"count": 0}


def count(_):
    done["count"] += 1
    if done["count"] == N:
        reactor.stop()


def start():
    for i in range(N):
        probes.ready(reactor, i).addCallback(count)


reactor.callWhenRunning(start)
reactor.run()
emit({"completions": done["count"], "stats": pyo3_twisted.stats(reactor)})
