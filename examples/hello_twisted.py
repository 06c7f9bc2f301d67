"""The smallest pyo3-twisted program: a running Twisted reactor awaits Rust futures.

Run it with `make demo` (which builds the extension first). It installs the runtime,
then, from inside the reactor, awaits a Rust future that sleeps on Tokio, one that
fails with a Python exception raised in Rust, and one that panics; prints what came
back and the runtime's counters; and stops the reactor, which shuts the runtime down.
"""

from twisted.internet import defer, task

import pyo3_twisted
from pyo3_twisted import probes


async def main(reactor) -> None:
    pyo3_twisted.install(reactor, worker_threads=2, shutdown_timeout=5.0)

    value = await probes.sleep(reactor, 0.05, "hello from Tokio")
    print(f"awaited a Rust future: {value!r}")

    total = await probes.spawn_children(reactor, 40, 2)
    print(f"two spawned Rust children added up to {total}")

    try:
        await probes.fail(reactor, "raised in Rust")
    except ValueError as e:
        print(f"a Rust error arrived as {type(e).__name__}({e})")

    try:
        await probes.panic(reactor, "a Rust panic")
    except pyo3_twisted.RustPanicError as e:
        print(f"a Rust panic arrived as RustPanicError({e}); the process goes on")

    many = await defer.gatherResults([probes.ready(reactor, i) for i in range(1000)])
    print(f"1000 concurrent futures came back in order: {many == list(range(1000))}")

    stats = pyo3_twisted.stats(reactor)
    print(
        "runtime: {tasks_spawned} tasks, {mailbox_jobs} results delivered in "
        "{mailbox_batches} batches after {mailbox_wakeups} reactor wake-ups "
        "({wake_mode} wake-ups, {worker_threads} Tokio workers)".format(**stats)
    )


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
