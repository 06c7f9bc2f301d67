"""Fork and the runtime, on the real epoll reactor.

usage: fork.py before_run | after_start

before_run:  install, create a Deferred, fork; the child runs the reactor and its
             runtime starts there (the parent exits without running).
after_start: run the reactor, start the runtime, then fork; the child's first
             create_deferred must fail with a clear error, not hang.
"""

import os
import sys

from _common import emit, reactor

import pyo3_twisted
from pyo3_twisted import probes

mode = sys.argv[1]
result: dict = {"mode": mode}
pyo3_twisted.install(reactor, worker_threads=1)

if mode == "before_run":
    d = probes.ready(reactor, "queued before the fork")
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    d.addCallback(lambda v: result.__setitem__("value", v))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    result["stats_state"] = pyo3_twisted.stats(reactor)["state"]
    emit(result)
    sys.stdout.flush()
    os._exit(0)
else:

    def after_start():
        result["parent_value"] = None

        def forked(value):
            result["parent_value"] = value
            pid = os.fork()
            if pid == 0:
                try:
                    probes.ready(reactor, 1)
                    result["child"] = "no error"
                except RuntimeError as e:
                    result["child"] = str(e)
                emit(result)
                sys.stdout.flush()
                os._exit(0)
            os.waitpid(pid, 0)
            reactor.stop()

        probes.ready(reactor, "parent works").addCallback(forked)

    reactor.callWhenRunning(after_start)
    reactor.run()
