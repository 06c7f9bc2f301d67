"""pyo3_twisted::time: Rust timers that follow the reactor's clock.

On a memory reactor no real time passes: a timer fires when the test advances the
reactor past its deadline, and never before."""

import random
import time

import pytest
from twisted.internet.defer import CancelledError

import pyo3_twisted
from conftest import run_script
from pyo3_twisted import RuntimeShutdown, probes
from pyo3_twisted.testing import memory_reactor


def pump_until(reactor, condition, what):
    try:
        reactor.pump_until(condition)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def timers_pending(reactor):
    return pyo3_twisted.stats(reactor)["timers_pending"]


def wait_for_timers(reactor, n):
    pump_until(reactor, lambda: timers_pending(reactor) == n, f"{n} timers to be registered")


def fired(d):
    """A list that receives `d`'s result, which stays in `d`'s chain."""
    outcome = []

    def keep(result):
        outcome.append(result)
        return result

    d.addBoth(keep)
    return outcome


def test_memory_reactors_get_the_reactor_clock_and_real_ones_tokio():
    with memory_reactor() as memory:
        pyo3_twisted.install(memory)
        assert pyo3_twisted.stats(memory)["clock"] == "reactor"
    with memory_reactor() as memory:
        pyo3_twisted.install(memory, clock="tokio")
        assert pyo3_twisted.stats(memory)["clock"] == "tokio"
    result = run_script("real_clock.py")
    assert result["stats"]["clock"] == "tokio"
    with pytest.raises(ValueError, match="clock must be 'auto', 'reactor' or 'tokio'"):
        with memory_reactor() as memory:
            pyo3_twisted.install(memory, clock="virtual")


def test_an_hour_long_sleep_completes_when_the_reactor_advances_an_hour():
    started = time.monotonic()
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor")
        d = probes.clock_sleep(reactor, 3600.0)
        outcome = fired(d)
        wait_for_timers(reactor, 1)
        reactor.advance(3599.999)
        for _ in range(20):
            reactor.turn()
        assert outcome == [], "fired before its deadline"
        reactor.advance(0.001)
        assert reactor.get_success(d) == pytest.approx(3600.0)
        assert timers_pending(reactor) == 0 and reactor.getDelayedCalls() == []
    # The hour passed in virtual time only (the figure is in benches/README.md).
    assert time.monotonic() - started < 30


def test_10000_random_timers_fire_in_deadline_order_never_early_at_most_one_step_late():
    rng = random.Random(16)
    n = 10_000
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor")
        deadlines = [rng.uniform(0.001, 100.0) for _ in range(n)]
        woke_at = {}
        for i, seconds in enumerate(deadlines):
            probes.clock_sleep(reactor, seconds).addCallback(lambda at, i=i: woke_at.__setitem__(i, at))
        wait_for_timers(reactor, n)
        assert len(reactor.getDelayedCalls()) == 1, "one callLater serves them all"
        previous = 0.0
        while reactor.seconds() < 100.0:
            step = rng.uniform(0.01, 3.0)
            reactor.advance(step)
            now = reactor.seconds()
            due = sum(1 for d in deadlines if d <= now)
            pump_until(reactor, lambda: len(woke_at) == due, f"the {due} timers due by {now}")
            early = [i for i in woke_at if deadlines[i] > now]
            assert early == [], "fired before the deadline"
            for i, at in woke_at.items():
                if previous < deadlines[i] <= now:
                    # Fired in the step that passed its deadline, seeing that step's time.
                    assert at == pytest.approx(now), (i, deadlines[i], at, now)
            previous = now
        assert len(woke_at) == n
        by_deadline = sorted(range(n), key=deadlines.__getitem__)
        times = [woke_at[i] for i in by_deadline]
        assert times == sorted(times), "a later deadline fired before an earlier one"
        stats = pyo3_twisted.stats(reactor)
        assert stats["timers_fired"] == n and stats["timers_pending"] == 0


def test_timeout_fails_exactly_when_virtual_time_passes_its_duration():
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor")
        d = probes.clock_timeout_never(reactor, 5.0)
        outcome = fired(d)
        wait_for_timers(reactor, 1)
        reactor.advance(4.999)
        for _ in range(20):
            reactor.turn()
        assert outcome == []
        reactor.advance(0.001)
        failure = reactor.get_failure(d, TimeoutError)
        assert "timed out after 5s" in str(failure.value)
        # The inner future winning the race: no timeout, and its timer is gone too.
        d = probes.clock_timeout_sleep(reactor, 5.0, 1.0)
        wait_for_timers(reactor, 2)
        reactor.advance(1.0)
        assert reactor.get_success(d) == "inner"
        pump_until(reactor, lambda: timers_pending(reactor) == 0, "the timeout's timer to go")
        assert reactor.getDelayedCalls() == []


def test_cancelling_a_sleep_removes_its_call_later():
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor")
        before = list(reactor.getDelayedCalls())
        d = probes.clock_sleep(reactor, 60.0)
        d.addErrback(lambda f: f.trap(CancelledError))
        wait_for_timers(reactor, 1)
        assert len(reactor.getDelayedCalls()) == len(before) + 1
        d.cancel()
        pump_until(reactor, lambda: timers_pending(reactor) == 0, "the timer to be removed")
        assert reactor.getDelayedCalls() == before


def test_an_interval_ticks_once_per_period_of_virtual_time():
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor")
        reactor.advance(100.0)
        d = probes.clock_interval(reactor, 10.0, 4)
        outcome = fired(d)
        for tick in range(1, 4):
            wait_for_timers(reactor, 1)
            reactor.advance(10.0)
        assert reactor.get_success(d) == [100.0, 110.0, 120.0, 130.0]
        assert outcome


def test_shutdown_timeout_in_virtual_time():
    """A runtime's shutdown waits `shutdown_timeout` of the reactor's time: the
    short sleeps finish as the clock passes them, the rest fail when it passes the
    timeout, and no real time is spent waiting."""
    with memory_reactor() as reactor:
        runtime = pyo3_twisted.Runtime(reactor, worker_threads=2, tokio="per_reactor", shutdown_timeout=5.0)
        short = [probes.clock_sleep(reactor, 1.0) for _ in range(10)]
        long = [probes.clock_sleep(reactor, 3600.0) for _ in range(10)]
        outcomes = [fired(d) for d in short + long]
        wait_for_timers(reactor, 20)
        done = fired(runtime.shutdown())
        reactor.advance(1.0)
        pump_until(reactor, lambda: all(outcomes[:10]), "the short sleeps")
        assert done == [] and not any(outcomes[10:])
        reactor.advance(3.999)
        for _ in range(20):
            reactor.turn()
        assert done == [] and not any(outcomes[10:]), "the shutdown timed out early"
        reactor.advance(0.001)
        pump_until(reactor, lambda: done and all(outcomes), "the shutdown to time out")
        assert [o[0] for o in outcomes[:10]] == [1.0] * 10
        assert all(o[0].check(RuntimeShutdown) for o in outcomes[10:])
        for d in long:
            d.addErrback(lambda f: f.trap(RuntimeShutdown))
        assert pyo3_twisted.stats(reactor)["tasks_aborted_at_shutdown"] == 10
        assert reactor.getDelayedCalls() == []


def test_real_reactor_sleeps_in_real_time_without_call_later():
    result = run_script("real_clock.py")
    assert result["logged_errors"] == [] and "error" not in result, result.get("error")
    assert 0.05 <= result["elapsed"] < 5.0
    assert result["delayed_calls"] == 0, "a Tokio timer, not a callLater"
    # reactor_seconds() on a real reactor is the system's time, as reactor.seconds().
    assert abs(result["woke_at"] - result["wall_now"]) < 5.0
    assert result["timeout"] == "timed out after 20ms"
    assert result["timeout_inner"] == "inner"
    assert result["stats"]["timers_pending"] == 0 and result["stats"]["timers_fired"] == 0
