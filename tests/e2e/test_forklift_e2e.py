"""A Forklift-shaped migration through two real API servers, each calling its own dlm-guard.

Forklift (kubev2v/forklift pkg/controller/plan/migrator/ocp/live.go) names migrations
`<vm uid>-<migration uid>` (kubevirtMigrationID: 73 characters, no valid label value) and
creates the target VMIM as soon as it sees the target VMI (WaitForTargetVMI, then
CreateVirtualMachineInstanceMigrations). Here each VMI and its VMIM go in one kubectl call,
milliseconds apart: the webhook's watch cache usually does not have the VMI yet, and its
one live GET must find it, so the first attempt is admitted. Nothing is retried.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from typing import Any

import pytest
from e2e_support import (
    SOURCE_VMIM,
    TARGET_VMIM,
    VM_NAME,
    Guarded,
    accepted,
    create_together,
    get,
    kubevirt_cr,
    new_namespace,
    vmi,
    vmim,
)

from dlm_guard.store import ObjectStore
from webhook.cache import load_api_client
from webhook.decision import Decision
from webhook.engine import Context, random_suffix, validate
from webhook.live import KubeVmiLookup, confirming_validate
from webhook.policy import Policy

pytestmark = pytest.mark.e2e

LABEL_ID, LABEL_ROLE = "dlm-guard.io/migration-id", "dlm-guard.io/role"


def forklift_migration_id() -> str:
    """`<vm uid>-<migration uid>`, as kubevirtMigrationID builds it."""
    return f"{uuid.uuid4()}-{uuid.uuid4()}"


def forklift_labels(migration_id: str) -> dict[str, str]:
    # Forklift's own labels on the VMIMs (Labeler.MigrationVMLabels): plan, migration, vm.
    return {"migration": migration_id[37:], "vmID": migration_id[:36], "plan": "plan-uid"}


def test_a_forklift_pair_is_admitted_first_time_on_both_clusters(
        guarded: list[Guarded]) -> None:
    source_cluster, target_cluster = (g.cluster for g in guarded)
    mid = forklift_migration_id()
    assert len(mid) == 73
    target_ns = new_namespace(target_cluster, "e2e-forklift-dst")
    source_ns = new_namespace(source_cluster, "e2e-forklift-src")

    target = vmim(TARGET_VMIM, "forklift-target", mid)
    target["metadata"]["labels"] = forklift_labels(mid)
    created = create_together(target_cluster, target_ns, vmi(receiver=True), target)
    assert accepted(created), created.stderr

    source = vmim(SOURCE_VMIM, "forklift-source", mid)
    source["metadata"]["labels"] = forklift_labels(mid)
    running = vmi(receiver=False, phase="Running")
    created = create_together(source_cluster, source_ns, running, source)
    assert accepted(created), created.stderr

    label = "sha256-" + hashlib.sha256(mid.encode()).hexdigest()[:56]
    for cluster, ns, name, role, field in (
            (target_cluster, target_ns, "forklift-target", "target", "receive"),
            (source_cluster, source_ns, "forklift-source", "source", "sendTo")):
        stored = get(cluster, ns, "vmim", name)
        assert stored is not None
        assert stored["spec"][field]["migrationID"] == mid  # never rewritten
        assert stored["metadata"]["labels"][LABEL_ID] == label
        assert stored["metadata"]["labels"][LABEL_ROLE] == role
        assert stored["metadata"]["labels"]["vmID"] == mid[:36]  # Forklift's labels kept


def test_a_vmi_that_does_not_exist_is_still_denied_after_the_live_check(
        guarded: list[Guarded]) -> None:
    cluster = guarded[1].cluster
    ns = new_namespace(cluster, "e2e-forklift-dst")
    target = copy.deepcopy(vmim(TARGET_VMIM, "forklift-target", forklift_migration_id(),
                                vmi=f"{VM_NAME}-absent"))
    created = create_together(cluster, ns, target)
    assert not accepted(created)
    assert "[receiver-vmi] spec.vmiName: " in created.stderr
    assert f"VirtualMachineInstance {ns}/{VM_NAME}-absent not found" in created.stderr


# --- The live GET itself, with a cache that has certainly not seen the VMI ----------------
def forklift_target_review(namespace: str, mid: str) -> dict[str, Any]:
    target = vmim(TARGET_VMIM, "forklift-target", mid)
    target["metadata"]["namespace"] = namespace
    return {"uid": "e2e", "kind": {"group": "kubevirt.io", "version": "v1",
                                   "kind": "VirtualMachineInstanceMigration"},
            "namespace": namespace, "operation": "CREATE", "object": target}


async def test_the_live_get_admits_what_a_lagging_cache_would_deny(
        guarded: list[Guarded]) -> None:
    """The production VmiLookup against the real API server; the cache is an ObjectStore that
    holds the KubeVirt CR but not the VMI, as a watch that has not delivered it yet would."""
    cluster = guarded[1].cluster
    ns = new_namespace(cluster, "e2e-forklift-dst")
    assert accepted(create_together(cluster, ns, vmi(receiver=True)))
    lagging = ObjectStore([kubevirt_cr(gate_on=True)])
    ctx = Context(policy=Policy(), cluster=lagging, new_id=random_suffix)
    review = forklift_target_review(ns, forklift_migration_id())

    cache_only = validate(review, ctx)  # what dlm-guard answered before the live GET
    assert not cache_only.allowed and "[receiver-vmi]" in cache_only.message

    api = load_api_client(str(cluster.kubeconfig))
    try:
        validate_live = confirming_validate(KubeVmiLookup(api))
        pending = validate_live(review, ctx)
        assert not isinstance(pending, Decision)  # a miss: one GET to make
        assert (await pending).allowed
        absent = validate_live(forklift_target_review(f"{ns}-nowhere", "x"), ctx)
        assert not isinstance(absent, Decision)
        denied = await absent
        assert not denied.allowed and "not found" in denied.message
    finally:
        api.close()
