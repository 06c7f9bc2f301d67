import os
import subprocess
import sys
import json
from pathlib import Path

import pytest

from pyo3_twisted.testing import REACTOR_ENV, capture_logged_errors, install_reactor, memory_reactor

# With PYO3_TWISTED_TEST_REACTOR=asyncio the whole suite runs on Twisted's asyncio
# reactor: this process's global reactor, every real-reactor script and the demo.
# (Memory-reactor tests do not depend on the reactor class.)
if os.environ.get(REACTOR_ENV):
    install_reactor()

SCRIPTS = Path(__file__).parent / "scripts"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "allow_logged_errors: the test expects Twisted to log errors"
    )


@pytest.fixture(autouse=True)
def logged_errors(request):
    """Fails any test during which Twisted logged an error (including "Unhandled
    error in Deferred"), unless it is marked allow_logged_errors."""
    with capture_logged_errors() as errors:
        yield errors
    if not request.node.get_closest_marker("allow_logged_errors"):
        assert not errors, "Twisted logged errors:\n" + "\n".join(errors.texts())


@pytest.fixture(scope="session")
def pg_dsn():
    """The test PostgreSQL server that `make test` starts. Missing is a failure, not a
    skip: CI must exercise PostgreSQL."""
    dsn = os.environ.get("PYO3_TWISTED_TEST_PG_DSN")
    if not dsn:
        pytest.fail(
            "PYO3_TWISTED_TEST_PG_DSN is not set: run the tests with `make test`, which "
            "starts a PostgreSQL server (scripts/test-postgres.sh)"
        )
    return dsn


@pytest.fixture
def reactor():
    """A run ThreadedMemoryReactorClock, shut down after the test."""
    with memory_reactor() as r:
        yield r


@pytest.fixture
def unstarted_reactor():
    """A ThreadedMemoryReactorClock that has not run yet."""
    with memory_reactor(run=False) as r:
        yield r


def run_script(name: str, *args: str, timeout: float = 120.0) -> dict:
    """Runs tests/python/scripts/<name> on a real reactor in a fresh interpreter and
    returns the JSON object it prints last."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    assert proc.returncode == 0, (
        f"{name} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{name} printed no result\nstderr:\n{proc.stderr}"
    result = json.loads(lines[-1])
    # The script ran on the reactor it asked for: the one this run asks for, unless
    # the script needs asyncio's.
    requested = result["reactor_requested"]
    assert result["reactor_class"] == REACTOR_CLASSES[requested], result["reactor_class"]
    if os.environ.get(REACTOR_ENV) == "asyncio":
        assert requested == "asyncio"
    return result


REACTOR_CLASSES = {"epoll": "EPollReactor", "asyncio": "AsyncioSelectorReactor"}
