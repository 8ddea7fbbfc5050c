"""Source-side fixtures for `dlm-guard migrate` end-to-end tests: a VM as a user has it.

The VM and its objects are what KubeVirt and CDI would have left in the source namespace:
a DataVolume with its bound PVC (capacity larger than the request, as block storage rounds
up), a cloud-init Secret, an SSH key Secret of type kubernetes.io/ssh-auth, a ConfigMap
volume, and the running VMI (the tests play KubeVirt there; the stand-in plays it for the
migration itself).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e_support import E2E_LABEL

from certs.generate import cert_pem, key_pem, load_issued
from controlplane import Cluster, kubeconfig, kubectl, pki
from controlplane.binaries import REPO_ROOT
from controlplane.kubevirt_standin import NAMESPACE_LABEL

VM = "fedora-db"
DATA_VOLUME = "fedora-db-root"
SECRET_USERDATA = "fedora-db-cloudinit"
SECRET_SSH = "fedora-db-ssh"
CONFIG_MAP = "fedora-db-app-config"
SOURCE_CLASS, TARGET_CLASS = "ceph-rbd", "local-nvme"
REQUEST, CAPACITY = "9Gi", "10Gi"
MIGRATE = [sys.executable, "-m", "dlm_guard", "migrate"]
RUN_TIMEOUT = 120.0


def source_vm(name: str = VM, *, shareable: bool = False, running: bool | None = None
              ) -> dict[str, Any]:
    disks: list[dict[str, Any]] = [
        {"name": "root", "disk": {"bus": "virtio"}},
        {"name": "cloudinit", "disk": {"bus": "virtio"}},
        {"name": "app-config", "disk": {"bus": "virtio"}, "serial": "APPCFG"}]
    volumes: list[dict[str, Any]] = [
        {"name": "root", "dataVolume": {"name": DATA_VOLUME}},
        {"name": "cloudinit", "cloudInitNoCloud": {"secretRef": {"name": SECRET_USERDATA}}},
        {"name": "app-config", "configMap": {"name": CONFIG_MAP}}]
    if shareable:
        disks.append({"name": "shared", "disk": {"bus": "virtio"}, "shareable": True})
        volumes.append({"name": "shared", "persistentVolumeClaim": {"claimName": "shared-pvc"}})
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"labels": {"kubevirt.io/domain": name}},
            "spec": {
                "accessCredentials": [{"sshPublicKey": {
                    "source": {"secret": {"secretName": SECRET_SSH}},
                    "propagationMethod": {"noCloud": {}}}}],
                "domain": {"devices": {"disks": disks,
                                       "interfaces": [{"name": "default", "masquerade": {}}]},
                           "resources": {"requests": {"memory": "1Gi"}}},
                "networks": [{"name": "default", "pod": {}}],
                "volumes": volumes}}}
    if running is None:
        spec["runStrategy"] = "Always"
    else:
        spec["running"] = running
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "labels": {"app": "db"}}, "spec": spec}


def _pvc(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": SOURCE_CLASS,
                     "resources": {"requests": {"storage": REQUEST}}}}


def _source_objects() -> list[dict[str, Any]]:
    return [
        _pvc(DATA_VOLUME),
        {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
         "metadata": {"name": DATA_VOLUME},
         "spec": {"source": {"blank": {}},
                  "storage": {"storageClassName": SOURCE_CLASS,
                              "resources": {"requests": {"storage": REQUEST}}}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_USERDATA},
         "stringData": {"userdata": "#cloud-config\npassword: fedora\n"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_SSH},
         "type": "kubernetes.io/ssh-auth",
         "stringData": {"ssh-privatekey": "not-a-real-key"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP},
         "data": {"app.ini": "[db]\nport=5432\n"}},
    ]


def running_vmi(vm: dict[str, Any]) -> dict[str, Any]:
    """The VMI KubeVirt runs for the source VM (VMI status is written with the object)."""
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": vm["metadata"]["name"],
                         "labels": vm["spec"]["template"]["metadata"]["labels"]},
            "spec": copy.deepcopy(vm["spec"]["template"]["spec"]),
            "status": {"phase": "Running"}}


def create(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    kubectl(cluster, "create", "-n", namespace, "-f", "-", input=json.dumps(document))


def set_status(cluster: Cluster, namespace: str, kind: str, name: str,
               status: dict[str, Any]) -> None:
    kubectl(cluster, "patch", kind, name, "-n", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": status}))


def make_source(cluster: Cluster, namespace: str, vm: dict[str, Any] | None = None) -> None:
    """The VM, what it uses, CDI's and KubeVirt's status on them, the running VMI."""
    vm = vm or source_vm()
    create(cluster, namespace, *_source_objects(), vm)
    set_status(cluster, namespace, "pvc", DATA_VOLUME,
               {"phase": "Bound", "capacity": {"storage": CAPACITY}})
    set_status(cluster, namespace, "datavolume", DATA_VOLUME,
               {"phase": "Succeeded", "claimName": DATA_VOLUME})
    create(cluster, namespace, running_vmi(vm))


def migration_namespace(clusters: list[Cluster], prefix: str) -> str:
    """One namespace name, made in each cluster, watched by the webhooks and the stand-in."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    labels = {E2E_LABEL: "on", NAMESPACE_LABEL: "on"}
    for cluster in clusters:
        kubectl(cluster, "create", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": name, "labels": labels}}))
    return name


def get_json(cluster: Cluster, namespace: str, kind: str, name: str | None = None
             ) -> Any:
    args = ["get", kind, *([name] if name else []), "-n", namespace, "-o", "json",
            "--ignore-not-found"]
    out = kubectl(cluster, *args).stdout.strip()
    return json.loads(out) if out else None


def items(cluster: Cluster, namespace: str, kind: str) -> list[dict[str, Any]]:
    found = get_json(cluster, namespace, kind)
    return list(found["items"]) if found else []


# --- running the command -----------------------------------------------------------------------
def argv(command: str, source: Cluster, namespace: str, target: Cluster | None = None,
         *extra: str, vm: str = VM) -> list[str]:
    to = ["--to", str(target.kubeconfig)] if target is not None else []
    return [*MIGRATE, command, vm, "-n", namespace, "--from", str(source.kubeconfig), *to,
            *extra]


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          cwd=REPO_ROOT, check=False, env=_env())


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@dataclass
class Background:
    """`migrate run` as a separate process, to interrupt it."""

    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        return self.process.wait(timeout=timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start(log: Path, *args: str) -> Background:
    with log.open("w") as out:
        process = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT,
                                   text=True, cwd=REPO_ROOT, env=_env())
    return Background(process, log)


def until(what: str, probe: Callable[[], Any], timeout: float = 60.0,
          explain: Callable[[], str] = lambda: "") -> Any:
    """Poll probe() until truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s\n{explain()}")
        time.sleep(0.2)


# --- a migration operator with least privilege ---------------------------------------------
MIGRATOR_RULES = [
    {"apiGroups": ["kubevirt.io"], "verbs": ["get", "list", "create", "delete"],
     "resources": ["virtualmachines", "virtualmachineinstances",
                   "virtualmachineinstancemigrations"]},
    {"apiGroups": ["cdi.kubevirt.io"], "verbs": ["get", "list", "create", "delete"],
     "resources": ["datavolumes"]},
    {"apiGroups": [""], "verbs": ["get", "create"], "resources": ["secrets", "configmaps"]},
    {"apiGroups": [""], "verbs": ["get"], "resources": ["persistentvolumeclaims"]},
]  # no kubevirts, no namespaces


def migrator_kubeconfig(cluster: Cluster, directory: Path, user: str = "migrator") -> Path:
    """A kubeconfig for `user` (a client certificate from the cluster's CA) bound to
    MIGRATOR_RULES cluster-wide."""
    ca = load_issued(cluster.ca_cert, cluster.workdir / "pki" / "ca.key")
    issued = pki.client_cert(ca, user)
    config = kubeconfig.render(cluster.name, cluster.server, cert_pem(ca.cert),
                               cert_pem(issued.cert), key_pem(issued.key))
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": user}, "rules": MIGRATOR_RULES}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": user},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": user},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                             "name": user}]}
    kubectl(cluster, "apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [role, binding]}))
    directory.mkdir(parents=True, exist_ok=True)
    return kubeconfig.write(directory / f"{cluster.name}-{user}.kubeconfig", config)
