"""Gather: freeze each cluster's cache into the snapshot a pass decides on. No API calls:
the caches (reconciler/watches.py) list once and then watch.

A cluster whose cache cannot be trusted right now (not listed yet, or a watch failing) gives
None: its peers still get reconciled, and None is never taken as evidence that objects are
absent (gc.py decides no orphan while any cluster is None).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dlm_guard.domain import EXTERNAL_CA_CONFIGMAP, KUBEVIRT_CA_CONFIGMAP
from dlm_guard.kube.cache import ClusterCache
from dlm_guard.projection import KIND_CONFIGMAP
from reconciler.clusters import Cluster
from reconciler.snapshot import ConfigMapState, Snapshot


@dataclass(frozen=True)
class GatherResult:
    snapshots: dict[str, Snapshot | None]
    errors: dict[str, str]  # cluster -> why it has no snapshot this pass


def freeze(cluster: Cluster, cache: ClusterCache) -> Snapshot:
    """The cache's current state as one snapshot (the caller checked that it is healthy)."""
    return Snapshot(cluster=cluster.name, kubevirt_namespace=cluster.namespace,
                    managed=cluster.managed,
                    kubevirt_ca=_configmap(cache, KUBEVIRT_CA_CONFIGMAP),
                    external_ca=_configmap(cache, EXTERNAL_CA_CONFIGMAP),
                    store=cache.view())


def _configmap(cache: ClusterCache, name: str) -> ConfigMapState | None:
    found = cache.table(name).list(KIND_CONFIGMAP)
    return ConfigMapState.from_object(found[0]) if found else None


def gather_all(clusters: Iterable[Cluster],
               caches: Mapping[str, ClusterCache]) -> GatherResult:
    snapshots: dict[str, Snapshot | None] = {}
    errors: dict[str, str] = {}
    for cluster in clusters:
        cache = caches.get(cluster.name)
        problem = "not watched yet" if cache is None else cache.unhealthy_reason()
        if cache is None or problem is not None:
            snapshots[cluster.name], errors[cluster.name] = None, f"unreachable: {problem}"
        else:
            snapshots[cluster.name] = freeze(cluster, cache)
    return GatherResult(snapshots, errors)
