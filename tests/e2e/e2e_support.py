"""Manifests and helpers for the webhook end-to-end tests.

The manifests are this suite's own copy of the documented decentralized-migration example
(KubeVirt user guide; the target side, cluster 2): tests must not depend on files outside
the repository.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from controlplane import Cluster, kubectl
from controlplane.webhooks import WebhookServer

E2E_LABEL = "dlm-guard-e2e"  # the shared registration only sees namespaces labelled with it
VM_NAME = "example-decentralized-lm-vm"
MIGRATION_ID = "example-decentralized-lm-vm-7f3a9c"
KUBEVIRT_NAMESPACE = "kubevirt"
GATE = "DecentralizedLiveMigration"
DENIED = 'admission webhook "validate.dlm-guard.io" denied the request'
RESTORE = "kubevirt.io/restore-run-strategy"
RECEIVER = "kubevirt.io/create-migration-target"

TARGET_VM = yaml.safe_load("""
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  annotations:
    kubevirt.io/restore-run-strategy: Always
  name: example-decentralized-lm-vm
spec:
  runStrategy: WaitAsReceiver
  template:
    spec:
      architecture: amd64
      domain:
        devices:
          autoattachGraphicsDevice: false
          disks:
          - disk:
              bus: virtio
            name: disk0
          interfaces:
          - masquerade: {}
            name: default
        machine:
          type: q35
        resources:
          requests:
            memory: 128Mi
      networks:
      - name: default
        pod: {}
      volumes:
      - dataVolume:
          name: example-decentralized-lm-vm-dv
        name: disk0
""")

TARGET_VMIM = yaml.safe_load("""
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata:
  name: example-target-migration
spec:
  receive:
    migrationID: example-decentralized-lm-vm-7f3a9c
  vmiName: example-decentralized-lm-vm
""")

SOURCE_VMIM = yaml.safe_load("""
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata:
  name: example-source-migration
spec:
  sendTo:
    connectURL: "10.244.1.17:9185"
    migrationID: example-decentralized-lm-vm-7f3a9c
  vmiName: example-decentralized-lm-vm
""")


@dataclass(frozen=True)
class Guarded:
    """A cluster whose API server calls its own dlm-guard webhook server."""

    cluster: Cluster
    server: WebhookServer


# --- manifests ------------------------------------------------------------------------
def target_vm(**changes: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """A deep copy of the example target VM; each change edits its template spec."""
    vm = copy.deepcopy(TARGET_VM)
    for change in changes.values():
        change(vm["spec"]["template"]["spec"])
    return vm


def _add_volume(spec: dict[str, Any], name: str) -> None:
    spec["volumes"].append({"name": name, "persistentVolumeClaim": {"claimName": f"{name}-pvc"}})


def add_shareable_disk(spec: dict[str, Any]) -> None:
    spec["domain"]["devices"]["disks"].append(
        {"name": "shared", "shareable": True, "disk": {"bus": "virtio"}})
    _add_volume(spec, "shared")


def add_lun_disk(spec: dict[str, Any]) -> None:
    spec["domain"]["devices"]["disks"].append({"name": "lun0", "lun": {}})
    _add_volume(spec, "lun0")


def add_filesystem(spec: dict[str, Any]) -> None:
    spec["domain"]["devices"]["filesystems"] = [{"name": "fs0", "virtiofs": {}}]
    _add_volume(spec, "fs0")


def add_config_map_filesystem(spec: dict[str, Any]) -> None:
    """A virtiofs share of a ConfigMap: migrates since KubeVirt v1.5 (docs/kubevirt-facts.md)."""
    spec["domain"]["devices"]["filesystems"] = [{"name": "config", "virtiofs": {}}]
    spec["volumes"].append({"name": "config", "configMap": {"name": "app-config"}})


def add_persistent_efi(spec: dict[str, Any]) -> None:
    spec["domain"]["firmware"] = {"bootloader": {"efi": {"persistent": True}}}


def without_restore_annotation(vm: dict[str, Any]) -> dict[str, Any]:
    vm = copy.deepcopy(vm)
    del vm["metadata"]["annotations"][RESTORE]
    return vm


def vmim(template: dict[str, Any], name: str, migration_id: str,
         vmi: str = VM_NAME) -> dict[str, Any]:
    obj = copy.deepcopy(template)
    obj["metadata"]["name"] = name
    obj["spec"]["vmiName"] = vmi
    role = "receive" if "receive" in obj["spec"] else "sendTo"
    obj["spec"][role]["migrationID"] = migration_id
    return obj


def vmi(name: str = VM_NAME, *, receiver: bool = True, phase: str | None = None
        ) -> dict[str, Any]:
    """The VMI KubeVirt would start for a VM (tests play KubeVirt: nothing else makes it)."""
    obj: dict[str, Any] = {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "annotations": {RECEIVER: "true"} if receiver else {}},
        "spec": {"domain": {"devices": {}}},
    }
    if phase:
        obj["status"] = {"phase": phase}  # upstream VMIs have no status subresource
    return obj


def kubevirt_cr(gate_on: bool) -> dict[str, Any]:
    gates = [GATE] if gate_on else []
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": KUBEVIRT_NAMESPACE},
        "spec": {"configuration": {"developerConfiguration": {"featureGates": gates}}},
    }


# --- kubectl --------------------------------------------------------------------------
def apply(cluster: Cluster, namespace: str, obj: dict[str, Any], *, dry_run: bool = False
          ) -> subprocess.CompletedProcess[str]:
    """`kubectl apply -n NS -f -` (client-side, as a user would); never raises.

    dry_run: `--dry-run=server`, which runs admission (webhooks included) and stores nothing.
    """
    flags = ["--dry-run=server"] if dry_run else []
    return kubectl(cluster, "apply", "-n", namespace, *flags, "-f", "-",
                   input=json.dumps(obj), check=False)


def get(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    result = kubectl(cluster, "get", kind, name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def new_namespace(cluster: Cluster, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": name, "labels": labels or {E2E_LABEL: "on"}}}
    kubectl(cluster, "create", "-f", "-", input=json.dumps(namespace))
    return name


def set_gate(cluster: Cluster, on: bool) -> None:
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", "-",
            input=json.dumps(kubevirt_cr(on)))


def set_kubevirt_version(cluster: Cluster, version: str | None) -> None:
    """What virt-operator writes to the KubeVirt CR's status (the status subresource)."""
    status = {"status": {"observedKubeVirtVersion": version}}
    kubectl(cluster, "patch", "kubevirt", "kubevirt", "-n", KUBEVIRT_NAMESPACE,
            "--subresource=status", "--type=merge", "-p", json.dumps(status))


def create_together(cluster: Cluster, namespace: str, *objects: dict[str, Any]
                    ) -> subprocess.CompletedProcess[str]:
    """One `kubectl create` for several objects: created one after the other within
    milliseconds, faster than a watch delivers the first to the webhook's cache."""
    items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    return kubectl(cluster, "create", "-n", namespace, "-f", "-", input=json.dumps(items),
                   check=False)


# --- waiting for the webhook's cache --------------------------------------------------
def eventually(attempt: Callable[[], subprocess.CompletedProcess[str]],
               done: Callable[[subprocess.CompletedProcess[str]], bool],
               timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Repeat a kubectl call until `done` holds; the last result either way.

    The webhook reads cluster state from watches, so a change made a moment ago may not
    have reached it yet: poll briefly instead of sleeping.
    """
    deadline = time.monotonic() + timeout
    result = attempt()
    while not done(result) and time.monotonic() < deadline:
        time.sleep(0.1)
        result = attempt()
    return result


def apply_once_settled(cluster: Cluster, namespace: str, obj: dict[str, Any],
                       done: Callable[[subprocess.CompletedProcess[str]], bool]
                       ) -> subprocess.CompletedProcess[str]:
    """Dry-run the apply until `done` holds (the webhook has caught up), then apply for real.

    Dry runs store nothing, so an object the webhook should have denied is never created
    just because a watch event was a few milliseconds late.
    """
    eventually(lambda: apply(cluster, namespace, obj, dry_run=True), done)
    return apply(cluster, namespace, obj)


def accepted(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0


def denied_by(slug: str, text: str = "") -> Callable[[subprocess.CompletedProcess[str]], bool]:
    return lambda r: r.returncode != 0 and f"[{slug}]" in r.stderr and text in r.stderr
