"""Mutations: what they fill in, the JSON patches they produce, and that they are idempotent."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import jsonpatch
import pytest
from factories import (
    FORKLIFT_MIGRATION_ID,
    MIGRATION_ID,
    counting_ids,
    source_vmim,
    target_vmim,
    vm,
    vmim,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_guard.domain import is_valid_label_value, migration_id_label
from webhook.mutations import generated_migration_id, json_patch, mutate_vm, mutate_vmim

RESTORE = "kubevirt.io/restore-run-strategy"


def apply(obj: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    return jsonpatch.apply_patch(obj, patch)  # type: ignore[no-any-return]


# --- restore-run-strategy -------------------------------------------------------------
@pytest.mark.parametrize("metadata_twist", [
    lambda md: md.pop("annotations"),  # no annotations at all
    lambda md: md.__setitem__("annotations", None),
    lambda md: md.__setitem__("annotations", {"other": "kept"}),
])
def test_restore_annotation_added_whatever_the_annotations_look_like(metadata_twist: Any) -> None:
    original = vm(restore="Always")
    metadata_twist(original["metadata"])
    patch = json_patch(original, mutate_vm(original, "Halted"))
    patched = apply(original, patch)
    assert patched["metadata"]["annotations"][RESTORE] == "Halted"
    assert {k: v for k, v in patched["metadata"]["annotations"].items() if k != RESTORE} == \
        {k: v for k, v in (original["metadata"].get("annotations") or {}).items()}
    assert all(op["path"].startswith("/metadata/annotations") for op in patch)


def test_restore_annotation_pointer_escapes_the_slash() -> None:
    original = vm(restore=None)
    original["metadata"]["annotations"] = {"a": "b"}
    patch = json_patch(original, mutate_vm(original, "Always"))
    assert patch == [{"op": "add", "value": "Always",
                      "path": "/metadata/annotations/kubevirt.io~1restore-run-strategy"}]


def test_restore_annotation_added_when_metadata_is_missing() -> None:
    original = vm(restore=None)
    del original["metadata"]
    assert apply(original, json_patch(original, mutate_vm(original, "Once")))["metadata"] == \
        {"annotations": {RESTORE: "Once"}}


@pytest.mark.parametrize("original", [
    vm(restore="Manual"),  # present: never replaced
    vm(restore="bogus"),  # present but wrong: validate's job, not ours
    vm(run_strategy="Always", restore=None),  # not a receiver
])
def test_restore_annotation_left_alone(original: dict[str, Any]) -> None:
    assert json_patch(original, mutate_vm(original, "Always")) == []


def test_mutation_does_not_touch_the_input() -> None:
    a_vm, a_vmim = vm(restore=None), target_vmim(migration_id="")
    snapshots = copy.deepcopy((a_vm, a_vmim))
    assert mutate_vm(a_vm, "Always") != a_vm
    assert mutate_vmim(a_vmim, counting_ids(), creating=True) != a_vmim
    assert (a_vm, a_vmim) == snapshots


# --- migrationID and labels -----------------------------------------------------------
@pytest.mark.parametrize("value", [None, ""])
def test_receive_migration_id_generated_on_create(value: str | None) -> None:
    original = target_vmim(migration_id=value)
    if value is None:
        del original["spec"]["receive"]["migrationID"]
    patched = apply(original, json_patch(original, mutate_vmim(original, lambda: "abc123",
                                                               creating=True)))
    generated = patched["spec"]["receive"]["migrationID"]
    assert generated == "db-1-abc123"
    assert patched["metadata"]["labels"] == {"dlm-guard.io/migration-id": generated,
                                             "dlm-guard.io/role": "target"}


def test_receive_migration_id_not_generated_on_update() -> None:
    original = target_vmim(migration_id="")
    mutated = mutate_vmim(original, counting_ids(), creating=False)
    assert mutated["spec"] == original["spec"]  # the spec is immutable after CREATE


def test_source_migration_id_never_generated() -> None:
    original = source_vmim(migration_id="")
    mutated = mutate_vmim(original, counting_ids(), creating=True)
    assert mutated["spec"] == original["spec"]
    assert mutated["metadata"]["labels"] == {"dlm-guard.io/role": "source"}


@pytest.mark.parametrize("value", [MIGRATION_ID, "not a label value!", FORKLIFT_MIGRATION_ID])
@pytest.mark.parametrize("build", [source_vmim, target_vmim])
def test_non_empty_migration_id_never_replaced(value: str, build: Any) -> None:
    original = build(migration_id=value)
    mutated = mutate_vmim(original, counting_ids(), creating=True)
    assert mutated["spec"] == original["spec"]
    label = mutated["metadata"]["labels"]["dlm-guard.io/migration-id"]
    assert is_valid_label_value(label) and label == migration_id_label(value)


def test_forklift_id_label_is_the_sha256_form() -> None:
    mutated = mutate_vmim(source_vmim(migration_id=FORKLIFT_MIGRATION_ID), counting_ids(),
                          creating=True)
    digest = hashlib.sha256(FORKLIFT_MIGRATION_ID.encode()).hexdigest()
    assert len(FORKLIFT_MIGRATION_ID) == 73
    assert mutated["metadata"]["labels"]["dlm-guard.io/migration-id"] == f"sha256-{digest[:56]}"


def test_labels_added_next_to_existing_ones_and_corrected() -> None:
    original = source_vmim(labels={"team": "a", "dlm-guard.io/role": "target"})
    patched = apply(original, json_patch(original, mutate_vmim(original, counting_ids(),
                                                               creating=False)))
    assert patched["metadata"]["labels"] == {"team": "a", "dlm-guard.io/role": "source",
                                             "dlm-guard.io/migration-id": MIGRATION_ID}


@pytest.mark.parametrize("original", [
    vmim(),  # ordinary migration
    vmim(send_to={"migrationID": "a", "connectURL": "x:1"}, receive={"migrationID": "a"}),
])
def test_non_decentralized_vmims_untouched(original: dict[str, Any]) -> None:
    assert json_patch(original, mutate_vmim(original, counting_ids(), creating=True)) == []


def test_malformed_labels_are_not_overwritten() -> None:
    original = source_vmim()
    original["metadata"]["labels"] = ["not", "a", "map"]
    assert json_patch(original, mutate_vmim(original, counting_ids(), creating=True)) == []


@pytest.mark.parametrize("original", [
    vm(restore=None), target_vmim(migration_id=""), source_vmim(), target_vmim(vmi=None,
                                                                              migration_id=""),
])
def test_second_pass_changes_nothing(original: dict[str, Any]) -> None:
    def once(obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "VirtualMachine":
            return dict(mutate_vm(obj, "Always"))
        return dict(mutate_vmim(obj, counting_ids(), creating=True))

    first = apply(original, json_patch(original, once(original)))
    assert first != original
    assert json_patch(first, once(first)) == []


# --- generated IDs --------------------------------------------------------------------
@pytest.mark.parametrize(("vmi_name", "prefix"), [
    ("db-1", "db-1-"),
    ("", "migration-"),
    ("---", "migration-"),
    ("My VM/Ünïcode!", "My-VM-n-code-"),
    ("x" * 80, "x" * 50 + "-"),
    ("a" * 48 + ".b", "a" * 48 + ".b-"),  # 50 characters fit next to a 12-character suffix
    ("a" * 49 + ".b", "a" * 49 + "-"),  # cut at 50 characters, then the trailing '.' trimmed
])
def test_generated_ids_are_readable_label_values(vmi_name: str, prefix: str) -> None:
    value = generated_migration_id(vmi_name, "0123456789ab")
    assert value == prefix + "0123456789ab"
    assert is_valid_label_value(value)


@pytest.mark.parametrize("suffix", ["", "--", "é" * 40, "z" * 100])
def test_generated_ids_survive_odd_suffixes(suffix: str) -> None:
    assert is_valid_label_value(generated_migration_id("vm", suffix))


# --- json_patch on any pair of objects ------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=12)
json_objects = st.dictionaries(st.sampled_from(["a", "b/c", "~d", "metadata"]), json_values,
                               max_size=4)


@settings(max_examples=150, deadline=None)
@given(before=json_objects, after=json_objects)
def test_json_patch_turns_before_into_after(before: dict[str, Any],
                                            after: dict[str, Any]) -> None:
    patch = json_patch(before, after)
    assert apply(before, patch) == after
    assert (patch == []) is (before == after)


def test_both_sides_derive_the_same_label_from_the_same_forklift_id() -> None:
    source = mutate_vmim(source_vmim(migration_id=FORKLIFT_MIGRATION_ID), counting_ids(),
                         creating=True)
    target = mutate_vmim(target_vmim(migration_id=FORKLIFT_MIGRATION_ID), counting_ids(),
                         creating=True)
    key = "dlm-guard.io/migration-id"
    assert source["metadata"]["labels"][key] == target["metadata"]["labels"][key]
