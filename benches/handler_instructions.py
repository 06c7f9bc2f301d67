"""Instructions per request of the demo's /versions handler in process, each side
alone under callgrind: the Rust handler (reactor_polls; as a coroutine,
create_coroutine; through run_interaction_coroutine), its Python twin awaited as a
coroutine, and the twin behind a Deferred (the boundary every Rust handler has).

Wall time on this VM moves by more than the sides differ; user-space instructions do
not (kernel time is not in them). Each side runs twice, with `--small` and `--large`
requests after the same warm-up, and the difference over the extra requests is the
cost of one request, per thread (the reactor thread and the database pool's thread;
the idle Tokio worker is left out).

`--cache-sim` adds callgrind's cache simulation: L1 instruction and data misses per
request, which is where the Rust code, run once per request and cold, costs what
its instruction count does not show. Every run has `PYTHONHASHSEED=0`: dictionary
probing depends on the hash seed, which otherwise moves a count by ~1%.

    python benches/handler_instructions.py [--small 300] [--large 900] [--sides ...]
        [--cache-sim] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import wrk_versions  # noqa: E402

SIDES = ["python", "python_deferred", "rust", "rust_coroutine", "rust_interaction"]


def instructions(side: str, m: int, keep: bool, cache_sim: bool) -> dict[int, dict[str, int]]:
    """Callgrind's events per thread (by callgrind's thread number) of one run. With
    `keep`, callgrind's files stay (for `callgrind_annotate`) and their folder is
    printed; otherwise they are removed."""
    out = Path(tempfile.mkdtemp(prefix=f"pyo3-twisted-handler-{side}-{m}-")) / "callgrind.out"
    try:
        return callgrind_run(side, m, out, cache_sim)
    finally:
        if keep:
            print(f"  callgrind files of {side} ({m} requests): {out.parent}", flush=True)
        else:
            shutil.rmtree(out.parent, ignore_errors=True)


def callgrind_run(side: str, m: int, out: Path, cache_sim: bool) -> dict[int, dict[str, int]]:
    """Runs `side` for `m` requests under callgrind, its files at `out`."""
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            *(["--cache-sim=yes"] if cache_sim else []),
            f"--callgrind-out-file={out}",
            f"--log-file={out.parent / 'valgrind.log'}",
            sys.executable,
            str(HERE / "cases.py"),
            "handler_paired",
            json.dumps({"side": side, "m": m, "reps": 1}),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return {
        int(dump.name.rsplit("-", 1)[1]): events
        for dump in out.parent.glob(out.name + "-*")
        if (events := thread_events(dump.read_text()))
    }


def thread_events(text: str) -> dict[str, int]:
    """The totals of one thread's callgrind file, by event name (`Ir`, `I1mr`...)."""
    names = re.search(r"^events: (.+)$", text, re.M)
    summary = re.search(r"^summary: ([\d ]+)$", text, re.M)
    if not names or not summary:
        return {}
    return dict(zip(names.group(1).split(), map(int, summary.group(1).split())))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=900)
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated; python (the baseline) always runs")
    parser.add_argument("--keep", action="store_true", help="keep callgrind's files and print where")
    parser.add_argument("--cache-sim", action="store_true", help="also L1 cache misses per request (slower)")
    args = parser.parse_args()
    wrk_versions.require_tool("valgrind")
    extra = args.large - args.small
    sides = ["python"] + [s for s in args.sides.split(",") if s and s != "python"]
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides: {', '.join(sorted(unknown))} (known: {', '.join(SIDES)})")
    events = ["Ir", "I1mr", "D1mr", "D1mw"] if args.cache_sim else ["Ir"]
    results = {}
    for side in sides:
        small = instructions(side, args.small, args.keep, args.cache_sim)
        large = instructions(side, args.large, args.keep, args.cache_sim)
        per = {
            t: {e: (large[t].get(e, 0) - small.get(t, {}).get(e, 0)) / extra for e in events} for t in large
        }
        # The busiest two: the reactor thread (1) and the pool's thread.
        busy = sorted(per, key=lambda t: -per[t]["Ir"])[:2]
        reactor = per.get(1, dict.fromkeys(events, 0.0))
        both = {e: sum(per[t][e] for t in busy) for e in events}
        results[side] = {"reactor": reactor, "total": both}
        line = f"{side:16} reactor thread {reactor['Ir']:10,.0f}   reactor + pool thread {both['Ir']:10,.0f}"
        if args.cache_sim:
            line += (
                f"   L1 misses (both): {both['I1mr']:7,.0f} instruction"
                f" {both['D1mr'] + both['D1mw']:7,.0f} data"
            )
        print(line, flush=True)
    base = results["python"]
    print("\nagainst the Python twin awaited as a coroutine:")
    for side in sides[1:]:
        r = results[side]
        line = (
            f"  {side:16} reactor {r['reactor']['Ir'] / base['reactor']['Ir']:.3f}x"
            f"   both threads {r['total']['Ir'] / base['total']['Ir']:.3f}x"
        )
        if args.cache_sim:
            line += (
                f"   L1 instruction misses {r['total']['I1mr'] / base['total']['I1mr']:.3f}x"
                f"   data {(r['total']['D1mr'] + r['total']['D1mw']) / (base['total']['D1mr'] + base['total']['D1mw']):.3f}x"
            )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
