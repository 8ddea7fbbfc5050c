"""Reads what a plan, a resume, `status` and `cancel` need from the two clusters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dlm_guard.domain import (
    LABEL_HASH_PREFIX,
    LABEL_MIGRATION_ID,
    LABEL_ROLE,
    Obj,
    Role,
    get_path,
    labels_of,
    migration_id_label,
    migration_role,
    spec_migration_id,
    vmi_name,
)
from migrate import kube
from migrate.kube import Kube, KubeError
from migrate.plan import (
    PlanError,
    SourceState,
    claim_volumes,
    referenced_config_maps,
    referenced_secrets,
    template_spec,
)
from migrate.review import ClusterView


def source_state(source: Kube, namespace: str, vm_name: str) -> SourceState:
    """The source VM and everything it uses; PlanError when the VM does not exist."""
    vm = source.get(kube.VM, namespace, vm_name)
    if vm is None:
        raise PlanError([f"VirtualMachine {namespace}/{vm_name} not found in {source.name}"])
    vmi = source.get(kube.VMI, namespace, vm_name)
    specs = [template_spec(vm), get_path(vmi, "spec") or {}]
    data_volumes, pvcs = {}, {}
    for kind, name in claim_volumes(vm, vmi):
        if kind == "DataVolume":
            dv = source.get(kube.DATA_VOLUME, namespace, name)
            if dv is not None:
                data_volumes[name] = dv
                name = str(get_path(dv, "status", "claimName") or name)
        pvc = source.get(kube.PVC, namespace, name)
        if pvc is not None:
            pvcs[name] = pvc
    secrets = _by_name(source, kube.SECRET, namespace,
                       {n for s in specs for n in referenced_secrets(s)})
    config_maps = _by_name(source, kube.CONFIG_MAP, namespace,
                           {n for s in specs for n in referenced_config_maps(s)})
    return SourceState(vm=vm, vmi=vmi, data_volumes=data_volumes, pvcs=pvcs,
                       secrets=secrets, config_maps=config_maps)


def _by_name(cluster: Kube, resource: kube.Resource, namespace: str,
             names: Iterable[str]) -> dict[str, Obj]:
    found: dict[str, Obj] = {}
    for name in sorted(names):
        obj = cluster.get(resource, namespace, name)
        if obj is not None:
            found[name] = obj
    return found


def kubevirt_cr(cluster: Kube) -> tuple[dict[str, Any] | None, bool]:
    """(the cluster's KubeVirt CR or None, whether we may read it at all).

    Reading it is optional: a migration operator's role may exclude it; the connect address
    then comes from the target VMIM's status and the webhook still checks the gate."""
    try:
        found = cluster.list(kube.KUBEVIRT)
    except KubeError as err:
        if err.status == 403:
            return None, False
        if err.status == 404:  # no KubeVirt CRD: KubeVirt is not installed
            return None, True
        raise
    found.sort(key=lambda o: (get_path(o, "metadata", "namespace"),
                              get_path(o, "metadata", "name")))
    return (found[0] if found else None), True


def synchronization_addresses(obj: Obj | None) -> list[str]:
    """status.synchronizationAddresses of a KubeVirt CR or a VMIM (upstream copies the CR's
    into every VMIM: pkg/virt-controller/watch/migration/migration.go)."""
    value = get_path(obj, "status", "synchronizationAddresses") if obj else None
    return [a for a in value if isinstance(a, str) and a] if isinstance(value, list) else []


def cluster_view(cluster: Kube, migration_id: str, vmis: Iterable[Obj] = ()) -> ClusterView:
    """What that cluster's webhook would read: its KubeVirt CR, and every VMIM (any
    namespace, finished ones too) already using the migrationID."""
    vmims = [v for v in cluster.list(kube.VMIM)
             if (role := migration_role(v)) is not None
             and spec_migration_id(v, role) == migration_id]
    kubevirt, readable = kubevirt_cr(cluster)
    return ClusterView(kubevirt=kubevirt, vmis=list(vmis), vmims=vmims,
                       kubevirt_readable=readable)


# --- Objects of one migration, found by our labels ---------------------------------------------
@dataclass
class Found:
    """What exists of one migration in both clusters."""

    migration_id: str
    source_vmims: list[dict[str, Any]] = field(default_factory=list)
    target_vmims: list[dict[str, Any]] = field(default_factory=list)
    target_vms: list[dict[str, Any]] = field(default_factory=list)
    data_volumes: list[dict[str, Any]] = field(default_factory=list)


def _ours(objects: Iterable[dict[str, Any]], migration_id: str, role: Role | None
          ) -> list[dict[str, Any]]:
    """Objects with our label whose spec (for VMIMs) really carries this migrationID: a
    hashed label could in theory be shared, the spec cannot."""
    result = []
    for obj in objects:
        if role is not None and (migration_role(obj) is not role
                                 or spec_migration_id(obj, role) != migration_id):
            continue
        result.append(obj)
    return result


def find_migration(source: Kube, target: Kube, migration_id: str,
                   namespaces: tuple[str | None, str | None] = (None, None)) -> Found:
    """Every object of this migration in both clusters (namespaces None: all)."""
    selector = f"{LABEL_MIGRATION_ID}={migration_id_label(migration_id)}"
    source_ns, target_ns = namespaces
    found = Found(migration_id)
    found.source_vmims = _ours(source.list(kube.VMIM, source_ns, selector), migration_id,
                               Role.SOURCE)
    found.target_vmims = _ours(target.list(kube.VMIM, target_ns, selector), migration_id,
                               Role.TARGET)
    found.target_vms = target.list(kube.VM, target_ns, selector)
    found.data_volumes = target.list(kube.DATA_VOLUME, target_ns, selector)
    return found


def resumable_migration_id(source: Kube, target: Kube, vm_name: str, source_ns: str,
                           target_ns: str) -> str | None:
    """The migrationID of an earlier `run` for this VM that left objects behind, if any.

    Found through our labels on the target VM and the VMIMs. The real ID comes from a VMIM
    spec; a target VM alone gives it only when the label is the ID itself (not hashed).
    """
    for cluster, namespace, role in ((target, target_ns, Role.TARGET),
                                     (source, source_ns, Role.SOURCE)):
        selector = f"{LABEL_ROLE}={role.value}"
        for vmim in cluster.list(kube.VMIM, namespace, selector):
            mid = spec_migration_id(vmim, role)
            if vmi_name(vmim) == vm_name and LABEL_MIGRATION_ID in labels_of(vmim) and mid:
                return mid
    vm = target.get(kube.VM, target_ns, vm_name)
    label = labels_of(vm).get(LABEL_MIGRATION_ID) if vm else None
    if label and label.startswith(LABEL_HASH_PREFIX):
        raise PlanError([f"target VM {target_ns}/{vm_name} belongs to migration label {label}, "
                         "a hashed migrationID: pass the original with --migration-id"])
    return label or None
