"""Reactor shutdown with 10,000 in-flight futures on the real epoll reactor.

Half finish quickly, half sleep far longer than shutdown_timeout; some more take
the GIL from their Tokio workers in a loop while the runtime shuts down.
"""

import sys
import time

from _common import emit, reactor

import pyo3_twisted
from pyo3_twisted import probes

TIMEOUT = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
N = 10_000
TOUCHERS = 20

pyo3_twisted.install(reactor, worker_threads=2, shutdown_timeout=TIMEOUT, tokio="per_reactor")
outcomes = {"value": 0, "shutdown": 0, "other": []}
times: dict = {}


def on_value(_):
    outcomes["value"] += 1


def on_failure(f):
    if f.check(pyo3_twisted.RuntimeShutdown):
        outcomes["shutdown"] += 1
    else:
        outcomes["other"].append(f.getTraceback())


def start():
    for i in range(N):
        seconds = 0.05 if i % 2 == 0 else 3600.0
        probes.sleep(reactor, seconds, i).addCallbacks(on_value, on_failure)
    for _ in range(TOUCHERS):
        probes.touch_python(reactor, 3600.0).addCallbacks(on_value, on_failure)

    def stop():
        times["stop"] = time.monotonic()
        reactor.stop()

    reactor.callLater(0.5, stop)


reactor.callWhenRunning(start)
reactor.run()
times["end"] = time.monotonic()
stats = pyo3_twisted.stats(reactor)
emit(
    {
        "timeout": TIMEOUT,
        "shutdown_seconds": times["end"] - times["stop"],
        "values": outcomes["value"],
        "shutdown_failures": outcomes["shutdown"],
        "other_failures": outcomes["other"],
        "expected_total": N + TOUCHERS,
        "stats": stats,
    }
)
