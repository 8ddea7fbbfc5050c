"""The reconciler's caches: one per known cluster, on the shared informer layer.

Each cluster's cache watches, cluster-wide, the VMIMs, VMs and VMIs (projected to what gc.py
reads), and in the KubeVirt namespace the two CA ConfigMaps (docs/kubevirt-facts.md, "CA
bundles"); the local cluster in a pod also the labelled peer Secrets of our own namespace.
Every change calls `on_change`: "look again soon" (the pass always works on every cluster:
sets, not events).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dlm_guard.domain import EXTERNAL_CA_CONFIGMAP, KUBEVIRT_CA_CONFIGMAP
from dlm_guard.kube.api import ApiSource, Selector
from dlm_guard.kube.cache import ClusterCache, Watched
from dlm_guard.kube.resources import CONFIGMAP, SECRET, VM, VMI, VMIM
from dlm_guard.projection import KIND_SECRET
from reconciler.clusters import PEER_SECRET_SELECTOR, Cluster
from reconciler.settings import LOCAL_CLUSTER, Settings

log = logging.getLogger(__name__)

PEER_SECRETS = "peer-secrets"


def watched_for(cluster: Cluster, settings: Settings) -> list[Watched]:
    found = [Watched(VMIM), Watched(VM), Watched(VMI)]
    found += [Watched(CONFIGMAP, Selector(cluster.namespace, field=f"metadata.name={name}"),
                      name=name)
              for name in (KUBEVIRT_CA_CONFIGMAP, EXTERNAL_CA_CONFIGMAP)]
    if settings.in_pod and cluster.name == LOCAL_CLUSTER:
        found.append(Watched(SECRET, Selector(settings.own_namespace,
                                              label=PEER_SECRET_SELECTOR), name=PEER_SECRETS))
    return found


class ClusterWatches:
    """The caches of the current clusters; a changed or removed cluster's cache stops."""

    def __init__(self, settings: Settings, on_change: Callable[[], None] | None = None,
                 make_cache: Callable[[Cluster], ClusterCache] | None = None) -> None:
        self._settings = settings
        self._on_change = on_change
        self._make = make_cache or self._cache_for
        self._by_cluster: dict[str, tuple[Cluster, ClusterCache]] = {}
        self._stopped: list[ClusterCache] = []

    def _cache_for(self, cluster: Cluster) -> ClusterCache:
        return ClusterCache(ApiSource(cluster.api), watched_for(cluster, self._settings),
                            label=cluster.name, on_change=self._on_change)

    def sync(self, clusters: Iterable[Cluster]) -> None:
        wanted = {c.name: c for c in clusters}
        self._stopped = [cache for cache in self._stopped if cache.alive()]
        for name, (cluster, cache) in list(self._by_cluster.items()):
            if wanted.get(name) is not cluster:
                cache.stop()
                self._stopped.append(cache)
                del self._by_cluster[name]
        for name, cluster in wanted.items():
            if name not in self._by_cluster:
                cache = self._make(cluster)
                cache.start()
                self._by_cluster[name] = (cluster, cache)

    @property
    def caches(self) -> Mapping[str, ClusterCache]:
        return {name: cache for name, (_, cache) in self._by_cluster.items()}

    def wait_synced(self, timeout: float) -> bool:
        return all([cache.wait_synced(timeout) for cache in self.caches.values()])

    def all_synced(self) -> bool:
        """Every current cache has listed everything once."""
        return all(c.synced for c in self.caches.values())

    def peer_secrets(self) -> list[dict[str, Any]] | None:
        """The labelled peer Secrets from the local cache; None while it cannot be trusted
        (then the known peers are kept: a failed watch is not evidence that a peer is gone)."""
        entry = self._by_cluster.get(LOCAL_CLUSTER)
        if entry is None or PEER_SECRETS not in entry[1].informers:
            return None
        cache = entry[1]
        if not cache.informers[PEER_SECRETS].health.healthy:
            return None
        return cache.table(PEER_SECRETS).list(KIND_SECRET)

    def stop(self) -> None:
        """Ask every cache to stop; never blocks (join() waits)."""
        self.sync([])

    def join(self, timeout: float) -> bool:
        """Wait, `timeout` seconds in all, for the threads of the stopped caches."""
        deadline = time.monotonic() + timeout
        self._stopped = [cache for cache in self._stopped
                         if not cache.join(max(deadline - time.monotonic(), 0.0))]
        return not self._stopped

    def alive(self) -> list[str]:
        return [label for cache in self._stopped for label in cache.alive()]
