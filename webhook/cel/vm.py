"""CEL for the WaitAsReceiver VM rules and the restore-run-strategy default.

Mirrors webhook.engine.vm_findings (CREATE and UPDATE, ratcheted on UPDATE, terminating VMs
skipped), webhook.rules.wait_as_receiver_vm_findings, dlm_guard.domain.volume_findings and
webhook.mutations.mutate_vm. Each expression names the Python function it mirrors: change both.

`object` is untyped (dyn) in admission CEL, so every field access is an optional select
(`.?f.orValue(...)`); the validating policy only ever sees objects that passed the CRD schema.
"""

from __future__ import annotations

from dlm_guard.domain import (
    ANNOTATION_RESTORE_RUN_STRATEGY,
    PVC_VOLUME_SOURCES,
    RESTORABLE_RUN_STRATEGIES,
    RUN_STRATEGY_WAIT_AS_RECEIVER,
    Rule,
)
from webhook.cel.cel import (
    Manifest,
    PolicyKind,
    RuleCel,
    condition,
    finding,
    lit,
    shown,
    str_list,
    variable,
)
from webhook.rules import RESTORE_ANNOTATION_PATH

BASE = "spec.template.spec.domain"
ROOTS = {"new": "object", "old": "oldObject"}  # variable prefix -> CEL root

WAIT_AS_RECEIVER = (f"object.?spec.?runStrategy.orValue('') == "
                    f"{lit(RUN_STRATEGY_WAIT_AS_RECEIVER)}")


def _disk_name(disk: str, index: str) -> str:
    # mirrors `disk.get('name', index)!r` in domain.volume_findings
    return f"(has({disk}.name) ? {shown(f'string({disk}.name)')} : string({index}))"


def shareable_disk(p: str) -> str:
    """domain.volume_findings: `disks[i].shareable: true`."""
    return (f"variables.{p}Disks.transformList(i, d, d.?shareable.orValue(false) == true, "
            + finding("shareable-disk",
                      f"{lit(BASE + '.devices.disks[')} + string(i) + '].shareable'",
                      f"'disk ' + {_disk_name('d', 'i')} + "
                      + lit(" is shareable; decentralized live migration does not support "
                            "shareable disks: remove shareable or migrate another way"))
            + ")")


def lun_disk(p: str) -> str:
    """domain.volume_findings: `disks[i].lun` present."""
    return (f"variables.{p}Disks.transformList(i, d, has(d.lun), "
            + finding("lun-disk", f"{lit(BASE + '.devices.disks[')} + string(i) + '].lun'",
                      f"'disk ' + {_disk_name('d', 'i')} + "
                      + lit(" is a LUN disk; decentralized live migration does not support "
                            "LUN disks: use a disk (bus virtio/sata/scsi) instead"))
            + ")")


def filesystem(p: str) -> str:
    """domain._filesystem_findings: a filesystem whose volume (by name; the last of that name,
    as in _volumes_by_name) is a PVC or a DataVolume."""
    source = f"variables.{p}FilesystemSources[i]"
    name = f"string(variables.{p}Filesystems[i].?name.orValue(''))"
    message = (f"'filesystem ' + {shown(name)} + ' shares a ' + {source} + "
               + lit(" volume over virtiofs; decentralized live migration copies disks, not "
                     "virtiofs shares, so its data would not reach the target: attach the PVC as "
                     "a disk, or copy its data another way (virtiofs shares of ConfigMaps, "
                     "Secrets, ServiceAccount and DownwardAPI volumes migrate)"))
    return (f"variables.{p}FilesystemSources.transformList(i, source, source != '', "
            + finding("filesystem", f"{lit(BASE + '.devices.filesystems[')} + string(i) + ']'",
                      message)
            + ")")


def filesystem_sources(p: str) -> str:
    """For each filesystem: the PVC volume source it shares (PVC_VOLUME_SOURCES order), or ''."""
    same = (f"variables.{p}Volumes.filter(v, string(v.?name.orValue('')) == "
            f"string(f.?name.orValue('')))")
    last = f"{same}[{same}.size() - 1]"
    pick = " : ".join(f"{last}.?{key}.orValue(null) != null ? {lit(key)}"
                      for key in PVC_VOLUME_SOURCES)
    return f"variables.{p}Filesystems.map(f, {same}.size() == 0 ? '' : {pick} : '')"


_PERSISTENT_ADVICE = ("persistent VM state needs domain.firmware.uuid equal on both VMs, and is "
                      "not copied when its PVC is ReadWriteMany on both sides")


def persistent_state(p: str) -> str:
    """domain._persistent_state_findings: persistent vTPM, persistent EFI."""
    tpm_path = BASE + ".devices.tpm.persistent"
    efi_path = BASE + ".firmware.bootloader.efi.persistent"
    tpm = finding("persistent-state", lit(tpm_path), lit(f"persistent vTPM: {_PERSISTENT_ADVICE}"))
    efi = finding("persistent-state", lit(efi_path), lit(f"persistent EFI: {_PERSISTENT_ADVICE}"))
    domain = f"variables.{p}Domain"
    return (f"({domain}.?devices.?tpm.?persistent.orValue(false) == true ? [{tpm}] : []) + "
            f"({domain}.?firmware.?bootloader.?efi.?persistent.orValue(false) == true "
            f"? [{efi}] : [])")


def restore_run_strategy(p: str) -> str:
    """rules.restore_run_strategy_findings: annotation missing or not restorable."""
    allowed = ", ".join(RESTORABLE_RUN_STRATEGIES)
    annotations = f"variables.{p}Annotations"
    key = lit(ANNOTATION_RESTORE_RUN_STRATEGY)
    value = f"string({annotations}[{key}])"
    missing = finding(
        "restore-run-strategy", lit(RESTORE_ANNOTATION_PATH),
        lit(f"missing: add it with the run strategy the VM takes after the migration "
            f"({allowed}); without it the VM stays {RUN_STRATEGY_WAIT_AS_RECEIVER} "
            "(dlm-guard's mutating webhook adds it when enabled)"))
    invalid = finding(
        "restore-run-strategy", lit(RESTORE_ANNOTATION_PATH),
        f"{shown(value)} + "
        + lit(f" is not one of {allowed}; virt-controller copies it into spec.runStrategy "
              "unvalidated after the migration"))
    return (f"!({key} in {annotations}) ? [{missing}] : "
            f"!({value} in {str_list(RESTORABLE_RUN_STRATEGIES)}) ? [{invalid}] : []")


RULES = (
    (RuleCel(Rule.SHAREABLE_DISK, "shareableDisk"), shareable_disk),
    (RuleCel(Rule.LUN_DISK, "lunDisk"), lun_disk),
    (RuleCel(Rule.FILESYSTEM, "filesystem"), filesystem),
    (RuleCel(Rule.PERSISTENT_STATE, "persistentState"), persistent_state),
    (RuleCel(Rule.RESTORE_RUN_STRATEGY, "restoreRunStrategy"), restore_run_strategy),
)


def _capitalized(name: str) -> str:
    return name[0].upper() + name[1:]


def _root_variables(prefix: str, root: str) -> list[Manifest]:
    """The views every rule reads, for one root (the new or the old object)."""
    return [
        variable(f"{prefix}Domain", f"{root}.?spec.?template.?spec.?domain.orValue({{}})"),
        variable(f"{prefix}Disks", f"variables.{prefix}Domain.?devices.?disks.orValue([])"),
        variable(f"{prefix}Annotations", f"{root}.metadata.?annotations.orValue({{}})"),
        variable(f"{prefix}Filesystems",
                 f"variables.{prefix}Domain.?devices.?filesystems.orValue([])"),
        variable(f"{prefix}Volumes", f"{root}.?spec.?template.?spec.?volumes.orValue([])"),
        variable(f"{prefix}FilesystemSources", filesystem_sources(prefix)),
    ]


def _variables() -> tuple[Manifest, ...]:
    # engine.vm_findings: on UPDATE of a VM that already was WaitAsReceiver, only findings the
    # old object did not have count. Variables are evaluated lazily: the old ones on UPDATE only.
    found: list[Manifest] = [variable(
        "ratchet", "request.operation == 'UPDATE' && oldObject != null && "
        f"oldObject.?spec.?runStrategy.orValue('') == {lit(RUN_STRATEGY_WAIT_AS_RECEIVER)}")]
    for prefix, root in ROOTS.items():
        found.extend(_root_variables(prefix, root))
    for rule, expression in RULES:
        new, old = (f"{p}{_capitalized(rule.variable)}" for p in ROOTS)
        found.append(variable(new, expression("new")))
        found.append(variable(old, expression("old")))
        found.append(variable(rule.variable,
                              f"variables.ratchet ? variables.{new}.filter(f, "
                              f"!(f in variables.{old})) : variables.{new}"))
    return tuple(found)


VM_KIND = PolicyKind(
    name="vm",
    resource="virtualmachines",
    operations=("CREATE", "UPDATE"),
    match_conditions=(
        condition("wait-as-receiver", WAIT_AS_RECEIVER),
        # engine.vm_findings skips a VM being deleted (so its finalizers can go)
        condition("not-terminating", "!has(object.metadata.deletionTimestamp)"),
    ),
    variables=_variables(),
    rules=tuple(rule for rule, _ in RULES),
)


def restore_mutation(restore_run_strategy: str) -> str:
    """mutations.mutate_vm as a JSONPatch: the same patch json_patch() makes (a whole
    annotations map when there is none, else one added key)."""
    key = lit(ANNOTATION_RESTORE_RUN_STRATEGY)
    value = lit(restore_run_strategy)
    return (f"has(object.metadata.annotations) ? [JSONPatch{{op: 'add', path: "
            f"'/metadata/annotations/' + jsonpatch.escapeKey({key}), value: {value}}}] : "
            f"[JSONPatch{{op: 'add', path: '/metadata/annotations', value: {{{key}: {value}}}}}]")


MUTATION_CONDITIONS = (
    condition("wait-as-receiver", WAIT_AS_RECEIVER),
    condition("restore-run-strategy-missing",
              f"!has(object.metadata.annotations) || "
              f"!({lit(ANNOTATION_RESTORE_RUN_STRATEGY)} in object.metadata.annotations)"),
)
