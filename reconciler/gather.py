"""Gather: one snapshot per cluster per pass, from list calls only (no GET per object).

A snapshot holds the VMIMs, VMs and VMIs (cluster-wide, into an ObjectStore) and the two CA
ConfigMaps of the cluster's KubeVirt namespace (docs/kubevirt-facts.md, "CA bundles"); a CA
snapshot only the ConfigMaps
(what a CA-trust-only pass needs: two small lists per cluster, whatever the number of objects).
A cluster that cannot be read gives None: its peers still get reconciled, and None is never taken
as evidence that objects are absent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dlm_guard.domain import (
    CA_BUNDLE_KEY,
    EXTERNAL_CA_CONFIGMAP,
    KIND_VM,
    KIND_VMI,
    KIND_VMIM,
    KUBEVIRT_CA_CONFIGMAP,
    KUBEVIRT_GROUP,
    Obj,
    get_path,
    is_terminating,
    name_of,
    namespace_of,
)
from dlm_guard.store import ObjectStore
from reconciler.clusters import Cluster, decode

log = logging.getLogger(__name__)

KUBEVIRT_VERSION = "v1"
PLURALS = {
    KIND_VMIM: "virtualmachineinstancemigrations",
    KIND_VM: "virtualmachines",
    KIND_VMI: "virtualmachineinstances",
}
PAGE_SIZE = 500


@dataclass(frozen=True)
class ConfigMapState:
    """What the decisions need of a ConfigMap, including what a conditional write needs."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    data: Mapping[str, str]
    terminating: bool = False

    @property
    def bundle(self) -> str:
        return self.data.get(CA_BUNDLE_KEY) or ""

    @classmethod
    def from_object(cls, obj: Obj) -> ConfigMapState:
        data = obj.get("data")
        return cls(namespace=namespace_of(obj), name=name_of(obj),
                   uid=str(get_path(obj, "metadata", "uid") or ""),
                   resource_version=str(get_path(obj, "metadata", "resourceVersion") or ""),
                   data=dict(data) if isinstance(data, Mapping) else {},
                   terminating=is_terminating(obj))


@dataclass(frozen=True)
class CaSnapshot:
    """A cluster's two CA ConfigMaps: all that the trust decisions read."""

    cluster: str
    kubevirt_namespace: str
    managed: bool
    kubevirt_ca: ConfigMapState | None  # None: the ConfigMap does not exist
    external_ca: ConfigMapState | None


@dataclass(frozen=True)
class Snapshot(CaSnapshot):
    """The CA ConfigMaps plus every VMIM, VM and VMI: what a full pass reads."""

    store: ObjectStore


S = TypeVar("S", bound=CaSnapshot)


# --- list calls ---------------------------------------------------------------------------
def list_all(call: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any) -> list[Obj]:
    """Every item of a list call as plain dicts, following `continue` pages."""
    items: list[Obj] = []
    token: str | None = None
    while True:
        page = {"_continue": token} if token else {}
        response = call(*args, limit=PAGE_SIZE, _preload_content=False,
                        _request_timeout=timeout, **page, **kwargs)
        body = decode(response)
        items.extend(item for item in body.get("items") or [] if isinstance(item, dict))
        token = get_path(body, "metadata", "continue")
        if not token:
            return items


def list_kubevirt(api: k8s.ApiClient, kind: str, timeout: float) -> list[Obj]:
    """All objects of a KubeVirt kind; a cluster without the CRD simply has none."""
    try:
        return list_all(k8s.CustomObjectsApi(api).list_cluster_custom_object,
                        KUBEVIRT_GROUP, KUBEVIRT_VERSION, PLURALS[kind], timeout=timeout)
    except ApiException as err:
        if err.status == 404:
            log.debug("kind not served", extra={"kind": kind})
            return []
        raise


def read_configmap(api: k8s.ApiClient, namespace: str, name: str,
                   timeout: float) -> ConfigMapState | None:
    """One named ConfigMap via a list with a field selector (the same call the watch uses)."""
    items = list_all(k8s.CoreV1Api(api).list_namespaced_config_map, namespace,
                     field_selector=f"metadata.name={name}", timeout=timeout)
    return ConfigMapState.from_object(items[0]) if items else None


def gather_ca(cluster: Cluster, timeout: float) -> CaSnapshot:
    api, namespace = cluster.api, cluster.namespace
    return CaSnapshot(
        cluster=cluster.name, kubevirt_namespace=namespace, managed=cluster.managed,
        kubevirt_ca=read_configmap(api, namespace, KUBEVIRT_CA_CONFIGMAP, timeout),
        external_ca=read_configmap(api, namespace, EXTERNAL_CA_CONFIGMAP, timeout))


def gather_cluster(cluster: Cluster, timeout: float) -> Snapshot:
    store = ObjectStore()
    for kind in PLURALS:
        store.replace(kind, list_kubevirt(cluster.api, kind, timeout))
    ca = gather_ca(cluster, timeout)
    return Snapshot(cluster=ca.cluster, kubevirt_namespace=ca.kubevirt_namespace,
                    managed=ca.managed, kubevirt_ca=ca.kubevirt_ca, external_ca=ca.external_ca,
                    store=store)


# --- unreachable clusters: backoff ----------------------------------------------------------
@dataclass
class Backoff:
    """Per-cluster exponential backoff after failures (1s, 2s, 4s, ... up to `maximum`)."""

    initial: timedelta = timedelta(seconds=1)
    maximum: timedelta = timedelta(minutes=5)
    _failures: dict[str, int] = field(default_factory=dict)
    _retry_at: dict[str, datetime] = field(default_factory=dict)

    def due(self, cluster: str, now: datetime) -> bool:
        retry_at = self._retry_at.get(cluster)
        return retry_at is None or now >= retry_at

    def succeeded(self, cluster: str) -> None:
        self._failures.pop(cluster, None)
        self._retry_at.pop(cluster, None)

    def failed(self, cluster: str, now: datetime) -> datetime:
        failures = self._failures.get(cluster, 0) + 1
        self._failures[cluster] = failures
        delay = min(self.initial * 2 ** min(failures - 1, 20), self.maximum)
        self._retry_at[cluster] = now + delay
        return now + delay

    def next_retry(self) -> datetime | None:
        return min(self._retry_at.values(), default=None)

    def forget(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        for table in (self._failures, self._retry_at):
            for name in [n for n in table if n not in keep]:
                del table[name]


@dataclass(frozen=True)
class GatherResult(Generic[S]):
    snapshots: dict[str, S | None]
    errors: dict[str, str]  # cluster -> why it has no snapshot this pass


def gather_all(clusters: Iterable[Cluster], timeout: float, now: datetime,
               backoff: Backoff | None = None) -> GatherResult[Snapshot]:
    """Full snapshots of every cluster, read in parallel; failures become None plus an error."""
    return _gather_each(gather_cluster, clusters, timeout, now, backoff)


def gather_all_ca(clusters: Iterable[Cluster], timeout: float, now: datetime,
                  backoff: Backoff | None = None) -> GatherResult[CaSnapshot]:
    """CA snapshots of every cluster (no VMIM, VM or VMI lists); failures as in gather_all."""
    return _gather_each(gather_ca, clusters, timeout, now, backoff)


def _gather_each(read: Callable[[Cluster, float], S], clusters: Iterable[Cluster],
                 timeout: float, now: datetime, backoff: Backoff | None) -> GatherResult[S]:
    clusters = list(clusters)
    due = [c for c in clusters if backoff is None or backoff.due(c.name, now)]
    snapshots: dict[str, S | None] = {c.name: None for c in clusters}
    errors = {c.name: "backing off after earlier failures" for c in clusters if c not in due}
    if due:
        with ThreadPoolExecutor(max_workers=min(8, len(due))) as pool:
            futures = {c.name: pool.submit(read, c, timeout) for c in due}
        for name, future in futures.items():
            try:
                snapshots[name] = future.result()
            except Exception as err:  # transport, auth, 5xx: this cluster is unknown this pass
                errors[name] = describe_error(err)
                retry_at = backoff.failed(name, now) if backoff else None
                log.warning("cluster unreachable", extra={
                    "cluster": name, "error": errors[name],
                    "retry_at": retry_at.isoformat() if retry_at else None})
            else:
                if backoff:
                    backoff.succeeded(name)
    return GatherResult(snapshots, errors)


def describe_error(err: BaseException) -> str:
    if isinstance(err, ApiException):
        return f"HTTP {err.status} {err.reason}"
    return f"{type(err).__name__}: {err}"[:300]
