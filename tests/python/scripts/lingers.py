"""Sequential round trips on a real reactor: whose answers come later than the
linger (a 20 ms Tokio sleep, longer than the time slice a lingering reactor may
lose to another process on a busy machine), then at once (a ready future). How
often did the reactor linger for them?"""

from _common import emit, reactor

import pyo3_twisted
from pyo3_twisted import probes
from twisted.internet import defer

N = 64
pyo3_twisted.install(reactor, worker_threads=1)
out: dict = {}
KEYS = ("mailbox_lingers", "mailbox_lingers_skipped", "mailbox_wakeups", "tasks_completed")


def snapshot() -> dict:
    stats = pyo3_twisted.stats(reactor)
    return {key: stats[key] for key in KEYS}


def since(before: dict) -> dict:
    now = snapshot()
    return {key: now[key] - before[key] for key in KEYS}


async def main() -> None:
    try:
        before = snapshot()
        for i in range(N):
            assert await probes.sleep(reactor, 0.02, i) == i
        out["slow"] = since(before)
        before = snapshot()
        for i in range(N):
            assert await probes.ready(reactor, i) == i
        out["quick"] = since(before)
        out["wake_mode"] = pyo3_twisted.stats(reactor)["wake_mode"]
    finally:
        reactor.stop()


reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
reactor.run()
emit(out)
