"""What the pure decisions (trust.py, gc.py) read of one cluster in one pass: plain data, no
Kubernetes client. reconciler/gather.py freezes a cluster's cache into one of these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dlm_guard.domain import CA_BUNDLE_KEY, Obj, get_path, is_terminating, name_of, namespace_of
from dlm_guard.store import ObjectStore


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
    """The CA ConfigMaps plus every VMIM, VM and VMI (projected): what a pass reads."""

    store: ObjectStore
