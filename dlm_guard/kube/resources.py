"""The resources dlm-guard reads: the one table of KubeVirt (and core) resources."""

from __future__ import annotations

from dataclasses import dataclass

from dlm_guard.domain import KIND_KUBEVIRT, KIND_VM, KIND_VMI, KIND_VMIM, KUBEVIRT_GROUP
from dlm_guard.projection import KIND_CONFIGMAP, KIND_SECRET

KUBEVIRT_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    plural: str
    group: str = ""  # "" is the core group (/api/v1)
    version: str = "v1"

    def path(self, namespace: str | None = None) -> str:
        """The collection's URL path, cluster-wide or in one namespace."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"{base}{where}/{self.plural}"

    def item_path(self, namespace: str, name: str) -> str:
        return f"{self.path(namespace)}/{name}"


# kubevirt.io/v1. Namespaced ones are read cluster-wide: duplicate-migration-id and the peer
# search look migrationIDs up across every namespace, as upstream does.
VMI = Resource(KIND_VMI, "virtualmachineinstances", KUBEVIRT_GROUP, KUBEVIRT_VERSION)
VM = Resource(KIND_VM, "virtualmachines", KUBEVIRT_GROUP, KUBEVIRT_VERSION)
VMIM = Resource(KIND_VMIM, "virtualmachineinstancemigrations", KUBEVIRT_GROUP,
                KUBEVIRT_VERSION)
KUBEVIRT = Resource(KIND_KUBEVIRT, "kubevirts", KUBEVIRT_GROUP, KUBEVIRT_VERSION)
CONFIGMAP = Resource(KIND_CONFIGMAP, "configmaps")
SECRET = Resource(KIND_SECRET, "secrets")

KUBEVIRT_RESOURCES = {r.kind: r for r in (VMI, VM, VMIM, KUBEVIRT)}
