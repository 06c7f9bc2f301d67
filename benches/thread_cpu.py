"""Where the demo's CPU time goes, per thread, under wrk: the Python `/versions`
handler against the Rust one, each in its own demo process, in windows taken in turn.

For each window: requests/s, and per request the CPU time (user + system, from
/proc's schedstat, in nanoseconds) of the reactor thread, of the database pool's
threads and of the Tokio workers, with the process's user and system split, and the
process's minor page faults and voluntary / involuntary context switches (kernel
work that callgrind does not see and strace does not count). The medians of the
windows, and of the per-window ratios against the first variant.

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
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).parent))
import wrk_versions  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Thread(NamedTuple):
    kind: str
    ns: int  # run time
    user: int  # ticks
    system: int  # ticks
    minflt: int
    vcsw: int  # voluntary context switches
    ivcsw: int  # involuntary ones


def threads(pid: int) -> dict[str, Thread]:
    """Each thread's kind, run time, CPU ticks, minor faults and context switches."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        task = Path(f"/proc/{pid}/task/{tid}")
        try:
            comm = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
            ns = int((task / "schedstat").read_text().split()[0])
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        except FileNotFoundError:  # gone meanwhile
            continue
        kind = "reactor" if int(tid) == pid else ("tokio" if "tokio" in comm or "pyo3" in comm else "pool")
        out[tid] = Thread(
            kind,
            ns,
            int(stat[11]),
            int(stat[12]),
            int(stat[7]),
            int(status["voluntary_ctxt_switches"]),
            int(status["nonvoluntary_ctxt_switches"]),
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    wrk_versions.handler_options(parser, seconds=4, rounds=6)
    args = parser.parse_args()
    names = args.variants.split(",")
    variants = wrk_versions.chosen_variants(names, wrk_versions.extra_features_args(args.extra_features))
    database, label = wrk_versions.database_option(args.database, "pyo3-twisted-threads-")
    windows: dict[str, list[collections.Counter[str]]] = collections.defaultdict(list)
    where = wrk_versions.placement(args.demo_cpus)
    with wrk_versions.running_demos(database, variants, where) as running:
        for round_ in range(args.rounds):
            for name in wrk_versions.rotated(names, round_):
                proc, url = running[name]
                before = threads(proc.pid)
                row = wrk_versions.wrk(url, args.connections, args.seconds, where)
                after = threads(proc.pid)
                per: collections.Counter[str] = collections.Counter()
                for tid, now in after.items():
                    then = before.get(tid, Thread(now.kind, 0, 0, 0, 0, 0, 0))
                    n = row["requests"]
                    per[now.kind] += (now.ns - then.ns) / 1000 / n
                    per["user"] += (now.user - then.user) / CLK_TCK * 1e6 / n
                    per["sys"] += (now.system - then.system) / CLK_TCK * 1e6 / n
                    per["minflt"] += (now.minflt - then.minflt) / n
                    per["vcsw"] += (now.vcsw - then.vcsw) / n
                    per["ivcsw"] += (now.ivcsw - then.ivcsw) / n
                per["rps"] = row["rps"]
                windows[name].append(per)
    keys = ["rps", "reactor", "pool", "tokio", "user", "sys"]
    counts = ["minflt", "vcsw", "ivcsw"]
    print(
        f"{label}, {args.connections} connections, {args.rounds} windows of {args.seconds} s each;"
        " µs, faults and context switches per request"
    )
    for name in names:
        print(
            f"{name:16}",
            "  ".join(f"{k} {statistics.median(w[k] for w in windows[name]):7.1f}" for k in keys),
            "  ".join(f"{k} {statistics.median(w[k] for w in windows[name]):.3f}" for k in counts),
        )
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
