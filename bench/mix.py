"""A realistic mix of AdmissionReviews, as the API server sends them to dlm-guard.

Each object goes through both webhooks (mutate, then validate), so the mix holds every review
twice, once per endpoint. Objects are shaped like real ones: a WaitAsReceiver VM with several
disks, interfaces, cloud-init and `managedFields` (the API server includes them in admission
requests), decentralized VMIMs on both sides. About a fifth of the objects break a rule, a
third need a patch (missing restore annotation, generated migrationID, pairing labels).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

MUTATE, VALIDATE = "/mutate", "/validate"
NAMESPACE = "tenant-a"


@dataclass(frozen=True)
class Item:
    """One AdmissionReview to send: its endpoint, its label, the request and the body."""

    name: str
    path: str
    request: Obj  # the AdmissionReview's `request` (what the engine gets)
    body: bytes  # the whole AdmissionReview, JSON-encoded once


# --- Objects ------------------------------------------------------------------------------
def _managed_fields(manager: str) -> list[Obj]:
    return [{"manager": manager, "operation": "Update", "apiVersion": "kubevirt.io/v1",
             "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:annotations": {".": {}}, "f:labels": {".": {}}},
                          "f:spec": {".": {}, "f:runStrategy": {}, "f:template": {".": {}}}}}]


def vm(name: str, *, restore: str | None = "Always", shareable: bool = False,
       lun: bool = False, filesystem: bool = False) -> Obj:
    """A WaitAsReceiver VM of realistic size (~3 KB of JSON)."""
    disks: list[Obj] = [
        {"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 1},
        {"name": "datadisk", "disk": {"bus": "virtio"}},
        {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
    ]
    if shareable:
        disks[1]["shareable"] = True
    if lun:
        disks.append({"name": "san", "lun": {"reservation": True}})
    devices: Obj = {"disks": disks, "interfaces": [{"name": "default", "masquerade": {}},
                                                   {"name": "storage", "bridge": {}}],
                    "rng": {}, "autoattachGraphicsDevice": False}
    if filesystem:
        devices["filesystems"] = [{"name": "shared", "virtiofs": {}}]
    annotations = {"description": "database replica", "owner": "team-db"}
    if restore is not None:
        annotations["kubevirt.io/restore-run-strategy"] = restore
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NAMESPACE, "generation": 1,
                     "labels": {"app": "db", "tier": "backend", "kubevirt.io/os": "fedora"},
                     "annotations": annotations, "managedFields": _managed_fields("kubectl")},
        "spec": {"runStrategy": "WaitAsReceiver", "template": {
            "metadata": {"labels": {"kubevirt.io/domain": name, "app": "db"}},
            "spec": {"architecture": "amd64",
                     "domain": {"cpu": {"cores": 2, "sockets": 1, "threads": 1},
                                "machine": {"type": "q35"}, "devices": devices,
                                "firmware": {"bootloader": {"efi": {"secureBoot": False}}},
                                "resources": {"requests": {"memory": "4Gi", "cpu": "2"}}},
                     "networks": [{"name": "default", "pod": {}},
                                  {"name": "storage", "multus": {"networkName": "storage-net"}}],
                     "terminationGracePeriodSeconds": 180,
                     "volumes": [
                         {"name": "rootdisk", "dataVolume": {"name": f"{name}-root"}},
                         {"name": "datadisk", "dataVolume": {"name": f"{name}-data"}},
                         {"name": "cloudinitdisk", "cloudInitNoCloud": {
                             "userData": "#cloud-config\nuser: fedora\npassword: changeme\n"
                                         "chpasswd: {expire: false}\nssh_authorized_keys:\n"
                                         "  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG bench\n"}},
                     ]}}},
    }


def vmim(name: str, *, send_to: Obj | None = None, receive: Obj | None = None,
         labels: Obj | None = None) -> Obj:
    spec: Obj = {"vmiName": "db-replica-7"}
    if send_to is not None:
        spec["sendTo"] = send_to
    if receive is not None:
        spec["receive"] = receive
    metadata: Obj = {"name": name, "namespace": NAMESPACE, "generation": 1,
                     "managedFields": _managed_fields("orchestrator")}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": metadata, "spec": spec}


MID = "db-replica-7-5d1c2a9e0f3b"
PAIRED = {"dlm-guard.io/role": "source", "dlm-guard.io/migration-id": MID}
PAIRED_TARGET = {"dlm-guard.io/role": "target", "dlm-guard.io/migration-id": MID}

# (label, object factory, weight): weights sum to 20 objects per round of the mix.
OBJECTS: list[tuple[str, Callable[[], Obj], int]] = [
    ("vm-clean", lambda: vm("db-replica-7"), 4),
    ("vm-no-restore", lambda: vm("db-replica-8", restore=None), 2),
    ("vm-shareable", lambda: vm("db-replica-9", shareable=True), 1),
    ("vm-lun-fs", lambda: vm("db-replica-10", lun=True, filesystem=True), 1),
    ("source-clean", lambda: vmim("out-7", send_to={"migrationID": MID,
                                                     "connectURL": "10.244.1.17:9185"},
                                  labels=PAIRED), 4),
    ("source-unlabelled", lambda: vmim("out-8", send_to={"migrationID": MID,
                                                          "connectURL": "10.244.1.17:9185"}), 1),
    ("source-https-url", lambda: vmim("out-9", send_to={
        "migrationID": MID, "connectURL": "https://10.244.1.17:9185"}, labels=PAIRED), 1),
    ("target-clean", lambda: vmim("in-7", receive={"migrationID": MID},
                                  labels=PAIRED_TARGET), 4),
    ("target-no-id", lambda: vmim("in-8", receive={}), 1),
    ("target-both-roles", lambda: vmim("in-9", receive={"migrationID": MID}, send_to={
        "migrationID": MID, "connectURL": "10.244.1.17:9185"}), 1),
]


# --- AdmissionReviews ---------------------------------------------------------------------
def admission_request(obj: Obj, uid: str, operation: str = "CREATE") -> Obj:
    kind = obj["kind"]
    plural = {"VirtualMachine": "virtualmachines",
              "VirtualMachineInstanceMigration": "virtualmachineinstancemigrations"}[kind]
    return {
        "uid": uid,
        "kind": {"group": "kubevirt.io", "version": "v1", "kind": kind},
        "resource": {"group": "kubevirt.io", "version": "v1", "resource": plural},
        "requestKind": {"group": "kubevirt.io", "version": "v1", "kind": kind},
        "requestResource": {"group": "kubevirt.io", "version": "v1", "resource": plural},
        "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:gitops:argocd-application-controller",
                     "uid": "6f0c4ad6-1c1e-4f0a-9d7e-3a1f1c0e2b11",
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:gitops",
                                "system:authenticated"]},
        "object": obj, "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions",
                    "fieldManager": "argocd-controller"},
    }


def review(request: Obj) -> Obj:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def build_mix() -> list[Item]:
    """The mix in a fixed interleaved order: every object, each through mutate and validate."""
    items: list[Item] = []
    counter = 0
    rounds = max(weight for _, _, weight in OBJECTS)
    for round_ in range(rounds):
        for label, factory, weight in OBJECTS:
            if round_ >= weight:
                continue
            for path in (MUTATE, VALIDATE):
                counter += 1
                uid = f"00000000-0000-4000-8000-{counter:012d}"
                request = admission_request(factory(), uid)
                body = json.dumps(review(request), separators=(",", ":")).encode()
                items.append(Item(label, path, request, body))
    return items


def request_copies(items: list[Item]) -> list[Obj]:
    """Fresh deep copies of the requests (the engine must not see shared mutated state)."""
    return [copy.deepcopy(item.request) for item in items]
