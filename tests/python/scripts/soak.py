"""Soak on the real epoll reactor: many create_deferred and run_python_awaitable
round trips in one process; memory and Python objects must come back to their
level after warm-up.

usage: soak.py DEFERREDS AWAITABLES
"""

import gc
import os
import sys

from twisted.internet import defer

from _common import emit, reactor

import pyo3_twisted
from pyo3_twisted import probes

DEFERREDS, AWAITABLES = int(sys.argv[1]), int(sys.argv[2])
BATCH = 10_000
pyo3_twisted.install(reactor)
result: dict = {}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def deferreds(n: int) -> None:
    for start in range(0, n, BATCH):
        done = defer.Deferred()
        left = [min(BATCH, n - start)]

        def count(_, left=left, done=done):
            left[0] -= 1
            if left[0] == 0:
                done.callback(None)

        for i in range(left[0]):
            probes.ready(reactor, i).addCallback(count)
        await done


async def awaitables(n: int) -> None:
    for start in range(0, n, BATCH):
        await probes.call_python_many(reactor, min(BATCH, n - start), int)


async def main() -> None:
    try:
        # Warm-up: allocator pools, Tokio's slabs, Python's free lists.
        await deferreds(DEFERREDS // 10)
        await awaitables(AWAITABLES // 10)
        gc.collect()
        rss_before, objects_before = rss_mb(), len(gc.get_objects())
        await deferreds(DEFERREDS)
        await awaitables(AWAITABLES)
        gc.collect()
        result.update(
            rss_growth_mb=rss_mb() - rss_before,
            objects_delta=len(gc.get_objects()) - objects_before,
            stats=pyo3_twisted.stats(reactor),
        )
    finally:
        reactor.stop()


reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
reactor.run()
emit(result)
