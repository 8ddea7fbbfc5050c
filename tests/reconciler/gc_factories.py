"""Plain KubeVirt object dicts for the clean-up (reconciler/gc.py) tests, and a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

NOW = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def stamp(ago: timedelta, now: datetime = NOW) -> str:
    """A Kubernetes timestamp `ago` before `now`, as the API server writes it."""
    return (now - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(name: str, ns: str, uid: str | None, terminating: bool,
          created_ago: timedelta | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if uid:  # "" leaves the object without a uid
        meta["uid"] = uid
    if terminating:
        meta["deletionTimestamp"] = stamp(MIN)
    if created_ago is not None:
        meta["creationTimestamp"] = stamp(created_ago)
    return meta


def vmim(name: str, *, role: str | None = "target", mid: str | None = "m1",
         phase: str = "", ns: str = "ns", vmi: str = "vm1", uid: str | None = None,
         phase_ago: timedelta | None = None, created_ago: timedelta | None = None,
         terminating: bool = False, label_mid: str | None = None) -> dict[str, Any]:
    """A VMIM; role "source" (sendTo), "target" (receive), "both" or None (ordinary).

    phase_ago writes status.phaseTransitionTimestamps for `phase` (the upstream field);
    uid="" leaves metadata.uid out.
    """
    spec: dict[str, Any] = {"vmiName": vmi}
    if role in ("source", "both"):
        spec["sendTo"] = {"migrationID": mid, "connectURL": "10.0.0.1:9185"}
    if role in ("target", "both"):
        spec["receive"] = {"migrationID": mid}
    obj: dict[str, Any] = {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": _meta(name, ns, uid if uid is not None else f"uid-{name}", terminating,
                          created_ago),
        "spec": spec, "status": {"phase": phase} if phase else {},
    }
    if phase_ago is not None:
        obj["status"]["phaseTransitionTimestamps"] = [
            {"phase": "Pending", "phaseTransitionTimestamp": stamp(phase_ago + 30 * MIN)},
            {"phase": phase, "phaseTransitionTimestamp": stamp(phase_ago)},
        ]
    if label_mid is not None:
        obj["metadata"]["labels"] = {"dlm-guard.io/migration-id": label_mid}
    return obj


def vm(name: str = "vm1", *, ns: str = "ns", run_strategy: str | None = "WaitAsReceiver",
       uid: str | None = None, terminating: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"spec": {}}}
    if run_strategy is not None:
        spec["runStrategy"] = run_strategy
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": _meta(name, ns, uid or f"uid-vm-{name}", terminating, None),
            "spec": spec}


def vmi(name: str = "vm1", *, ns: str = "ns", phase: str = "WaitingForSync",
        failed: bool = False, migration_uid: str | None = None,
        end_ago: timedelta | None = None) -> dict[str, Any]:
    """A VMI; failed=True writes status.migrationState.failed as v1.7+ does
    (docs/kubevirt-facts.md)."""
    status: dict[str, Any] = {"phase": phase}
    if failed:
        state: dict[str, Any] = {"failed": True, "completed": True}
        if migration_uid is not None:
            state["migrationUid"] = migration_uid
        if end_ago is not None:
            state["endTimestamp"] = stamp(end_ago)
        status["migrationState"] = state
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": _meta(name, ns, f"uid-vmi-{name}", False, None), "status": status}
