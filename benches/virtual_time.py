"""Real time spent on virtual time: a Rust task sleeps an hour on the harness's
memory reactor (`pyo3_twisted::time::sleep`), and the test advances the reactor an
hour. Prints the real milliseconds per run, for benches/README.md.

    python benches/virtual_time.py [RUNS]
"""

import sys
import time

import pyo3_twisted
from pyo3_twisted import probes
from pyo3_twisted.testing import memory_reactor


def one_hour() -> float:
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor")
        started = time.perf_counter()
        d = probes.clock_sleep(reactor, 3600.0)
        reactor.pump_until(lambda: pyo3_twisted.stats(reactor)["timers_pending"] == 1)
        reactor.advance(3600)
        woke_at = reactor.get_success(d)
        elapsed = time.perf_counter() - started
    assert woke_at == 3600.0, woke_at
    return elapsed * 1000


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    figures = [one_hour() for _ in range(runs)]
    print("an hour of reactor time took " + ", ".join(f"{ms:.2f}" for ms in figures) + " ms of real time")
