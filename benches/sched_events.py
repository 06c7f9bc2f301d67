"""What the kernel does for the demo per request: context switches, wake-ups,
inter-processor interrupts and a few system calls, counted by `perf stat` on
tracepoints for each handler's demo process under wrk, in windows taken in turn
(as `thread_cpu.py`): medians, and medians of the paired differences.

`cost_model.py` runs the demo under valgrind, which runs one thread at a time, so
it cannot see what threads do to each other: a thread that finds the GIL taken
sleeps on a futex and is woken by a system call of the holder; on this VM a
wake-up that crosses cores is an interrupt to another virtual CPU. This counts
those, for the whole process or (`--per-thread`) for the reactor thread and the others apart.

    python benches/sched_events.py [--variants python,rust_coroutine] [--connections 16]
        [--seconds 4] [--rounds 6] [--database sqlite|postgresql|DSN]
        [--extra-features N] [--per-thread]

Needs `perf` (Debian's linux-perf) and permission to read tracepoints of one's own
processes (`kernel.perf_event_paranoid` at most 2, and tracefs readable).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import wrk_versions  # noqa: E402

EVENTS = [
    "sched:sched_switch",
    "sched:sched_wakeup",
    "ipi:ipi_send_cpu",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_getrusage",
    "syscalls:sys_enter_epoll_wait",
    "task-clock",
]


def parse_stat(text: str, requests: int, main_tid: int | None = None) -> dict[str, float]:
    """Counts per request from `perf stat -x,` output (`task-clock` in µs), keyed
    `event`; or, with `main_tid` (output of `--per-thread`, rows
    `comm-tid,count,unit,event,...`), keyed `reactor event` for that thread and
    `other threads event` for the rest together. Events perf could not count
    (`<not counted>`, `<not supported>`) are left out."""
    per: dict[str, float] = {}
    for line in text.splitlines():
        fields = line.split(",")
        prefix = ""
        if main_tid is not None:
            tid = fields[0].rsplit("-", 1)[-1]
            if len(fields) < 4 or not tid.isdigit():
                continue
            prefix = "reactor " if int(tid) == main_tid else "other threads "
            fields = fields[1:]
        if len(fields) < 3 or not fields[0][:1].isdigit():
            continue
        value = float(fields[0])
        if fields[2] == "task-clock":
            value *= 1000  # perf reports milliseconds
        key = prefix + fields[2]
        per[key] = per.get(key, 0.0) + value / requests
    return per


def window(pid: int, url: str, where: wrk_versions.Placement, args: argparse.Namespace) -> dict[str, float]:
    """One window of load: the events per request, and requests per second."""
    out = Path(tempfile.mkdtemp(prefix="pyo3-twisted-sched-")) / "stat.csv"
    command = ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(pid), "-o", str(out)]
    if args.per_thread:
        command.insert(2, "--per-thread")
    counter = subprocess.Popen(command)
    try:
        row = wrk_versions.wrk(url, args.connections, args.seconds, where)
    finally:
        counter.send_signal(signal.SIGINT)
        counter.wait(timeout=60)
    text = out.read_text()
    out.unlink()
    out.parent.rmdir()
    per = parse_stat(text, row["requests"], pid if args.per_thread else None)
    per["req/s"] = row["requests"] / args.seconds
    return per


def main() -> int:
    parser = argparse.ArgumentParser()
    wrk_versions.handler_options(parser, seconds=4, rounds=6)
    parser.add_argument("--per-thread", action="store_true", help="the reactor thread apart from the others")
    args = parser.parse_args()
    wrk_versions.require_tool("perf")
    names, label, windows = wrk_versions.paired_windows(
        args, "pyo3-twisted-sched-", lambda pid, url, where: window(pid, url, where, args)
    )
    print(
        f"the demo process, per request (task-clock in µs), {args.connections} connections, {label},"
        f" medians of {args.rounds} windows of {args.seconds} s"
    )
    scopes = ["reactor ", "other threads "] if args.per_thread else [""]
    wanted = [scope + event for scope in scopes for event in EVENTS] + ["req/s"]
    keys = [k for k in wanted if all(k in w for ws in windows.values() for w in ws)]
    base = windows[names[0]]
    print(f"{'':44}" + "".join(f"{name:>18}" for name in names) + "".join(f"{'minus ' + names[0]:>22}" for _ in names[1:]))
    for key in keys:
        medians = "".join(f"{statistics.median(w[key] for w in windows[n]):18.3f}" for n in names)
        paired = "".join(
            f"{statistics.median(w[key] - b[key] for w, b in zip(windows[n], base)):+22.3f}" for n in names[1:]
        )
        print(f"{key:44}{medians}{paired}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
