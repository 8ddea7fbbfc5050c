"""Validation rules: pure functions from objects (and a cluster snapshot) to Findings.

Every finding carries a DESIGN.md slug and a field path. Path notation, used everywhere:
dotted keys (`spec.sendTo.connectURL`), list indexes in brackets (`disks[2]`), and keys that
are not plain identifiers quoted in brackets (`metadata.annotations["kubevirt.io/x"]`).
A finding about another object than the one under review (the VMI a VMIM names, the KubeVirt
CR) has a path inside that object, and its message starts by naming the object.

Modes (enforce/warn/off) are not decided here: the engine applies the policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from dlm_guard.domain import (
    ANNOTATION_CREATE_MIGRATION_TARGET,
    ANNOTATION_RESTORE_RUN_STRATEGY,
    DISABLED_GATES_PATH,
    FEATURE_GATE,
    GATES_PATH,
    KIND_VM,
    RESTORABLE_RUN_STRATEGIES,
    ROLE_FIELD,
    RUN_STRATEGY_WAIT_AS_RECEIVER,
    VMI_PHASE_RUNNING,
    Finding,
    GateState,
    Obj,
    Role,
    Rule,
    Severity,
    annotations_of,
    feature_gate_state,
    get_path,
    has_both_roles,
    is_receiver_vmi,
    migration_role,
    name_of,
    namespace_of,
    phase_of,
    spec_migration_id,
    vmi_name,
    volume_findings,
)
from webhook.grpc_target import target_problem

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClusterView(Protocol):
    """What the cluster rules read: an ObjectStore, or the engine's view with a VMI fetched
    live laid over it."""

    def vmi(self, namespace: str, name: str) -> Obj | None: ...

    def vm(self, namespace: str, name: str) -> Obj | None: ...

    def vmims_with_migration_id(self, role: Role, mid: str) -> Sequence[Obj]: ...

    def kubevirt(self) -> Obj | None: ...


# --- Paths ----------------------------------------------------------------------------
def field_path(*parts: str | int) -> str:
    """`field_path("metadata", "annotations", "a/b")` -> `metadata.annotations["a/b"]`."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(part):
            text += f".{part}" if text else part
        else:
            text += f'["{part}"]'
    return text


def shown(value: Any, limit: int = 80) -> str:
    """repr of a user-supplied value, cut short: messages must stay readable."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


RESTORE_ANNOTATION_PATH = field_path("metadata", "annotations", ANNOTATION_RESTORE_RUN_STRATEGY)


def roles_present(vmim: Obj) -> list[Role]:
    """Every role field set on the VMIM: one for a decentralized VMIM, two for `both-roles`."""
    spec = vmim.get("spec")
    if not isinstance(spec, Mapping):
        return []
    return [role for role in Role if ROLE_FIELD[role] in spec]


# --- Decentralized VMIM, offline rules ------------------------------------------------
# CEL: webhook/cel/vmim.py both_roles(), vmi_name(), migration_id(), connect_url().
def vmim_offline_findings(vmim: Obj) -> list[Finding]:
    """both-roles, vmi-name, migration-id and connect-url: no cluster state needed."""
    findings: list[Finding] = []
    if has_both_roles(vmim):
        findings.append(Finding(
            Rule.BOTH_ROLES, "spec",
            "both spec.sendTo and spec.receive are set, and KubeVirt then silently runs an "
            "ordinary in-cluster migration: put sendTo on the source cluster's VMIM and receive "
            "on the target cluster's VMIM"))
    if not vmi_name(vmim):
        findings.append(Finding(
            Rule.VMI_NAME, "spec.vmiName",
            "missing: name the VMI to migrate (on the source the running VMI, on the target "
            "the VMI of the WaitAsReceiver VM)"))
    for role in roles_present(vmim):
        findings.extend(migration_id_findings(vmim, role))
    if Role.SOURCE in roles_present(vmim):
        findings.extend(connect_url_findings(get_path(vmim, "spec", "sendTo", "connectURL")))
    return findings


# CEL: webhook/cel/vmim.py migration_id().
def migration_id_findings(vmim: Obj, role: Role) -> list[Finding]:
    path = field_path("spec", ROLE_FIELD[role], "migrationID")
    value = get_path(vmim, "spec", ROLE_FIELD[role], "migrationID")
    # The CRD accepts "" (no minLength), but an empty ID cannot pair the two sides. Any other
    # string is valid upstream: no length or charset limit (docs/kubevirt-facts.md).
    if value is None or value == "":
        problem = "missing or empty: set the same migrationID on the source and target VMIMs"
    elif not isinstance(value, str):
        problem = f"must be a string, not {type(value).__name__}"
    else:
        return []
    return [Finding(Rule.MIGRATION_ID, path, problem)]


# --- connectURL -------------------------------------------------------------------------
# CEL: webhook/cel/vmim.py connect_url() over webhook/cel/grpc_target.py.
def connect_url_findings(url: Any) -> list[Finding]:
    """What grpc-go would make of connectURL (webhook/grpc_target.py): a target that can never
    reach a listening synchronization controller is a violation, one that may is advisory."""
    problem = target_problem(url)
    if problem is None:
        return []
    return [Finding(Rule.CONNECT_URL, "spec.sendTo.connectURL", problem.message,
                    problem.severity)]


# --- Decentralized VMIM, rules that need cluster state ---------------------------------
def vmim_cluster_findings(vmim: Obj, namespace: str, cluster: ClusterView) -> list[Finding]:
    """duplicate-migration-id, receiver-vmi, source-vmi, legacy-running, feature-gate and the
    volume rules on the named VMI. Only for a VMIM with exactly one role: with both, upstream
    ignores both."""
    role = migration_role(vmim)
    if role is None:
        return []
    findings = duplicate_migration_id_findings(vmim, role, namespace, cluster)
    name = vmi_name(vmim)
    if name:  # without a name, vmi-name already says what to fix
        vmi = cluster.vmi(namespace, name)
        check = receiver_vmi_findings if role is Role.TARGET else source_vmi_findings
        findings.extend(check(vmi, namespace, name))
        if vmi is not None:
            findings.extend(named_vmi_volume_findings(vmi, namespace))
        if vmi is not None and role is Role.SOURCE:
            findings.extend(legacy_running_findings(owner_vm(vmi, namespace, cluster)))
    findings.extend(feature_gate_findings(cluster.kubevirt()))
    return findings


def duplicate_migration_id_findings(vmim: Obj, role: Role, namespace: str,
                                    cluster: ClusterView) -> list[Finding]:
    # Upstream looks VMIMs up by migrationID cluster-wide, finished ones included, and takes
    # the first match: a reused ID can silently pair with the wrong VMIM (docs/kubevirt-facts.md).
    mid = spec_migration_id(vmim, role)
    if not mid:
        return []
    own_key = (namespace, name_of(vmim))
    others = sorted(f"{namespace_of(o)}/{name_of(o)} (phase {phase_of(o) or 'unset'})"
                    for o in cluster.vmims_with_migration_id(role, mid)
                    if (namespace_of(o), name_of(o)) != own_key)
    if not others:
        return []
    return [Finding(
        Rule.DUPLICATE_MIGRATION_ID, field_path("spec", ROLE_FIELD[role], "migrationID"),
        f"{shown(mid)} is already used by the {role.value} VMIM {', '.join(others)}; KubeVirt "
        "matches migrationIDs cluster-wide, finished migrations included, and takes the first "
        "match: choose a new migrationID (and delete the old VMIM if it is finished)")]


def receiver_vmi_findings(vmi: Obj | None, namespace: str, name: str) -> list[Finding]:
    where = f"VirtualMachineInstance {namespace}/{name}"
    if vmi is None:
        problem = (f"{where} not found: create the target VM with runStrategy "
                   f"{RUN_STRATEGY_WAIT_AS_RECEIVER} first and wait for its VMI")
    elif not is_receiver_vmi(vmi):
        problem = (f"{where} is not waiting to receive a migration (no annotation "
                   f"{ANNOTATION_CREATE_MIGRATION_TARGET}: \"true\"): its VM must use "
                   f"runStrategy {RUN_STRATEGY_WAIT_AS_RECEIVER}")
    else:
        return []
    return [Finding(Rule.RECEIVER_VMI, "spec.vmiName", problem)]


def source_vmi_findings(vmi: Obj | None, namespace: str, name: str) -> list[Finding]:
    where = f"VirtualMachineInstance {namespace}/{name}"
    if vmi is None:
        problem = f"{where} not found: name a running VMI in the VMIM's namespace"
    elif is_receiver_vmi(vmi):
        problem = (f"{where} is itself a migration target ({RUN_STRATEGY_WAIT_AS_RECEIVER}): "
                   "a receiver cannot be sent; use spec.receive on this side instead")
    elif phase_of(vmi) != VMI_PHASE_RUNNING:
        problem = (f"{where} is in phase {phase_of(vmi) or 'unset'!r}, not "
                   f"{VMI_PHASE_RUNNING}: start the VM before sending it")
    else:
        return []
    return [Finding(Rule.SOURCE_VMI, "spec.vmiName", problem)]


def owner_vm(vmi: Obj, namespace: str, cluster: ClusterView) -> Obj | None:
    """The VirtualMachine that controls a VMI (its controller ownerReference), if cached."""
    references = get_path(vmi, "metadata", "ownerReferences")
    for reference in references if isinstance(references, list) else []:
        if isinstance(reference, Mapping) and reference.get("kind") == KIND_VM \
                and reference.get("controller") is True:
            return cluster.vm(namespace, str(reference.get("name") or ""))
    return None


def legacy_running_findings(vm: Obj | None) -> list[Finding]:
    # After a decentralized migration succeeds, virt-controller sets the source VM's
    # spec.runStrategy to Halted but leaves spec.running, and KubeVirt's VM admitter rejects
    # a VM with both: the update fails on every sync (docs/kubevirt-facts.md, "Source VM
    # after success"). Only running: true takes that path (false maps to Halted).
    if vm is None or get_path(vm, "spec", "running") is not True:
        return []
    where = f"VirtualMachine {namespace_of(vm)}/{name_of(vm)} (owner of the VMI)"
    return [Finding(Rule.LEGACY_RUNNING, "spec.running", (
        f"{where} uses the deprecated spec.running; after a successful migration "
        "virt-controller sets spec.runStrategy to Halted and leaves spec.running, which "
        "KubeVirt's VM admitter rejects (mutually exclusive), so the source VM cannot be "
        "updated and keeps failing to sync: before migrating, replace it with "
        "spec.runStrategy: Always (kubectl patch vm NAME --type merge -p "
        "'{\"spec\":{\"running\":null,\"runStrategy\":\"Always\"}}')"))]


def named_vmi_volume_findings(vmi: Obj, namespace: str) -> list[Finding]:
    """Volume rules on the VMI a VMIM names; paths are inside that VMI (`spec.domain...`)."""
    spec = vmi.get("spec")
    if not isinstance(spec, Mapping):
        return []
    where = f"VirtualMachineInstance {namespace}/{name_of(vmi)} (named by spec.vmiName)"
    return [Finding(f.rule, f.path, f"{where}: {f.message}")
            for f in volume_findings(spec, "spec")]


def feature_gate_findings(kubevirt: Obj | None) -> list[Finding]:
    """Deny only when the gate is known to be off; warn when the CR cannot tell."""
    gates = GATES_PATH
    if kubevirt is None:
        return [Finding(Rule.FEATURE_GATE, gates,
                        f"no KubeVirt CR found in this cluster: install KubeVirt and list "
                        f"{FEATURE_GATE} in {gates}")]
    where = f"KubeVirt {namespace_of(kubevirt)}/{name_of(kubevirt)}"
    reading = feature_gate_state(kubevirt)
    if reading.state is GateState.ON:
        return []
    if reading.state is GateState.UNKNOWN:
        return [Finding(Rule.FEATURE_GATE, gates, (
            f"{where}: cannot tell whether {FEATURE_GATE} is on ({reading.reason}); KubeVirt "
            f"itself rejects this VMIM if it is off: list {FEATURE_GATE} in {gates} to be sure"),
            Severity.ADVISORY)]
    if reading.path == DISABLED_GATES_PATH:
        return [Finding(Rule.FEATURE_GATE, DISABLED_GATES_PATH,
                        f"{where} disables {FEATURE_GATE} ({reading.reason}): remove it from "
                        f"{DISABLED_GATES_PATH}")]
    return [Finding(Rule.FEATURE_GATE, gates,
                    f"{where}: {FEATURE_GATE} is off ({reading.reason}): add {FEATURE_GATE} "
                    f"to {gates}")]


# --- Decentralized VMIM, UPDATE -------------------------------------------------------
# CEL: webhook/cel/vmim.py immutable_spec() (UPDATE, via oldObject).
def immutable_spec_findings(new: Obj, old: Obj) -> list[Finding]:
    """One finding per changed field of the spec; metadata and status may change."""
    changed = sorted(set(changed_paths(old.get("spec"), new.get("spec"), ("spec",))))
    return [Finding(Rule.IMMUTABLE_SPEC, path,
                    "the spec of a decentralized VMIM cannot change after creation (KubeVirt's "
                    "own update admitter forbids it too): delete the VMIMs and create new ones")
            for path in changed]


def changed_paths(old: Any, new: Any, at: tuple[str | int, ...]) -> Iterable[str]:
    if old == new:
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            yield from changed_paths(old.get(key), new.get(key), (*at, str(key)))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (before, after) in enumerate(zip(old, new, strict=True)):
            yield from changed_paths(before, after, (*at, index))
    else:
        yield field_path(*at)


# --- WaitAsReceiver VM ----------------------------------------------------------------
# CEL: webhook/cel/vm.py VM_KIND (one variable per rule).
def wait_as_receiver_vm_findings(vm: Obj) -> list[Finding]:
    template_spec = get_path(vm, "spec", "template", "spec")
    findings = volume_findings(template_spec, "spec.template.spec") \
        if isinstance(template_spec, Mapping) else []
    findings.extend(restore_run_strategy_findings(vm))
    return findings


# CEL: webhook/cel/vm.py restore_run_strategy().
def restore_run_strategy_findings(vm: Obj) -> list[Finding]:
    # virt-controller copies this annotation into spec.runStrategy after a successful
    # migration without validating it; missing, the VM stays WaitAsReceiver
    # (docs/kubevirt-facts.md).
    allowed = ", ".join(RESTORABLE_RUN_STRATEGIES)
    annotations = annotations_of(vm)
    if ANNOTATION_RESTORE_RUN_STRATEGY not in annotations:
        problem = (f"missing: add it with the run strategy the VM takes after the migration "
                   f"({allowed}); without it the VM stays {RUN_STRATEGY_WAIT_AS_RECEIVER} "
                   "(dlm-guard's mutating webhook adds it when enabled)")
    elif annotations[ANNOTATION_RESTORE_RUN_STRATEGY] not in RESTORABLE_RUN_STRATEGIES:
        value = annotations[ANNOTATION_RESTORE_RUN_STRATEGY]
        problem = (f"{shown(value)} is not one of {allowed}; virt-controller copies it into "
                   "spec.runStrategy unvalidated after the migration")
    else:
        return []
    return [Finding(Rule.RESTORE_RUN_STRATEGY, RESTORE_ANNOTATION_PATH, problem)]
