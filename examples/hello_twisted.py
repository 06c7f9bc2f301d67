"""The smallest pyo3-twisted program: a running Twisted reactor awaits Rust futures.

Run it with `make example` (which builds the extension modules first). The Rust
functions it awaits are the demo module's (`examples/demo/src/hello.rs`), a
downstream extension module with its own copy of the crate, so the runtime is
configured through that module. It installs the runtime; from inside the reactor it
awaits a Rust future that sleeps on Tokio, one that spawns children, one that fails
with a Python exception raised in Rust and one that panics; prints what came back
and the runtime's counters; and stops the reactor, which shuts the runtime down.
(Rust's default panic hook also prints the panic to stderr.)
"""

from typing import Any

from twisted.internet import defer, task

import pyo3_twisted_demo._native as rust


async def main(reactor: Any) -> None:
    rust.install(reactor, worker_threads=2, shutdown_timeout=5.0)

    print(await rust.greet(reactor, "Twisted", 0.05))

    total = await rust.sum_of_squares(reactor, 24)
    print(f"24 spawned Rust children added up to {total}")

    try:
        await rust.parse_port(reactor, "eighty")
    except ValueError as e:
        print(f"a Rust error arrived as {type(e).__name__}({e})")

    try:
        await rust.divide(reactor, 1, 0)
    except rust.RustPanicError as e:
        print(f"a Rust panic arrived as RustPanicError({e}); the process goes on")

    many = await defer.gatherResults([rust.divide(reactor, i * 7, 7) for i in range(1000)])
    print(f"1000 concurrent futures came back in order: {many == list(range(1000))}")

    stats = rust.stats(reactor)
    print(
        "runtime: {tasks_spawned} tasks, {mailbox_jobs} results delivered in "
        "{mailbox_batches} batches after {mailbox_wakeups} reactor wake-ups "
        "({wake_mode} wake-ups, {worker_threads} Tokio workers)".format(**stats)
    )


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
