"""migrate.plan: pure tables, no cluster."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
import yaml
from migrate_factories import FORKLIFT_ID, options, pvc, state, vm

from dlm_guard.domain import Role, is_valid_label_value
from migrate.commands import format_plan
from migrate.plan import (
    CONNECT_PENDING,
    PlanError,
    Step,
    build_plan,
    claim_volumes,
    copied_secret,
    migration_id_label,
    referenced_config_maps,
    referenced_secrets,
    restore_run_strategy,
    vmim_name,
    volume_size,
)


# --- labels and names --------------------------------------------------------------------------
def test_a_label_safe_id_is_its_own_label() -> None:
    assert migration_id_label("db-0123456789ab") == "db-0123456789ab"


def test_a_forklift_id_is_hashed_the_same_way_in_both_clusters() -> None:
    label = migration_id_label(FORKLIFT_ID)
    assert len(FORKLIFT_ID) == 73 and not is_valid_label_value(FORKLIFT_ID)
    assert label == "sha256-" + hashlib.sha256(FORKLIFT_ID.encode()).hexdigest()[:56]
    assert len(label) == 63 and is_valid_label_value(label)


@pytest.mark.parametrize("text", ["", "a b", "é", "x" * 64, "-leading", "trailing."])
def test_any_other_id_gets_a_valid_label(text: str) -> None:
    assert is_valid_label_value(migration_id_label(text))


def test_vmim_names_are_deterministic_per_role_and_bounded() -> None:
    assert vmim_name("db", Role.TARGET, "x") == vmim_name("db", Role.TARGET, "x")
    assert vmim_name("db", Role.TARGET, "x") != vmim_name("db", Role.SOURCE, "x")
    assert vmim_name("db", Role.TARGET, "x") != vmim_name("db", Role.TARGET, "y")
    assert len(vmim_name("v" * 300, Role.SOURCE, FORKLIFT_ID)) == 253


# --- the restore strategy ----------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "expected"), [
    ({"runStrategy": "Always"}, "Always"),
    ({"runStrategy": "Manual"}, "Manual"),
    ({"runStrategy": "RerunOnFailure"}, "RerunOnFailure"),
    ({"runStrategy": "Once"}, "Once"),
    ({"runStrategy": "Halted"}, "Halted"),
    ({"running": True}, "Always"),  # legacy field: upstream RunStrategy() maps it
    ({"running": False}, "Halted"),
    ({}, "Halted"),  # neither set: upstream's default
])
def test_restore_strategy(spec: dict[str, Any], expected: str) -> None:
    assert restore_run_strategy({"spec": spec}) == expected


@pytest.mark.parametrize(("spec", "says"), [
    ({"runStrategy": "WaitAsReceiver"}, "itself a migration target"),
    ({"runStrategy": "Sometimes"}, "'Sometimes' is not one of"),
    ({"runStrategy": "Always", "running": True}, "mutually exclusive"),
])
def test_unusable_source_strategies(spec: dict[str, Any], says: str) -> None:
    with pytest.raises(PlanError, match=says):
        restore_run_strategy({"spec": spec})


# --- what the VM uses ----------------------------------------------------------------------------
def test_claims_include_volumes_hotplugged_into_the_vmi_only() -> None:
    vmi = {"spec": {"volumes": [{"name": "root", "dataVolume": {"name": "root-dv"}},
                                {"name": "hot", "persistentVolumeClaim": {"claimName": "hot"}}]}}
    assert claim_volumes(vm(), vmi) == [("DataVolume", "root-dv"),
                                        ("PersistentVolumeClaim", "hot")]


def test_every_place_a_vm_names_a_secret_or_config_map() -> None:
    spec = {
        "accessCredentials": [
            {"sshPublicKey": {"source": {"secret": {"secretName": "ssh"}}}},
            {"userPassword": {"source": {"secret": {"secretName": "pw"}}}}],
        "volumes": [
            {"name": "a", "secret": {"secretName": "plain"}},
            {"name": "b", "cloudInitNoCloud": {"secretRef": {"name": "ud"},
                                               "networkDataSecretRef": {"name": "nd"}}},
            {"name": "c", "cloudInitConfigDrive": {"secretRef": {"name": "ud2"},
                                                   "networkDataSecretRef": {"name": "nd2"}}},
            {"name": "d", "sysprep": {"secret": {"name": "sp"}}},
            {"name": "e", "sysprep": {"configMap": {"name": "sp-cm"}}},
            {"name": "f", "containerDisk": {"image": "x", "imagePullSecret": "pull"}},
            {"name": "g", "configMap": {"name": "cm"}},
            {"name": "h", "secret": {"secretName": "plain"}},  # twice: copied once
        ]}
    assert referenced_secrets(spec) == ["ssh", "pw", "plain", "ud", "nd", "ud2", "nd2", "sp",
                                        "pull"]
    assert referenced_config_maps(spec) == ["sp-cm", "cm"]


@pytest.mark.parametrize(("claim", "dv", "expected"), [
    (pvc("x", "9Gi", "10Gi"), None, "10Gi"),  # capacity can exceed the request
    (pvc("x", "9Gi", None), None, "9Gi"),
    (None, {"spec": {"storage": {"resources": {"requests": {"storage": "5Gi"}}}}}, "5Gi"),
    (None, {"spec": {"pvc": {"resources": {"requests": {"storage": "6Gi"}}}}}, "6Gi"),
    (None, None, None),
])
def test_volume_size(claim: Any, dv: Any, expected: str | None) -> None:
    assert volume_size(claim, dv) == expected


def test_a_copied_secret_keeps_its_type_and_data_and_gets_our_label() -> None:
    secret = {"metadata": {"name": "ssh", "namespace": "prod", "uid": "x",
                           "resourceVersion": "7", "labels": {"a": "b"}},
              "type": "kubernetes.io/ssh-auth", "data": {"ssh-privatekey": "eA=="},
              "immutable": True}
    copied = copied_secret(secret, "other", "label-1")
    assert copied == {"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": "ssh", "namespace": "other",
                                   "labels": {"a": "b", "dlm-guard.io/migration-id": "label-1"}},
                      "type": "kubernetes.io/ssh-auth", "data": {"ssh-privatekey": "eA=="},
                      "immutable": True}


# --- the plan ------------------------------------------------------------------------------------
def test_the_plan_in_documented_order() -> None:
    the_vm = vm()
    the_vm["spec"]["template"]["spec"]["volumes"].append(
        {"name": "cfg", "configMap": {"name": "app"}})
    the_vm["spec"]["template"]["spec"]["volumes"].append(
        {"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": "ud"}}})
    plan = build_plan(state(the_vm, secrets={"ud": {"metadata": {"name": "ud"}}},
                            config_maps={"app": {"metadata": {"name": "app"}, "data": {}}}),
                      options(target_namespace="staging"))
    assert [(p.step, p.side, p.namespace) for p in plan.objects] == [
        (Step.SECRET, Role.TARGET, "staging"), (Step.CONFIG_MAP, Role.TARGET, "staging"),
        (Step.DATA_VOLUME, Role.TARGET, "staging"), (Step.TARGET_VM, Role.TARGET, "staging"),
        (Step.TARGET_VMIM, Role.TARGET, "staging"), (Step.SOURCE_VMIM, Role.SOURCE, "prod")]
    assert plan.restore_run_strategy == "Always"
    target, source = plan.one(Step.TARGET_VMIM).obj, plan.one(Step.SOURCE_VMIM).obj
    assert target["spec"] == {"receive": {"migrationID": "db-0123456789ab"}, "vmiName": "db"}
    assert source["spec"] == {"sendTo": {"migrationID": "db-0123456789ab",
                                         "connectURL": "10.244.1.17:9185"}, "vmiName": "db"}
    assert target["metadata"]["labels"] == {"dlm-guard.io/migration-id": "db-0123456789ab",
                                            "dlm-guard.io/role": "target"}


def test_the_target_vm_waits_as_receiver_and_keeps_what_the_source_had() -> None:
    the_vm = vm(running=True, dataVolumeTemplates=[
        {"metadata": {"name": "root-dv", "namespace": "prod"}, "spec": {}}])
    del the_vm["spec"]["runStrategy"]
    plan = build_plan(state(the_vm), options(target_namespace="staging", networks={
        "prod/vlan10": "staging/vlan20", "infra/mgmt": "infra/mgmt2"}))
    target = plan.one(Step.TARGET_VM).obj
    assert target["spec"]["runStrategy"] == "WaitAsReceiver" and "running" not in target["spec"]
    assert target["metadata"]["annotations"] == {"team": "storage",
                                                 "kubevirt.io/restore-run-strategy": "Always"}
    assert target["metadata"]["labels"] == {"app": "db", "dlm-guard.io/migration-id":
                                            "db-0123456789ab"}
    assert target["spec"]["dataVolumeTemplates"][0]["metadata"]["namespace"] == "staging"
    networks = target["spec"]["template"]["spec"]["networks"]
    assert [n.get("multus", {}).get("networkName") for n in networks] == [
        None, "staging/vlan20", "infra/mgmt2"]
    assert any("legacy spec.running" in note for note in plan.notes)
    assert the_vm["spec"].get("running") is True  # the input is not changed


def test_data_volumes_are_blank_sized_from_capacity_with_the_mapped_class() -> None:
    plan = build_plan(state(), options(storage_classes={"ceph-rbd": "local-nvme",
                                                        "unused": "x"}))
    dv = plan.one(Step.DATA_VOLUME).obj
    assert dv["spec"] == {"source": {"blank": {}}, "storage": {
        "resources": {"requests": {"storage": "10Gi"}}, "storageClassName": "local-nvme"}}
    assert dv["metadata"]["annotations"] == {"cdi.kubevirt.io/storage.usePopulator": "true"}
    assert "--storage-class unused: no source volume uses it" in plan.notes


def test_an_unmapped_class_is_kept_and_no_class_stays_the_target_default() -> None:
    kept = build_plan(state(), options()).one(Step.DATA_VOLUME).obj
    assert kept["spec"]["storage"]["storageClassName"] == "ceph-rbd"
    default = build_plan(state(pvcs={"root-dv": pvc("root-dv", storage_class=None)}),
                         options()).one(Step.DATA_VOLUME).obj
    assert "storageClassName" not in default["spec"]["storage"]


def test_every_problem_is_listed_at_once() -> None:
    the_vm = vm(runStrategy="WaitAsReceiver")
    the_vm["spec"]["template"]["spec"]["volumes"] += [
        {"name": "x", "dataVolume": {"name": "gone"}},
        {"name": "y", "persistentVolumeClaim": {"claimName": "unsized"}},
        {"name": "z", "secret": {"secretName": "missing"}}]
    with pytest.raises(PlanError) as caught:
        build_plan(state(the_vm, pvcs={"root-dv": pvc("root-dv"),
                                       "unsized": {"metadata": {"name": "unsized"}}}),
                   options(migration_id=""))
    assert caught.value.problems == [
        "the migrationID is empty",
        "source VM has runStrategy WaitAsReceiver: it is itself a migration target, not a VM "
        "that can be sent",
        "Secret missing used by the source VM was not found",
        "DataVolume gone used by the source VM was not found",
        "PersistentVolumeClaim unsized: no PersistentVolumeClaim with a capacity or request "
        "found, so the target size is unknown"]


def test_a_pending_connect_url_is_filled_in_later() -> None:
    plan = build_plan(state(), options(connect_url=None))
    assert "connectURL" not in plan.one(Step.SOURCE_VMIM).obj["spec"]["sendTo"]
    assert any(n.startswith(CONNECT_PENDING) for n in plan.notes)
    before = copy.deepcopy(plan.objects)
    filled = plan.with_connect_url("[fd00::5]:9185")
    assert filled.one(Step.SOURCE_VMIM).obj["spec"]["sendTo"]["connectURL"] == "[fd00::5]:9185"
    assert not any(n.startswith(CONNECT_PENDING) for n in filled.notes)
    assert plan.objects == before  # a new plan; the old one is unchanged


def test_a_forklift_id_labels_every_object_with_its_hash() -> None:
    plan = build_plan(state(), options(migration_id=FORKLIFT_ID))
    labels = {p.obj["metadata"]["labels"]["dlm-guard.io/migration-id"] for p in plan.objects}
    assert labels == {migration_id_label(FORKLIFT_ID)}
    assert plan.one(Step.TARGET_VMIM).obj["spec"]["receive"]["migrationID"] == FORKLIFT_ID


def test_the_yaml_plan_is_one_commented_document_per_object_in_order() -> None:
    plan = build_plan(state(), options())
    text = format_plan(plan, "yaml")
    assert text.startswith("# migrationID: db-0123456789ab\n---\n# 1. target DataVolume prod/")
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    assert documents == [p.obj for p in plan.objects]
