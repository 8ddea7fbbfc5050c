"""KubeVirt decentralized-live-migration facts shared by the webhook and the reconciler.

Everything here is pure: views over plain Kubernetes object dicts (as decoded from JSON),
the keys we read and write, and the volume checks. Upstream facts are cited from
../shared/SPEC.md (KubeVirt main of 2026-08, v1.6 to v1.9).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

Obj = Mapping[str, Any]

# --- Kinds and API groups -------------------------------------------------------------
KUBEVIRT_GROUP = "kubevirt.io"
KIND_VM = "VirtualMachine"
KIND_VMI = "VirtualMachineInstance"
KIND_VMIM = "VirtualMachineInstanceMigration"
KIND_KUBEVIRT = "KubeVirt"

# --- Labels and annotations -----------------------------------------------------------
LABEL_MIGRATION_ID = "dlm-guard.io/migration-id"
LABEL_ROLE = "dlm-guard.io/role"
LABEL_PEER = "dlm-guard.io/peer"
# Evidence the reconciler keeps on a VMIM so its clean-up timers survive restarts, leader
# changes and `reconcile --once` (reconciler/gc.py): when its peer was first seen missing
# while every cluster was reachable, and "<state> <time>" for a state upstream gives no
# timestamp for. Both RFC 3339 UTC.
ANNOTATION_PEER_MISSING_SINCE = "dlm-guard.io/peer-missing-since"
ANNOTATION_STATE_SINCE = "dlm-guard.io/state-since"
# virt-controller copies this into spec.runStrategy after a successful migration, without
# validating it (pkg/virt-controller/watch/vm/vm.go).
ANNOTATION_RESTORE_RUN_STRATEGY = "kubevirt.io/restore-run-strategy"
# Set by KubeVirt on the VMI it starts for a WaitAsReceiver VM.
ANNOTATION_CREATE_MIGRATION_TARGET = "kubevirt.io/create-migration-target"

# --- Run strategies (vms-admitter.go) -------------------------------------------------
RUN_STRATEGY_WAIT_AS_RECEIVER = "WaitAsReceiver"
# The five ordinary strategies: the only values safe to restore after a migration.
RESTORABLE_RUN_STRATEGIES = ("Always", "Halted", "Manual", "RerunOnFailure", "Once")

# --- Feature gate ---------------------------------------------------------------------
FEATURE_GATE = "DecentralizedLiveMigration"
# Alpha v1.6..v1.9 (opt-in), Beta from v1.10 (on unless disabled).
FEATURE_GATE_BETA_VERSION = (1, 10)

# --- CA ConfigMaps in the KubeVirt install namespace ----------------------------------
DEFAULT_KUBEVIRT_NAMESPACE = "kubevirt"
KUBEVIRT_CA_CONFIGMAP = "kubevirt-ca"
EXTERNAL_CA_CONFIGMAP = "kubevirt-external-ca"
CA_BUNDLE_KEY = "ca-bundle"
MAX_CERTIFICATES_IN_BUNDLE = 50  # maxCertificatesInBundle in virt-operator

# --- Migration phases (SPEC.md §4) ----------------------------------------------------
PHASE_SUCCEEDED = "Succeeded"
PHASE_FAILED = "Failed"
FINAL_PHASES = frozenset({PHASE_SUCCEEDED, PHASE_FAILED})
WAITING_PHASES = frozenset({"WaitingForSync", "Synchronizing"})
VMI_PHASE_RUNNING = "Running"

# A label value: <= 63 chars, alphanumeric at both ends (k8s validation.IsValidLabelValue).
LABEL_VALUE_MAX = 63
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class Role(StrEnum):
    """Side of a decentralized migration, as written in our `dlm-guard.io/role` label."""

    SOURCE = "source"  # spec.sendTo
    TARGET = "target"  # spec.receive


ROLE_FIELD = {Role.SOURCE: "sendTo", Role.TARGET: "receive"}


def is_valid_label_value(value: str) -> bool:
    return len(value) <= LABEL_VALUE_MAX and bool(_LABEL_VALUE_RE.match(value))


# --- Generic object access ------------------------------------------------------------
def get_path(obj: Any, *keys: str) -> Any:
    """Walk nested dicts; None as soon as a key is missing or a value is not a dict."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def kind_of(obj: Obj) -> str:
    return str(obj.get("kind") or "")


def name_of(obj: Obj) -> str:
    return str(get_path(obj, "metadata", "name") or "")


def namespace_of(obj: Obj) -> str:
    return str(get_path(obj, "metadata", "namespace") or "")


def labels_of(obj: Obj) -> Mapping[str, str]:
    labels = get_path(obj, "metadata", "labels")
    return labels if isinstance(labels, Mapping) else {}


def annotations_of(obj: Obj) -> Mapping[str, str]:
    annotations = get_path(obj, "metadata", "annotations")
    return annotations if isinstance(annotations, Mapping) else {}


def is_terminating(obj: Obj) -> bool:
    return get_path(obj, "metadata", "deletionTimestamp") is not None


# --- Migrations -----------------------------------------------------------------------
def _has_field(spec: Any, field: str) -> bool:
    # Go decodes `sendTo: null` to a nil pointer: a null field is an unset field upstream.
    return isinstance(spec, Mapping) and spec.get(field) is not None


def has_both_roles(vmim: Obj) -> bool:
    spec = vmim.get("spec")
    return _has_field(spec, "sendTo") and _has_field(spec, "receive")


def migration_role(vmim: Obj) -> Role | None:
    """The role of a decentralized VMIM, None for an ordinary one.

    Upstream's IsDecentralized() needs exactly one of sendTo/receive; with both set the VMIM
    silently turns into an ordinary migration (SPEC.md §1). We still report `both-roles`, so
    callers check has_both_roles() first.
    """
    spec = vmim.get("spec")
    if not isinstance(spec, Mapping):
        return None
    has_send, has_receive = _has_field(spec, "sendTo"), _has_field(spec, "receive")
    if has_send == has_receive:
        return None
    return Role.SOURCE if has_send else Role.TARGET


def is_decentralized(vmim: Obj) -> bool:
    return migration_role(vmim) is not None or has_both_roles(vmim)


def spec_migration_id(vmim: Obj, role: Role) -> str | None:
    value = get_path(vmim, "spec", ROLE_FIELD[role], "migrationID")
    return value if isinstance(value, str) else None


def migration_id(vmim: Obj) -> str | None:
    """migrationID used for pairing: our label when present, else the spec (issue #5)."""
    role = migration_role(vmim)
    if role is None:
        return None
    label = labels_of(vmim).get(LABEL_MIGRATION_ID)
    return label or spec_migration_id(vmim, role) or None


def vmi_name(vmim: Obj) -> str:
    value = get_path(vmim, "spec", "vmiName")
    return value if isinstance(value, str) else ""


def phase_of(obj: Obj) -> str:
    value = get_path(obj, "status", "phase")
    return value if isinstance(value, str) else ""


def is_final(vmim: Obj) -> bool:
    return phase_of(vmim) in FINAL_PHASES


# --- Virtual machines -----------------------------------------------------------------
def run_strategy(vm: Obj) -> str | None:
    value = get_path(vm, "spec", "runStrategy")
    return value if isinstance(value, str) else None


def is_wait_as_receiver(vm: Obj) -> bool:
    return run_strategy(vm) == RUN_STRATEGY_WAIT_AS_RECEIVER


def is_receiver_vmi(vmi: Obj) -> bool:
    """KubeVirt marks the VMI of a WaitAsReceiver VM with create-migration-target=true."""
    return str(annotations_of(vmi).get(ANNOTATION_CREATE_MIGRATION_TARGET, "")).lower() == "true"


def migration_failed_on_vmi(vmi: Obj) -> bool:
    """v1.7+ puts a failed target VMI back to WaitingForSync with migrationState.failed."""
    return get_path(vmi, "status", "migrationState", "failed") is True


# --- Feature gate ---------------------------------------------------------------------
def parse_version(text: str) -> tuple[int, int] | None:
    match = re.match(r"^v?(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def _lists(value: Any, item: str) -> bool:
    return isinstance(value, list) and item in value


def feature_gate_enabled(kubevirt: Obj) -> bool | None:
    """Whether DecentralizedLiveMigration is on; None when the version cannot tell."""
    dev = get_path(kubevirt, "spec", "configuration", "developerConfiguration")
    if _lists(get_path(dev, "featureGates"), FEATURE_GATE):
        return True
    if _lists(get_path(dev, "disabledFeatureGates"), FEATURE_GATE):
        return False
    version = parse_version(str(get_path(kubevirt, "status", "observedKubeVirtVersion") or ""))
    if version is None:
        return None
    return version >= FEATURE_GATE_BETA_VERSION


# --- Volume checks (SPEC.md §3) -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: the rule slug, the JSON field path it is about, and what to do."""

    rule: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.path}: {self.message}"


def _disks(domain_spec: Obj) -> Iterator[tuple[int, Obj]]:
    disks = get_path(domain_spec, "devices", "disks")
    if isinstance(disks, list):
        for index, disk in enumerate(disks):
            if isinstance(disk, Mapping):
                yield index, disk


def volume_findings(vmi_spec: Obj, prefix: str) -> list[Finding]:
    """Findings for a VMI spec (a VM's spec.template.spec or a VMI's spec).

    `prefix` is the path of vmi_spec itself, e.g. "spec.template.spec". Upstream checks these
    only on the storage-migration path (ValidateVolumes), not for decentralized migrations.
    """
    domain = get_path(vmi_spec, "domain")
    if not isinstance(domain, Mapping):
        return []
    base = f"{prefix}.domain"
    findings: list[Finding] = []
    for index, disk in _disks(domain):
        disk_path = f"{base}.devices.disks[{index}]"
        if disk.get("shareable") is True:
            findings.append(Finding(
                "shareable-disk", f"{disk_path}.shareable",
                f"disk {disk.get('name', index)!r} is shareable; decentralized live migration "
                "does not support shareable disks: remove shareable or migrate another way"))
        if "lun" in disk:
            findings.append(Finding(
                "lun-disk", f"{disk_path}.lun",
                f"disk {disk.get('name', index)!r} is a LUN disk; decentralized live migration "
                "does not support LUN disks: use a disk (bus virtio/sata/scsi) instead"))
    filesystems = get_path(domain, "devices", "filesystems")
    if isinstance(filesystems, list) and filesystems:
        findings.append(Finding(
            "filesystem", f"{base}.devices.filesystems",
            "filesystem devices (virtiofs) cannot be live-migrated across clusters: "
            "remove devices.filesystems before migrating"))
    findings.extend(_persistent_state_findings(domain, base))
    return findings


def _persistent_state_findings(domain: Obj, base: str) -> list[Finding]:
    # A persistent vTPM/EFI PVC is not copied when it is RWX on both sides (known upstream
    # bug), and the state needs domain.firmware.uuid equal on source and target VM.
    advice = ("persistent VM state needs domain.firmware.uuid equal on both VMs, and is not "
              "copied when its PVC is ReadWriteMany on both sides")
    findings = []
    if get_path(domain, "devices", "tpm", "persistent") is True:
        findings.append(Finding("persistent-state", f"{base}.devices.tpm.persistent",
                                f"persistent vTPM: {advice}"))
    if get_path(domain, "firmware", "bootloader", "efi", "persistent") is True:
        findings.append(Finding("persistent-state",
                                f"{base}.firmware.bootloader.efi.persistent",
                                f"persistent EFI: {advice}"))
    return findings
