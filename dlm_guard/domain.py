"""KubeVirt decentralized-live-migration facts shared by the webhook and the reconciler.

Everything here is pure: views over plain Kubernetes object dicts (as decoded from JSON),
the keys we read and write, and the volume checks. The upstream facts behind them are in
docs/kubevirt-facts.md (KubeVirt main d923fdb815 and v1.6 to v1.9, Forklift, grpc-go).
"""

from __future__ import annotations

import hashlib
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

# --- CA ConfigMaps in the KubeVirt install namespace ----------------------------------
DEFAULT_KUBEVIRT_NAMESPACE = "kubevirt"
KUBEVIRT_CA_CONFIGMAP = "kubevirt-ca"
EXTERNAL_CA_CONFIGMAP = "kubevirt-external-ca"
CA_BUNDLE_KEY = "ca-bundle"
MAX_CERTIFICATES_IN_BUNDLE = 50  # maxCertificatesInBundle in virt-operator

# --- Migration phases (docs/kubevirt-facts.md, "Phases and failure") ------------------
PHASE_SUCCEEDED = "Succeeded"
PHASE_FAILED = "Failed"
FINAL_PHASES = frozenset({PHASE_SUCCEEDED, PHASE_FAILED})
WAITING_PHASES = frozenset({"WaitingForSync", "Synchronizing"})
VMI_PHASE_RUNNING = "Running"

# A label value: <= 63 chars, alphanumeric at both ends (k8s validation.IsValidLabelValue).
LABEL_VALUE_MAX = 63
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class Rule(StrEnum):
    """Every rule slug (DESIGN.md's public contract): findings, policy keys and messages."""

    BOTH_ROLES = "both-roles"
    VMI_NAME = "vmi-name"
    MIGRATION_ID = "migration-id"
    CONNECT_URL = "connect-url"
    IMMUTABLE_SPEC = "immutable-spec"
    SHAREABLE_DISK = "shareable-disk"
    LUN_DISK = "lun-disk"
    FILESYSTEM = "filesystem"
    PERSISTENT_STATE = "persistent-state"
    RESTORE_RUN_STRATEGY = "restore-run-strategy"
    DUPLICATE_MIGRATION_ID = "duplicate-migration-id"
    RECEIVER_VMI = "receiver-vmi"
    SOURCE_VMI = "source-vmi"
    FEATURE_GATE = "feature-gate"
    LEGACY_RUNNING = "legacy-running"


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
    silently turns into an ordinary migration (docs/kubevirt-facts.md). We still report
    `both-roles`, so
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
    """The migrationID that pairs the two sides: the spec's, never our label.

    Upstream pairs by the spec's migrationID (any non-empty string), and our label may be
    a hash of it, so a label can neither pair nor be trusted to match the spec.
    """
    role = migration_role(vmim)
    if role is None:
        return None
    return spec_migration_id(vmim, role) or None


LABEL_HASH_PREFIX = "sha256-"
_LABEL_HASH_HEX = LABEL_VALUE_MAX - len(LABEL_HASH_PREFIX)  # 56 hex digits: a 63-char label


def migration_id_label(mid: str) -> str:
    """The `dlm-guard.io/migration-id` label value for a migrationID.

    The ID itself when it is a valid label value, else `sha256-` + the first 56 hex digits
    of its SHA-256, so both clusters derive the same label from the same ID (Forklift's
    73-character `<vm uid>-<migration uid>` IDs take the hash form).
    """
    if is_valid_label_value(mid):
        return mid
    return LABEL_HASH_PREFIX + hashlib.sha256(mid.encode()).hexdigest()[:_LABEL_HASH_HEX]


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
class GateState(StrEnum):
    """What the KubeVirt CR says about DecentralizedLiveMigration."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"  # the version is not one whose gate state we know: never "off"


@dataclass(frozen=True, slots=True)
class GateReading:
    """The gate's state and why, naming the list or the version string it was read from;
    `path` is the KubeVirt CR field that decided it."""

    state: GateState
    reason: str
    path: str = ""


DEV_CONFIG_PATH = "spec.configuration.developerConfiguration"
GATES_PATH = f"{DEV_CONFIG_PATH}.featureGates"
DISABLED_GATES_PATH = f"{DEV_CONFIG_PATH}.disabledFeatureGates"
VERSION_PATH = "status.observedKubeVirtVersion"
# A release tag (`v1.7.2`) or release candidate (`v1.9.0-rc.1`), nothing else: `git describe`
# strings of other builds (`v1.9.0-beta.0-1264-gd923fdb815`), `latest` and alpha/beta tags say
# nothing certain about the gate (docs/kubevirt-facts.md, "Feature gate").
_RELEASE_RE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-rc\.(\d+))?$")
# Release lines whose every release and rc registers the gate as Alpha (off unless listed).
GATE_ALPHA_LINES = frozenset({(1, 6), (1, 7), (1, 8), (1, 9)})
GATE_FIRST_LINE = (1, 6)  # no release before v1.6.0 has decentralized live migration


def release_line(version: str) -> tuple[int, int] | None:
    """(major, minor) of a release or rc tag, None for any other version string."""
    match = _RELEASE_RE.match(version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _gate_listed(dev_config: Any, field: str) -> bool:
    listed = get_path(dev_config, field)
    return isinstance(listed, list) and FEATURE_GATE in listed


def feature_gate_state(kubevirt: Obj) -> GateReading:
    """DecentralizedLiveMigration on, off or cannot tell, from a KubeVirt CR.

    Upstream precedence (featuregate.IsEnabled): an explicit enable wins over an explicit
    disable, which wins over the gate's default (Alpha: off, Beta: on). The default depends
    on the build, so only a release or rc we know to be Alpha reads as off.
    """
    dev = get_path(kubevirt, "spec", "configuration", "developerConfiguration")
    if _gate_listed(dev, "featureGates"):
        return GateReading(GateState.ON, f"listed in {GATES_PATH}", GATES_PATH)
    if _gate_listed(dev, "disabledFeatureGates"):
        return GateReading(GateState.OFF, f"listed in {DISABLED_GATES_PATH}", DISABLED_GATES_PATH)
    return _gate_default(get_path(kubevirt, "status", "observedKubeVirtVersion"))


def _gate_default(version: Any) -> GateReading:
    if not isinstance(version, str) or not version:
        return GateReading(GateState.UNKNOWN, f"{VERSION_PATH} is not set", VERSION_PATH)
    line = release_line(version)
    shown_version = repr(version[:80])
    if line in GATE_ALPHA_LINES:
        return GateReading(GateState.OFF, (
            f"not listed in {DEV_CONFIG_PATH}.featureGates, and {VERSION_PATH} "
            f"{shown_version} is a release where {FEATURE_GATE} is Alpha (off unless listed)"),
            VERSION_PATH)
    if line is not None and line < GATE_FIRST_LINE:
        return GateReading(GateState.OFF, (
            f"{VERSION_PATH} {shown_version} is older than v1.6.0, the first release with "
            f"{FEATURE_GATE}"), VERSION_PATH)
    return GateReading(GateState.UNKNOWN, (
        f"not listed in {DEV_CONFIG_PATH}.featureGates, and {VERSION_PATH} {shown_version} is "
        f"not a release whose default for {FEATURE_GATE} dlm-guard knows (Alpha in v1.6 to "
        "v1.9, Beta on main since June 2026)"), VERSION_PATH)


# --- Volume checks (docs/kubevirt-facts.md, "Filesystems") ---------------------------
class Severity(StrEnum):
    """How far a finding can go: the policy's mode applies to a violation; an advisory is at
    most a warning, even under `enforce` (what dlm-guard cannot know for sure never denies)."""

    VIOLATION = "violation"
    ADVISORY = "advisory"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: the rule slug, the JSON field path it is about, and what to do."""

    rule: Rule
    path: str
    message: str
    severity: Severity = Severity.VIOLATION

    def __str__(self) -> str:
        return f"[{self.rule}] {self.path}: {self.message}"


def _disks(domain_spec: Obj) -> Iterator[tuple[int, Obj]]:
    disks = get_path(domain_spec, "devices", "disks")
    if isinstance(disks, list):
        for index, disk in enumerate(disks):
            if isinstance(disk, Mapping):
                yield index, disk


# CEL: webhook/cel/vm.py shareable_disk(), lun_disk() (and the helpers named below).
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
                Rule.SHAREABLE_DISK, f"{disk_path}.shareable",
                f"disk {disk.get('name', index)!r} is shareable; decentralized live migration "
                "does not support shareable disks: remove shareable or migrate another way"))
        if "lun" in disk:
            findings.append(Finding(
                Rule.LUN_DISK, f"{disk_path}.lun",
                f"disk {disk.get('name', index)!r} is a LUN disk; decentralized live migration "
                "does not support LUN disks: use a disk (bus virtio/sata/scsi) instead"))
    findings.extend(_filesystem_findings(vmi_spec, domain, base))
    findings.extend(_persistent_state_findings(domain, base))
    return findings


# Volume sources whose data lives in a PVC: virtiofs shares of these are the ones that cannot
# move (docs/kubevirt-facts.md, "Filesystems"). Every other source virtiofs can share (ConfigMap,
# Secret, ServiceAccount, DownwardAPI) is rebuilt on the target and migrates since v1.5.
PVC_VOLUME_SOURCES = ("persistentVolumeClaim", "dataVolume")


def _volumes_by_name(vmi_spec: Obj) -> dict[str, Obj]:
    volumes = get_path(vmi_spec, "volumes")
    if not isinstance(volumes, list):
        return {}
    return {str(v.get("name")): v for v in volumes if isinstance(v, Mapping)}


# CEL: webhook/cel/vm.py filesystem(), filesystem_sources().
def _filesystem_findings(vmi_spec: Obj, domain: Obj, base: str) -> list[Finding]:
    filesystems = get_path(domain, "devices", "filesystems")
    if not isinstance(filesystems, list):
        return []
    volumes = _volumes_by_name(vmi_spec)
    findings = []
    for index, filesystem in enumerate(filesystems):
        name = str(get_path(filesystem, "name") or "")
        volume = volumes.get(name, {})
        source = next((key for key in PVC_VOLUME_SOURCES if volume.get(key) is not None), None)
        if source is None:
            continue
        findings.append(Finding(
            Rule.FILESYSTEM, f"{base}.devices.filesystems[{index}]",
            f"filesystem {name!r} shares a {source} volume over virtiofs; decentralized live "
            "migration copies disks, not virtiofs shares, so its data would not reach the "
            "target: attach the PVC as a disk, or copy its data another way (virtiofs shares "
            "of ConfigMaps, Secrets, ServiceAccount and DownwardAPI volumes migrate)"))
    return findings


# CEL: webhook/cel/vm.py persistent_state().
def _persistent_state_findings(domain: Obj, base: str) -> list[Finding]:
    # A persistent vTPM/EFI PVC is not copied when it is RWX on both sides (known upstream
    # bug), and the state needs domain.firmware.uuid equal on source and target VM.
    advice = ("persistent VM state needs domain.firmware.uuid equal on both VMs, and is not "
              "copied when its PVC is ReadWriteMany on both sides")
    findings = []
    if get_path(domain, "devices", "tpm", "persistent") is True:
        findings.append(Finding(Rule.PERSISTENT_STATE, f"{base}.devices.tpm.persistent",
                                f"persistent vTPM: {advice}"))
    if get_path(domain, "firmware", "bootloader", "efi", "persistent") is True:
        findings.append(Finding(Rule.PERSISTENT_STATE,
                                f"{base}.firmware.bootloader.efi.persistent",
                                f"persistent EFI: {advice}"))
    return findings
