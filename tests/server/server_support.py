"""Objects and helpers shared by the server tests (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

from webhook.engine import Context
from webhook.policy import Policy

Obj = dict[str, Any]

# The documented example (../shared/examples), written here so tests need no outside file.
TARGET_VM: Obj = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
    "metadata": {"name": "example-decentralized-lm-vm", "namespace": "vms"},
    "spec": {"runStrategy": "WaitAsReceiver", "template": {"spec": {
        "architecture": "amd64",
        "domain": {"devices": {"disks": [{"disk": {"bus": "virtio"}, "name": "disk0"}],
                               "interfaces": [{"masquerade": {}, "name": "default"}]},
                   "machine": {"type": "q35"},
                   "resources": {"requests": {"memory": "128Mi"}}},
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [{"dataVolume": {"name": "example-decentralized-lm-vm-dv"},
                     "name": "disk0"}]}}},
}
TARGET_VMIM: Obj = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
    "metadata": {"name": "example-target-migration", "namespace": "vms"},
    "spec": {"receive": {"migrationID": "example-decentralized-lm-vm-7f3a9c"},
             "vmiName": "example-decentralized-lm-vm"},
}
SOURCE_VMIM: Obj = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
    "metadata": {"name": "example-source-migration", "namespace": "vms"},
    "spec": {"sendTo": {"connectURL": "10.244.1.17:9185",
                        "migrationID": "example-decentralized-lm-vm-7f3a9c"},
             "vmiName": "example-decentralized-lm-vm"},
}


def review(obj: Obj, operation: str = "CREATE", uid: str | None = None,
           old: Obj | None = None) -> Obj:
    """An AdmissionReview request as the API server sends it for `obj`."""
    group, _, version = obj["apiVersion"].rpartition("/")
    request: Obj = {
        "uid": uid or str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": obj["kind"]},
        "resource": {"group": group, "version": version,
                     "resource": obj["kind"].lower() + "s"},
        "operation": operation,
        "namespace": obj["metadata"].get("namespace", ""),
        "name": obj["metadata"]["name"],
        "object": obj, "oldObject": old,
        "userInfo": {"username": "system:admin"}, "dryRun": False,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def offline_context(policy: Policy | None = None) -> Context:
    return Context(policy=policy or Policy(), cluster=None, new_id=lambda: "0123456789ab")


# --- Processes ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if process.returncode is not None:
            raise AssertionError(f"serve exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError("serve did not start listening")
