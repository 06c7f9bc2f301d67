"""Instructions per request of the demo's /versions handler in process, each side
alone under callgrind: the Rust handler (reactor_polls; as a coroutine,
create_coroutine; through run_interaction_coroutine), its Python twin awaited as a
coroutine, and the twin behind a Deferred (the boundary every Rust handler has).

Wall time on this VM moves by more than the sides differ; user-space instructions do
not (kernel time is not in them). Each side runs twice, with `--small` and `--large`
requests after the same warm-up, and the difference over the extra requests is the
cost of one request, per thread (the reactor thread and the database pool's thread;
the idle Tokio worker is left out).

    python benches/handler_instructions.py [--small 300] [--large 900] [--sides ...] [--keep]
"""

from __future__ import annotations

import argparse
import json
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


def instructions(side: str, m: int, keep: bool) -> dict[int, int]:
    """Instructions per thread (by callgrind's thread number) of one run. With
    `keep`, callgrind's files stay (for `callgrind_annotate`) and their folder is
    printed; otherwise they are removed."""
    out = Path(tempfile.mkdtemp(prefix=f"pyo3-twisted-handler-{side}-{m}-")) / "callgrind.out"
    try:
        return callgrind_run(side, m, out)
    finally:
        if keep:
            print(f"  callgrind files of {side} ({m} requests): {out.parent}", flush=True)
        else:
            shutil.rmtree(out.parent, ignore_errors=True)


def callgrind_run(side: str, m: int, out: Path) -> dict[int, int]:
    """Runs `side` for `m` requests under callgrind, its files at `out`."""
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            f"--log-file={out.parent / 'valgrind.log'}",
            sys.executable,
            str(HERE / "cases.py"),
            "handler_paired",
            json.dumps({"side": side, "m": m, "reps": 1}),
        ],
        check=True,
        capture_output=True,
    )
    per_thread = {}
    for dump in out.parent.glob(out.name + "-*"):
        summary = re.search(r"^summary: (\d+)$", dump.read_text(), re.M)
        if summary:
            per_thread[int(dump.name.rsplit("-", 1)[1])] = int(summary.group(1))
    return per_thread


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=900)
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated; python (the baseline) always runs")
    parser.add_argument("--keep", action="store_true", help="keep callgrind's files and print where")
    args = parser.parse_args()
    wrk_versions.require_tool("valgrind")
    extra = args.large - args.small
    sides = ["python"] + [s for s in args.sides.split(",") if s and s != "python"]
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides: {', '.join(sorted(unknown))} (known: {', '.join(SIDES)})")
    results = {}
    for side in sides:
        small, large = instructions(side, args.small, args.keep), instructions(side, args.large, args.keep)
        per = {t: (large[t] - small.get(t, 0)) / extra for t in large}
        # The busiest two: the reactor thread (1) and the pool's thread.
        busy = sorted(per.items(), key=lambda kv: -kv[1])[:2]
        results[side] = {"reactor": per.get(1, 0.0), "total": sum(v for _, v in busy)}
        print(f"{side:16} reactor thread {per.get(1, 0.0):10,.0f}   reactor + pool thread {results[side]['total']:10,.0f}", flush=True)
    base = results["python"]
    print("\nagainst the Python twin awaited as a coroutine:")
    for side in sides[1:]:
        r = results[side]
        print(f"  {side:16} reactor {r['reactor'] / base['reactor']:.2f}x   both threads {r['total'] / base['total']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
