"""The migration plan: what the source cluster holds in, the ordered objects to create out.

Pure: no I/O, no clock, no randomness (the caller passes the migrationID). The order and the
object shapes follow the orchestrator sequence of KubeVirt's user guide (decentralized live
migration) and what Forklift does for OpenShift-to-OpenShift live migration (kubev2v/forklift
pkg/controller/plan/migrator/ocp/live.go at d42511bb, `Builder`): Secrets, ConfigMaps, blank
DataVolumes, the WaitAsReceiver target VM, then the target VMIM, then the source VMIM.
Where we differ from Forklift, a comment says why.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dlm_guard.domain import (
    ANNOTATION_CREATE_MIGRATION_TARGET,
    ANNOTATION_RESTORE_RUN_STRATEGY,
    LABEL_MIGRATION_ID,
    LABEL_ROLE,
    RESTORABLE_RUN_STRATEGIES,
    RUN_STRATEGY_WAIT_AS_RECEIVER,
    Obj,
    Role,
    get_path,
    labels_of,
    migration_id_label,
    name_of,
    namespace_of,
)

KUBEVIRT_API = "kubevirt.io/v1"
CDI_API = "cdi.kubevirt.io/v1beta1"
# The user guide's blank target DataVolume (decentralized live migration) carries this.
# Forklift sets cdi.kubevirt.io/storage.bind.immediate.requested instead; we follow the guide.
ANNOTATION_USE_POPULATOR = "cdi.kubevirt.io/storage.usePopulator"
# kubectl's copy of the last applied manifest describes the source object, not ours.
ANNOTATION_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
NAME_MAX = 253


class PlanError(Exception):
    """The plan cannot be built; `problems` lists every reason at once."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class Step(StrEnum):
    """The kinds of object a plan creates, in creation order."""

    SECRET = "Secret"
    CONFIG_MAP = "ConfigMap"
    DATA_VOLUME = "DataVolume"
    TARGET_VM = "VirtualMachine"
    TARGET_VMIM = "TargetVMIM"
    SOURCE_VMIM = "SourceVMIM"


@dataclass(frozen=True)
class PlannedObject:
    step: Step
    side: Role  # the cluster it is created in
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def name(self) -> str:
        return name_of(self.obj)

    @property
    def namespace(self) -> str:
        return namespace_of(self.obj)

    def describe(self) -> str:
        return f"{self.side.value} {self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class SourceState:
    """What the source cluster holds for one VM, read by migrate.gather."""

    vm: Obj
    vmi: Obj | None
    data_volumes: Mapping[str, Obj] = field(default_factory=dict)
    pvcs: Mapping[str, Obj] = field(default_factory=dict)
    secrets: Mapping[str, Obj] = field(default_factory=dict)
    config_maps: Mapping[str, Obj] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    target_namespace: str
    migration_id: str
    storage_classes: Mapping[str, str] = field(default_factory=dict)
    networks: Mapping[str, str] = field(default_factory=dict)
    connect_url: str | None = None  # None: read from the target VMIM's status during `run`


@dataclass(frozen=True)
class Plan:
    migration_id: str
    vm_name: str
    source_namespace: str
    target_namespace: str
    restore_run_strategy: str
    objects: tuple[PlannedObject, ...]
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return migration_id_label(self.migration_id)

    def of(self, step: Step) -> list[PlannedObject]:
        return [planned for planned in self.objects if planned.step is step]

    def one(self, step: Step) -> PlannedObject:
        (planned,) = self.of(step)
        return planned

    def with_connect_url(self, url: str) -> Plan:
        """The same plan with the source VMIM's connectURL filled in."""
        objects = []
        for planned in self.objects:
            if planned.step is Step.SOURCE_VMIM:
                obj = copy.deepcopy(planned.obj)
                obj["spec"]["sendTo"]["connectURL"] = url
                planned = PlannedObject(planned.step, planned.side, obj)
            objects.append(planned)
        return Plan(self.migration_id, self.vm_name, self.source_namespace,
                    self.target_namespace, self.restore_run_strategy, tuple(objects),
                    tuple(n for n in self.notes if not n.startswith(CONNECT_PENDING)))


CONNECT_PENDING = "connectURL pending"


# --- Labels and names (DESIGN.md "Labels and annotations we own") -----------------------
def vmim_name(vm_name: str, role: Role, migration_id: str) -> str:
    """A deterministic VMIM name, so a resumed run finds the one it made (DNS subdomain)."""
    digest = hashlib.sha256(migration_id.encode()).hexdigest()[:10]
    suffix = f"-{role.value}-{digest}"
    return vm_name[:NAME_MAX - len(suffix)] + suffix


# --- Reading the source VM ---------------------------------------------------------------
def restore_run_strategy(vm: Obj) -> str:
    """The strategy the target VM gets back after the migration.

    Upstream's VirtualMachine.RunStrategy() (staging/src/kubevirt.io/api/core/v1/types.go):
    `spec.running` true -> Always, false -> Halted, neither set -> Halted. Forklift only
    copies `spec.runStrategy` and forgets legacy `spec.running`.
    """
    running, strategy = get_path(vm, "spec", "running"), get_path(vm, "spec", "runStrategy")
    problems = []
    if running is not None and strategy is not None:
        problems.append("source VM sets both spec.running and spec.runStrategy (KubeVirt "
                        "treats them as mutually exclusive): keep only spec.runStrategy")
    if strategy == RUN_STRATEGY_WAIT_AS_RECEIVER:
        problems.append("source VM has runStrategy WaitAsReceiver: it is itself a migration "
                        "target, not a VM that can be sent")
    elif strategy is not None and strategy not in RESTORABLE_RUN_STRATEGIES:
        problems.append(f"source VM runStrategy {strategy!r} is not one of "
                        f"{', '.join(RESTORABLE_RUN_STRATEGIES)}")
    if problems:
        raise PlanError(problems)
    if strategy is not None:
        return str(strategy)
    return "Always" if running is True else "Halted"


def _spec_volumes(spec: Any) -> list[Obj]:
    volumes = get_path(spec, "volumes")
    return [v for v in volumes if isinstance(v, Mapping)] if isinstance(volumes, list) else []


def template_spec(vm: Obj) -> Obj:
    spec = get_path(vm, "spec", "template", "spec")
    return spec if isinstance(spec, Mapping) else {}


def claim_volumes(vm: Obj, vmi: Obj | None) -> list[tuple[str, str]]:
    """(kind, name) of every DataVolume and PVC the VM's template or its running VMI uses.

    The VMI's own spec adds volumes hotplugged without being persisted in the VM
    (supported for decentralized migration since KubeVirt v1.7).
    """
    seen: dict[tuple[str, str], None] = {}
    for spec in (template_spec(vm), (vmi or {}).get("spec")):
        for volume in _spec_volumes(spec):
            dv = get_path(volume, "dataVolume", "name")
            pvc = get_path(volume, "persistentVolumeClaim", "claimName")
            if isinstance(dv, str) and dv:
                seen[("DataVolume", dv)] = None
            elif isinstance(pvc, str) and pvc:
                seen[("PersistentVolumeClaim", pvc)] = None
    return list(seen)


# Where a VMI spec names Secrets and ConfigMaps: the places Forklift's Builder.Secrets and
# Builder.ConfigMaps copy from (live.go at d42511bb), by their JSON names in the VM CRD
# (Go's UserDataSecretRef is `secretRef`).
_SECRET_PATHS: tuple[tuple[str, ...], ...] = (
    ("secret", "secretName"),
    ("cloudInitNoCloud", "secretRef", "name"),
    ("cloudInitNoCloud", "networkDataSecretRef", "name"),
    ("cloudInitConfigDrive", "secretRef", "name"),
    ("cloudInitConfigDrive", "networkDataSecretRef", "name"),
    ("sysprep", "secret", "name"),
    ("containerDisk", "imagePullSecret"),
)
_CONFIG_MAP_PATHS: tuple[tuple[str, ...], ...] = (
    ("configMap", "name"), ("sysprep", "configMap", "name"))
_CREDENTIAL_PATHS: tuple[tuple[str, ...], ...] = (
    ("sshPublicKey", "source", "secret", "secretName"),
    ("userPassword", "source", "secret", "secretName"),
)


def _names_at(items: Iterable[Obj], paths: Iterable[tuple[str, ...]]) -> Iterator[str]:
    for item in items:
        for path in paths:
            value = get_path(item, *path)
            if isinstance(value, str) and value:
                yield value


def referenced_secrets(spec: Obj) -> list[str]:
    credentials = spec.get("accessCredentials")
    creds = [c for c in credentials if isinstance(c, Mapping)] \
        if isinstance(credentials, list) else []
    names = [*_names_at(creds, _CREDENTIAL_PATHS), *_names_at(_spec_volumes(spec), _SECRET_PATHS)]
    return list(dict.fromkeys(names))


def referenced_config_maps(spec: Obj) -> list[str]:
    return list(dict.fromkeys(_names_at(_spec_volumes(spec), _CONFIG_MAP_PATHS)))


# --- Building objects ----------------------------------------------------------------------
def _copied_metadata(source: Obj, namespace: str, label: str) -> dict[str, Any]:
    annotations = {k: v for k, v in (get_path(source, "metadata", "annotations") or {}).items()
                   if k != ANNOTATION_LAST_APPLIED}
    metadata: dict[str, Any] = {
        "name": name_of(source), "namespace": namespace,
        "labels": {**labels_of(source), LABEL_MIGRATION_ID: label}}
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def copied_secret(secret: Obj, namespace: str, label: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret",
                           "metadata": _copied_metadata(secret, namespace, label)}
    # Forklift leaves `type` out (the copy becomes Opaque); a kubernetes.io/ssh-auth or
    # dockerconfigjson Secret must keep its type to be used the same way.
    for key in ("type", "data", "immutable"):
        if key in secret:
            obj[key] = copy.deepcopy(secret[key])
    return obj


def copied_config_map(config_map: Obj, namespace: str, label: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": _copied_metadata(config_map, namespace, label)}
    for key in ("data", "binaryData", "immutable"):
        if key in config_map:
            obj[key] = copy.deepcopy(config_map[key])
    return obj


def _claim_of(kind: str, name: str, state: SourceState) -> Obj | None:
    """The source PVC behind a volume: a DataVolume's claim (status.claimName, else the
    DataVolume's own name, CDI's default) or the named PVC."""
    if kind == "DataVolume":
        dv = state.data_volumes.get(name)
        claim = get_path(dv, "status", "claimName") if dv else None
        return state.pvcs.get(str(claim or name))
    return state.pvcs.get(name)


def volume_size(pvc: Obj | None, dv: Obj | None) -> str | None:
    """The target size: the source PVC's capacity, else what it (or its DataVolume) asked.

    Capacity can exceed the request (block storage rounds up); a smaller target could not
    hold the disk. Forklift reads capacity for block PVCs only (requestSize, live.go).
    """
    paths: tuple[tuple[str, ...], ...] = (("status", "capacity", "storage"),
                                          ("spec", "resources", "requests", "storage"))
    for path in paths:
        value = get_path(pvc, *path) if pvc else None
        if value:
            return str(value)
    for path in (("spec", "storage", "resources", "requests", "storage"),
                 ("spec", "pvc", "resources", "requests", "storage")):
        value = get_path(dv, *path) if dv else None
        if value:
            return str(value)
    return None


def source_storage_class(pvc: Obj | None, dv: Obj | None) -> str | None:
    for obj, path in ((dv, ("spec", "storage", "storageClassName")),
                      (dv, ("spec", "pvc", "storageClassName")),
                      (pvc, ("spec", "storageClassName"))):
        value = get_path(obj, *path) if obj else None
        if isinstance(value, str) and value:
            return value
    return None


def blank_data_volume(name: str, namespace: str, size: str, storage_class: str | None,
                      label: str) -> dict[str, Any]:
    """A blank DataVolume the migration fills. Access and volume modes are left to the
    target's CDI StorageProfile: the target class may not offer the source's modes."""
    storage: dict[str, Any] = {"resources": {"requests": {"storage": size}}}
    if storage_class:
        storage["storageClassName"] = storage_class
    return {
        "apiVersion": CDI_API, "kind": "DataVolume",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {LABEL_MIGRATION_ID: label},
                     "annotations": {ANNOTATION_USE_POPULATOR: "true"}},
        "spec": {"source": {"blank": {}}, "storage": storage},
    }


def _data_volumes(state: SourceState, options: Options, label: str
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    objects, problems = [], []
    for kind, name in claim_volumes(state.vm, state.vmi):
        dv = state.data_volumes.get(name) if kind == "DataVolume" else None
        if kind == "DataVolume" and dv is None:
            problems.append(f"DataVolume {name} used by the source VM was not found")
            continue
        pvc = _claim_of(kind, name, state)
        size = volume_size(pvc, dv)
        if size is None:
            problems.append(f"{kind} {name}: no PersistentVolumeClaim with a capacity or "
                            "request found, so the target size is unknown")
            continue
        old_class = source_storage_class(pvc, dv)
        new_class = options.storage_classes.get(old_class or "", old_class)
        objects.append(blank_data_volume(name, options.target_namespace, size, new_class,
                                         label))
    return objects, problems


def _mapped_networks(spec: dict[str, Any], source_namespace: str,
                     networks: Mapping[str, str]) -> None:
    """Multus networks renamed as --network OLD=NEW says; OLD matches `name` or `ns/name`."""
    for network in spec.get("networks") or []:
        multus = network.get("multus") if isinstance(network, dict) else None
        if not isinstance(multus, dict) or not isinstance(multus.get("networkName"), str):
            continue
        current = multus["networkName"]
        qualified = current if "/" in current else f"{source_namespace}/{current}"
        for candidate in (current, qualified):
            if candidate in networks:
                multus["networkName"] = networks[candidate]
                break


def target_vm(vm: Obj, options: Options, strategy: str, label: str) -> dict[str, Any]:
    """The source VM as a receiver: WaitAsReceiver, the restore annotation, same volumes.

    As Forklift's Builder.VirtualMachine: template, instancetype, preference and
    dataVolumeTemplates copied (DataVolume names kept, so volumes need no rewrite), labels
    and annotations copied, legacy `running` dropped.
    """
    spec = copy.deepcopy(dict(vm.get("spec") or {}))
    spec.pop("running", None)
    spec["runStrategy"] = RUN_STRATEGY_WAIT_AS_RECEIVER
    for template in spec.get("dataVolumeTemplates") or []:
        if isinstance(template, dict) and isinstance(template.get("metadata"), dict) \
                and "namespace" in template["metadata"]:
            template["metadata"]["namespace"] = options.target_namespace
    template_spec_ = get_path(spec, "template", "spec")
    if isinstance(template_spec_, dict):
        _mapped_networks(template_spec_, namespace_of(vm), options.networks)
    metadata = _copied_metadata(vm, options.target_namespace, label)
    metadata["annotations"] = {**metadata.get("annotations", {}),
                               ANNOTATION_RESTORE_RUN_STRATEGY: strategy}
    return {"apiVersion": KUBEVIRT_API, "kind": "VirtualMachine", "metadata": metadata,
            "spec": spec}


def target_vmim(vm_name: str, options: Options, label: str) -> dict[str, Any]:
    return {
        "apiVersion": KUBEVIRT_API, "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": vmim_name(vm_name, Role.TARGET, options.migration_id),
                     "namespace": options.target_namespace,
                     "labels": {LABEL_MIGRATION_ID: label, LABEL_ROLE: Role.TARGET.value}},
        "spec": {"receive": {"migrationID": options.migration_id}, "vmiName": vm_name},
    }


def source_vmim(vm_name: str, namespace: str, options: Options, label: str
                ) -> dict[str, Any]:
    send_to: dict[str, Any] = {"migrationID": options.migration_id}
    if options.connect_url is not None:
        send_to["connectURL"] = options.connect_url
    return {
        "apiVersion": KUBEVIRT_API, "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": vmim_name(vm_name, Role.SOURCE, options.migration_id),
                     "namespace": namespace,
                     "labels": {LABEL_MIGRATION_ID: label, LABEL_ROLE: Role.SOURCE.value}},
        "spec": {"sendTo": send_to, "vmiName": vm_name},
    }


def receiver_vmi_preview(vm: Obj) -> dict[str, Any]:
    """The VMI KubeVirt starts for a WaitAsReceiver VM (pkg/virt-controller/watch/vm/vm.go
    startVMI: the template, annotation create-migration-target; phase WaitingForSync from
    pkg/virt-controller/watch/vmi/lifecycle.go). Used to review the target VMIM before its
    VMI exists."""
    return {"apiVersion": KUBEVIRT_API, "kind": "VirtualMachineInstance",
            "metadata": {"name": name_of(vm), "namespace": namespace_of(vm),
                         "annotations": {ANNOTATION_CREATE_MIGRATION_TARGET: "true"}},
            "spec": copy.deepcopy(dict(template_spec(vm))),
            "status": {"phase": "WaitingForSync"}}


# --- The plan ------------------------------------------------------------------------------
def _auxiliary(state: SourceState, options: Options, label: str
               ) -> tuple[list[PlannedObject], list[str]]:
    specs = [template_spec(state.vm), get_path(state.vmi, "spec") or {}]
    secrets = list(dict.fromkeys(n for s in specs for n in referenced_secrets(s)))
    config_maps = list(dict.fromkeys(n for s in specs for n in referenced_config_maps(s)))
    planned, problems = [], []
    for name in secrets:
        if name in state.secrets:
            obj = copied_secret(state.secrets[name], options.target_namespace, label)
            planned.append(PlannedObject(Step.SECRET, Role.TARGET, obj))
        else:
            problems.append(f"Secret {name} used by the source VM was not found")
    for name in config_maps:
        if name in state.config_maps:
            obj = copied_config_map(state.config_maps[name], options.target_namespace, label)
            planned.append(PlannedObject(Step.CONFIG_MAP, Role.TARGET, obj))
        else:
            problems.append(f"ConfigMap {name} used by the source VM was not found")
    return planned, problems


def _notes(state: SourceState, options: Options) -> list[str]:
    notes = []
    if get_path(state.vm, "spec", "running") is not None:
        # pkg/virt-controller/watch/vm/vm.go sets spec.runStrategy Halted on the source VM
        # after a decentralized migration; with spec.running still set the VM admitter
        # (vms-admitter.go: "Running and RunStrategy are mutually exclusive") refuses it.
        notes.append("source VM uses legacy spec.running: after the migration KubeVirt "
                     "cannot set it to Halted (spec.running and spec.runStrategy are mutually "
                     "exclusive); switch it to spec.runStrategy first")
    if options.connect_url is None:
        notes.append(f"{CONNECT_PENDING}: the source VMIM's connectURL is read from the "
                     "target VMIM's status.synchronizationAddresses once it exists")
    used = {source_storage_class(_claim_of(k, n, state), state.data_volumes.get(n)) or ""
            for k, n in claim_volumes(state.vm, state.vmi)}
    notes.extend(f"--storage-class {old}: no source volume uses it"
                 for old in options.storage_classes if old not in used)
    for instance in ("instancetype", "preference"):
        kind = str(get_path(state.vm, "spec", instance, "kind") or "").lower()
        if get_path(state.vm, "spec", instance, "name") \
                and not kind.startswith("virtualmachinecluster"):
            notes.append(f"spec.{instance} names a namespaced object: it is not copied and "
                         "must exist in the target namespace")
    return notes


def build_plan(state: SourceState, options: Options) -> Plan:
    """Every object to create, in order; PlanError listing all problems otherwise."""
    vm_name, source_ns = name_of(state.vm), namespace_of(state.vm)
    problems: list[str] = []
    if not options.migration_id:
        problems.append("the migrationID is empty")
    try:
        strategy = restore_run_strategy(state.vm)
    except PlanError as err:
        problems.extend(err.problems)
        strategy = ""
    label = migration_id_label(options.migration_id)
    auxiliary, aux_problems = _auxiliary(state, options, label)
    data_volumes, dv_problems = _data_volumes(state, options, label)
    problems.extend(aux_problems + dv_problems)
    if problems:
        raise PlanError(problems)
    objects = [
        *auxiliary,
        *(PlannedObject(Step.DATA_VOLUME, Role.TARGET, dv) for dv in data_volumes),
        PlannedObject(Step.TARGET_VM, Role.TARGET, target_vm(state.vm, options, strategy, label)),
        PlannedObject(Step.TARGET_VMIM, Role.TARGET, target_vmim(vm_name, options, label)),
        PlannedObject(Step.SOURCE_VMIM, Role.SOURCE,
                      source_vmim(vm_name, source_ns, options, label)),
    ]
    return Plan(options.migration_id, vm_name, source_ns, options.target_namespace, strategy,
                tuple(objects), tuple(_notes(state, options)))
