"""One memory reactor per "test", never run and never stopped, as Synapse's
HomeserverTestCase makes them.

usage: many_reactors.py harness|call_from_thread|plain COUNT

Each reactor does a create_deferred and a run_python_awaitable round trip, then is
dropped. ``harness`` uses pyo3_twisted.testing's ThreadedMemoryReactorClock and its
get_success (woken through an eventfd reader); ``call_from_thread`` the same
harness saying it does not poll readers (so the process's one waker thread wakes it
through callFromThread, as with Synapse's harness); ``plain`` uses Twisted's own MemoryReactorClock, driven by hand (poll
the readers' file descriptors, run doRead, advance). Prints the live threads (most
seen, and at the end), the reactors still alive after gc.collect(), and the RSS
growth after a warm-up of 100 reactors.
"""

import gc
import os
import select
import sys
import time
import weakref

from _common import emit

from twisted.internet.testing import MemoryReactorClock

import pyo3_twisted
from pyo3_twisted import probes
from pyo3_twisted.testing import ThreadedMemoryReactorClock

kind, count = sys.argv[1], int(sys.argv[2])
WARM_UP = 100


def live_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def drive_by_hand(reactor: MemoryReactorClock, d, timeout: float = 10.0):
    """What a test on Twisted's plain memory reactor does: wait for a reader to be
    readable, run it, run what is due."""
    outcome: list = []
    d.addBoth(outcome.append)
    deadline = time.monotonic() + timeout
    while not outcome:
        readers = list(reactor.getReaders())
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{d!r} did not fire")
        ready, _, _ = select.select(readers, [], [], remaining)
        for reader in ready:
            reader.doRead()
        reactor.advance(0)
    return outcome[0]


class CallFromThreadReactor(ThreadedMemoryReactorClock):
    pyo3_twisted_polls_readers = False


def one_test(i: int) -> weakref.ref:
    if kind in ("harness", "call_from_thread"):
        reactor = ThreadedMemoryReactorClock() if kind == "harness" else CallFromThreadReactor()
        value = reactor.get_success(probes.ready(reactor, i))
        echoed = reactor.get_success(probes.call_python(reactor, lambda: i))
    else:
        reactor = MemoryReactorClock()
        value = drive_by_hand(reactor, probes.ready(reactor, i))
        echoed = drive_by_hand(reactor, probes.call_python(reactor, lambda: i))
    if (value, echoed) != (i, i):
        raise AssertionError(f"reactor {i}: got {(value, echoed)}")
    if reactor.running:
        raise AssertionError("the reactor was run")
    return weakref.ref(reactor)


result: dict = {"kind": kind, "count": count}
start = time.monotonic()
refs = [one_test(i) for i in range(WARM_UP)]
gc.collect()
rss_before = rss_kib()
threads_max = live_threads()
stats = None
for i in range(count):
    refs.append(one_test(WARM_UP + i))
    if i % 100 == 0:
        threads_max = max(threads_max, live_threads())
        gc.collect()
# One more round trip of the same kind: the waker thread serves reactors in order,
# so once it has woken this one it holds none of the earlier ones (it holds each
# strongly only while calling its callFromThread).
last = one_test(-1)
gc.collect()
result["seconds"] = round(time.monotonic() - start, 2)
result["threads_max"] = threads_max
result["threads_end"] = live_threads()
result["alive"] = sum(ref() is not None for ref in refs)
result["rss_growth_kib"] = rss_kib() - rss_before
reactor = ThreadedMemoryReactorClock()
reactor.get_success(probes.ready(reactor, 0))
result["pool_size"] = pyo3_twisted.stats(reactor)["worker_threads"]
result["gil_on_tokio"] = pyo3_twisted.stats(reactor)["gil_acquisitions_on_tokio_threads"]
emit(result)
