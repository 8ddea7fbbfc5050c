"""Builders for the migrate tests: a source VM as a user has it, and plan options."""

from __future__ import annotations

from typing import Any

from migrate.plan import Options, SourceState

# Forklift's migrationID: `<vm id>-<migration uid>` (live.go kubevirtMigrationID), 73 chars.
FORKLIFT_ID = "3f2b1c9e-8d7a-4e5f-9a1b-2c3d4e5f6a7b-0a1b2c3d-4e5f-6789-abcd-ef0123456789"


def vm(**spec: Any) -> dict[str, Any]:
    template_spec = {
        "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
        "networks": [{"name": "default", "pod": {}},
                     {"name": "data", "multus": {"networkName": "vlan10"}},
                     {"name": "mgmt", "multus": {"networkName": "infra/mgmt"}}],
        "volumes": [{"name": "root", "dataVolume": {"name": "root-dv"}}],
    }
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "db", "namespace": "prod", "uid": "u-1",
                         "labels": {"app": "db"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                         "{}", "team": "storage"}},
            "spec": {"runStrategy": "Always", "template": {"spec": template_spec}, **spec}}


def pvc(name: str, request: str = "9Gi", capacity: str | None = "10Gi",
        storage_class: str | None = "ceph-rbd") -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name},
                           "spec": {"resources": {"requests": {"storage": request}}}}
    if storage_class:
        obj["spec"]["storageClassName"] = storage_class
    if capacity:
        obj["status"] = {"capacity": {"storage": capacity}}
    return obj


def state(the_vm: dict[str, Any] | None = None, **changes: Any) -> SourceState:
    values: dict[str, Any] = {
        "vm": the_vm or vm(), "vmi": None,
        "data_volumes": {"root-dv": {"metadata": {"name": "root-dv"},
                                     "status": {"claimName": "root-dv"}}},
        "pvcs": {"root-dv": pvc("root-dv")}}
    values.update(changes)
    return SourceState(**values)


def options(**changes: Any) -> Options:
    values: dict[str, Any] = {"target_namespace": "prod", "migration_id": "db-0123456789ab",
                              "connect_url": "10.244.1.17:9185"}
    values.update(changes)
    return Options(**values)
