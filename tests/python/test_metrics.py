"""pyo3_twisted.metrics: the runtime's figures in Prometheus, exact and safe to
scrape from another thread."""

import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import CancelledError, ensureDeferred, gatherResults

import pyo3_twisted
from pyo3_twisted import RustPanicError, probes
from pyo3_twisted.metrics import RuntimeCollector
from pyo3_twisted.testing import memory_reactor


def scrape(registry):
    """{(sample name, frozenset(labels)): value} of one scrape, as text and back."""
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, sample, **labels):
    return samples[(sample, frozenset({"reactor": "main", **labels}.items()))]


def registry_for(reactor, source=None):
    registry = CollectorRegistry()
    collector = RuntimeCollector(source) if source is not None else RuntimeCollector()
    collector.track(reactor, name="main")
    registry.register(collector)
    return registry


def run_known_work(reactor, completed=30, cancelled=5, panicked=4, failed=3):
    ok = [probes.ready(reactor, i) for i in range(completed)]
    hung = []
    for _ in range(cancelled):
        d, _flag = probes.pending(reactor)
        d.addErrback(lambda f: f.trap(CancelledError))
        hung.append(d)
    panics = [probes.panic(reactor, "boom").addErrback(lambda f: f.trap(RustPanicError)) for _ in range(panicked)]
    fails = [probes.fail(reactor, "no").addErrback(lambda f: f.trap(ValueError)) for _ in range(failed)]
    for d in hung:
        d.cancel()
    reactor.get_success(gatherResults(ok + hung + panics + fails))


def test_a_scrape_after_known_work_shows_exact_figures():
    with memory_reactor() as reactor:
        # No linger: results that a linger catches wake nobody, so how many drains a
        # wake-up caused would depend on the machine's load.
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor", linger=0)
        registry = registry_for(reactor)
        run_known_work(reactor)
        samples = scrape(registry)
        stats = pyo3_twisted.stats(reactor)
    assert value(samples, "pyo3_twisted_tasks_spawned_total") == 42
    assert value(samples, "pyo3_twisted_tasks_completed_total") == 30
    assert value(samples, "pyo3_twisted_tasks_cancelled_total") == 5
    assert value(samples, "pyo3_twisted_tasks_panicked_total") == 4
    assert value(samples, "pyo3_twisted_tasks_failed_total") == 3
    assert value(samples, "pyo3_twisted_tasks_in_flight") == 0
    assert value(samples, "pyo3_twisted_worker_threads") == 2
    # Every future that reached an outcome was timed, under that outcome.
    assert value(samples, "pyo3_twisted_task_run_seconds_count", outcome="completed") == 30
    assert value(samples, "pyo3_twisted_task_run_seconds_count", outcome="panicked") == 4
    assert value(samples, "pyo3_twisted_task_run_seconds_count", outcome="failed") == 3
    assert value(samples, "pyo3_twisted_task_run_seconds_bucket", outcome="completed", le="+Inf") == 30
    # One observation per drain that ran jobs, summing to the jobs run.
    assert value(samples, "pyo3_twisted_drain_batch_size_count") == stats["mailbox_batches"]
    assert value(samples, "pyo3_twisted_drain_batch_size_sum") == stats["mailbox_jobs"]
    # Each drain a wake-up caused measured its latency.
    assert 0 < value(samples, "pyo3_twisted_wake_to_drain_seconds_count") <= stats["mailbox_drains"], stats
    # No logcontext provider: CPU time is not metered.
    assert value(samples, "pyo3_twisted_task_cpu_seconds_count") == 0


def test_cpu_time_per_task_is_recorded_where_it_is_metered():
    from pyo3_twisted import logcontext as lc

    with memory_reactor(logcontext=lc) as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor", logcontext="pyo3_twisted.logcontext")
        registry = registry_for(reactor)

        async def request():
            with lc.LoggingContext("request"):
                return await probes.burn_cpu(reactor, 0.02)

        reactor.get_success(ensureDeferred(request()))
        samples = scrape(registry)
    assert value(samples, "pyo3_twisted_task_cpu_seconds_count") == 1
    assert value(samples, "pyo3_twisted_task_cpu_seconds_sum") >= 0.015


def test_run_interaction_outcomes_per_pool_and_transaction_name():
    from pyo3_twisted.database import DatabasePool
    from pyo3_twisted.probes import RustStore

    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor")
        registry = registry_for(reactor)
        pool = DatabasePool(reactor, ":memory:", max_connections=1)
        try:
            store = RustStore.python(pool, reactor)
            ddl = "CREATE TABLE feature_flags (user_id TEXT, feature TEXT, enabled BOOLEAN, PRIMARY KEY (user_id, feature))"
            reactor.get_success(store.execute(reactor, [(ddl, [])]))
            for _ in range(3):
                reactor.get_success(store.get_flags(reactor, "@alice:example.org"))
            reactor.get_failure(store.query(reactor, "SELECT * FROM no_such_table", []), Exception)
            samples = scrape(registry)
        finally:
            pool.close()

    def count(name, outcome):
        return value(
            samples, "pyo3_twisted_run_interaction_seconds_count", pool="python", name=name, outcome=outcome
        )

    assert count("get_feature_flags", "committed") == 3
    assert count("execute", "committed") == 1
    assert count("query", "failed") == 1
    assert ("pyo3_twisted_run_interaction_seconds_count", frozenset(
        {"reactor": "main", "pool": "python", "name": "get_feature_flags", "outcome": "retried"}.items()
    )) not in samples


def test_metrics_off_keeps_the_counters_and_records_no_histogram():
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor", metrics=False)
        registry = registry_for(reactor)
        run_known_work(reactor)
        samples = scrape(registry)
    assert value(samples, "pyo3_twisted_tasks_completed_total") == 30
    assert value(samples, "pyo3_twisted_task_run_seconds_count", outcome="completed") == 0
    assert value(samples, "pyo3_twisted_drain_batch_size_count") == 0
    assert value(samples, "pyo3_twisted_wake_to_drain_seconds_count") == 0


def test_100_scrapes_from_another_thread_while_10000_tasks_run():
    n = 10_000
    with memory_reactor() as reactor:
        pyo3_twisted.install(reactor, worker_threads=2, tokio="per_reactor")
        registry = registry_for(reactor)
        scrapes = []
        started = threading.Event()

        def scraper():
            started.wait()
            for _ in range(100):
                scrapes.append(scrape(registry))

        thread = threading.Thread(target=scraper)
        thread.start()
        ds = [probes.sleep(reactor, 0.0005 * (i % 20), i) for i in range(n)]
        started.set()
        assert reactor.get_success(gatherResults(ds), timeout=60) == list(range(n))
        thread.join(60)
        assert not thread.is_alive()
        final = scrape(registry)
    assert len(scrapes) == 100
    growing = [
        key for key in final
        if key[0].endswith(("_total", "_count", "_sum", "_bucket"))
    ]
    assert growing
    for before, after in zip(scrapes, scrapes[1:] + [final]):
        for key in growing:
            assert after[key] >= before.get(key, 0), key
    assert value(final, "pyo3_twisted_tasks_completed_total") == n
    assert value(final, "pyo3_twisted_task_run_seconds_count", outcome="completed") == n
    assert value(final, "pyo3_twisted_tasks_in_flight") == 0


def test_another_modules_runtime_and_bad_sources():
    import pyo3_twisted_demo._native as demo

    with memory_reactor() as reactor:
        demo.install(reactor, worker_threads=2, tokio="per_reactor")
        registry = registry_for(reactor, source=demo)
        assert reactor.get_success(demo.divide(reactor, 6, 3)) == 2
        samples = scrape(registry)
    assert value(samples, "pyo3_twisted_tasks_completed_total") == 1
    with pytest.raises(TypeError, match="add_python_api"):
        RuntimeCollector(source=threading)
    collector = RuntimeCollector()
    with memory_reactor() as a, memory_reactor() as b:
        collector.track(a, "a")
        with pytest.raises(ValueError, match="already tracked"):
            collector.track(b, "a")
