"""One benchmark case per process: `python benches/cases.py CASE JSON_PARAMS`.

Prints one JSON object: {"us": [µs per operation, one per repetition], ...}.
Twisted cases run on the real epoll reactor (or Twisted's asyncio reactor) (it runs once per process, hence one
process per case); asyncio cases on asyncio's default loop.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from typing import Any, Callable

PARAMS: dict = {}


def emit(**result: Any) -> None:
    print(json.dumps(result), flush=True)


# -- Twisted drivers -----------------------------------------------------------------


def twisted_main(
    body: Callable[[Any], Any], runtime: dict | None = None, hard_exit: bool = False, reactor_name: str = "epoll"
) -> None:
    """Install the reactor (epoll, or Twisted's asyncio reactor), optionally our runtime, run `body(reactor)` (a coroutine
    function) inside the reactor, emit its result, stop.

    `hard_exit`: leave with os._exit once the result is out. The naive bridge needs
    it: its Tokio threads take the GIL, and one doing so while CPython finalizes
    aborts the process ("Fatal Python error: PyGILState_Release ... finalizing",
    CPython gh-87135) — the failure mode pyo3-twisted is designed to avoid."""
    from pyo3_twisted.testing import install_reactor

    install_reactor(reactor_name)
    from twisted.internet import defer, reactor

    if runtime is not None:
        import pyo3_twisted

        pyo3_twisted.install(reactor, **runtime)
    outcome: dict = {}

    async def main() -> None:
        try:
            outcome.update(await body(reactor))
        except BaseException as e:  # reported, not swallowed
            import traceback

            outcome["error"] = "".join(traceback.format_exception(e))
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
    reactor.run()
    if "error" in outcome:
        print(outcome["error"], file=sys.stderr)
        sys.exit(1)
    emit(**outcome)
    if hard_exit:
        os._exit(0)


def concurrent(reactor: Any, make: Callable[[int], Any], n: int, after: Callable | None = None) -> Any:
    """µs per completion: create n Deferreds at once, count completions with a plain
    callback (not gatherResults, whose DeferredList costs more than the bridge)."""
    from twisted.internet import defer

    done = defer.Deferred()
    left = [n]

    def count(_: Any) -> None:
        left[0] -= 1
        if left[0] == 0:
            done.callback(None)

    start = time.perf_counter()
    for i in range(n):
        d = make(i)
        d.addCallback(count)
        if after is not None:
            d.addBoth(after)
    return done, start


async def measure_concurrent(reactor: Any, make: Callable, n: int, reps: int, after: Callable | None = None) -> list[float]:
    await run_concurrent(reactor, make, min(n, 2000), after)  # warm up
    out = []
    for _ in range(reps):
        gc.collect()
        out.append(await run_concurrent(reactor, make, n, after))
    return out


async def run_concurrent(reactor: Any, make: Callable, n: int, after: Callable | None = None) -> float:
    done, start = concurrent(reactor, make, n, after)
    await done
    return (time.perf_counter() - start) / n * 1e6


async def measure_sequential(
    reactor: Any,
    make: Callable,
    m: int,
    reps: int,
    warm: bool = True,
    cpu: list[float] | None = None,
    clock: Callable[[], float] = time.process_time,
) -> list[float]:
    """µs of wall time per operation, m sequential operations per repetition; with
    `cpu`, the CPU time per operation by `clock` (the process's by default: every
    thread, the reactor, the database pool's, Tokio's) is appended to it for each
    repetition."""

    async def once(count: int, record: bool = False) -> float:
        start, start_cpu = time.perf_counter(), clock()
        for i in range(count):
            await make(i)
        wall = (time.perf_counter() - start) / count * 1e6
        if record and cpu is not None:
            cpu.append((clock() - start_cpu) / count * 1e6)
        return wall

    if warm:
        await once(min(m, 200))
    out = []
    for _ in range(reps):
        gc.collect()
        out.append(await once(m, record=True))
    return out


def others_cpu_time() -> float:
    """Seconds of CPU time run so far by every thread of this process but the
    calling one (the kernel's `schedstat`, in nanoseconds)."""
    me = str(threading.get_native_id())
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # the thread has just ended
            continue
    return total / 1e9


async def measure_rotating(
    reactor: Any,
    makes: list[Callable],
    m: int,
    rounds: int,
    cpu: list[list[float]] | None = None,
    clock: Callable[[], float] = time.process_time,
) -> list[list[float]]:
    """Several sides in one process, each warmed up, then `rounds` batches of m
    sequential operations per side, the order rotating each round: the ratio of
    batch i of one side to batch i of another is free of what moves between
    processes and over time. µs per operation, one list per side; with `cpu` (a
    list per side), the CPU µs per operation of each batch by `clock` too."""
    for make in makes:
        await measure_sequential(reactor, make, min(m, 200), 0)
    out: list[list[float]] = [[] for _ in makes]
    for round_ in range(rounds):
        k = round_ % len(makes)
        for i in list(range(k, len(makes))) + list(range(k)):
            side_cpu = cpu[i] if cpu is not None else None
            out[i] += await measure_sequential(reactor, makes[i], m, 1, warm=False, cpu=side_cpu, clock=clock)
    return out


async def measure_batches(reactor: Any, make: Callable, c: int, total: int, reps: int) -> list[float]:
    """µs per completion with c in flight: batches of c until `total` completed."""
    if c == 1:
        return await measure_sequential(reactor, make, total, reps)
    batches = max(1, total // c)
    await run_concurrent(reactor, make, min(c, 2000))
    out = []
    for _ in range(reps):
        gc.collect()
        start = time.perf_counter()
        for _ in range(batches):
            done, _t = concurrent(reactor, make, c)
            await done
        out.append((time.perf_counter() - start) / (batches * c) * 1e6)
    return out


# -- makers ------------------------------------------------------------------------


def maker(strategy: str, reactor: Any) -> Callable[[int], Any]:
    from twisted.internet import threads

    if strategy == "defer_to_thread":
        return lambda i: threads.deferToThread(int, i)
    if strategy == "naive":
        from pyo3_twisted_bench_peers import naive_ready

        return lambda i: naive_ready(reactor, i)
    if strategy == "ours":
        from pyo3_twisted import probes

        return lambda i: probes.ready(reactor, i)
    raise ValueError(strategy)


def floor_us(n: int) -> float:
    """Create a Deferred, add a callback, fire it: plain Python."""
    from twisted.internet import defer

    sink = [0]

    def count(_: Any) -> None:
        sink[0] += 1

    start = time.perf_counter()
    for i in range(n):
        d = defer.Deferred()
        d.addCallback(count)
        d.callback(i)
    return (time.perf_counter() - start) / n * 1e6


# -- cases -------------------------------------------------------------------------


def floor_lc_us(n: int) -> float:
    """The floor, inside a request's logging context with the same dance the bridge
    row does: enter the context, create the Deferred, make_deferred_yieldable (back
    to the sentinel), fire it (the context is restored for the callbacks), reset."""
    from twisted.internet import defer

    from pyo3_twisted import logcontext as lc

    context = lc.LoggingContext("bench")
    sink = [0]

    def count(_: Any) -> None:
        sink[0] += 1

    def reset(result: Any) -> Any:
        lc.set_current_context(lc.SENTINEL_CONTEXT)
        return result

    start = time.perf_counter()
    for i in range(n):
        lc.set_current_context(context)
        d = lc.make_deferred_yieldable(defer.Deferred())
        d.addCallback(count)
        d.addBoth(reset)
        d.callback(i)
    return (time.perf_counter() - start) / n * 1e6


def case_deferred_floor(p: dict) -> None:
    measure = floor_lc_us if p.get("logcontext") else floor_us
    measure(2000)
    us = []
    for _ in range(p["reps"]):
        gc.collect()
        us.append(measure(p["n"]))
    emit(us=us)


def case_pingpong(p: dict) -> None:
    """A Python thread calls into the reactor with callFromThread and waits for the
    reactor to answer: one round trip per operation."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    answered = threading.Event()
    us: list[float] = []

    def thread_main() -> None:
        for rep in range(p["reps"] + 1):
            count = 200 if rep == 0 else p["m"]
            start = time.perf_counter()
            for _ in range(count):
                answered.clear()
                reactor.callFromThread(answered.set)
                answered.wait()
            if rep:
                us.append((time.perf_counter() - start) / count * 1e6)
        reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(lambda: threading.Thread(target=thread_main).start())
    reactor.run()
    emit(us=us)


def case_twisted(p: dict) -> None:
    """A bridge strategy on Twisted: concurrent (n at once), sequential (m in a row),
    or batches of c for the throughput curve."""
    runtime = None
    if p["strategy"] == "ours":
        runtime = {}  # the default configuration
        if p.get("tokio"):
            runtime["tokio"] = p["tokio"]
        if "reactor_polls" in p:
            runtime["reactor_polls"] = p["reactor_polls"]
        if "metrics" in p:
            runtime["metrics"] = p["metrics"]
        if p.get("logcontext") or p.get("provider_only"):
            runtime["logcontext"] = "pyo3_twisted.logcontext"

    async def body(reactor: Any) -> dict:
        make = maker(p["strategy"], reactor)
        after = None
        # provider_only: the provider is configured but the caller is in the
        # sentinel, so only the bridge's own logcontext work is measured.
        if p.get("logcontext"):
            from pyo3_twisted import logcontext as lc

            inner = make
            context = lc.LoggingContext("bench")

            def make(i: int) -> Any:  # noqa: F811 - created inside a request's context
                # As a request handler does: run in its context, create the
                # Deferred, which (make_deferred_yieldable) hands the reactor back
                # the sentinel and restores `context` when it fires.
                lc.set_current_context(context)
                return inner(i)

            # What an awaiting coroutine does when it is done: back to the sentinel.
            def after(result: Any) -> Any:
                lc.set_current_context(lc.SENTINEL_CONTEXT)
                return result

        if p["mode"] == "concurrent":
            return {"us": await measure_concurrent(reactor, make, p["n"], p["reps"], after)}
        if p["mode"] == "sequential":
            return {"us": await measure_sequential(reactor, make, p["m"], p["reps"])}
        return {"us": await measure_batches(reactor, make, p["c"], p["total"], p["reps"])}

    twisted_main(body, runtime, hard_exit=p["strategy"] == "naive", reactor_name=p.get("reactor", "epoll"))


def case_asyncio(p: dict) -> None:
    """pyo3-async-runtimes: a Rust future through future_into_py, awaited on asyncio."""
    import asyncio

    from pyo3_twisted_bench_peers import asyncio_ready

    async def run_batch(c: int) -> float:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        left = [c]

        def count(_: Any) -> None:
            left[0] -= 1
            if left[0] == 0:
                done.set_result(None)

        start = time.perf_counter()
        for i in range(c):
            asyncio.ensure_future(asyncio_ready(i)).add_done_callback(count)
        await done
        return (time.perf_counter() - start) / c * 1e6

    async def sequential(m: int) -> float:
        start = time.perf_counter()
        for i in range(m):
            await asyncio_ready(i)
        return (time.perf_counter() - start) / m * 1e6

    async def main() -> list[float]:
        mode = p["mode"]
        c = p.get("c", p.get("n", 1))
        if mode == "sequential" or (mode == "batches" and c == 1):
            m = p.get("m", p.get("total"))
            await sequential(200)
            return [await sequential(m) for _ in range(p["reps"])]
        total = p.get("total", c)
        await run_batch(min(c, 2000))
        out = []
        for _ in range(p["reps"]):
            gc.collect()
            batches = max(1, total // c)
            out.append(sum([await run_batch(c) for _ in range(batches)]) / batches)
        return out

    emit(us=asyncio.run(main()))
    # Like the naive bridge, pyo3-async-runtimes takes the GIL on Tokio threads, and
    # can abort the process if one does so while CPython finalizes.
    os._exit(0)


def case_awaitable(p: dict) -> None:
    """run_python_awaitable from Tokio: n concurrent round trips (children of one
    bridged future), or m one after the other."""
    runtime = {}

    async def body(reactor: Any) -> dict:
        from pyo3_twisted import probes

        def factory(i: int) -> int:
            return i

        async def once() -> float:
            start = time.perf_counter()
            if p["mode"] == "concurrent":
                await probes.call_python_many(reactor, p["n"], factory)
                return (time.perf_counter() - start) / p["n"] * 1e6
            await probes.call_python_sequentially(reactor, p["m"], factory)
            return (time.perf_counter() - start) / p["m"] * 1e6

        await probes.call_python_many(reactor, 1000, factory)
        us = []
        for _ in range(p["reps"]):
            gc.collect()
            us.append(await once())
        import pyo3_twisted

        return {"us": us, "gil_on_tokio": pyo3_twisted.stats(reactor)["gil_acquisitions_on_tokio_threads"]}

    twisted_main(body, runtime)


def case_interaction_sqlite(p: dict) -> None:
    """A one-row SELECT through the Python pool on SQLite: from Rust
    (run_interaction via runInteraction; in a Deferred, with "coroutine" in a
    create_coroutine coroutine, or with "interaction" through
    run_interaction_coroutine) vs from Python (runInteraction)."""

    async def body(reactor: Any) -> dict:
        from pyo3_twisted.database import DatabasePool
        from pyo3_twisted.probes import RustStore

        database = os.environ["PYO3_TWISTED_TEST_PG_DSN"] if p.get("database") == "postgresql" else ":memory:"
        pool = DatabasePool(reactor, database)
        store = RustStore.python(pool, reactor)

        def select(txn: Any) -> Any:
            txn.execute("SELECT 1")
            return txn.fetchall()

        from twisted.internet import defer

        if p.get("interaction"):
            # run_interaction_coroutine: the transaction and its answer, no Rust future.
            rust = lambda i: defer.ensureDeferred(store.query_interaction("SELECT 1", []))  # noqa: E731
        elif p.get("coroutine"):
            # create_coroutine, driven as Python drives runInteraction's coroutine.
            rust = lambda i: defer.ensureDeferred(store.query_coroutine(reactor, "SELECT 1", []))  # noqa: E731
        else:
            rust = lambda i: store.query(reactor, "SELECT 1", [])  # noqa: E731
        python = lambda i: defer.ensureDeferred(pool.runInteraction("select", select))  # noqa: E731
        if p["side"] == "paired":
            # Both in this process, batch by batch in alternating order: the ratio
            # of each pair is free of what moves between processes and over time.
            rust_us, python_us = await measure_rotating(reactor, [rust, python], p["m"], p["reps"] * p.get("pairs", 5))
            pool.close()
            return {
                "us": rust_us,
                "paired_python_us": python_us,
                "paired_ratio": [r / q for r, q in zip(rust_us, python_us)],
            }
        make = rust if p["side"] == "rust" else python
        us = await measure_sequential(reactor, make, p["m"], p["reps"])
        pool.close()
        return {"us": us}

    twisted_main(body, {"reactor_polls": True} if p.get("reactor_polls") else {})


def case_handler_paired(p: dict) -> None:
    """The demo's /versions handler without HTTP, each request in a logging context of
    its own (the pyo3_twisted.logcontext provider), on SQLite (or, with
    `"database": "postgresql"`, the test server through the Python pool), five ways in one
    process, batch by batch in rotating order: the Rust handler (a Deferred, polled
    on the reactor with reactor_polls), the same Rust handler as a coroutine
    (create_coroutine) and through run_interaction_coroutine (no Rust future),
    its Python twin awaited as a coroutine, and
    the same Python twin behind the boundary every Rust handler has: a Deferred
    returned under the logcontext rules (run_in_background, then
    make_deferred_yieldable), which is what the caller of any Deferred-returning
    function pays."""

    async def body(reactor: Any) -> dict:
        import tempfile

        from pyo3_twisted import logcontext as lc
        from pyo3_twisted.database import DatabasePool
        from pyo3_twisted_demo import _native
        from pyo3_twisted_demo._native import VersionsHandler
        from pyo3_twisted_demo.app import create_schema, known_features, python_versions

        _native.install(
            reactor,
            **{"logcontext": "pyo3_twisted.logcontext", "reactor_polls": p.get("reactor_polls", True), **p.get("install", {})},
        )
        if p.get("database") == "postgresql":
            database = os.environ["PYO3_TWISTED_TEST_PG_DSN"]
        else:
            database = os.path.join(tempfile.mkdtemp(prefix="pyo3-twisted-bench-"), "demo.sqlite3")
        pool = DatabasePool(reactor, database, logcontext=lc)
        await pool.runInteraction("create_schema", create_schema)
        user = "@alice:example.org"
        # Both handlers answer the same flags: the demo's four and `extra_features`
        # more, set for nobody (Synapse's /versions answers ~40).
        known = known_features(p.get("extra_features", 0))

        def rust_side(**kind: bool) -> Callable[[], Any]:
            handler = VersionsHandler(pool, reactor, known, 0, **kind)

            async def side() -> Any:
                return await handler.handle(reactor, user)

            return side

        async def python() -> Any:
            return await python_versions(pool, user, known)

        async def python_deferred() -> Any:
            return await lc.make_deferred_yieldable(lc.run_in_background(python_versions, pool, user, known))

        # Every side there is; `python_control` is the twin again: its ratio to the
        # twin shows what the method reads for two equal sides. The batches rotate
        # through the chosen ones in the order chosen, and the first is the row's
        # "us".
        every = {
            "rust": rust_side(),
            "python": python,
            "python_deferred": python_deferred,
            "rust_coroutine": rust_side(coroutine=True),
            "rust_interaction": rust_side(interaction=True),
            "python_control": python,
        }
        chosen = p.get("sides", ["rust", "python", "python_deferred", "rust_coroutine", "rust_interaction"])
        sides = {name: every[name] for name in chosen}

        def request(handle: Callable) -> Callable[[int], Any]:
            def make(i: int) -> Any:
                context = lc.LoggingContext(name=f"GET-{i}")
                with lc.PreserveLoggingContext(context):
                    return lc.run_in_background(handle)

            return make

        if "side" in p:
            # One side alone, for an instruction count (benches/handler_instructions.py).
            make = request(every[p["side"]])
            us = await measure_sequential(reactor, make, p["m"], p["reps"])
            pool.close()
            return {"us": us}
        makes = [request(side) for side in sides.values()]
        answers = [await make(0) for make in makes]
        assert all(answer == answers[0] for answer in answers), answers
        cpu: list[list[float]] = [[] for _ in makes]
        # Whose CPU time: the process's (every thread), the reactor thread's alone,
        # or every other thread's (the pool's, Tokio's), to tell the shares apart.
        clock = {"process": time.process_time, "reactor": time.thread_time, "others": others_cpu_time}[
            p.get("cpu_clock", "process")
        ]
        wall = await measure_rotating(reactor, makes, p["m"], p["reps"] * p.get("pairs", 5), cpu, clock)
        pool.close()
        wall_by = dict(zip(sides, wall))
        cpu_by = dict(zip(sides, cpu))
        # How many flags every side answered (they answered alike: checked above).
        out: dict[str, Any] = {"us": wall[0], "flags": len(answers[0]["unstable_features"])}
        for name in sides:
            out[f"paired_{name}_us"] = wall_by[name]
            # CPU per request by `clock`, batch by batch: with the process's
            # clock, the goal's "no more CPU per request" without HTTP's share.
            out[f"paired_cpu_{name}_us"] = cpu_by[name]
        # Key suffix: (side, the side it is divided by).
        ratios = {
            "": ("rust", "python"),
            "_deferred": ("rust", "python_deferred"),
            "_coroutine": ("rust_coroutine", "python"),
            "_interaction": ("rust_interaction", "python"),
            "_control": ("python_control", "python"),
        }
        for suffix, (num, den) in ratios.items():
            if num in sides and den in sides:
                out[f"paired_ratio{suffix}"] = [r / q for r, q in zip(wall_by[num], wall_by[den])]
                out[f"paired_cpu_ratio{suffix}"] = [r / q for r, q in zip(cpu_by[num], cpu_by[den])]
        return out

    twisted_main(body)


def pg_bench_dsn(server: str) -> str:
    """The servers `make postgres` starts: the plain one, the one with ssl=on (TLS
    required for tls_user, certificate unchecked: sslmode=require), and PgBouncer in
    transaction mode in front of the plain one."""
    if server == "direct":
        return os.environ["PYO3_TWISTED_TEST_PG_DSN"]
    if server == "tls":
        port = os.environ["PYO3_TWISTED_TEST_PG_TLS_PORT"]
        return f"postgresql://tls_user:tls-secret-1@127.0.0.1:{port}/pyo3_twisted_test?sslmode=require"
    if server == "bouncer":
        port = os.environ["PYO3_TWISTED_TEST_PGBOUNCER_PORT"]
        return f"postgresql://postgres@127.0.0.1:{port}/pyo3_twisted_test?sslmode=disable"
    raise ValueError(f"unknown server {server!r}")


def case_pg_throughput(p: dict) -> None:
    """1,000 small transactions at concurrency 8 on PostgreSQL: the native pool vs
    the Python pool (through run_interaction): µs per transaction."""

    async def body(reactor: Any) -> dict:
        from twisted.internet import defer

        from pyo3_twisted.database import DatabasePool
        from pyo3_twisted.probes import RustStore

        dsn = pg_bench_dsn(p.get("server", "direct"))
        pool = None
        if p["pool"] == "native":
            store = RustStore.postgres(dsn, max_size=8, statement_cache=p.get("statement_cache", True))
        else:
            pool = DatabasePool(reactor, dsn, max_connections=8)
            store = RustStore.python(pool, reactor)

        async def run(total: int) -> float:
            done = defer.Deferred()
            state = {"started": 0, "finished": 0}

            def launch() -> None:
                state["started"] += 1
                store.query(reactor, "SELECT 1", []).addBoth(finished)

            def finished(_: Any) -> None:
                state["finished"] += 1
                if state["started"] < total:
                    launch()
                elif state["finished"] == total:
                    done.callback(None)

            start = time.perf_counter()
            for _ in range(min(8, total)):
                launch()
            await done
            return (time.perf_counter() - start) / total * 1e6

        await run(100)
        us = [await run(p["total"]) for _ in range(p["reps"])]
        if pool is not None:
            pool.close()
        return {"us": us}

    twisted_main(body, {"reactor_polls": True} if p.get("reactor_polls") else {})


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def case_memory(p: dict) -> None:
    """Resident memory per in-flight bridged future (Deferred, registry entry, Tokio
    task and wrappers; the user's future is a sleep), and per bare Deferred."""

    async def body(reactor: Any) -> dict:
        from twisted.internet import defer

        from pyo3_twisted import probes

        n = p["n"]
        warm = [probes.sleep(reactor, 3600.0, None) for _ in range(1000)]
        for d in warm:
            d.cancel()
            d.addErrback(lambda f: None)
        del warm
        gc.collect()
        before = rss_bytes()
        bare = [defer.Deferred() for _ in range(n)]
        gc.collect()
        per_deferred = (rss_bytes() - before) / n
        del bare
        gc.collect()
        before = rss_bytes()
        inflight = [probes.sleep(reactor, 3600.0, None) for _ in range(n)]
        gc.collect()
        per_task = (rss_bytes() - before) / n
        for d in inflight:
            d.cancel()
            d.addErrback(lambda f: None)
        return {"bytes_per_inflight": per_task, "bytes_per_bare_deferred": per_deferred}

    twisted_main(body, {"shutdown_timeout": 0.1})


def case_cpu_accounting(p: dict) -> None:
    """µs per poll of a future polled p["n"] times inside a request's context, with
    Rust CPU accounting on or off."""

    async def body(reactor: Any) -> dict:
        from pyo3_twisted import logcontext as lc
        from pyo3_twisted import probes

        context = lc.LoggingContext("bench")

        async def once(n: int) -> float:
            with lc.PreserveLoggingContext(context):
                d = probes.yield_many(reactor, n)
            start = time.perf_counter()
            await d
            lc.set_current_context(lc.SENTINEL_CONTEXT)
            return (time.perf_counter() - start) / n * 1e6

        await once(10_000)
        return {"us": [await once(p["n"]) for _ in range(p["reps"])]}

    twisted_main(
        body,
        {"logcontext": "pyo3_twisted.logcontext", "track_cpu_time": p["track"]},
    )


class _SynapseishHomeServer:
    """The parts of Synapse's HomeServer that its RustHandlers (and ours) read."""

    def __init__(self, reactor: Any, runtime_class: Any, workers: int) -> None:
        from types import SimpleNamespace

        class Pool:  # weakly referenced by both wrappers; /versions without a user never queries it
            pass

        self._reactor = reactor
        self._pool = Pool()
        self._runtime_class = runtime_class
        self._workers = workers
        self._runtime: Any = None
        self.shutdown_handlers: list = []
        flags = (
            "msc3026_enabled msc3773_enabled msc2815_enabled msc3881_enabled msc3874_enabled "
            "msc3912_enabled msc3391_enabled msc4069_profile_inhibit_propagation "
            "msc4028_push_encrypted_events msc4108_enabled msc3575_enabled msc4133_enabled "
            "msc4155_enabled msc4306_enabled msc4169_enabled msc4354_enabled msc4222_enabled "
            "msc4491_enabled msc4143_enabled msc4446_enabled msc4502_enabled"
        ).split()
        experimental = SimpleNamespace(**{f: False for f in flags}, msc4108_delegation_endpoint=None)
        self.config = SimpleNamespace(
            room=SimpleNamespace(encryption_enabled_by_default_for_room_presets=set()),
            auth=SimpleNamespace(login_via_existing_enabled=False),
            server=SimpleNamespace(
                msc4140_enabled=False, public_baseurl="https://test/", include_profile_updates_in_sync=False
            ),
            experimental=experimental,
        )

    def get_reactor(self) -> Any:
        return self._reactor

    def get_clock(self) -> Any:
        return self._reactor

    def get_datastores(self) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(main=SimpleNamespace(db_pool=self._pool))

    def get_rust_runtime(self) -> Any:
        if self._runtime is None:
            self._runtime = self._runtime_class(hs=self, worker_threads=self._workers)
        return self._runtime

    def register_sync_shutdown_handler(self, *, phase: str, eventType: str, shutdown_func: Any, **kw: Any) -> None:
        self.shutdown_handlers.append(shutdown_func)

    def shutdown(self) -> None:
        for func in self.shutdown_handlers:
            func()


def case_synapse_versions(p: dict) -> None:
    """`/versions` (no user: no database) through a Synapse-shaped handler: Synapse
    1.163.2's own RustHandlers from the installed wheel (its own bridge), or the same
    handler written on pyo3_twisted::synapse (tests/synapse_shaped, built into the
    test extension). Both with Synapse's logcontext and 4 Tokio workers."""

    async def body(reactor: Any) -> dict:
        if p["impl"] == "synapse":
            from synapse.synapse_rust.handlers import RustHandlers
            from synapse.synapse_rust.runtime import RustRuntime
        else:
            from pyo3_twisted_test_ext.synapse_shaped import RustHandlers
            from pyo3_twisted_test_ext.synapse_shaped.runtime import RustRuntime
        hs = _SynapseishHomeServer(reactor, RustRuntime, p.get("workers", 4))
        versions = RustHandlers(hs).versions
        body = await versions.get_versions()
        assert "v1.15" in body["versions"] and len(body["unstable_features"]) >= 40, body
        make = lambda i: versions.get_versions()  # noqa: E731
        try:
            if p["mode"] == "concurrent":
                return {"us": await measure_concurrent(reactor, make, p["n"], p["reps"])}
            return {"us": await measure_sequential(reactor, make, p["m"], p["reps"])}
        finally:
            hs.shutdown()

    twisted_main(body)


def case_sleep_accuracy(p: dict) -> None:
    """`n` sleeps of 10 ms in a row inside one bridged task on the epoll reactor,
    through `pyo3_twisted::time::sleep` (Tokio's timers there) or
    `tokio::time::sleep`: per repetition, the median overshoot past 10 ms (µs of
    real time), or the process CPU time per sleep (µs)."""
    import statistics

    from pyo3_twisted import probes

    async def body(reactor: Any) -> dict:
        us = []
        for _ in range(p["reps"]):
            cpu = time.process_time()
            overshoots = await probes.sleep_overshoots(reactor, p["n"], 10, p["clock"] == "crate")
            cpu = time.process_time() - cpu
            if p["measure"] == "overshoot":
                us.append(statistics.median(overshoots))
            else:
                us.append(cpu * 1e6 / p["n"])
        return {"us": us}

    twisted_main(body, runtime={"worker_threads": 2})


CASES = {name[len("case_") :]: f for name, f in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    name, params = sys.argv[1], json.loads(sys.argv[2])
    CASES[name](params)
