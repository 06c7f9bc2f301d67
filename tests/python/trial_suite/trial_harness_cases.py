"""pyo3_twisted.testing used the trial way. Run by test_harness.py under
`python -m twisted.trial`; not collected by pytest directly."""

from twisted.internet.defer import CancelledError

import pyo3_twisted
from pyo3_twisted import RustPanicError, probes
from pyo3_twisted.testing import ReactorTestCase


class BridgeUnderTrial(ReactorTestCase):
    def setUp(self):
        super().setUp()
        pyo3_twisted.install(self.reactor, worker_threads=2, tokio="per_reactor", shutdown_timeout=0.5)

    def test_value(self):
        self.assertEqual(self.get_success(probes.sleep(self.reactor, 0.01, 7)), 7)

    def test_panic(self):
        failure = self.get_failure(probes.panic(self.reactor, "trial boom"), RustPanicError)
        self.assertEqual(str(failure.value), "trial boom")

    def test_cancel(self):
        d, flag = probes.pending(self.reactor)
        d.cancel()
        self.get_failure(d, CancelledError)
        self.assertTrue(flag.wait(5.0))

    def test_stragglers_fail_at_teardown(self):
        # Left in flight on purpose: the cleanup's shutdown must fail it with
        # RuntimeShutdown and swallow nothing unhandled.
        d = probes.sleep(self.reactor, 3600.0, None)
        d.addErrback(lambda f: f.trap(pyo3_twisted.RuntimeShutdown))

    def test_shutdown_stops_the_runtime_and_cleanup_tolerates_it(self):
        self.get_success(probes.ready(self.reactor, None))
        self.reactor.shutdown()  # the cleanup's shutdown is then a no-op
        self.assertEqual(pyo3_twisted.stats(self.reactor)["state"], "stopped")
