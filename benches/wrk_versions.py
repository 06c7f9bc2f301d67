"""`make bench-http`: the demo's Rust `GET /versions` handler against the same handler
written in Python (`GET /versions_py`), end to end over HTTP, with wrk.

Both read the user's feature flags through the same Python pool and the same data,
and answer the same JSON. Each variant runs in a fresh demo process (the released
wheels, `--quiet`):

- `python`: the Python handler (runInteraction);
- `rust`: the Rust handler, default runtime (futures polled on Tokio);
- `rust_polls`: the Rust handler with `reactor_polls=True` (polled on the reactor
  thread when the reactor wakes it);
- `rust_coroutine`: the Rust handler as a coroutine (`--rust-coroutine`,
  `create_coroutine`: polled on the reactor thread in the caller's steps);
- on PostgreSQL also `rust_native` and `rust_native_polls`: the Rust handler reading
  through the crate's native pool (`--native-pool`, as many connections as the
  Python pool has threads) on the same database, default runtime and
  `reactor_polls`.

For each, at 1, 16 and 64 connections: requests per second, p50/p99 latency, and the
demo process's CPU time (user + system, /proc) per request. SQLite always;
PostgreSQL through the Python pool when PYO3_TWISTED_TEST_PG_DSN is set (`make
bench-http` starts the server).

    python benches/wrk_versions.py [--seconds 3] [--procs 2] [--rounds 3]
        [--connections 1,16,64] [--instructions-seconds 15] [--out FILE]
        [--variants rust_coroutine,...] [--databases sqlite,postgresql]
        [--extra-features N] [--demo-cpus 0]

`python_control` is the Python handler again, in a process of its own: its ratios
against `python` show how far this VM's noise alone moves a ratio, the yardstick
for the other rows. `--variants` runs those and the `python` baseline only;
`--extra-features N` gives both handlers N more known features to answer
(Synapse's `/versions` answers ~40; the default four make the handlers as small as
they get).

This VM's figures drift by ±30% over minutes, more than the variants differ, so
the variants are measured side by side: all their demo processes run at once, and
each round loads each in turn for --seconds at each connection count (the order
rotating), so window i of one variant ran next to window i of the others. Ratios
are medians of the per-window ratios; absolute figures are medians of the windows.
--procs fresh sets of processes, --rounds rounds each. CPU time per request is also
reported as user-space instructions per request, each variant once under callgrind
(valgrind, Debian's package) at one connection: a figure the noise cannot move
(kernel time is not in it).

Each goal row carries a 95% interval of its CPU ratio (a bootstrap of the
per-window ratios' median, seeded) and its verdict says whether the run could tell:
`met` when the interval's top is at most 1.00 (and req/s >= 0.95x), `NOT MET`
when its bottom is above 1.00 (or req/s < 0.95x), `unsettled` when the interval
holds 1.00: the run cannot tell that handler's CPU from the Python one's.

`--demo-cpus LIST` (taskset's list, e.g. `0`) runs every demo process on those CPUs
and wrk on the others: the server's CPU is then its own, and the reactor and the
pool threads share a core instead of waking each other across cores, which on this
VM costs more than either handler's work (benches/README.md, fifteenth session).
The scripts that take `handler_options` take it too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

USER = "%40alice%3Aexample.org"
VARIANTS = [
    ("python", "/versions_py", []),
    ("rust", "/versions", []),
    ("rust_polls", "/versions", ["--reactor-polls"]),
    ("rust_coroutine", "/versions", ["--rust-coroutine"]),
    ("rust_interaction", "/versions", ["--interaction-coroutine"]),
    # The control: a second process of the Python handler. Its ratios against
    # `python` are what this VM's noise alone reads for two equal handlers.
    ("python_control", "/versions_py", []),
]
# PostgreSQL only: the Rust handler on the native pool.
NATIVE_VARIANTS = [
    ("rust_native", "/versions", ["--native-pool"]),
    ("rust_native_polls", "/versions", ["--native-pool", "--reactor-polls"]),
]
# Judged against the Python handler (issue 17): the Rust handler on the Python pool
# with reactor_polls, and on the native pool (either runtime setting: the native
# pool's futures are woken by Tokio I/O, where reactor_polls changes nothing).
GOAL_VARIANTS = ["rust_polls", "rust_coroutine", "rust_interaction", "rust_native", "rust_native_polls"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the demo processes and wrk run: the command prefixes that pin them
    (`taskset -c ...`), empty to leave them to the scheduler."""

    demo: tuple[str, ...] = ()
    wrk: tuple[str, ...] = ()


def placement(demo_cpus: str | None) -> Placement:
    """The demos on `demo_cpus` (taskset's list syntax) and wrk on this process's
    other CPUs (anywhere if none is left); `None` pins nothing. Exits on a list
    naming no CPU this process may use."""
    if not demo_cpus:
        return Placement()
    allowed = os.sched_getaffinity(0)
    chosen: set[int] = set()
    try:
        for part in demo_cpus.split(","):
            first, dash, last = part.partition("-")
            chosen.update(range(int(first), int(last if dash else first) + 1))
    except ValueError:
        raise SystemExit(f"--demo-cpus: not a CPU list: {demo_cpus!r} (for example 0 or 0-1,3)") from None
    if not chosen or not chosen <= allowed:
        raise SystemExit(f"--demo-cpus: {demo_cpus!r} is not within this process's CPUs {sorted(allowed)}")
    require_tool("taskset")
    others = sorted(allowed - chosen)
    cpu_list = ",".join(str(cpu) for cpu in sorted(chosen))
    return Placement(
        demo=("taskset", "-c", cpu_list),
        wrk=("taskset", "-c", ",".join(map(str, others))) if others else (),
    )


def database_option(choice: str, prefix: str) -> tuple[str, str]:
    """The demo's `--database` for a bench script's `--database` choice, and its
    label: `sqlite` (a fresh file), `postgresql` (the server in
    `PYO3_TWISTED_TEST_PG_DSN`, as `make postgres` sets it up) or a DSN."""
    if choice == "sqlite":
        return str(Path(tempfile.mkdtemp(prefix=prefix)) / "demo.sqlite3"), "SQLite"
    if choice == "postgresql":
        dsn = os.environ.get("PYO3_TWISTED_TEST_PG_DSN")
        if not dsn:
            raise SystemExit("--database postgresql needs PYO3_TWISTED_TEST_PG_DSN (make postgres writes it to target/pg-dsn)")
        return dsn, "PostgreSQL"
    return choice, "PostgreSQL"


ALL_VARIANTS = VARIANTS + NATIVE_VARIANTS


def handler_options(parser: argparse.ArgumentParser, seconds: int, rounds: int | None, pinning: bool = True) -> None:
    """The options of the scripts that compare handlers in demo processes
    (`thread_cpu.py`, `perf_share.py`, `sched_events.py`, `cost_model.py`): which,
    how loaded, for how long, on which database, with how many extra features;
    `--rounds` where the script takes windows in turn; `--demo-cpus` with
    `pinning` (not under valgrind, which runs one thread at a time anyway)."""
    parser.add_argument("--variants", default="python,rust_coroutine", help="the first is the baseline")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=seconds)
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--database", default="sqlite", help="sqlite, postgresql (the server in PYO3_TWISTED_TEST_PG_DSN) or a DSN")
    parser.add_argument(
        "--extra-features", type=int, default=0, help="known features beyond the demo's four (the demo's --extra-features)"
    )
    if pinning:
        demo_cpus_option(parser)


def demo_cpus_option(parser: argparse.ArgumentParser) -> None:
    """`--demo-cpus`, read by [`placement`]."""
    parser.add_argument(
        "--demo-cpus", default=None, help="taskset CPU list for the demo processes (wrk runs on the others); default: unpinned"
    )


def extra_features_args(extra_features: int) -> list[str]:
    """The demo's arguments for a bench script's `--extra-features`."""
    return ["--extra-features", str(extra_features)] if extra_features else []


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def median_interval(
    clusters: Sequence[Sequence[float]], level: float = 0.95, draws: int = 4000
) -> tuple[float, float]:
    """A `level` confidence interval of the median of the values in `clusters`, by a
    two-stage bootstrap: clusters drawn with replacement, then values within each.
    A cluster is one set of demo processes: its windows share the processes' own
    luck (memory layout, hash seeds), so they are not independent draws. Seeded: a
    report reads the same twice."""
    if not clusters or not all(clusters):
        raise ValueError("no values, or an empty cluster")
    rng = random.Random(0)
    medians = []
    for _ in range(draws):
        sample = [v for cluster in rng.choices(clusters, k=len(clusters)) for v in rng.choices(cluster, k=len(cluster))]
        medians.append(statistics.median(sample))
    medians.sort()
    tail = int(draws * (1 - level) / 2)
    return medians[tail], medians[draws - 1 - tail]


def verdict(rps_ratio: float, cpu_interval: tuple[float, float]) -> str:
    """Issue 17's goal (>= 0.95x the requests per second at no more CPU per request)
    for one row: `met`, `NOT MET`, or `unsettled` when the CPU interval holds 1.00."""
    low, high = cpu_interval
    if rps_ratio < 0.95 or low > 1.0:
        return "NOT MET"
    return "met" if high <= 1.0 else "unsettled"


def start_demo(database: str, extra: list[str], wrapper: Sequence[str] = ()) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "pyo3_twisted_demo", "--port", "0", "--database", database, "--quiet", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.match(r"listening on http://[\d.]+:(\d+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the demo did not start: {line!r}")
    return proc, int(match.group(1))


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, connections: int, seconds: int, where: Placement = Placement()) -> dict[str, Any]:
    threads = 1 if connections < 16 else 2
    out = subprocess.run(
        [*where.wrk, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors under load:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": to_ms(latency["50"]),
        "p99_ms": to_ms(latency["99"]),
        "requests": requests,
    }


def window(
    proc: subprocess.Popen[str], url: str, connections: int, seconds: int, where: Placement = Placement()
) -> dict[str, Any]:
    """One wrk window against a running demo: its figures and the process's CPU time
    per request over it."""
    before = cpu_seconds(proc.pid)
    row = wrk(url, connections, seconds, where)
    row["cpu_us_per_request"] = (cpu_seconds(proc.pid) - before) / row["requests"] * 1e6
    return row


def require_tool(name: str) -> None:
    """Exits with what to install when a Debian-packaged tool the bench scripts run
    (`wrk`, `valgrind`, `perf`) is missing: `make bench-http` installs the first
    two, the scripts run alone do not."""
    if shutil.which(name) is None:
        package = {"perf": "linux-perf", "taskset": "util-linux"}.get(name, name)
        raise SystemExit(f"{name} is not installed: apt-get install {package} (make bench-http installs wrk and valgrind)")


@contextlib.contextmanager
def running_demos(
    database: str, variants: list[tuple[str, str, list[str]]], where: Placement = Placement()
) -> Iterator[dict[str, tuple[subprocess.Popen[str], str]]]:
    """A demo process per variant `(name, path, demo arguments)`, warmed up, with the
    URL of its handler; all stopped on the way out. Started one after the other:
    each sets up the database before it listens."""
    require_tool("wrk")
    running: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        for name, path, extra in variants:
            proc, port = start_demo(database, extra, where.demo)
            running[name] = (proc, f"http://127.0.0.1:{port}{path}?user_id={USER}")
            wrk(running[name][1], 4, 1, where)  # warm-up: connections, pool, caches
        yield running
    finally:
        for proc, _ in running.values():
            proc.terminate()
        for proc, _ in running.values():
            proc.wait(timeout=30)


def paired_windows(
    args: argparse.Namespace, prefix: str, window: Callable[[int, str, Placement], dict[str, float]]
) -> tuple[list[str], str, dict[str, list[dict[str, float]]]]:
    """The windows of the scripts that take `handler_options`: a demo per variant
    (`args.variants`, the first the baseline), `window(pid, url, where)` on each in
    turn for `args.rounds` rounds, `where` the placement of `--demo-cpus`. Returns the variant names, the database's label and each
    variant's windows in round order (so the n-th windows of two variants pair)."""
    names: list[str] = args.variants.split(",")
    variants = chosen_variants(names, extra_features_args(args.extra_features))
    database, label = database_option(args.database, prefix)
    windows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    where = placement(args.demo_cpus)
    with running_demos(database, variants, where) as running:
        for round_ in range(args.rounds):
            for name in rotated(names, round_):
                proc, url = running[name]
                windows[name].append(window(proc.pid, url, where))
    return names, label, windows


def rotated(items: list[Any], k: int) -> list[Any]:
    """`items` starting at the k-th (round k's order: none always goes first)."""
    return items[k % len(items) :] + items[: k % len(items)]


def chosen_variants(names: list[str], demo_args: list[str]) -> list[tuple[str, str, list[str]]]:
    """The variants called `names`, each with `demo_args` added to its own."""
    paths = {name: (path, extra) for name, path, extra in ALL_VARIANTS}
    unknown = sorted(set(names) - set(paths))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(paths)}")
    return [(name, paths[name][0], paths[name][1] + demo_args) for name in names]


def measure_paired(
    database: str,
    variants: list[tuple[str, str, list[str]]],
    connections: list[int],
    seconds: int,
    procs: int,
    rounds: int,
    where: Placement = Placement(),
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Every variant's windows, paired: all variants' demo processes run side by
    side (idle but for the one under load), and each round loads each of them in
    turn for `seconds` at each connection count, the order rotating. Window i of a
    variant ran next to window i of every other, so their ratio is free of this VM's
    drift, which moves every figure by ±30% over minutes. `procs` fresh sets of
    processes, `rounds` rounds each."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in connections} for name, _, _ in variants}
    for set_ in range(procs):
        with running_demos(database, variants, where) as running:
            for round_ in range(rounds):
                order = rotated(variants, set_ * rounds + round_)
                for c in connections:
                    for name, _, _ in order:
                        proc, url = running[name]
                        runs[name][c].append(window(proc, url, c, seconds, where))
    return runs


def instructions_per_request(database: str, path: str, extra: list[str], seconds: int) -> float:
    """User-space instructions the demo process executes per request (callgrind),
    over `seconds` of wrk at one connection after a warm-up: the CPU figure this VM's
    noise cannot move."""
    out = Path(tempfile.mkdtemp(prefix="pyo3-twisted-callgrind-")) / "callgrind.out"
    wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=no",
        f"--callgrind-out-file={out}",
        f"--log-file={out.parent / 'valgrind.log'}",
    ]
    proc, port = start_demo(database, extra, wrapper)
    url = f"http://127.0.0.1:{port}{path}?user_id={USER}"
    try:
        subprocess.run(["wrk", "-t1", "-c1", "-d3s", "--timeout", "10s", url], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        load = subprocess.run(
            ["wrk", "-t1", "-c1", f"-d{seconds}s", "--timeout", "10s", url], capture_output=True, text=True, check=True
        ).stdout
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        requests = int(re.search(r"(\d+) requests in", load).group(1))  # type: ignore[union-attr]
        dumps = sorted(out.parent.glob(out.name + ".*"))
        summary = int(re.search(r"^summary: (\d+)$", dumps[-1].read_text(), re.M).group(1))  # type: ignore[union-attr]
        return summary / requests
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds per set of processes")
    parser.add_argument("--procs", type=int, default=2, help="fresh sets of demo processes")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument(
        "--instructions-seconds",
        type=int,
        default=15,
        help="seconds of load under callgrind per variant for instructions per request (0: skip)",
    )
    parser.add_argument(
        "--extra-features",
        type=int,
        default=0,
        help="known features beyond the demo's four, in both handlers (the demo's --extra-features)",
    )
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated variants to run (python always runs: the baseline); default all",
    )
    parser.add_argument(
        "--databases",
        default="sqlite,postgresql",
        help="comma-separated: sqlite, postgresql (the latter only with PYO3_TWISTED_TEST_PG_DSN)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent.parent / "target" / "bench-http.json"))
    demo_cpus_option(parser)
    args = parser.parse_args()
    where = placement(args.demo_cpus)
    connections = [int(c) for c in args.connections.split(",")]
    wanted_dbs = set(args.databases.split(","))
    if not wanted_dbs <= {"sqlite", "postgresql"}:
        parser.error(f"--databases: unknown {sorted(wanted_dbs - {'sqlite', 'postgresql'})}")
    wanted = set(args.variants.split(",")) - {""}
    if wanted - {name for name, _, _ in ALL_VARIANTS}:
        parser.error(f"--variants: unknown {sorted(wanted - {name for name, _, _ in ALL_VARIANTS})}")
    extra_args = extra_features_args(args.extra_features)
    databases = {}
    if "sqlite" in wanted_dbs:
        databases["sqlite"] = str(Path(tempfile.mkdtemp(prefix="pyo3-twisted-http-")) / "demo.sqlite3")
    if "postgresql" in wanted_dbs and os.environ.get("PYO3_TWISTED_TEST_PG_DSN"):
        databases["postgresql"] = os.environ["PYO3_TWISTED_TEST_PG_DSN"]
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": args.seconds,
        "extra_features": args.extra_features,
        "demo_cpus": args.demo_cpus,
        "results": {},
    }
    for db, database in databases.items():
        variants = [
            (name, path, extra + extra_args)
            for name, path, extra in VARIANTS + (NATIVE_VARIANTS if db == "postgresql" else [])
            if not wanted or name == "python" or name in wanted
        ]
        runs = measure_paired(database, variants, connections, args.seconds, args.procs, args.rounds, where)
        results: dict[str, Any] = {}
        report["results"][db] = results
        for name in runs:
            results[name] = {}
            for c in connections:
                windows, base = runs[name][c], runs["python"][c]
                row = {key: statistics.median(w[key] for w in windows) for key in windows[0]}
                # Medians of the per-window ratios: the paired figures.
                row["rps_ratio"] = statistics.median(w["rps"] / b["rps"] for w, b in zip(windows, base))
                cpu_ratios = [w["cpu_us_per_request"] / b["cpu_us_per_request"] for w, b in zip(windows, base)]
                row["cpu_ratio"] = statistics.median(cpu_ratios)
                # Windows come set by set of processes, --rounds each.
                sets = [cpu_ratios[i : i + args.rounds] for i in range(0, len(cpu_ratios), args.rounds)]
                row["cpu_ratio_interval"] = list(median_interval(sets))
                results[name][c] = row
        report.setdefault("runs", {})[db] = runs
        if args.instructions_seconds:
            for name, path, extra in variants:
                ipr = instructions_per_request(database, path, extra, args.instructions_seconds)
                results[name]["instructions_per_request"] = ipr
        pinned = f", demos on CPUs {args.demo_cpus}" if args.demo_cpus else ""
        print(f"\n{db}{pinned}: requests/s, p50/p99 ms, CPU µs per request (medians of {args.procs * args.rounds} "
              "paired windows; ratios: medians of the per-window ratios against python)")
        print(f"{'variant':<18}{'conns':>6}{'req/s':>10}{'p50':>8}{'p99':>8}{'cpu µs':>9}{'÷rps':>7}{'÷cpu':>7}")
        for name, _, _ in variants:
            for c in connections:
                row = results[name][c]
                print(
                    f"{name:<18}{c:>6}{row['rps']:>10.0f}{row['p50_ms']:>8.2f}{row['p99_ms']:>8.2f}"
                    f"{row['cpu_us_per_request']:>9.0f}{row['rps_ratio']:>7.2f}"
                    f"{row['cpu_ratio']:>7.2f}"
                )
        if args.instructions_seconds:
            base_ipr = results["python"]["instructions_per_request"]
            print(f"instructions per request (callgrind, 1 connection, {args.instructions_seconds} s):")
            for name, _, _ in variants:
                ipr = results[name]["instructions_per_request"]
                print(f"  {name:<18}{ipr:>12,.0f}{ipr / base_ipr:>7.2f}")
    print("\ngoal (issue 17): the Rust handler >= 0.95x python's requests/s at no more CPU per request")
    for db, results in report["results"].items():
        if "python_control" in results:
            rows = [(c, results["python_control"][c]) for c in connections]
            control = ", ".join(
                f"{c}: {row['rps_ratio']:.2f}x / {row['cpu_ratio']:.2f}x"
                f" (95%: {row['cpu_ratio_interval'][0]:.2f}-{row['cpu_ratio_interval'][1]:.2f})"
                for c, row in rows
            )
            print(f"  {db}: the control (python against itself) reads req/s / CPU {control}")
        for name in (n for n in GOAL_VARIANTS if n in results):
            for c in connections:
                row = results[name][c]
                rps, cpu, (low, high) = row["rps_ratio"], row["cpu_ratio"], row["cpu_ratio_interval"]
                print(
                    f"  [{verdict(rps, (low, high)):<9}] {db}, {name}, {c} connections: req/s {rps:.2f}x, "
                    f"CPU/request {cpu:.2f}x (95%: {low:.2f}-{high:.2f})"
                )
            if "instructions_per_request" in results["python"]:
                ratio = results[name]["instructions_per_request"] / results["python"]["instructions_per_request"]
                met = "met" if ratio <= 1.0 else "NOT MET"
                print(f"  [{met:<9}] {db}, {name}: instructions per request {ratio:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
