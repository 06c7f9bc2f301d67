"""The benchmark scripts' parsers, on made-up input (a wrong parse would print
plausible figures, and nothing else would notice), their check for missing tools,
and one short run of the in-process handler case."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))

import cost_model  # noqa: E402
import perf_share  # noqa: E402
import sched_events  # noqa: E402

# A callgrind dump of one thread: `main` calls the collector twice and something
# else once; `visit` calls it once more, naming it by number only.
DUMP = """\
events: Ir Dr
fn=(1) main
0 100 10
cfn=(2) gc_collect_main
calls=2 0
0 50 5
cfn=(3) other
calls=1 0
0 7 1
fn=(2)
0 50 5
fn=(4) visit
0 1 0
cfn=(2)
calls=1 0
0 3 0
summary: 211 21
"""


def test_the_collector_cost_is_what_its_callers_spent_inside_it():
    assert cost_model.collector_cost(DUMP, 2) == [53, 5]


def test_a_dump_without_the_collector_costs_nothing():
    assert cost_model.collector_cost(DUMP.replace("gc_collect_main", "gc_something_else"), 2) == [0, 0]


def test_perf_samples_are_grouped_by_shared_object():
    assert perf_share.category("_native.abi3.so") == "extension"
    assert perf_share.category("libpython3.11.so.1.0") == "interpreter"
    assert perf_share.category("libc.so.6") == "libc"
    assert perf_share.category("[kernel.kallsyms]") == "kernel"
    assert perf_share.category("_json.cpython-311-x86_64-linux-gnu.so") == "other"


# `perf stat -x,` of a process, whole and `--per-thread` (the reactor is tid 100).
STAT = """\
# started on Sun Dec  6 07:12:28 2026

400,,sched:sched_switch,9592205,100.00,96.328,K/sec
<not counted>,,ipi:ipi_send_cpu,0,100.00,,
50.0,msec,task-clock,9592205,100.00,0.010,CPUs utilized
"""
STAT_PER_THREAD = """\
# started on Sun Dec  6 07:12:28 2026

python3-100,300,,sched:sched_switch,9592205,100.00,96.328,K/sec
python3-101,60,,sched:sched_switch,8491994,100.00,108.691,K/sec
python3-102,40,,sched:sched_switch,8894299,100.00,103.662,K/sec
python3-100,<not counted>,,ipi:ipi_send_cpu,0,100.00,,
python3-100,30.0,msec,task-clock,9592205,100.00,0.010,CPUs utilized
python3-101,20.0,msec,task-clock,8491994,100.00,0.009,CPUs utilized
"""


def test_kernel_events_are_counted_per_request_with_task_clock_in_microseconds():
    assert sched_events.parse_stat(STAT, 100) == {"sched:sched_switch": 4.0, "task-clock": 500.0}


def test_per_thread_events_put_the_reactor_apart_from_the_other_threads():
    assert sched_events.parse_stat(STAT_PER_THREAD, 100, main_tid=100) == {
        "reactor sched:sched_switch": 3.0,
        "other threads sched:sched_switch": 1.0,
        "reactor task-clock": 300.0,
        "other threads task-clock": 200.0,
    }


def test_a_missing_tool_exits_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import wrk_versions

    monkeypatch.setattr(wrk_versions.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install linux-perf"):
        wrk_versions.require_tool("perf")
    with pytest.raises(SystemExit, match="apt-get install wrk"):
        wrk_versions.require_tool("wrk")
    monkeypatch.setattr(wrk_versions.shutil, "which", lambda name: f"/usr/bin/{name}")
    wrk_versions.require_tool("wrk")


def test_demo_cpus_pin_the_demos_there_and_wrk_on_the_other_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import wrk_versions

    monkeypatch.setattr(wrk_versions.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(wrk_versions.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert wrk_versions.placement(None) == wrk_versions.Placement()
    where = wrk_versions.placement("0-1")
    assert where.demo == ("taskset", "-c", "0,1")
    assert where.wrk == ("taskset", "-c", "2,3")
    # Every CPU to the demos: wrk is left to the scheduler.
    assert wrk_versions.placement("0,1,2-3").wrk == ()
    for bad in ["x", "7", "1-"]:
        with pytest.raises(SystemExit, match="--demo-cpus"):
            wrk_versions.placement(bad)


def test_the_median_interval_holds_the_median_and_reads_the_same_twice() -> None:
    import wrk_versions

    assert wrk_versions.median_interval([[1.02] * 3] * 4) == (1.02, 1.02)
    values = [0.9, 0.95, 0.97, 0.99, 1.0, 1.01, 1.02, 1.03, 1.05, 1.1, 1.2, 0.8]
    low, high = wrk_versions.median_interval([values])
    assert min(values) <= low < 1.005 < high <= max(values)
    assert wrk_versions.median_interval([values]) == (low, high)
    # The same values, in sets of processes that disagree with each other: the
    # interval is wider than if the windows were independent.
    sets = [[0.9, 0.91, 0.92], [0.97, 0.98, 0.99], [1.01, 1.02, 1.03], [1.08, 1.09, 1.1]]
    flat = wrk_versions.median_interval([[v for s in sets for v in s]])
    clustered = wrk_versions.median_interval(sets)
    assert clustered[1] - clustered[0] > flat[1] - flat[0]
    for bad in [[], [[]], [[1.0], []]]:
        with pytest.raises(ValueError):
            wrk_versions.median_interval(bad)


def test_the_verdict_says_unsettled_when_the_run_cannot_tell() -> None:
    import wrk_versions

    assert wrk_versions.verdict(1.0, (0.95, 0.99)) == "met"
    assert wrk_versions.verdict(1.0, (0.97, 1.04)) == "unsettled"
    assert wrk_versions.verdict(1.0, (1.01, 1.05)) == "NOT MET"
    # Too few requests per second is never made up for by CPU.
    assert wrk_versions.verdict(0.94, (0.90, 0.95)) == "NOT MET"


def test_a_callgrind_files_totals_are_read_by_event() -> None:
    import handler_instructions

    text = "version: 1\nevents: Ir I1mr D1mr D1mw\nfn=main\n1 2 3 4 5\nsummary: 120 7 5 3\ntotals: 120 7 5 3\n"
    assert handler_instructions.thread_events(text) == {"Ir": 120, "I1mr": 7, "D1mr": 5, "D1mw": 3}
    # A thread's file without a summary (it ran nothing) counts for nothing.
    assert handler_instructions.thread_events("version: 1\nevents: Ir\n") == {}


def test_the_other_threads_cpu_time_counts_them_and_not_the_caller() -> None:
    import threading
    import time

    import cases

    burned = threading.Event()
    leave = threading.Event()

    def busy() -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.05:
            pass
        burned.set()
        leave.wait()

    before = cases.others_cpu_time()
    worker = threading.Thread(target=busy)
    worker.start()
    try:
        assert burned.wait(30)
        # The caller's own CPU time is left out.
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass
        spent = cases.others_cpu_time() - before
    finally:
        leave.set()
        worker.join()
    assert 0.045 <= spent < 0.3


def test_handler_cpu_judges_a_side_by_its_interval() -> None:
    import handler_cpu

    assert handler_cpu.cpu_verdict((0.98, 0.995)) == "met"
    assert handler_cpu.cpu_verdict((0.995, 1.004)) == "unsettled"
    assert handler_cpu.cpu_verdict((1.015, 1.026)) == "NOT MET"


def test_handler_cpu_gives_both_handlers_the_extra_features() -> None:
    # One short run of the case handler_cpu.py runs: with 36 extra features, every
    # side answers 40 flags (the case checks they answer alike), and each batch gets
    # its ratio to the twin.
    import handler_cpu

    params = {"m": 2, "reps": 2, "pairs": 1, "sides": ["python", "rust_interaction"], "extra_features": 36}
    raw = handler_cpu.run_case("handler_paired", params, timeout=120)
    assert raw["flags"] == 40
    assert len(raw["paired_cpu_ratio_interaction"]) == 2
    assert all(ratio > 0 for ratio in raw["paired_cpu_ratio_interaction"])
