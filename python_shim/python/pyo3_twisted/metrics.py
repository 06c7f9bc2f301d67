"""Prometheus metrics of pyo3-twisted runtimes: a ``prometheus_client`` collector.

::

    from prometheus_client import REGISTRY
    from pyo3_twisted.metrics import RuntimeCollector

    collector = RuntimeCollector()          # the runtimes of pyo3_twisted._native
    collector.track(reactor, name="main")
    REGISTRY.register(collector)

A module of your own that exposes its copy's API (``pyo3_twisted::add_python_api``)
is passed as ``source``: ``RuntimeCollector(source=my_module)``. Each tracked
reactor's figures carry a ``reactor`` label, its name:

- every figure of ``stats(reactor)``, as a counter (``pyo3_twisted_<name>_total``)
  or a gauge (levels: tasks in flight, mailbox depth, live Tokio threads, ...);
- the histograms: ``drain_batch_size``, ``wake_to_drain_seconds``,
  ``task_run_seconds`` (with an ``outcome`` label), ``task_cpu_seconds`` (where
  CPU time is metered: a logcontext provider with ``track_cpu_time``),
  ``run_interaction_seconds`` (labels ``pool``, ``name``, ``outcome``: committed,
  retried or failed) and ``pool_checkout_seconds`` (the native pool's waits for a
  connection).

Collecting reads atomic counters and never waits for the reactor or the Tokio
workers, so a scrape may run on any thread (``prometheus_client``'s HTTP server
thread, say). Tracked reactors are held weakly: one that is garbage-collected
drops out. ``prometheus_client`` is needed by this module only, not by the rest of
the package.
"""

from __future__ import annotations

import threading
import weakref
from types import ModuleType
from typing import Any, Iterator, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["RuntimeCollector"]

_TEXT_FIGURES = ("state", "wake_mode", "clock")

#: The histograms a runtime records: name -> (help, labels besides ``reactor``).
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "drain_batch_size": ("Jobs run by each mailbox drain that found any.", ()),
    "wake_to_drain_seconds": (
        "From the push that asked for a reactor wake-up to the start of the drain it caused.",
        (),
    ),
    "task_run_seconds": ("From create_deferred to the future's outcome.", ("outcome",)),
    "task_cpu_seconds": (
        "Thread CPU time a bridged task (and its spawned children) used, where metered.",
        (),
    ),
    "run_interaction_seconds": (
        "A whole run_interaction from Rust, every attempt included; outcome committed, "
        "retried (committed after reruns) or failed.",
        ("pool", "name", "outcome"),
    ),
    "pool_checkout_seconds": ("Waits for a connection of the native PostgreSQL pool.", ("pool",)),
}


class RuntimeCollector(Collector):
    """Collects the figures of the runtimes of the reactors it tracks."""

    def __init__(self, source: Optional[ModuleType] = None, prefix: str = "pyo3_twisted") -> None:
        if source is None:
            from . import _native

            source = _native
        for needed in ("stats", "histograms", "describe_stats"):
            if not callable(getattr(source, needed, None)):
                raise TypeError(
                    f"{source!r} has no {needed}(): pass a module that exposes a pyo3-twisted "
                    "copy's API (pyo3_twisted::add_python_api)"
                )
        self._source: Any = source
        self._prefix = prefix
        self._described: dict[str, tuple[str, str]] = dict(source.describe_stats())
        self._lock = threading.Lock()
        self._reactors: dict[str, weakref.ref[Any]] = {}

    def track(self, reactor: Any, name: str) -> None:
        """Report ``reactor``'s runtime under ``reactor=name``. A name is given once."""
        if not name:
            raise ValueError("a tracked reactor needs a non-empty name")
        with self._lock:
            current = self._reactors.get(name)
            if current is not None and current() is not None and current() is not reactor:
                raise ValueError(f"another reactor is already tracked as {name!r}")
            self._reactors[name] = weakref.ref(reactor)

    def untrack(self, name: str) -> None:
        """Stop reporting the reactor tracked as ``name``."""
        with self._lock:
            self._reactors.pop(name, None)

    def _live(self) -> list[tuple[str, Any]]:
        with self._lock:
            live = [(name, ref()) for name, ref in self._reactors.items()]
            for name, reactor in live:
                if reactor is None:
                    del self._reactors[name]
        return [(name, reactor) for name, reactor in live if reactor is not None]

    def describe(self) -> Iterator[Metric]:
        """The families this collector reports, without reading any runtime."""
        figures, histograms = self._families()
        yield from figures.values()
        yield from histograms.values()

    def collect(self) -> Iterator[Metric]:
        """The current figures of every tracked reactor that has a runtime."""
        figure_families, histogram_families = self._families()
        for name, reactor in self._live():
            try:
                stats = self._source.stats(reactor)
                histograms = self._source.histograms(reactor)
            except RuntimeError:
                continue  # no runtime installed on it (yet)
            for figure, value in stats.items():
                if figure in _TEXT_FIGURES or figure not in self._described:
                    continue
                figure_families[figure].add_metric([name], value)
            for histogram in histograms:
                family = histogram_families[histogram["name"]]
                labels = [name] + [histogram["labels"][label] for label in HISTOGRAMS[histogram["name"]][1]]
                buckets = [(_le(bound), count) for bound, count in histogram["buckets"]]
                family.add_metric(labels, buckets, histogram["sum"])
        yield from figure_families.values()
        yield from histogram_families.values()

    def _families(
        self,
    ) -> tuple[dict[str, CounterMetricFamily | GaugeMetricFamily], dict[str, HistogramMetricFamily]]:
        """Empty families: the figures' by figure name, the histograms' by theirs."""
        figures: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for figure, (doc, kind) in self._described.items():
            # A counter's samples get `_total` appended (prometheus_client's rule).
            name = f"{self._prefix}_{figure}"
            if kind == "counter":
                figures[figure] = CounterMetricFamily(name, doc, labels=["reactor"])
            else:
                figures[figure] = GaugeMetricFamily(name, doc, labels=["reactor"])
        histograms = {
            name: HistogramMetricFamily(f"{self._prefix}_{name}", doc, labels=["reactor", *labels])
            for name, (doc, labels) in HISTOGRAMS.items()
        }
        return figures, histograms


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
