"""dlm-guard's webhooks called by a real kube-apiserver over real TLS, driven with kubectl.

Nothing runs KubeVirt: the tests create the VMIs and the KubeVirt CR KubeVirt would make.
Every test works in namespaces of its own (labelled for the shared registration).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e_support import (
    DENIED,
    RESTORE,
    SOURCE_VMIM,
    TARGET_VM,
    TARGET_VMIM,
    VM_NAME,
    Guarded,
    accepted,
    add_config_map_filesystem,
    add_filesystem,
    add_lun_disk,
    add_persistent_efi,
    add_shareable_disk,
    apply,
    apply_once_settled,
    denied_by,
    get,
    new_namespace,
    set_gate,
    set_kubevirt_version,
    target_vm,
    vmi,
    vmim,
    without_restore_annotation,
)

from controlplane import Cluster, kubectl

pytestmark = pytest.mark.e2e

LABEL_ID, LABEL_ROLE = "dlm-guard.io/migration-id", "dlm-guard.io/role"


@pytest.fixture
def cluster(guarded: list[Guarded]) -> Cluster:
    return guarded[0].cluster


@pytest.fixture
def ns(cluster: Cluster) -> str:
    return new_namespace(cluster, "e2e")


def unique_id(namespace: str) -> str:
    return f"{VM_NAME}-{namespace}"


# --- WaitAsReceiver VMs through kubectl apply -------------------------------------------
@pytest.mark.parametrize(("change", "expected"), [
    (add_shareable_disk, "[shareable-disk] spec.template.spec.domain.devices.disks[1].shareable"),
    (add_lun_disk, "[lun-disk] spec.template.spec.domain.devices.disks[1].lun"),
    (add_filesystem, "[filesystem] spec.template.spec.domain.devices.filesystems"),
], ids=["shareable", "lun", "filesystem"])
def test_target_vm_with_an_unsupported_device_is_rejected(
        cluster: Cluster, ns: str, change: Callable[[dict[str, Any]], None],
        expected: str) -> None:
    result = apply(cluster, ns, target_vm(device=change))
    assert result.returncode != 0
    assert DENIED in result.stderr and expected in result.stderr
    assert get(cluster, ns, "vm", VM_NAME) is None


def test_target_vm_sharing_a_config_map_over_virtiofs_is_accepted(
        cluster: Cluster, ns: str) -> None:
    result = apply(cluster, ns, target_vm(device=add_config_map_filesystem))
    assert accepted(result), result.stderr
    assert "[filesystem]" not in result.stderr


def test_clean_target_vm_is_accepted_unchanged(cluster: Cluster, ns: str) -> None:
    result = apply(cluster, ns, TARGET_VM)
    assert accepted(result), result.stderr
    stored = get(cluster, ns, "vm", VM_NAME)
    assert stored is not None
    assert stored["metadata"]["annotations"][RESTORE] == "Always"
    assert stored["spec"]["template"] == TARGET_VM["spec"]["template"]


def test_target_vm_without_restore_run_strategy_gets_it_injected(
        cluster: Cluster, ns: str) -> None:
    result = apply(cluster, ns, without_restore_annotation(TARGET_VM))
    assert accepted(result), result.stderr
    stored = get(cluster, ns, "vm", VM_NAME)
    assert stored is not None and stored["metadata"]["annotations"][RESTORE] == "Always"


def test_a_warn_rule_admits_with_a_warning_kubectl_prints(cluster: Cluster, ns: str) -> None:
    result = apply(cluster, ns, target_vm(efi=add_persistent_efi))
    assert accepted(result), result.stderr
    assert "Warning: [persistent-state] spec.template.spec.domain.firmware" in result.stderr


def test_an_invalid_restore_run_strategy_is_rejected(cluster: Cluster, ns: str) -> None:
    vm = target_vm()
    vm["metadata"]["annotations"][RESTORE] = "WaitAsReceiver"
    result = apply(cluster, ns, vm)
    assert DENIED in result.stderr and "[restore-run-strategy]" in result.stderr


# --- Target VMIM mutation ---------------------------------------------------------------
def test_target_vmim_with_empty_migration_id_gets_a_generated_id_and_pairing_labels(
        cluster: Cluster, ns: str) -> None:
    apply(cluster, ns, vmi())  # the receiving VMI KubeVirt starts for a WaitAsReceiver VM
    result = apply_once_settled(cluster, ns, vmim(TARGET_VMIM, "target", ""), accepted)
    assert accepted(result), result.stderr
    stored = get(cluster, ns, "vmim", "target")
    assert stored is not None
    generated = stored["spec"]["receive"]["migrationID"]
    assert re.fullmatch(rf"{VM_NAME}-[0-9a-f]{{12}}", generated), generated
    assert stored["metadata"]["labels"][LABEL_ID] == generated
    assert stored["metadata"]["labels"][LABEL_ROLE] == "target"


# --- Rules that read cluster state: rejected, then the state is fixed and it is accepted ---
def test_receive_vmim_naming_a_missing_vmi_is_rejected_until_the_vmi_exists(
        cluster: Cluster, ns: str) -> None:
    target = vmim(TARGET_VMIM, "target", unique_id(ns))
    result = apply(cluster, ns, target)
    assert denied_by("receiver-vmi", f"VirtualMachineInstance {ns}/{VM_NAME} not found")(result)
    apply(cluster, ns, vmi())
    assert accepted(apply_once_settled(cluster, ns, target, accepted))


def test_receive_vmim_whose_vmi_is_not_a_receiver_is_rejected_until_it_is(
        cluster: Cluster, ns: str) -> None:
    apply(cluster, ns, vmi(receiver=False))
    target = vmim(TARGET_VMIM, "target", unique_id(ns))
    result = apply_once_settled(cluster, ns, target, denied_by("receiver-vmi"))
    assert "is not waiting to receive a migration" in result.stderr
    kubectl(cluster, "annotate", "-n", ns, "vmi", VM_NAME,
            "kubevirt.io/create-migration-target=true")
    assert accepted(apply_once_settled(cluster, ns, target, accepted))


def test_send_vmim_whose_vmi_is_not_running_is_rejected_until_it_runs(
        cluster: Cluster, ns: str) -> None:
    apply(cluster, ns, vmi(receiver=False, phase="Scheduling"))
    source = vmim(SOURCE_VMIM, "source", unique_id(ns))
    result = apply_once_settled(cluster, ns, source, denied_by("source-vmi"))
    assert "is in phase 'Scheduling', not Running" in result.stderr
    apply(cluster, ns, vmi(receiver=False, phase="Running"))
    assert accepted(apply_once_settled(cluster, ns, source, accepted))


def test_a_migration_id_used_in_another_namespace_is_rejected_until_that_vmim_is_gone(
        cluster: Cluster, ns: str) -> None:
    other = new_namespace(cluster, "e2e-other")
    mid = unique_id(ns)
    for namespace in (other, ns):
        apply(cluster, namespace, vmi())
    first = apply_once_settled(cluster, other, vmim(TARGET_VMIM, "first", mid), accepted)
    assert accepted(first), first.stderr
    second = vmim(TARGET_VMIM, "second", mid)
    result = apply_once_settled(cluster, ns, second, denied_by("duplicate-migration-id"))
    assert f"already used by the target VMIM {other}/first" in result.stderr
    kubectl(cluster, "delete", "-n", other, "vmim", "first")
    assert accepted(apply_once_settled(cluster, ns, second, accepted))


@pytest.fixture
def gate_restored(cluster: Cluster) -> Iterator[None]:
    yield
    set_gate(cluster, on=True)  # the KubeVirt CR is cluster-wide: other tests need it on
    set_kubevirt_version(cluster, None)


def test_feature_gate_off_rejects_until_it_is_turned_on(
        cluster: Cluster, ns: str, gate_restored: None) -> None:
    apply(cluster, ns, vmi())
    target = vmim(TARGET_VMIM, "target", unique_id(ns))
    set_gate(cluster, on=False)
    set_kubevirt_version(cluster, "v1.8.2")  # a release where the gate is Alpha
    result = apply_once_settled(cluster, ns, target, denied_by("feature-gate"))
    assert "KubeVirt kubevirt/kubevirt: DecentralizedLiveMigration is off" in result.stderr
    assert "'v1.8.2' is a release where" in result.stderr
    set_gate(cluster, on=True)
    assert accepted(apply_once_settled(cluster, ns, target, accepted))


# virt-operator's default version string, and `git describe` of a main build (d923fdb815),
# where the gate is already Beta: dlm-guard cannot tell, so it admits with a warning.
@pytest.mark.parametrize("version", ["latest", "v1.9.0-beta.0-1264-gd923fdb815"])
def test_a_kubevirt_version_that_cannot_tell_admits_with_a_warning(
        cluster: Cluster, ns: str, gate_restored: None, version: str) -> None:
    apply(cluster, ns, vmi())
    target = vmim(TARGET_VMIM, "target", unique_id(ns))
    set_gate(cluster, on=False)
    set_kubevirt_version(cluster, version)
    warned = "cannot tell whether DecentralizedLiveMigration is on"

    def settled(result: subprocess.CompletedProcess[str]) -> bool:
        return accepted(result) and warned in result.stderr and repr(version) in result.stderr

    result = apply_once_settled(cluster, ns, target, settled)
    assert settled(result), result.stderr
    assert "Warning: [feature-gate] " in result.stderr
    assert get(cluster, ns, "vmim", "target") is not None


# --- UPDATE ----------------------------------------------------------------------------------
def test_changing_a_decentralized_vmims_spec_is_rejected_but_labels_may_change(
        cluster: Cluster, ns: str) -> None:
    apply(cluster, ns, vmi())
    mid = unique_id(ns)
    assert accepted(apply_once_settled(cluster, ns, vmim(TARGET_VMIM, "target", mid), accepted))
    patch = '{"spec": {"receive": {"migrationID": "another-id"}}}'
    result = kubectl(cluster, "patch", "-n", ns, "vmim", "target", "--type=merge", "-p", patch,
                     check=False)
    assert DENIED in result.stderr
    assert "[immutable-spec] spec.receive.migrationID" in result.stderr
    kubectl(cluster, "label", "-n", ns, "vmim", "target", "team=blue")
    stored = get(cluster, ns, "vmim", "target")
    assert stored is not None and stored["spec"]["receive"]["migrationID"] == mid
