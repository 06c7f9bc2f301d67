"""A deterministic cost per request of the demo's handlers over HTTP, per thread:
user-space instructions and a cycle estimate from valgrind's cache and branch
simulation, for the Python `/versions` handler and the Rust one.

Instructions alone miss what separates the two at equal counts: the Rust code runs
once per request, cold, so it misses the L1 caches where the interpreter's hot loop
does not; memory that crosses threads sends glibc's malloc to its slow paths. The
estimate weighs each simulated event by a typical cost:

    cycles ~ Ir + 12 x (L1 misses) + 100 x (last-level misses) + 15 x (mispredicts)

It is a model, not a measurement, but it does not move with this VM's load, so two
builds can be compared where wall time cannot tell them apart.

Python's cyclic garbage collector is counted apart (`gc`, the cost inside
`gc_collect_main`) and left out of the totals and ratios: a full collection walks
every object of the process, ~20M instructions, ~36k per request of a 15-second
window, and whether one falls inside the window is chance. How often each handler makes the
collector run is a wall-time question (`gc.get_stats()` over a long run).

    python benches/cost_model.py [--variants python,rust_coroutine] [--connections 16]
        [--seconds 15] [--database sqlite|postgresql|DSN] [--extra-features N]

`--database postgresql` takes the server from `PYO3_TWISTED_TEST_PG_DSN`:
`PYO3_TWISTED_TEST_PG_DSN=$(cat target/pg-dsn)` after `make postgres`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import wrk_versions  # noqa: E402

WEIGHTS = {"Ir": 1, "I1mr": 12, "D1mr": 12, "D1mw": 12, "ILmr": 100, "DLmr": 100, "DLmw": 100, "Bcm": 15, "Bim": 15}


def per_thread(
    variant: str, database: str, connections: int, seconds: int, demo_args: list[str]
) -> dict[int, dict[str, float]]:
    """Events per request of each busy thread (callgrind's thread number: 1 is the
    reactor thread), over `seconds` of load after a warm-up."""
    [(_, path, extra)] = wrk_versions.chosen_variants([variant], demo_args)
    out = Path(tempfile.mkdtemp(prefix="pyo3-twisted-cost-")) / "callgrind.out"
    wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=no",
        "--separate-threads=yes",
        "--cache-sim=yes",
        "--branch-sim=yes",
        "--collect-bus=yes",
        f"--callgrind-out-file={out}",
        f"--log-file={out.parent / 'valgrind.log'}",
    ]
    proc, port = wrk_versions.start_demo(database, extra, wrapper)
    url = f"http://127.0.0.1:{port}{path}?user_id={wrk_versions.USER}"
    try:
        subprocess.run(["wrk", "-t1", "-c1", "-d3s", "--timeout", "10s", url], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        load = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    requests = int(re.search(r"(\d+) requests in", load).group(1))  # type: ignore[union-attr]
    threads = {}
    # The dump asked for (".1"), one file per thread ("-NN").
    for dump in sorted(out.parent.glob(out.name + ".1-*")):
        text = dump.read_text()
        events = re.search(r"^events: (.*)$", text, re.M).group(1).split()  # type: ignore[union-attr]
        totals = re.search(r"^summary: (.*)$", text, re.M).group(1).split()  # type: ignore[union-attr]
        gc = dict(zip(events, collector_cost(text, len(events))))
        counts = {e: (int(n) - gc[e]) / requests for e, n in zip(events, totals)}
        if counts["Ir"] > 1000:  # idle threads (Tokio workers here) left out
            counts["cycles"] = sum(w * counts[e] for e, w in WEIGHTS.items())
            counts["gc"] = sum(w * gc[e] for e, w in WEIGHTS.items()) / requests
            threads[int(dump.name.rsplit("-", 1)[1])] = counts
    return threads


def collector_cost(text: str, n_events: int) -> list[int]:
    """The events inside calls to CPython's `gc_collect_main` (inclusive), from a
    callgrind dump: each `calls=` line is followed by the call's inclusive cost."""
    names: dict[str, str] = {}
    total = [0] * n_events
    callee = ""
    inclusive_next = False
    for line in text.splitlines():
        if line.startswith(("cfn=", "fn=")):
            match = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if match:
                if match.group(2) is not None:
                    names[match.group(1)] = match.group(2)
                if line.startswith("cfn="):
                    callee = names.get(match.group(1), "")
        elif line.startswith("calls="):
            inclusive_next = callee == "gc_collect_main"
        elif inclusive_next:
            inclusive_next = False
            for i, n in enumerate(line.split()[1:]):
                total[i] += int(n)
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    wrk_versions.handler_options(parser, seconds=15, rounds=None, pinning=False)
    args = parser.parse_args()
    wrk_versions.require_tool("valgrind")
    variants = args.variants.split(",")
    database, label = wrk_versions.database_option(args.database, "pyo3-twisted-cost-")
    demo_args = wrk_versions.extra_features_args(args.extra_features)
    results = {v: per_thread(v, database, args.connections, args.seconds, demo_args) for v in variants}
    base = results[variants[0]]
    print(f"per request, {args.connections} connections, {label}; ratios against {variants[0]}")
    for variant, threads in results.items():
        for thread, c in sorted(threads.items()):
            name = "reactor" if thread == 1 else f"thread {thread}"
            b = base.get(thread)
            ratio = f"  ({c['Ir'] / b['Ir']:.3f}x / {c['cycles'] / b['cycles']:.3f}x)" if b else ""
            print(
                f"{variant:16} {name:10} Ir {c['Ir']:9,.0f}  L1 misses {c['I1mr']:6,.0f} i {c['D1mr'] + c['D1mw']:6,.0f} d"
                f"  mispredicts {c['Bcm'] + c['Bim']:6,.0f}  atomics {c.get('Ge', 0):5,.0f}"
                f"  cycles~ {c['cycles']:10,.0f}{ratio}  gc cycles~ {c['gc']:7,.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
