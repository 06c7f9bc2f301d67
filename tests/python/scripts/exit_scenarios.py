"""Leave the interpreter with bridged work in flight; the exit status must be the
process's own (never SIGABRT, never a hang). Some in-flight futures take the GIL
from their Tokio worker in a loop, which is what aborts other bridges when CPython
finalizes (gh-87135).

usage: exit_scenarios.py stopped | sys_exit | never_run | never_started [per_reactor | process]

The second argument picks the Tokio runtime: the reactor's own (default) or the
process-wide pool, which is never dropped (our tasks are stopped one by one).
"""

import sys

from pyo3_twisted.testing import install_reactor

install_reactor()
from twisted.internet import reactor  # noqa: E402

import pyo3_twisted  # noqa: E402
from pyo3_twisted import probes  # noqa: E402

mode = sys.argv[1]
TOKIO = sys.argv[2] if len(sys.argv) > 2 else "per_reactor"


def in_flight() -> None:
    for _ in range(50):
        probes.touch_python(reactor, 3600.0).addErrback(lambda f: None)
        probes.sleep(reactor, 3600.0, None).addErrback(lambda f: None)


if mode == "stopped":
    # Normal stop with work in flight: the shutdown trigger aborts it.
    pyo3_twisted.install(reactor, worker_threads=1, shutdown_timeout=0.05, tokio=TOKIO)
    reactor.callWhenRunning(in_flight)
    reactor.callLater(0.1, reactor.stop)
    reactor.run()
    sys.exit(0)
elif mode == "sys_exit":
    # sys.exit from a callback, the Twisted way: task.react turns the main
    # Deferred's SystemExit into the process's exit status, stopping the reactor
    # (with work still in flight) on the way.
    from twisted.internet import task

    pyo3_twisted.install(reactor, worker_threads=1, shutdown_timeout=0.05, tokio=TOKIO)

    def main(reactor):
        in_flight()

        def leave(_):
            sys.exit(3)

        return probes.ready(reactor, None).addCallback(leave)

    task.react(main)
elif mode == "never_run":
    # Work submitted, reactor never run: the runtime never starts.
    pyo3_twisted.install(reactor, worker_threads=1, tokio=TOKIO)
    in_flight()
    sys.exit(0)
elif mode == "never_started":
    # A started runtime on a reactor that is never stopped, running work, while
    # the interpreter exits (a memory reactor's runtime starts at once).
    from pyo3_twisted.testing import ThreadedMemoryReactorClock

    memory = ThreadedMemoryReactorClock()
    memory.run()  # the runtime starts; the reactor is never shut down
    pyo3_twisted.install(memory, worker_threads=2, tokio=TOKIO)
    for _ in range(50):
        probes.touch_python(memory, 3600.0)
    sys.exit(0)
else:
    raise SystemExit(f"unknown mode {mode}")
