"""The process's CPU time per request of the demo's /versions handler in process
(no HTTP), the Rust handler against its Python twin, with an interval.

Each demo-less process (`cases.py handler_paired`) runs the chosen sides batch by
batch in rotating order, m sequential requests a batch, each request in a logging
context of its own, and reads the process's CPU time (`time.process_time`: every
thread, user and system; `--clock` reads the reactor thread's or the others')
around each batch. A batch's ratio to the Python twin's
batch of the same round is free of what moves between processes and over time; the
median of those ratios gets a 95% interval by a two-stage bootstrap (processes,
then their batches: `wrk_versions.median_interval`). `python_control`, the twin
against itself, shows what the method reads for two equal sides.

Over HTTP (`wrk_versions.py`) the same requests also carry Twisted's web server and
wrk's load on the VM, which the sides share and which widen a run's interval to
±10% here; in process that share is gone, so the handler's own difference shows.

    python benches/handler_cpu.py [--sides python_control,rust_interaction]
        [--procs 4] [--rounds 20] [--m 300] [--database sqlite|postgresql] [--cpus 0|all|...]
        [--extra-features 36]
        [--install '{"metrics": false}'] [--clock process|reactor|others]

Each process runs on CPU 0 unless `--cpus` says otherwise: there the reactor
thread and the pool's thread share a core, as the demo pinned for wrk does, and the
Python twin costs ~75-85 µs of CPU per request against ~183 µs unpinned (the rest is
waking the other thread on the other CPU), so the handlers' difference is a larger
share and the interval narrower.

`--database postgresql` reads through the Python pool from the server in
`PYO3_TWISTED_TEST_PG_DSN` (`make postgres`). The demo comes from the virtualenv
(`make release-install`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import wrk_versions  # noqa: E402

# Side: the key suffix cases.py gives its ratios to the Python twin.
RATIO_KEYS = {
    "python_control": "_control",
    "rust": "",
    "rust_coroutine": "_coroutine",
    "rust_interaction": "_interaction",
}


# --clock: whose CPU time each batch is read by.
CLOCKS = {"process": "the process's", "reactor": "the reactor thread's", "others": "the other threads'"}


def cpu_verdict(interval: tuple[float, float]) -> str:
    """"No more CPU per request" for one side: `met` when the interval's top is at
    most 1.00, `NOT MET` when its bottom is above, else `unsettled`."""
    return wrk_versions.verdict(1.0, interval)


def run_case(case: str, params: dict[str, Any], cpus: str | None = None, timeout: float = 600) -> dict[str, Any]:
    """One process of `cases.py case` with `params`, pinned to `cpus` if given: the
    result it prints last. `bench.py` runs its rows through it too."""
    pin = ["taskset", "-c", cpus] if cpus else []
    proc = subprocess.run(
        [*pin, sys.executable, str(HERE / "cases.py"), case, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} {params} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", default="python_control,rust_interaction", help=f"compared with the Python twin: {','.join(RATIO_KEYS)}")
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20, help="batches per side in each process")
    parser.add_argument("--m", type=int, default=300, help="requests per batch")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--extra-features",
        type=int,
        default=0,
        help="known features beyond the demo's four, set for nobody, for both handlers (Synapse's /versions answers ~40)",
    )
    parser.add_argument(
        "--cpus",
        default="0",
        help="the CPUs each process runs on (taskset -c; 'all' for none): one by default, "
        "where a wake-up of the other thread is no interrupt between CPUs, and the reading is tighter",
    )
    parser.add_argument(
        "--install",
        default="{}",
        help='more keyword arguments for the runtime, as JSON: \'{"metrics": false}\', \'{"track_cpu_time": false}\'',
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="process",
        help="whose CPU time: the process's, the reactor thread's, or every other thread's (the pool's, Tokio's)",
    )
    args = parser.parse_args()
    if args.cpus != "all":
        wrk_versions.require_tool("taskset")
    compared = [side for side in args.sides.split(",") if side]
    unknown = [side for side in compared if side not in RATIO_KEYS]
    if unknown or not compared:
        parser.error(f"--sides: choose from {', '.join(RATIO_KEYS)} (not {', '.join(unknown) or 'none'})")
    if args.procs < 1 or args.rounds < 1 or args.m < 1:
        parser.error("--procs, --rounds and --m must be at least 1")
    if args.extra_features < 0:
        parser.error("--extra-features must be 0 or more")
    try:
        install = json.loads(args.install)
    except json.JSONDecodeError as err:
        parser.error(f"--install: not JSON ({err})")
    if not isinstance(install, dict):
        parser.error("--install: a JSON object of keyword arguments")

    params = {
        "m": args.m,
        "reps": args.rounds,
        "pairs": 1,
        "sides": ["python", *compared],
        "database": args.database,
        "install": install,
        "cpu_clock": args.clock,
        "extra_features": args.extra_features,
    }
    runs = []
    for proc in range(args.procs):
        raw = run_case("handler_paired", params, None if args.cpus == "all" else args.cpus, timeout=1800)
        runs.append(raw)
        twin = statistics.median(raw["paired_cpu_python_us"])
        print(f"  process {proc + 1}/{args.procs}: the twin {twin:.1f} µs CPU per request", flush=True)

    twin_cpu = statistics.median(v for raw in runs for v in raw["paired_cpu_python_us"])
    twin_wall = statistics.median(v for raw in runs for v in raw["paired_python_us"])
    which = CLOCKS[args.clock]
    print(
        f"\n{args.database}, {args.extra_features} extra features, CPUs {args.cpus}, {args.procs} processes x {args.rounds} batches of {args.m} requests,"
        f" {which} CPU time; the Python twin: {twin_cpu:.1f} µs CPU, {twin_wall:.1f} µs wall per request\n"
    )
    print(f"{'side':18} {'CPU ratio':>9} {'95% interval':>13} {'wall ratio':>10}  verdict (no more CPU)")
    for side in compared:
        suffix = RATIO_KEYS[side]
        cpu = [raw[f"paired_cpu_ratio{suffix}"] for raw in runs]
        wall = [raw[f"paired_ratio{suffix}"] for raw in runs]
        low, high = wrk_versions.median_interval(cpu)
        median = statistics.median(v for cluster in cpu for v in cluster)
        wall_median = statistics.median(v for cluster in wall for v in cluster)
        print(f"{side:18} {median:9.3f} {low:6.3f}-{high:<6.3f} {wall_median:10.3f}  {cpu_verdict((low, high))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
