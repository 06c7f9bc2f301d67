"""Runtime lifecycle on the real epoll reactor.

usage: lifecycle.py MODE
  before_run    install and create a Deferred before reactor.run()
  when_running  install inside callWhenRunning (the reactor already runs)
  default       never install: the first create_deferred installs the default
"""

import sys

from _common import emit, reactor, threads_named

import pyo3_twisted
from pyo3_twisted import probes

mode = sys.argv[1]
NAME = "pt-lifecycle"
result: dict = {"mode": mode}


def check_running(d):
    def fired(value):
        result["value"] = value
        stats = pyo3_twisted.stats(reactor)
        result["state_running"] = stats["state"]
        result["wake_mode"] = stats["wake_mode"]
        result["threads_named_running"] = threads_named(NAME)
        result["worker_name"] = None
        d2 = probes.thread_name(reactor)
        d2.addCallback(lambda name: result.__setitem__("worker_name", name))
        d2.addBoth(lambda _: reactor.stop())

    d.addCallback(fired)
    d.addErrback(lambda f: (result.__setitem__("error", f.getTraceback()), reactor.stop()))


if mode == "before_run":
    pyo3_twisted.install(reactor, worker_threads=3, thread_name=NAME, tokio="per_reactor")
    # Installing starts nothing; the first bridged call starts the runtime.
    result["state_at_install"] = pyo3_twisted.stats(reactor)["state"]
    result["threads_named_at_install"] = threads_named(NAME)
    d = probes.ready(reactor, "early")
    result["state_before_run"] = pyo3_twisted.stats(reactor)["state"]
    result["threads_named_before_run"] = threads_named(NAME)
    result["called_before_run"] = d.called
    check_running(d)
elif mode == "when_running":

    def start():
        pyo3_twisted.install(reactor, worker_threads=3, thread_name=NAME, tokio="per_reactor")
        result["state_at_install"] = pyo3_twisted.stats(reactor)["state"]
        check_running(probes.ready(reactor, "late"))

    reactor.callWhenRunning(start)
elif mode == "default":
    NAME = "pyo3-twisted"
    reactor.callWhenRunning(lambda: check_running(probes.ready(reactor, "default")))
else:
    raise SystemExit(f"unknown mode {mode}")

reactor.run()
stats = pyo3_twisted.stats(reactor)
result["state_after"] = stats["state"]
result["worker_threads"] = stats["worker_threads"]
result["tokio_threads_live_after"] = stats["tokio_threads_live"]
result["gil_on_tokio"] = stats["gil_acquisitions_on_tokio_threads"]
emit(result)
