"""Where the demo's CPU time goes, per thread, under wrk: the Python `/versions`
handler against the Rust one, each in its own demo process, in alternating windows.

For each window: requests/s, and per request the CPU time (user + system, from
/proc's schedstat, in nanoseconds) of the reactor thread, of the database pool's
threads and of the Tokio workers, with the process's user and system split. The
medians of the windows, and of the per-window ratios against the first variant.

    python benches/thread_cpu.py [--variants python,rust_coroutine] [--connections 16]
        [--seconds 4] [--rounds 6] [--database sqlite|postgresql|DSN] [--extra-features N]

`--database postgresql` takes the server from `PYO3_TWISTED_TEST_PG_DSN`:
`PYO3_TWISTED_TEST_PG_DSN=$(cat target/pg-dsn)` after `make postgres`.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import wrk_versions  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[str, tuple[str, int, int, int]]:
    """Each thread's kind, run time (ns), user and system ticks."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except FileNotFoundError:  # gone meanwhile
            continue
        kind = "reactor" if int(tid) == pid else ("tokio" if "tokio" in comm or "pyo3" in comm else "pool")
        out[tid] = (kind, ns, int(stat[11]), int(stat[12]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="python,rust_coroutine")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--database", default="sqlite", help="sqlite, postgresql (the server in PYO3_TWISTED_TEST_PG_DSN) or a DSN")
    parser.add_argument(
        "--extra-features", type=int, default=0, help="known features beyond the demo's four (the demo's --extra-features)"
    )
    args = parser.parse_args()
    names = args.variants.split(",")
    demo_args = wrk_versions.extra_features_args(args.extra_features)
    paths = {n: (p, e) for n, p, e in wrk_versions.ALL_VARIANTS}
    database, label = wrk_versions.database_option(args.database, "pyo3-twisted-threads-")
    running = {}
    windows: dict[str, list[collections.Counter[str]]] = collections.defaultdict(list)
    try:
        for name in names:
            path, extra = paths[name]
            proc, port = wrk_versions.start_demo(database, extra + demo_args)
            running[name] = (proc, f"http://127.0.0.1:{port}{path}?user_id={wrk_versions.USER}")
            wrk_versions.wrk(running[name][1], 4, 1)  # warm-up
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                proc, url = running[name]
                before = threads(proc.pid)
                row = wrk_versions.wrk(url, args.connections, args.seconds)
                after = threads(proc.pid)
                per: collections.Counter[str] = collections.Counter()
                for tid, (kind, ns, user, system) in after.items():
                    _, ns0, user0, system0 = before.get(tid, (kind, 0, 0, 0))
                    per[kind] += (ns - ns0) / 1000 / row["requests"]
                    per["user"] += (user - user0) / CLK_TCK * 1e6 / row["requests"]
                    per["sys"] += (system - system0) / CLK_TCK * 1e6 / row["requests"]
                per["rps"] = row["rps"]
                windows[name].append(per)
    finally:
        for proc, _ in running.values():
            proc.terminate()
            proc.wait(timeout=30)
    keys = ["rps", "reactor", "pool", "tokio", "user", "sys"]
    print(f"{label}, {args.connections} connections, {args.rounds} windows of {args.seconds} s each; µs per request")
    for name in names:
        print(f"{name:16}", "  ".join(f"{k} {statistics.median(w[k] for w in windows[name]):7.1f}" for k in keys))
    base = windows[names[0]]
    for name in names[1:]:
        ratios = (
            f"{k} {statistics.median(w[k] / b[k] for w, b in zip(windows[name], base) if b[k]):.3f}"
            for k in ["rps", "reactor", "pool", "user", "sys"]
        )
        print(f"{name:16} against {names[0]}:", "  ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
