"""Mutations: change a copy of the object, then diff it into a minimal JSON patch.

The copy is shallow except for the dicts a mutation writes into (metadata with its labels or
annotations, and a VMIM's spec.receive), which are copied too: the request object itself is
never changed, and managedFields or a VM template are shared, not deep-copied.

Each mutation only fills in what is missing, so a second pass over the patched object finds
nothing to do. Mutations are defaults, not rules: they run whatever mode the policy gives the
matching rule (an `off` restore-run-strategy rule still gets the annotation injected, since
a WaitAsReceiver VM without it stays WaitAsReceiver forever). The engine decides which
requests reach here (kind, operation, exemptions).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jsonpatch

from dlm_guard.domain import (
    ANNOTATION_RESTORE_RUN_STRATEGY,
    LABEL_MIGRATION_ID,
    LABEL_ROLE,
    LABEL_VALUE_MAX,
    Obj,
    Role,
    annotations_of,
    get_path,
    is_wait_as_receiver,
    migration_id_label,
    migration_role,
    spec_migration_id,
    vmi_name,
)
from webhook.decision import JsonPatch

FALLBACK_ID_PREFIX = "migration"


def json_patch(before: Obj, after: Obj) -> JsonPatch:
    """The minimal RFC 6902 patch from before to after ([] when equal).

    Diffed one top-level field at a time, skipping fields `after` shares with `before`
    (mutations copy only what they change): diffing a whole VM costs several times more.
    """
    patch: JsonPatch = []
    for key in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(key, _ABSENT), after.get(key, _ABSENT)
        if old is new or old == new:
            continue
        old_part = {} if old is _ABSENT else {key: old}
        new_part = {} if new is _ABSENT else {key: new}
        patch.extend(jsonpatch.make_patch(old_part, new_part).patch)
    return patch


_ABSENT = object()


def _copy_with_private(obj: Obj, *paths: tuple[str, ...]) -> dict[str, Any]:
    """A shallow copy of obj whose dicts along each of `paths` are copies too: safe to write
    into those dicts (and to add what is missing there) only; everything else is shared."""
    result = dict(obj)
    for path in paths:
        parent = result
        for key in path:
            value = parent.get(key)
            if not isinstance(value, dict):
                break
            parent[key] = value = dict(value)
            parent = value
    return result


# --- WaitAsReceiver VM ----------------------------------------------------------------
# CEL: webhook/cel/vm.py restore_mutation() (the MutatingAdmissionPolicy).
def mutate_vm(vm: Obj, restore_run_strategy: str) -> Obj:
    """vm with kubevirt.io/restore-run-strategy filled in when it is missing (a copy then)."""
    if not is_wait_as_receiver(vm) or ANNOTATION_RESTORE_RUN_STRATEGY in annotations_of(vm):
        return vm  # nothing to fill in
    result = _copy_with_private(vm, ("metadata", "annotations"))
    annotations = _string_map(result, "annotations")
    if annotations is not None:
        annotations[ANNOTATION_RESTORE_RUN_STRATEGY] = restore_run_strategy
    return result


# --- Decentralized VMIM ---------------------------------------------------------------
def mutate_vmim(vmim: Obj, new_id: Callable[[], str], *, creating: bool) -> Obj:
    """vmim (a copy when decentralized) with our pairing labels and, on CREATE only (the spec
    is immutable afterwards), a generated receive migrationID."""
    role = migration_role(vmim)
    if role is None:  # ordinary migration, or both roles (validate denies that)
        return vmim
    result = _copy_with_private(vmim, ("metadata", "labels"), ("spec", "receive"))
    if creating and role is Role.TARGET:
        _fill_receive_migration_id(result, new_id)
    _set_pairing_labels(result, role)
    return result


def _fill_receive_migration_id(vmim: dict[str, Any], new_id: Callable[[], str]) -> None:
    receive = get_path(vmim, "spec", "receive")
    if isinstance(receive, dict) and receive.get("migrationID") in (None, ""):
        receive["migrationID"] = generated_migration_id(vmi_name(vmim), new_id())


def _set_pairing_labels(vmim: dict[str, Any], role: Role) -> None:
    labels = _string_map(vmim, "labels")
    if labels is None:
        return
    labels[LABEL_ROLE] = role.value
    mid = spec_migration_id(vmim, role)
    if mid:  # an empty ID is denied by validate's migration-id rule
        labels[LABEL_MIGRATION_ID] = migration_id_label(mid)


def _string_map(obj: dict[str, Any], field: str) -> dict[str, Any] | None:
    """metadata[field] as a dict we may write into, created when absent or null; None when
    metadata or the field has a shape we must not overwrite."""
    metadata = obj.setdefault("metadata", {})
    if metadata is None:
        metadata = obj["metadata"] = {}
    if not isinstance(metadata, dict):
        return None
    value = metadata.get(field)
    if value is None:
        value = metadata[field] = {}
    return value if isinstance(value, dict) else None


# --- Generated migrationIDs -----------------------------------------------------------
def generated_migration_id(vmi: str, suffix: str) -> str:
    """`<readable prefix from the VMI name>-<random suffix>`: a valid label value.

    Forklift uses `<vm id>-<migration uid>`; we keep the VMI name readable and rely on the
    suffix (>= 48 random bits from the caller) for uniqueness.
    """
    tail = _label_safe(suffix)[:LABEL_VALUE_MAX // 2].rstrip("-_.") or "0"
    room = LABEL_VALUE_MAX - len(tail) - 1
    head = _label_safe(vmi)[:room].rstrip("-_.") or FALLBACK_ID_PREFIX
    return f"{head}-{tail}"


def _label_safe(text: str) -> str:
    """Characters outside a label value's alphabet become '-'; ends trimmed to alphanumerics."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
    return cleaned.strip("-_.")
