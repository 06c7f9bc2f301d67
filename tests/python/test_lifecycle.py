"""Runtime lifecycle and configuration."""

import os

import pytest

import pyo3_twisted
from pyo3_twisted import RuntimeShutdown, probes
from pyo3_twisted.testing import memory_reactor

from conftest import run_script


def threads_named(name):
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += f.read().strip() == name[:15]
        except FileNotFoundError:
            pass
    return count


def test_install_before_run_on_memory_reactor(unstarted_reactor):
    reactor = unstarted_reactor
    pyo3_twisted.install(reactor, worker_threads=3, tokio="per_reactor", thread_name="pt-mem-before")
    assert pyo3_twisted.stats(reactor)["state"] == "installed"
    assert threads_named("pt-mem-before") == 0
    # The first bridged call starts the runtime; the reactor is never run.
    d = probes.ready(reactor, "queued")
    assert pyo3_twisted.stats(reactor)["state"] == "running"
    assert threads_named("pt-mem-before") == 3
    assert reactor.get_success(d) == "queued"
    assert not reactor.running
    reactor.shutdown()
    stats = pyo3_twisted.stats(reactor)
    assert stats["state"] == "stopped" and stats["tokio_threads_live"] == 0


def test_install_after_run_on_memory_reactor():
    # On Twisted < 26.4 a memory reactor never fires callWhenRunning after run():
    # the runtime must start at once anyway.
    with memory_reactor(run=True) as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor", thread_name="pt-mem-after")
        assert pyo3_twisted.stats(reactor)["state"] == "running"
        assert threads_named("pt-mem-after") == 2
        assert reactor.get_success(probes.thread_name(reactor)) == "pt-mem-after"


@pytest.mark.parametrize("install_before_run", [True, False])
def test_plain_twisted_memory_reactor(install_before_run):
    """Twisted's own MemoryReactorClock (not our harness) never strands work: on
    Twisted 24.11, where it cannot tell whether it ran, the runtime starts at once."""
    from twisted.internet.testing import MemoryReactorClock

    from pyo3_twisted.testing import ThreadedMemoryReactorClock

    reactor = MemoryReactorClock()
    # Borrow the harness's thread-safe callFromThread and waiting.
    harness = ThreadedMemoryReactorClock()
    reactor.callFromThread = harness.callFromThread
    if not install_before_run:
        reactor.run()
    pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor", thread_name="pt-plain")
    d = probes.ready(reactor, "plain")
    if install_before_run:
        reactor.run()
    assert harness.get_success(d) == "plain"
    assert pyo3_twisted.stats(reactor)["state"] == "running"
    # Fire the shutdown trigger by hand, as the harness would.
    for phase in ("before", "during", "after"):
        for f, args, kwargs in reactor.triggers.get(phase, {}).get("shutdown", []):
            f(*args, **kwargs)
    assert pyo3_twisted.stats(reactor)["state"] == "stopped"


def test_default_install_on_first_use(reactor):
    assert reactor.get_success(probes.ready(reactor, 1)) == 1
    stats = pyo3_twisted.stats(reactor)
    assert stats["state"] == "running"
    assert 1 <= stats["worker_threads"] <= 4
    # The harness polls its readers in advance(): woken through an eventfd.
    assert stats["wake_mode"] == "fd"
    # An explicit install with a different config now is an error, with the reason.
    with pytest.raises(RuntimeError, match="different configuration"):
        pyo3_twisted.install(reactor, worker_threads=stats["worker_threads"] + 1)


def test_install_same_config_twice_is_a_no_op(reactor):
    pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor", shutdown_timeout=3.0)
    pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor", shutdown_timeout=3.0)
    with pytest.raises(RuntimeError, match="different configuration"):
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor", shutdown_timeout=4.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"worker_threads": 0}, "worker_threads"),
        ({"thread_name": ""}, "thread_name"),
        ({"shutdown_timeout": -1.0}, "shutdown_timeout"),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout"),
        ({"wake": "telepathy"}, "wake"),
        ({"logcontext": ""}, "logcontext"),
    ],
)
def test_bad_config_is_a_clear_error(reactor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pyo3_twisted.install(reactor, **kwargs)


def test_unknown_option_is_a_type_error(reactor):
    with pytest.raises(TypeError):
        pyo3_twisted.install(reactor, workers=2)


def test_stats_without_runtime_is_an_error(reactor):
    with pytest.raises(RuntimeError, match="no pyo3-twisted runtime"):
        pyo3_twisted.stats(reactor)


def test_shutdown_on_memory_reactor_fails_stragglers():
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor", shutdown_timeout=0.2)
        short = [probes.sleep(reactor, 0.01, i) for i in range(50)]
        long = [probes.sleep(reactor, 3600.0, i) for i in range(50)]
        pending, flag = probes.pending(reactor)
        results = []
        for d in short + long + [pending]:
            d.addBoth(results.append)
    assert len(results) == 101
    assert sorted(r for r in results if isinstance(r, int)) == list(range(50))
    failures = [r for r in results if not isinstance(r, int)]
    assert len(failures) == 51 and all(f.check(RuntimeShutdown) for f in failures)
    assert "shutdown_timeout" in str(failures[0].value)
    assert flag.dropped
    stats = pyo3_twisted.stats(reactor)
    assert stats["tasks_aborted_at_shutdown"] == 51 and stats["tokio_threads_live"] == 0


@pytest.mark.parametrize("mode", ["before_run", "when_running", "default"])
def test_lifecycle_on_a_real_reactor(mode):
    result = run_script("lifecycle.py", mode)
    assert result.get("error") is None, result.get("error")
    assert result["logged_errors"] == []
    assert result["state_running"] == "running"
    assert result["wake_mode"] == "fd"
    assert result["state_after"] == "stopped"
    if mode == "default":
        # The shared pool outlives the reactor; its threads stay for the process.
        assert result["tokio_threads_live_after"] == result["worker_threads"]
    else:
        assert result["tokio_threads_live_after"] == 0
    assert result["gil_on_tokio"] == 0
    if mode == "before_run":
        assert result["state_at_install"] == "installed"
        assert result["threads_named_at_install"] == 0
        # The first create_deferred started the runtime; its result waits for the
        # reactor to run.
        assert result["state_before_run"] == "running"
        assert result["threads_named_before_run"] == 3
        assert result["called_before_run"] is False
        assert result["value"] == "early"
    if mode == "when_running":
        assert result["state_at_install"] == "running"
        assert result["value"] == "late"
    if mode in ("before_run", "when_running"):
        assert result["threads_named_running"] == 3 == result["worker_threads"]
        assert result["worker_name"] == "pt-lifecycle"
    else:
        assert result["threads_named_running"] == result["worker_threads"]
        assert result["worker_name"] == "pyo3-twisted"


def test_rejects_install_after_shutdown():
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")
    with pytest.raises(RuntimeShutdown):
        pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")


def test_unimportable_logcontext_provider_is_a_clear_error(reactor):
    with pytest.raises(RuntimeError, match='cannot import the logcontext provider module "no.such"'):
        pyo3_twisted.install(reactor, logcontext="no.such")


def test_module_that_is_not_a_provider_is_a_clear_error(reactor):
    with pytest.raises(RuntimeError, match='"json" is not a logcontext provider'):
        pyo3_twisted.install(reactor, logcontext="json")


def test_a_provider_needs_no_run_in_background(reactor):
    """The crate applies run_in_background's rules itself: a provider with
    current_context, set_current_context, make_deferred_yieldable and the sentinel
    is enough, and the rules still hold around run_python_awaitable."""
    import sys
    import types

    from twisted.internet import defer

    from pyo3_twisted import logcontext as lc

    module = types.ModuleType("pyo3_twisted_test_minimal_provider")
    for name in ("current_context", "set_current_context", "make_deferred_yieldable", "SENTINEL_CONTEXT"):
        setattr(module, name, getattr(lc, name))
    sys.modules[module.__name__] = module
    try:
        pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor", logcontext=module.__name__)
        seen = []

        async def answer():
            seen.append(lc.current_context())
            d = defer.Deferred()
            reactor.callLater(0, d.callback, "answered")
            value = await lc.make_deferred_yieldable(d)
            seen.append(lc.current_context())
            return value

        async def handler():
            with lc.LoggingContext("minimal-provider") as ctx:
                value = await probes.call_python(reactor, answer)
                assert lc.current_context() is ctx
            return ctx, value

        ctx, value = reactor.get_success(defer.ensureDeferred(handler()))
        assert value == "answered"
        assert seen == [ctx, ctx]
        assert lc.current_context() is lc.SENTINEL_CONTEXT
    finally:
        del sys.modules[module.__name__]


def test_fork_before_the_reactor_runs_works_in_the_child():
    result = run_script("fork.py", "before_run")
    # Work started before the fork belongs to the parent: it fails in the child,
    # naming the fork; work made in the child runs on the child's own runtime.
    assert "forked" in result["early"] and "RuntimeShutdown" in result["early"]
    assert result["value"] == "made in the child"
    assert result["stats_state"] == "stopped"
    assert result["logged_errors"] == []


def test_fork_from_a_running_reactor_is_a_clear_error_in_the_child():
    result = run_script("fork.py", "after_start", timeout=60)
    assert result["parent_value"] == "parent works"
    assert "forked while its reactor was running" in result["child"]
    assert result["parent_after"] == "parent still works"


def test_fork_after_start_on_a_memory_reactor_many_times():
    result = run_script("fork.py", "memory", "25", timeout=120)
    assert result["failures"] == []
    assert result["children_ok"] == 25
    # The parent's in-flight task is untouched by its children...
    assert result["in_flight_still_pending"] is True
    # ...and cancelling it still drops its future.
    assert result["dropped_after_cancel"] is True
