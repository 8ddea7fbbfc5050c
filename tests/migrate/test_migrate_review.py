"""migrate.review: a plan through the webhook's own engine (mutate + validate), no cluster."""

from __future__ import annotations

from typing import Any

from migrate_factories import options, state, vm

from migrate.plan import Step, build_plan
from migrate.review import ClusterView, review_plan
from webhook.policy import load_policy, parse_policy

KUBEVIRT = {"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
            "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
            "spec": {"configuration": {"developerConfiguration": {
                "featureGates": ["DecentralizedLiveMigration"]}}}}


def running_vmi(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "db", "namespace": "prod"}, "spec": spec,
            "status": {"phase": "Running"}}


def views(the_vm: dict[str, Any]) -> tuple[ClusterView, ClusterView]:
    vmi = running_vmi(the_vm["spec"]["template"]["spec"])
    return ClusterView(KUBEVIRT, [vmi]), ClusterView(KUBEVIRT)


def slugs(review: Any) -> list[tuple[Step, str]]:
    return [(planned.step, rated.finding.rule) for planned, rated in review.denied]


def test_a_clean_plan_passes_and_comes_back_as_the_webhook_would_store_it() -> None:
    the_vm = vm()
    review = review_plan(build_plan(state(the_vm), options()), load_policy(None), *views(the_vm))
    assert review.denied == [] and review.warnings == []
    target = review.plan.one(Step.TARGET_VMIM).obj
    assert target["metadata"]["labels"]["dlm-guard.io/role"] == "target"


def test_a_shareable_disk_is_denied_on_the_target_vm_and_the_source_vmi() -> None:
    the_vm = vm()
    spec = the_vm["spec"]["template"]["spec"]
    spec["domain"]["devices"]["disks"].append({"name": "s", "shareable": True, "disk": {}})
    spec["volumes"].append({"name": "s", "persistentVolumeClaim": {"claimName": "root-dv"}})
    review = review_plan(build_plan(state(the_vm), options()), load_policy(None), *views(the_vm))
    assert slugs(review) == [(Step.TARGET_VM, "shareable-disk"),
                             (Step.TARGET_VMIM, "shareable-disk"),
                             (Step.SOURCE_VMIM, "shareable-disk")]
    paths = [rated.finding.path for _, rated in review.denied]
    assert paths[0] == "spec.template.spec.domain.devices.disks[1].shareable"


def test_the_policy_decides_the_mode() -> None:
    the_vm = vm()
    the_vm["spec"]["template"]["spec"]["domain"]["firmware"] = {
        "bootloader": {"efi": {"persistent": True}}}
    plan = build_plan(state(the_vm), options())
    warned = review_plan(plan, load_policy(None), *views(the_vm))
    assert warned.denied == [] and {r.finding.rule for _, r in warned.warnings} == {
        "persistent-state"}
    strict = parse_policy({"rules": {"persistent-state": "enforce"}})
    assert {r.finding.rule for _, r in review_plan(plan, strict, *views(the_vm)).denied} == {
        "persistent-state"}


def test_a_migration_id_in_use_in_the_target_cluster_is_refused() -> None:
    the_vm = vm()
    used = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "old", "namespace": "elsewhere"},
            "spec": {"receive": {"migrationID": "db-0123456789ab"}, "vmiName": "x"},
            "status": {"phase": "Succeeded"}}
    source, _ = views(the_vm)
    review = review_plan(build_plan(state(the_vm), options()), load_policy(None), source,
                         ClusterView(KUBEVIRT, vmims=[used]))
    assert slugs(review) == [(Step.TARGET_VMIM, "duplicate-migration-id")]


def test_the_gate_off_on_the_source_and_a_stopped_source_vmi_are_refused() -> None:
    the_vm = vm()
    off = {**KUBEVIRT, "spec": {"configuration": {"developerConfiguration": {
        "disabledFeatureGates": ["DecentralizedLiveMigration"]}}}}
    stopped = {**running_vmi(the_vm["spec"]["template"]["spec"]), "status": {"phase": "Failed"}}
    review = review_plan(build_plan(state(the_vm), options()), load_policy(None),
                         ClusterView(off, [stopped]), ClusterView(KUBEVIRT))
    assert slugs(review) == [(Step.SOURCE_VMIM, "source-vmi"), (Step.SOURCE_VMIM, "feature-gate")]


def test_a_pending_connect_url_is_not_a_finding_yet() -> None:
    the_vm = vm()
    review = review_plan(build_plan(state(the_vm), options(connect_url=None)),
                         load_policy(None), *views(the_vm))
    assert review.denied == []
    bad = review_plan(build_plan(state(the_vm), options(connect_url="https://10.0.0.1:9185")),
                      load_policy(None), *views(the_vm))
    assert slugs(bad) == [(Step.SOURCE_VMIM, "connect-url")]
