"""`make bench`: pyo3-twisted against its peers, in one run, on this machine.

Every row runs in fresh interpreters (a Twisted reactor runs once per process):
--procs rounds (3), each running every row once in a process of --reps repetitions
(2), since on a small VM the figures move between processes as much as within one
(thread placement), and rows compared with each other should share that drift. Prints µs
per operation (median over all runs, min-max) with each row's ratio to its
baselines and the goals of issue 6, writes the same as JSON, and draws throughput
against concurrency for each strategy (one process of 3 repetitions per point).

    python benches/bench.py [--procs N] [--reps N] [--quick] [--no-curve] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from handler_cpu import run_case  # noqa: E402

ROWS = [
    # name, case, params, description
    ("floor", "deferred_floor", {"n": 10_000}, "plain-Python Deferred create+callback+fire"),
    ("floor_lc", "deferred_floor", {"n": 10_000, "logcontext": True}, "the floor inside a request's logcontext (same dance as ours_conc_lc)"),
    ("pingpong", "pingpong", {"m": 2_000}, "callFromThread ping-pong, Python thread <-> reactor"),
    ("dtt_conc", "twisted", {"strategy": "defer_to_thread", "mode": "concurrent", "n": 10_000}, "deferToThread, 10k concurrent"),
    ("dtt_seq", "twisted", {"strategy": "defer_to_thread", "mode": "sequential", "m": 2_000}, "deferToThread, sequential"),
    ("naive_conc", "twisted", {"strategy": "naive", "mode": "concurrent", "n": 10_000}, "naive GIL-per-completion bridge, 10k concurrent"),
    ("naive_seq", "twisted", {"strategy": "naive", "mode": "sequential", "m": 2_000}, "naive GIL-per-completion bridge, sequential"),
    ("asyncio_conc", "asyncio", {"mode": "concurrent", "n": 10_000}, "pyo3-async-runtimes on asyncio, 10k concurrent"),
    ("asyncio_seq", "asyncio", {"mode": "sequential", "m": 2_000}, "pyo3-async-runtimes on asyncio, sequential"),
    ("ours_conc", "twisted", {"strategy": "ours", "mode": "concurrent", "n": 10_000}, "create_deferred, 10k concurrent"),
    ("ours_conc_nometrics", "twisted", {"strategy": "ours", "mode": "concurrent", "n": 10_000, "metrics": False}, "create_deferred, 10k concurrent, histograms off (metrics=False)"),
    ("ours_conc_own", "twisted", {"strategy": "ours", "mode": "concurrent", "n": 10_000, "tokio": "per_reactor"}, "create_deferred, 10k concurrent, a Tokio pool of the reactor's own"),
    ("ours_conc_prov", "twisted", {"strategy": "ours", "mode": "concurrent", "n": 10_000, "provider_only": True}, "create_deferred, pyo3_twisted.logcontext provider, caller in the sentinel"),
    ("ours_conc_lc", "twisted", {"strategy": "ours", "mode": "concurrent", "n": 10_000, "logcontext": True}, "create_deferred + pyo3_twisted.logcontext, 10k concurrent"),
    ("ours_conc_100k", "twisted", {"strategy": "ours", "mode": "concurrent", "n": 100_000}, "create_deferred, 100k concurrent"),
    ("ours_seq", "twisted", {"strategy": "ours", "mode": "sequential", "m": 2_000}, "create_deferred, sequential"),
    ("ours_seq_own", "twisted", {"strategy": "ours", "mode": "sequential", "m": 2_000, "tokio": "per_reactor"}, "create_deferred, sequential, a Tokio pool of the reactor's own"),
    ("ours_conc_aio", "twisted", {"strategy": "ours", "mode": "concurrent", "n": 10_000, "reactor": "asyncio"}, "create_deferred on Twisted's asyncio reactor, 10k concurrent"),
    ("ours_seq_aio", "twisted", {"strategy": "ours", "mode": "sequential", "m": 2_000, "reactor": "asyncio"}, "create_deferred on Twisted's asyncio reactor, sequential"),
    ("await_conc", "awaitable", {"mode": "concurrent", "n": 10_000}, "run_python_awaitable from Tokio, 10k concurrent"),
    ("await_seq", "awaitable", {"mode": "sequential", "m": 2_000}, "run_python_awaitable from Tokio, sequential"),
    ("txn_rust", "interaction_sqlite", {"side": "rust", "m": 1_000}, "SQLite SELECT via run_interaction (Rust)"),
    ("txn_python", "interaction_sqlite", {"side": "python", "m": 1_000}, "SQLite SELECT via runInteraction (Python)"),
    ("txn_rust_polls", "interaction_sqlite", {"side": "rust", "m": 1_000, "reactor_polls": True}, "SQLite SELECT via run_interaction (Rust), reactor_polls"),
    ("pg_txn_rust", "interaction_sqlite", {"side": "rust", "m": 1_000, "database": "postgresql"}, "PostgreSQL SELECT via run_interaction (Rust) on the Python pool, sequential"),
    ("pg_txn_rust_polls", "interaction_sqlite", {"side": "rust", "m": 1_000, "database": "postgresql", "reactor_polls": True}, "PostgreSQL SELECT via run_interaction (Rust) on the Python pool, sequential, reactor_polls"),
    ("pg_txn_python", "interaction_sqlite", {"side": "python", "m": 1_000, "database": "postgresql"}, "PostgreSQL SELECT via runInteraction (Python), sequential"),
    ("handler_paired", "handler_paired", {"m": 300}, "the demo's /versions handler in process (SQLite, a logcontext per request): Rust with reactor_polls, alternating with its Python twin as a coroutine and behind a Deferred"),
    ("handler_paired_40", "handler_paired", {"m": 300, "extra_features": 36, "sides": ["rust_interaction", "python"]}, "the same handler answering 40 flags (Synapse's /versions answers ~40): run_interaction_coroutine alternating with its Python twin"),
    ("txn_polls_paired", "interaction_sqlite", {"side": "paired", "m": 500, "reactor_polls": True}, "SQLite SELECT via run_interaction (Rust), reactor_polls, alternating with runInteraction (Python) in one process"),
    ("pg_txn_polls_paired", "interaction_sqlite", {"side": "paired", "m": 500, "database": "postgresql", "reactor_polls": True}, "the same on PostgreSQL through the Python pool"),
    ("txn_coroutine_paired", "interaction_sqlite", {"side": "paired", "m": 500, "reactor_polls": True, "coroutine": True}, "SQLite SELECT via run_interaction (Rust) in a create_coroutine coroutine, alternating with runInteraction (Python) in one process"),
    ("pg_txn_coroutine_paired", "interaction_sqlite", {"side": "paired", "m": 500, "database": "postgresql", "reactor_polls": True, "coroutine": True}, "the same on PostgreSQL through the Python pool"),
    ("txn_interaction_paired", "interaction_sqlite", {"side": "paired", "m": 500, "interaction": True}, "SQLite SELECT via run_interaction_coroutine (Rust, no Rust future), alternating with runInteraction (Python) in one process"),
    ("pg_txn_interaction_paired", "interaction_sqlite", {"side": "paired", "m": 500, "database": "postgresql", "interaction": True}, "the same on PostgreSQL through the Python pool"),
    ("ours_conc_polls", "twisted", {"strategy": "ours", "mode": "concurrent", "n": 10_000, "reactor_polls": True}, "create_deferred, 10k concurrent, reactor_polls (ready futures finish inside create_deferred)"),
    ("ours_seq_polls", "twisted", {"strategy": "ours", "mode": "sequential", "m": 2_000, "reactor_polls": True}, "create_deferred, sequential, reactor_polls"),
    ("pg_native", "pg_throughput", {"pool": "native", "total": 1_000}, "PostgreSQL, native pool, concurrency 8"),
    ("pg_python", "pg_throughput", {"pool": "python", "total": 1_000}, "PostgreSQL, Python pool via run_interaction, concurrency 8"),
    ("pg_native_unnamed", "pg_throughput", {"pool": "native", "total": 1_000, "statement_cache": False}, "PostgreSQL, native pool, no statement cache (unnamed statements), concurrency 8"),
    ("pg_native_tls", "pg_throughput", {"pool": "native", "total": 1_000, "server": "tls"}, "PostgreSQL over TLS (sslmode=require), native pool, concurrency 8"),
    ("pg_python_tls", "pg_throughput", {"pool": "python", "total": 1_000, "server": "tls"}, "PostgreSQL over TLS (sslmode=require), Python pool (psycopg2), concurrency 8"),
    ("pg_native_bouncer", "pg_throughput", {"pool": "native", "total": 1_000, "server": "bouncer", "statement_cache": False}, "PgBouncer (transaction mode), native pool without statement cache, concurrency 8"),
    ("pg_python_bouncer", "pg_throughput", {"pool": "python", "total": 1_000, "server": "bouncer"}, "PgBouncer (transaction mode), Python pool (psycopg2), concurrency 8"),
    ("syn_versions_conc", "synapse_versions", {"impl": "synapse", "mode": "concurrent", "n": 10_000}, "Synapse 1.163.2's own RustHandlers.versions.get_versions(), 10k concurrent"),
    ("syn_versions_seq", "synapse_versions", {"impl": "synapse", "mode": "sequential", "m": 2_000}, "Synapse 1.163.2's own RustHandlers.versions.get_versions(), sequential"),
    ("port_versions_conc", "synapse_versions", {"impl": "ours", "mode": "concurrent", "n": 10_000}, "the same handler on pyo3_twisted::synapse, 10k concurrent"),
    ("port_versions_seq", "synapse_versions", {"impl": "ours", "mode": "sequential", "m": 2_000}, "the same handler on pyo3_twisted::synapse, sequential"),
    ("sleep10_ours", "sleep_accuracy", {"clock": "crate", "measure": "overshoot", "n": 100}, "pyo3_twisted::time::sleep(10 ms) on epoll: overshoot past 10 ms"),
    ("sleep10_tokio", "sleep_accuracy", {"clock": "tokio", "measure": "overshoot", "n": 100}, "tokio::time::sleep(10 ms) in a bridged task: overshoot past 10 ms"),
    ("sleep10_ours_cpu", "sleep_accuracy", {"clock": "crate", "measure": "cpu", "n": 100}, "pyo3_twisted::time::sleep(10 ms): process CPU per sleep"),
    ("sleep10_tokio_cpu", "sleep_accuracy", {"clock": "tokio", "measure": "cpu", "n": 100}, "tokio::time::sleep(10 ms): process CPU per sleep"),
    ("cpu_on", "cpu_accounting", {"track": True, "n": 200_000}, "per poll, CPU accounting on"),
    ("cpu_off", "cpu_accounting", {"track": False, "n": 200_000}, "per poll, CPU accounting off"),
]

CURVE_STRATEGIES = {
    "ours (create_deferred)": ("twisted", {"strategy": "ours"}),
    "naive GIL bridge": ("twisted", {"strategy": "naive"}),
    "pyo3-async-runtimes (asyncio)": ("asyncio", {}),
    "deferToThread": ("twisted", {"strategy": "defer_to_thread"}),
}
CURVE_CONCURRENCY = [1, 10, 100, 1_000, 10_000, 100_000]

# (description, row, key, bound): the median of the row's per-pair ratios (`key`)
# against a baseline measured in the same process, "<=".
PAIRED_GOALS = [
    ("17. Rust run_interaction with reactor_polls vs Python runInteraction, paired in one process (SQLite)", "txn_polls_paired", "paired_ratio", 1.1),
    ("17. ... the same on PostgreSQL through the Python pool, paired", "pg_txn_polls_paired", "paired_ratio", 1.1),
    ("17. Rust run_interaction in a create_coroutine coroutine vs Python runInteraction, paired (SQLite)", "txn_coroutine_paired", "paired_ratio", 1.1),
    ("17. ... the same on PostgreSQL through the Python pool, paired", "pg_txn_coroutine_paired", "paired_ratio", 1.1),
    ("17. Rust run_interaction_coroutine vs Python runInteraction, paired (SQLite)", "txn_interaction_paired", "paired_ratio", 1.1),
    ("17. ... the same on PostgreSQL through the Python pool, paired", "pg_txn_interaction_paired", "paired_ratio", 1.1),
    ("17. the demo's Rust handler vs its Python twin awaited as a coroutine, paired (no HTTP)", "handler_paired", "paired_ratio", 1.0),
    ("17. ... vs the Python twin behind the same Deferred boundary, paired: the bridge costs no more than that boundary", "handler_paired", "paired_ratio_deferred", 1.0),
    ("17. the demo's Rust handler as a coroutine (create_coroutine) vs its Python twin, paired (no HTTP)", "handler_paired", "paired_ratio_coroutine", 1.0),
    ("17. the demo's Rust handler through run_interaction_coroutine vs its Python twin, paired (no HTTP)", "handler_paired", "paired_ratio_interaction", 1.0),
    ("17. ... its process CPU per request against the twin's, paired (no HTTP)", "handler_paired", "paired_cpu_ratio_interaction", 1.0),
    ("17. the demo's Rust handler (reactor_polls): process CPU per request against the twin's, paired (no HTTP)", "handler_paired", "paired_cpu_ratio", 1.0),
    ("17. run_interaction_coroutine answering 40 flags, as Synapse's /versions does: process CPU per request against the twin's, paired (no HTTP)", "handler_paired_40", "paired_cpu_ratio_interaction", 1.0),
]

# (description, numerator row, denominator row, bound, "<=" or ">=")
GOALS = [
    ("1. create_deferred 10k concurrent vs Deferred floor", "ours_conc", "floor", 3.0, "<="),
    ("1. ... with the pyo3_twisted.logcontext provider vs floor", "ours_conc_prov", "floor", 4.0, "<="),
    ("1. ... inside a request's logcontext vs the floor in one", "ours_conc_lc", "floor_lc", 4.0, "<="),
    ("1. naive bridge vs create_deferred, 10k concurrent", "naive_conc", "ours_conc", 10.0, ">="),
    ("2. create_deferred sequential vs ping-pong", "ours_seq", "pingpong", 0.5, "<="),
    ("3. run_python_awaitable 10k concurrent vs floor", "await_conc", "floor", 4.0, "<="),
    ("3. run_python_awaitable sequential vs ping-pong", "await_seq", "pingpong", 0.8, "<="),
    ("4. Rust run_interaction vs Python runInteraction (SQLite)", "txn_rust", "txn_python", 1.15, "<="),
    ("4. Python pool vs native pool time per txn (PostgreSQL)", "pg_python", "pg_native", 3.0, ">="),
    ("17. Rust run_interaction with reactor_polls vs Python runInteraction (SQLite)", "txn_rust_polls", "txn_python", 1.1, "<="),
    ("17. ... the same on PostgreSQL through the Python pool", "pg_txn_rust_polls", "pg_txn_python", 1.1, "<="),
    ("14. native pool without vs with its statement cache (PostgreSQL)", "pg_native_unnamed", "pg_native", 1.5, "<="),
    ("14. native pool over TLS vs without (PostgreSQL)", "pg_native_tls", "pg_native", 1.5, "<="),
    ("14. Python pool vs native pool, both over TLS", "pg_python_tls", "pg_native_tls", 1.0, ">="),
    ("14. Python pool vs native pool, both through PgBouncer", "pg_python_bouncer", "pg_native_bouncer", 1.0, ">="),
    ("5. 100k vs 10k concurrent, per completion", "ours_conc_100k", "ours_conc", 1.5, "<="),
    ("6. asyncio reactor: create_deferred vs pyo3-async-runtimes, 10k concurrent", "ours_conc_aio", "asyncio_conc", 0.5, "<="),
    ("6. asyncio reactor: create_deferred vs pyo3-async-runtimes, sequential", "ours_seq_aio", "asyncio_seq", 0.5, "<="),
    ("7. shared process pool (default) vs a pool of the reactor's own, 10k concurrent", "ours_conc", "ours_conc_own", 1.15, "<="),
    ("7. shared process pool (default) vs a pool of the reactor's own, sequential", "ours_seq", "ours_seq_own", 1.15, "<="),
    ("8. Synapse's /versions handler ported to pyo3_twisted::synapse vs Synapse 1.163.2's own, 10k concurrent", "port_versions_conc", "syn_versions_conc", 1.0, "<="),
    ("8. Synapse's /versions handler ported to pyo3_twisted::synapse vs Synapse 1.163.2's own, sequential", "port_versions_seq", "syn_versions_seq", 1.0, "<="),
    ("10. create_deferred 10k concurrent, histograms on (default) vs off", "ours_conc", "ours_conc_nometrics", 1.05, "<="),
    ("9. pyo3_twisted::time::sleep(10 ms) vs tokio::time::sleep, overshoot (epoll)", "sleep10_ours", "sleep10_tokio", 1.5, "<="),
    ("9. pyo3_twisted::time::sleep(10 ms) vs tokio::time::sleep, CPU per sleep (epoll)", "sleep10_ours_cpu", "sleep10_tokio_cpu", 1.2, "<="),
]


def summary(us: list[float]) -> dict:
    return {"median": statistics.median(us), "min": min(us), "max": max(us), "runs": us}


def scaled(params: dict, quick: bool) -> dict:
    if not quick:
        return params
    small = lambda k, v: max(10, v // 10) if k == "n" and params.get("measure") else max(100, v // 10)  # noqa: E731
    return {k: (small(k, v) if k in ("n", "m", "total") and isinstance(v, int) else v) for k, v in params.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sizes, for trying the script")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--no-curve", action="store_true")
    parser.add_argument("--rows", help="comma-separated row names: run only these (and no curve)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    results: dict = {}
    # A partial run keeps the two baselines every ratio is printed against.
    only = set(args.rows.split(",")) | {"floor", "pingpong"} if args.rows else None
    selected = []
    for name, case, params, description in ROWS:
        if only is not None and name not in only:
            continue
        if name.startswith("pg_") and not os.environ.get("PYO3_TWISTED_TEST_PG_DSN"):
            print(f"  {name}: no PostgreSQL (set PYO3_TWISTED_TEST_PG_DSN; make bench does)", flush=True)
            continue
        selected.append((name, case, params, description))
    # Rounds: each round runs every row once, so a row and the baseline it is
    # compared with see the same drift of this VM (thread placement, neighbours)
    # instead of running minutes apart.
    runs: dict = {name: [] for name, *_ in selected}
    extra: dict = {name: {} for name, *_ in selected}
    for round_no in range(args.procs):
        for name, case, params, description in selected:
            raw = run_case(case, {**scaled(params, args.quick), "reps": args.reps})
            runs[name] += raw["us"]
            for key, value in raw.items():
                if key.startswith("paired_"):
                    extra[name][key] = extra[name].get(key, []) + value
                elif key != "us":
                    extra[name][key] = value
            if round_no == args.procs - 1:
                results[name] = {"description": description, **summary(runs[name]), **extra[name]}
                print(f"  {name:15} {results[name]['median']:9.2f} µs  {description}", flush=True)
    memory = run_case("memory", {"n": 10_000 if args.quick else 100_000})
    results["memory"] = memory
    print(f"  memory          {memory['bytes_per_inflight']:.0f} B per in-flight future", flush=True)

    curve: dict = {}
    if not args.no_curve and only is None:
        for label, (case, base) in CURVE_STRATEGIES.items():
            curve[label] = {}
            previous = 0.0
            for c in CURVE_CONCURRENCY:
                if args.quick and c > 10_000:
                    continue
                total = max(c, 2_000 if args.quick else 20_000)
                # A point predicted to take over a minute is left out (and said so).
                if previous * total * 4 / 1e6 > 60:
                    print(f"  curve {label:30} c={c:<7} skipped: ~{previous:.0f} µs/completion at the previous point", flush=True)
                    continue
                params = {**base, "mode": "batches", "c": c, "total": total, "reps": 3}
                us = run_case(case, params)["us"]
                curve[label][c] = previous = statistics.median(us)
                print(f"  curve {label:30} c={c:<7} {curve[label][c]:9.2f} µs/completion", flush=True)
        curve["Deferred floor (plain Python)"] = {c: results["floor"]["median"] for c in CURVE_CONCURRENCY}

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "twisted": __import__("twisted").__version__,
        },
        "seconds": round(time.time() - started),
        "rows": results,
        "goals": evaluate(results),
        "curve": curve,
    }
    (out / ("partial.json" if only else "latest.json")).write_text(json.dumps(report, indent=2))
    print_table(report)
    if curve:
        draw(curve, out / "throughput.png")
        print(f"\nwrote {out / 'latest.json'} and {out / 'throughput.png'}")
    return 0


def evaluate(results: dict) -> list[dict]:
    goals = []
    for description, num, den, bound, op in GOALS:
        if num not in results or den not in results:
            continue
        ratio = results[num]["median"] / results[den]["median"]
        met = ratio <= bound if op == "<=" else ratio >= bound
        goals.append({"goal": description, "ratio": ratio, "bound": f"{op} {bound}", "met": met})
    for description, name, key, bound in PAIRED_GOALS:
        if name in results:
            ratio = statistics.median(results[name][key])
            goals.append({"goal": description, "ratio": ratio, "bound": f"<= {bound}", "met": ratio <= bound})
    if "cpu_on" in results and "cpu_off" in results:
        cost = results["cpu_on"]["median"] - results["cpu_off"]["median"]
        goals.append({"goal": "6. CPU accounting cost per poll (µs)", "ratio": cost, "bound": "<= 1.0", "met": cost <= 1.0})
    per_task = results["memory"]["bytes_per_inflight"]
    goals.append({"goal": "5. memory per in-flight future (bytes)", "ratio": per_task, "bound": "<= 2048", "met": per_task <= 2048})
    return goals


def print_table(report: dict) -> None:
    rows = report["rows"]
    floor = rows["floor"]["median"]
    pingpong = rows["pingpong"]["median"]
    print(f"\n{'row':16} {'median µs':>10} {'min-max µs':>17} {'÷floor':>8} {'÷ping-pong':>11}  description")
    for name, row in rows.items():
        if name == "memory":
            continue
        print(
            f"{name:16} {row['median']:10.2f} {row['min']:8.2f}-{row['max']:<8.2f} "
            f"{row['median'] / floor:8.2f} {row['median'] / pingpong:11.3f}  {row['description']}"
        )
    mem = rows["memory"]
    print(f"\nmemory: {mem['bytes_per_inflight']:.0f} B per in-flight future "
          f"(a bare Deferred: {mem['bytes_per_bare_deferred']:.0f} B)")
    print("\ngoals:")
    for g in report["goals"]:
        print(f"  [{'met' if g['met'] else 'NOT MET':7}] {g['goal']}: {g['ratio']:.3f} (goal {g['bound']})")


def draw(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in curve.items():
        xs = sorted(points)
        ys = [1e6 / points[x] for x in xs]
        style = "--" if "floor" in label else "-o"
        ax.plot(xs, ys, style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("futures in flight (concurrency)")
    ax.set_ylabel("completions per second")
    ax.set_title("Rust future -> Python completion throughput (epoll reactor / asyncio)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
