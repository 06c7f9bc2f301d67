"""d.cancel() racing the completion of the same future, thousands of times, on the
real epoll reactor. Each Deferred must fire exactly once."""

import random
import sys

from twisted.internet.defer import CancelledError

from _common import emit, reactor

import pyo3_twisted
from pyo3_twisted import probes

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
DELAYS = [None, 0.0, 0.0, 1e-5, 3e-5, 1e-4, 3e-4]
rng = random.Random(1234)
pyo3_twisted.install(reactor, worker_threads=2)
tally = {"value": 0, "cancelled": 0, "other": [], "fired_twice": 0}
fired_counts: list[int] = []


def one(i):
    if i == N:
        reactor.stop()
        return
    d = probes.ready(reactor, i)
    fired_counts.append(0)

    def record(result):
        fired_counts[i] += 1
        if fired_counts[i] > 1:
            tally["fired_twice"] += 1
        elif hasattr(result, "check"):
            if result.check(CancelledError):
                tally["cancelled"] += 1
            else:
                tally["other"].append(result.getTraceback())
        else:
            tally["value"] += 1
        reactor.callLater(0, one, i + 1)

    d.addBoth(record)
    delay = rng.choice(DELAYS)
    if delay is None:
        # Spin on the reactor thread while the worker completes, then cancel.
        for _ in range(rng.randrange(0, 2000)):
            pass
        d.cancel()
    else:
        reactor.callLater(delay, d.cancel)


reactor.callWhenRunning(one, 0)
reactor.run()
emit({"n": N, **tally, "stats": pyo3_twisted.stats(reactor)})
