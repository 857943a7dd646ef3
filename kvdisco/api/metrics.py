"""Prometheus metrics of one member, served at ``/metrics``.

Gauges and counters are read from the node, store and watch hub when scraped, so the hot path
pays nothing for them; only request latency is observed per request, into a plain per-route
bucket array (the event loop is its only writer, so it needs none of prometheus_client's locks).
Each app has its own registry: no process-global state, so tests can run several members.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from kvdisco.api.backend import Backend

__all__ = ["GcPauses", "Metrics", "gc_pauses"]

_LATENCY_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Watch delivery is held to a 20 ms goal: steps of 1/2/3/5/7.5/10/15/20/30 ms around it.
_WATCH_DELIVERY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0, 10.0)


class _MemberCollector(Collector):
    def __init__(self, backend: Backend) -> None:
        self._b = backend

    def collect(self) -> Iterator[Metric]:
        b = self._b
        node = b.node
        m = node.metrics

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("kvdisco_raft_term", "Current Raft term.", node.term)
        yield gauge("kvdisco_raft_commit_index", "Highest log index known committed.", node.commit_index)
        yield gauge("kvdisco_raft_applied_index", "Highest log index applied to the store.", node.applied_index)
        yield gauge("kvdisco_raft_is_leader", "1 when this member leads.", 1.0 if node.is_leader else 0.0)
        yield gauge("kvdisco_raft_has_leader", "1 when a leader is known.", 1.0 if node.leader_id else 0.0)
        yield counter("kvdisco_raft_proposals_committed", "Proposals applied.", m["proposals_committed"])
        yield counter("kvdisco_raft_proposals_failed", "Proposals dropped or refused.", m["proposals_failed"])
        yield counter("kvdisco_wal_fsyncs", "WAL fsync calls.", m["fsyncs"])
        yield counter("kvdisco_wal_fsync_seconds", "Seconds spent in WAL fsync.", m["fsync_seconds_total"])
        yield counter("kvdisco_raft_snapshots_taken", "Snapshots written.", m["snapshots_taken"])
        yield counter(
            "kvdisco_raft_snapshots_received", "Snapshots installed from the leader.", m["snapshots_received"]
        )
        yield gauge("kvdisco_mvcc_revision", "Store revision.", b.store.revision)
        yield gauge("kvdisco_mvcc_compact_revision", "Revision the store is compacted to.", b.store.compact_revision)
        stats = b.hub.stats()
        yield gauge("kvdisco_watchers", "Open watchers.", stats.watchers)
        yield gauge("kvdisco_watchers_unsynced", "Watchers catching up from history.", stats.unsynced)
        yield gauge("kvdisco_leases", "Existing leases.", len(b.store.leases()))


class RequestLatency(Collector):
    """A histogram by route (``name{route}``): counts per bucket, kept as plain lists."""

    def __init__(
        self,
        name: str = "kvdisco_http_request_duration_seconds",
        doc: str = "HTTP request latency by route (streams: until the response starts).",
        buckets: tuple[float, ...] = _LATENCY_BUCKETS,
    ) -> None:
        self._name = name
        self._doc = doc
        self._buckets = buckets
        #: Route -> [count per bucket (the last one is +Inf)..., sum of seconds].
        self._routes: dict[str, list[float]] = {}

    def observe(self, route: str, seconds: float, count: int = 1) -> None:
        """``count`` observations of ``seconds`` each (a write's watchers, delivered together)."""
        h = self._routes.get(route)
        if h is None:
            h = self._routes[route] = [0.0] * (len(self._buckets) + 2)
        h[bisect.bisect_left(self._buckets, seconds)] += count
        h[-1] += seconds * count

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=["route"])
        for route, h in sorted(self._routes.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip([*map(str, self._buckets), "+Inf"], h[:-1], strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            family.add_metric([route], buckets, h[-1])
        yield family


class GcPauses(Collector):
    """How long Python's cyclic garbage collector stopped the process, by generation.

    A full collection walks every object the store holds (millions at a million keys) while
    nothing else runs, heartbeats included; this is how an operator sees it. The collector is
    the process's, so there is one of these per process (:func:`gc_pauses`).
    """

    def __init__(self) -> None:
        self._started = 0.0
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        #: Times the survivors of a collection were frozen (gc.freeze). How many objects that froze is not
        #: kept: ``gc.get_freeze_count()`` walks them all, 0.3 s and more at a million keys.
        self.freezes = 0

    def note_freeze(self) -> None:
        self.freezes += 1

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = info.get("generation", 2)
        took = time.perf_counter() - self._started
        self.seconds[gen] += took
        self.collections[gen] += 1
        if took > self.longest[gen]:
            self.longest[gen] = took

    def collect(self) -> Iterator[Metric]:
        seconds = CounterMetricFamily(
            "kvdisco_gc_pause_seconds", "Seconds the process stood still in garbage collection.", labels=["generation"]
        )
        count = CounterMetricFamily("kvdisco_gc_collections", "Garbage collections.", labels=["generation"])
        longest = GaugeMetricFamily(
            "kvdisco_gc_pause_longest_seconds", "The longest garbage collection pause so far.", labels=["generation"]
        )
        for gen in range(3):
            seconds.add_metric([str(gen)], self.seconds[gen])
            count.add_metric([str(gen)], self.collections[gen])
            longest.add_metric([str(gen)], self.longest[gen])
        yield from (seconds, count, longest)
        yield CounterMetricFamily(
            "kvdisco_gc_freezes", "Times the survivors of a garbage collection were frozen (gc.freeze).", self.freezes
        )


_gc_pauses: GcPauses | None = None


def gc_pauses() -> GcPauses:
    """The process's one GcPauses, hooked into the collector on first use."""
    global _gc_pauses
    if _gc_pauses is None:
        _gc_pauses = GcPauses()
        gc.callbacks.append(_gc_pauses.on_gc)
    return _gc_pauses


class Metrics:
    def __init__(self, backend: Backend) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_MemberCollector(backend))
        self.registry.register(gc_pauses())
        self.request_seconds = RequestLatency()
        self.registry.register(self.request_seconds)
        #: From applying a write to writing its watch response on the socket, by API ("v3", "v1").
        self.watch_delivery_seconds = RequestLatency(
            "kvdisco_watch_delivery_seconds",
            "From applying a write to sending its events to a watcher, by API.",
            _WATCH_DELIVERY_BUCKETS,
        )
        self.registry.register(self.watch_delivery_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
