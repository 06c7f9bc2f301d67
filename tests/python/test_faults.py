"""Faults inside a mailbox batch: one bad callback or factory spoils nothing else."""

from twisted.internet.defer import Deferred

import pyo3_twisted
from pyo3_twisted import probes


def test_a_raising_callback_does_not_stop_the_rest_of_the_batch(reactor):
    pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")
    fired = []
    # Completing together, they share mailbox batches.
    ds = [probes.sleep(reactor, 0.02, i) for i in range(50)]

    def explode(value):
        raise ValueError(f"user callback failed on {value}")

    for i, d in enumerate(ds):
        d.addCallback(explode if i == 25 else fired.append)
    outcomes = [reactor.wait_for(d) for d in ds]
    assert sorted(fired) == [i for i in range(50) if i != 25]
    assert outcomes[25].check(ValueError)
    assert "user callback failed on 25" in str(outcomes[25].value)
    stats = pyo3_twisted.stats(reactor)
    assert stats["mailbox_batches"] < 50, stats
    assert stats["tasks_in_flight"] == 0


def test_keyboard_interrupt_from_a_factory_reaches_rust_and_nothing_else(reactor):
    pyo3_twisted.install(reactor, worker_threads=1, tokio="per_reactor")

    def interrupted():
        raise KeyboardInterrupt

    bad = probes.call_python(reactor, interrupted)
    good = probes.call_python(reactor, lambda: "unaffected")
    reactor.get_failure(bad, KeyboardInterrupt)
    assert reactor.get_success(good) == "unaffected"
    # The reactor and the runtime carry on.
    assert reactor.get_success(probes.ready(reactor, 1)) == 1


def test_deferred_fired_by_hand_then_cancelled_is_harmless(reactor):
    d = probes.sleep(reactor, 0.01, "late")
    d.callback("early")
    d.cancel()
    assert reactor.get_success(d) == "early"
    assert reactor.get_success(probes.sleep(reactor, 0.02, None)) is None
    assert pyo3_twisted.stats(reactor)["tasks_in_flight"] == 0


def test_errback_with_a_plain_deferred_chain_keeps_the_exception_object(reactor):
    d = probes.fail(reactor, "boom")
    chained = Deferred()
    d.addErrback(chained.errback)
    failure = reactor.get_failure(chained, ValueError)
    assert str(failure.value) == "boom"
