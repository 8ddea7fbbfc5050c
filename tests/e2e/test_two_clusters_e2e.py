"""Two clusters up at once, each API server calling its own dlm-guard, each guarding its own
state (the reconciler's issue builds on this pair)."""

from __future__ import annotations

import pytest
from e2e_support import (
    DENIED,
    RESTORE,
    TARGET_VM,
    TARGET_VMIM,
    VM_NAME,
    Guarded,
    accepted,
    add_shareable_disk,
    apply,
    apply_once_settled,
    denied_by,
    get,
    new_namespace,
    target_vm,
    vmi,
    vmim,
    without_restore_annotation,
)

pytestmark = pytest.mark.e2e


def test_two_clusters_with_their_own_servers(guarded: list[Guarded]) -> None:
    assert len(guarded) == 2
    assert len({g.cluster.server for g in guarded}) == 2
    assert len({g.server.url_base for g in guarded}) == 2
    assert all(g.server.ready() for g in guarded)


@pytest.mark.parametrize("index", [0, 1], ids=["cluster1", "cluster2"])
def test_each_cluster_rejects_and_mutates(guarded: list[Guarded], index: int) -> None:
    cluster = guarded[index].cluster
    ns = new_namespace(cluster, "e2e-pair")
    rejected = apply(cluster, ns, target_vm(device=add_shareable_disk))
    assert DENIED in rejected.stderr and "[shareable-disk]" in rejected.stderr
    assert accepted(apply(cluster, ns, without_restore_annotation(TARGET_VM)))
    stored = get(cluster, ns, "vm", VM_NAME)
    assert stored is not None and stored["metadata"]["annotations"][RESTORE] == "Always"


def test_each_webhook_reads_its_own_clusters_state(guarded: list[Guarded]) -> None:
    """A migrationID in use on cluster1 is free on cluster2, but taken there once used."""
    (one, two) = (g.cluster for g in guarded)
    ns1, ns2 = new_namespace(one, "e2e-pair"), new_namespace(two, "e2e-pair")
    mid = f"{VM_NAME}-{ns1}"
    for cluster, ns in ((one, ns1), (two, ns2)):
        apply(cluster, ns, vmi())
        first = apply_once_settled(cluster, ns, vmim(TARGET_VMIM, "first", mid), accepted)
        assert accepted(first), first.stderr
    again = vmim(TARGET_VMIM, "again", mid)
    result = apply_once_settled(two, ns2, again, denied_by("duplicate-migration-id"))
    assert f"already used by the target VMIM {ns2}/first" in result.stderr
