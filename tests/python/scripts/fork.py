"""Fork and the runtime.

usage: fork.py before_run | after_start | memory RUNS

before_run:  on the real reactor, not yet running: install, create a Deferred (which
             starts the runtime), fork; the child runs the reactor: the pre-fork work
             fails there with an error naming the fork, new work succeeds. The parent
             exits without running (a daemonizing server).
after_start: run the real reactor, start the runtime, then fork from a callback; the
             child shares the running reactor's epoll set with its parent, so its first
             create_deferred fails with a clear error, and the parent goes on working.
memory RUNS: on a memory reactor that is never run: start the runtime, leave a task in
             flight, fork RUNS times. Each child fails the in-flight work with an
             error naming the fork, then uses the bridge on the same reactor and on a
             new one; the parent keeps working after each child.
"""

import os
import sys

from _common import emit, reactor

import pyo3_twisted
from pyo3_twisted import RuntimeShutdown, probes
from pyo3_twisted.testing import ThreadedMemoryReactorClock

mode = sys.argv[1]
result: dict = {"mode": mode}


def child_exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if mode == "before_run":
    pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")
    early = probes.ready(reactor, "queued before the fork")
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))

    def record_early(outcome):
        result["early"] = outcome if isinstance(outcome, str) else repr(outcome.value)

    early.addBoth(record_early)

    def in_child():
        d = probes.ready(reactor, "made in the child")
        d.addCallback(lambda v: result.__setitem__("value", v))
        d.addErrback(lambda f: result.__setitem__("value", repr(f.value)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(in_child)
    reactor.run()
    result["stats_state"] = pyo3_twisted.stats(reactor)["state"]
    emit(result)
    child_exit(0)
elif mode == "after_start":
    pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")

    def after_start():
        def forked(value):
            result["parent_value"] = value
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                try:
                    probes.ready(reactor, 1)
                    message = "no error"
                except RuntimeError as e:
                    message = str(e)
                os.write(write_end, message.encode())
                child_exit(0)
            os.close(write_end)
            os.waitpid(pid, 0)
            with os.fdopen(read_end, "rb") as f:
                result["child"] = f.read().decode()
            again = probes.ready(reactor, "parent still works")
            again.addCallback(lambda v: result.__setitem__("parent_after", v))
            again.addBoth(lambda _: reactor.stop())

        probes.ready(reactor, "parent works").addCallback(forked)

    reactor.callWhenRunning(after_start)
    reactor.run()
    emit(result)
else:
    runs = int(sys.argv[2])
    memory = ThreadedMemoryReactorClock()
    assert memory.get_success(probes.ready(memory, "parent")) == "parent"
    in_flight, dropped = probes.pending(memory)
    children_ok = 0
    failures: list[str] = []
    for run in range(runs):
        pid = os.fork()
        if pid == 0:
            problems = []
            # The child's first bridged call gives it a runtime of its own, and fails
            # what was in flight at the fork.
            d = probes.ready(memory, run)
            if not in_flight.called:
                problems.append("in-flight work did not fail at the child's first use")
            failure = memory.get_failure(in_flight, RuntimeShutdown)
            if "forked" not in str(failure.value):
                problems.append(f"in-flight work failed without naming the fork: {failure.value}")
            if memory.get_success(d) != run:
                problems.append("the inherited reactor's bridge gave a wrong value")
            fresh = ThreadedMemoryReactorClock()
            if fresh.get_success(probes.call_python(fresh, lambda: "fresh")) != "fresh":
                problems.append("a new reactor's bridge gave a wrong value")
            if problems:
                print("\n".join(problems), file=sys.stderr)
            child_exit(1 if problems else 0)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            children_ok += 1
        else:
            failures.append(f"child {run} exited with {code}")
        if memory.get_success(probes.ready(memory, run)) != run:
            failures.append(f"parent broke after child {run}")
    result["children_ok"] = children_ok
    result["failures"] = failures
    result["in_flight_still_pending"] = not in_flight.called
    in_flight.cancel()
    memory.get_failure(in_flight, Exception)
    result["dropped_after_cancel"] = dropped.wait(10.0)
    emit(result)
