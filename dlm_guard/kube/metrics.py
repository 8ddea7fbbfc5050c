"""Watch health as Prometheus gauges, read from the informers at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dlm_guard.kube.cache import ClusterCache
from dlm_guard.kube.informer import Health

HEALTHY = "dlm_guard_watch_healthy"
LAST_EVENT_AGE = "dlm_guard_watch_last_event_age_seconds"


class WatchHealthCollector(Collector):
    """`dlm_guard_watch_healthy{kind}` (1: listed and watching, 0: not yet listed or failing)
    and `dlm_guard_watch_last_event_age_seconds{kind}` (since the last list, event or
    bookmark; the API server sends a bookmark about once a minute on a quiet watch). With
    `by_cluster`, a `cluster` label too (the reconciler watches several clusters)."""

    def __init__(self, caches: Callable[[], Mapping[str, ClusterCache]], *,
                 by_cluster: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self._caches, self._by_cluster, self._clock = caches, by_cluster, clock

    def collect(self) -> Iterator[Metric]:
        labels = ["cluster", "kind"] if self._by_cluster else ["kind"]
        healthy = GaugeMetricFamily(HEALTHY, "1 when the watch has listed once and is not "
                                    "failing, else 0", labels=labels)
        age = GaugeMetricFamily(LAST_EVENT_AGE, "Seconds since the watch's last list, event "
                                "or bookmark", labels=labels)
        now = self._clock()
        for values, health in self._rows():
            healthy.add_metric(values, 1.0 if health.healthy else 0.0)
            if health.last_event is not None:
                age.add_metric(values, max(now - health.last_event, 0.0))
        yield healthy
        yield age

    def _rows(self) -> Iterable[tuple[list[str], Health]]:
        for cluster, cache in sorted(self._caches().items()):
            for kind, health in sorted(cache.health().items()):
                yield ([cluster, kind] if self._by_cluster else [kind]), health

    def describe(self) -> Iterable[Metric]:
        return []
