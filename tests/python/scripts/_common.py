"""Shared by the real-reactor scripts: each runs in its own interpreter, installs the
reactor that $PYO3_TWISTED_TEST_REACTOR names (epoll by default, or asyncio), and
prints one JSON object as its last line."""

import json
import os
import sys

from pyo3_twisted.testing import install_reactor

REACTOR_NAME = install_reactor()

from twisted.internet import reactor  # noqa: E402
from twisted.logger import globalLogPublisher  # noqa: E402

LOGGED_ERRORS: list[str] = []


def _observer(event: dict) -> None:
    if event.get("log_failure") is not None or event.get("isError"):
        from twisted.logger import formatEvent

        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        LOGGED_ERRORS.append(text)


globalLogPublisher.addObserver(_observer)


def threads_named(name: str) -> int:
    """Live threads of this process whose name (as Linux shows it) is ``name``."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == name[:15]:
                    count += 1
        except FileNotFoundError:
            pass
    return count


def emit(result: dict) -> None:
    import gc

    gc.collect()  # flush "Unhandled error in Deferred"
    result["logged_errors"] = LOGGED_ERRORS
    result.setdefault("reactor_class", type(reactor).__name__)
    result["reactor_requested"] = REACTOR_NAME
    print(json.dumps(result))
    sys.stdout.flush()
