"""Where the demo's reactor thread spends its time, by shared object, measured:
`perf record -e cpu-clock` samples of the reactor thread under wrk, for the Python
`/versions` handler and the Rust one, each in its own demo process, in windows
taken in turn (as `thread_cpu.py`): medians, and medians of the paired differences.

callgrind (`cost_model.py`) counts instructions and simulates caches; this samples
the real thread on the real CPU, so it shows what the model cannot: how much of a
request the extension's own code takes, and whether the interpreter runs slower
beside it (cache and predictor state it evicts). `cpu-clock` is a software event,
so this works in a VM without hardware counters; the sampling interrupts cost the
thread some time of their own, the same for both handlers.

    python benches/perf_share.py [--variants python,rust_coroutine] [--connections 16]
        [--seconds 4] [--rounds 6] [--frequency 4000] [--database sqlite|postgresql|DSN]
        [--extra-features N]

Needs `perf` (Debian's linux-perf) and permission to sample one's own processes
(`kernel.perf_event_paranoid` at most 2).
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import wrk_versions  # noqa: E402


def category(dso: str) -> str:
    """The shared objects grouped as the comparison needs them."""
    if dso.startswith("_native"):
        return "extension"
    if dso.startswith("libpython"):
        return "interpreter"
    if dso.startswith("libc."):
        return "libc"
    if dso.startswith("[kernel"):
        return "kernel"
    return "other"


def window(pid: int, url: str, where: wrk_versions.Placement, args: argparse.Namespace) -> dict[str, float]:
    """One window of load: µs of reactor-thread CPU per request, by category."""
    data = Path(tempfile.mkdtemp(prefix="pyo3-twisted-perf-")) / "perf.data"
    recorder = subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.frequency), "-t", str(pid), "-o", str(data)]
    )
    try:
        row = wrk_versions.wrk(url, args.connections, args.seconds, where)
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data.unlink()
    data.parent.rmdir()
    per = dict.fromkeys(KEYS, 0.0)
    for line in report.splitlines():
        match = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)", line)
        if match:
            us = int(match.group(1)) / args.frequency * 1e6 / row["requests"]
            per[category(match.group(2))] += us
            per["total"] += us
    return per


KEYS = ["total", "interpreter", "extension", "libc", "kernel", "other"]


def main() -> int:
    parser = argparse.ArgumentParser()
    wrk_versions.handler_options(parser, seconds=4, rounds=6)
    parser.add_argument("--frequency", type=int, default=4000, help="samples per second of thread CPU time")
    args = parser.parse_args()
    wrk_versions.require_tool("perf")
    names, label, windows = wrk_versions.paired_windows(
        args, "pyo3-twisted-perf-", lambda pid, url, where: window(pid, url, where, args)
    )
    print(
        f"reactor thread, µs of CPU per request (perf cpu-clock samples), {args.connections} connections,"
        f" {label}, medians of {args.rounds} windows of {args.seconds} s"
    )
    for name in names:
        print(f"{name:16}", "  ".join(f"{k} {statistics.median(w[k] for w in windows[name]):6.1f}" for k in KEYS))
    base = windows[names[0]]
    for name in names[1:]:
        diffs = (
            f"{k} {statistics.median(w[k] - b[k] for w, b in zip(windows[name], base)):+5.1f}" for k in KEYS
        )
        print(f"{name:16} minus {names[0]} (paired windows):", "  ".join(diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
