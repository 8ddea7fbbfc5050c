"""Object builders for the webhook unit tests: clean objects by default, one keyword per twist.

The EXAMPLE_* YAML documents mirror the documented decentralized-migration example (a source
VM and VMIM on cluster 1, a WaitAsReceiver VM and a receive VMIM on cluster 2, a blank
DataVolume and the CA inbox ConfigMap); they are written here so tests do not depend on any
file outside the repository.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from dlm_guard.domain import namespace_of
from dlm_guard.store import ObjectStore
from webhook.engine import Context
from webhook.policy import Policy, parse_policy

NAMESPACE = "vms"
VM_NAME = "db-1"
MIGRATION_ID = "db-1-7f3a9c"
CONNECT_URL = "10.244.1.17:9185"
# Forklift's migrationID: `<vm uid>-<migration uid>` (kubev2v/forklift
# pkg/controller/plan/migrator/ocp/live.go, kubevirtMigrationID), two UIDs, 73 characters.
FORKLIFT_VM_UID = "3f9a1c2e-6b7d-4e8f-9a0b-1c2d3e4f5a6b"
FORKLIFT_MIGRATION_UID = "d41d8cd9-8f00-4b20-9e98-0998ecf8427e"
FORKLIFT_MIGRATION_ID = f"{FORKLIFT_VM_UID}-{FORKLIFT_MIGRATION_UID}"
Obj = dict[str, Any]


# --- KubeVirt objects -----------------------------------------------------------------
def domain(*, disks: Iterable[Obj] | None = None, **devices: Any) -> Obj:
    default_disks = [{"name": "disk0", "disk": {"bus": "virtio"}}]
    disk_list = list(disks) if disks is not None else default_disks
    return {"devices": {"disks": disk_list, **devices},
            "resources": {"requests": {"memory": "128Mi"}}}


def vmi_spec(dom: Obj | None = None, volumes: Iterable[Obj] = ()) -> Obj:
    return {"domain": dom if dom is not None else domain(),
            "volumes": [{"name": "disk0", "dataVolume": {"name": f"{VM_NAME}-dv"}}, *volumes]}


# A virtiofs filesystem `fs` and the volume it shares, one per volume source.
FS = {"name": "fs", "virtiofs": {}}
PVC_FS_VOLUME = {"name": "fs", "persistentVolumeClaim": {"claimName": "shared-data"}}
DV_FS_VOLUME = {"name": "fs", "dataVolume": {"name": "shared-dv"}}
CONFIG_MAP_FS_VOLUME = {"name": "fs", "configMap": {"name": "app-config"}}


def vm(*, name: str = VM_NAME, namespace: str | None = NAMESPACE,
       run_strategy: str = "WaitAsReceiver", restore: str | None = "Always",
       dom: Obj | None = None, volumes: Iterable[Obj] = (), running: bool | None = None) -> Obj:
    metadata: Obj = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if restore is not None:
        metadata["annotations"] = {"kubevirt.io/restore-run-strategy": restore}
    spec: Obj = {"template": {"spec": vmi_spec(dom, volumes)}}
    if running is None:
        spec["runStrategy"] = run_strategy
    else:  # the legacy field instead of a run strategy
        spec["running"] = running
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": metadata,
            "spec": spec}


def vmim(*, name: str = "migration", namespace: str = NAMESPACE, vmi: str | None = VM_NAME,
         send_to: Obj | None = None, receive: Obj | None = None,
         labels: Obj | None = None, phase: str | None = None) -> Obj:
    spec: Obj = {}
    if vmi is not None:
        spec["vmiName"] = vmi
    if send_to is not None:
        spec["sendTo"] = send_to
    if receive is not None:
        spec["receive"] = receive
    metadata: Obj = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = labels
    obj = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
           "metadata": metadata, "spec": spec}
    if phase is not None:
        obj["status"] = {"phase": phase}
    return obj


def source_vmim(*, migration_id: Any = MIGRATION_ID, connect_url: Any = CONNECT_URL,
                **kwargs: Any) -> Obj:
    return vmim(send_to={"migrationID": migration_id, "connectURL": connect_url}, **kwargs)


def target_vmim(*, migration_id: Any = MIGRATION_ID, **kwargs: Any) -> Obj:
    return vmim(receive={"migrationID": migration_id}, **kwargs)


def vmi(*, name: str = VM_NAME, namespace: str = NAMESPACE, phase: str = "Running",
        receiver: bool = False, dom: Obj | None = None, volumes: Iterable[Obj] = (),
        owned: bool = True) -> Obj:
    metadata: Obj = {"name": name, "namespace": namespace}
    if owned:  # a VM's VMI carries the VM (same name) as its controller ownerReference
        metadata["ownerReferences"] = [{
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": name,
            "uid": f"uid-{name}", "controller": True, "blockOwnerDeletion": True}]
    if receiver:
        metadata["annotations"] = {"kubevirt.io/create-migration-target": "true"}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": metadata, "spec": vmi_spec(dom, volumes), "status": {"phase": phase}}


def kubevirt(*, gates: Iterable[str] = ("DecentralizedLiveMigration",),
             disabled: Iterable[str] = (), version: str | None = "v1.7.0") -> Obj:
    obj: Obj = {
        "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
        "spec": {"configuration": {"developerConfiguration": {
            "featureGates": list(gates), "disabledFeatureGates": list(disabled)}}},
        "status": {},
    }
    if version is not None:
        obj["status"]["observedKubeVirtVersion"] = version
    return obj


def cluster(*objects: Obj) -> ObjectStore:
    return ObjectStore(objects)


def healthy_target_cluster(*extra: Obj) -> ObjectStore:
    """A target cluster where a receive VMIM for VM_NAME passes every cluster rule."""
    return cluster(kubevirt(), vmi(receiver=True, phase="WaitingForSync"), *extra)


def healthy_source_cluster(*extra: Obj) -> ObjectStore:
    return cluster(kubevirt(), vmi(), *extra)


# A cluster with something for every cluster rule to find (for the property tests).
BUSY_CLUSTER_OBJECTS = (
    kubevirt(gates=(), version="v1.9.0"), vmi(),
    vmi(name="rx", receiver=True, phase="WaitingForSync"),
    target_vmim(name="old", namespace="elsewhere", phase="Succeeded"),
    source_vmim(name="old-source", namespace="elsewhere", phase="Failed"),
)


# --- Admission requests and contexts --------------------------------------------------
def request(obj: Obj | None, *, operation: str = "CREATE", old: Obj | None = None,
            namespace: str | None = None, uid: str = "0f1e2d3c") -> Obj:
    source = obj if obj is not None else old or {}
    group, _, version = str(source.get("apiVersion", "")).rpartition("/")
    ns = namespace if namespace is not None else namespace_of(source)
    return {"uid": uid, "kind": {"group": group, "version": version, "kind": source.get("kind")},
            "resource": {"group": group, "version": version, "resource": "whatever"},
            "namespace": ns, "operation": operation, "object": obj, "oldObject": old,
            "userInfo": {"username": "tester"}}


def counting_ids() -> Callable[[], str]:
    """Deterministic stand-in for random suffixes: 000000000001, 000000000002, ..."""
    counter = itertools.count(1)
    return lambda: f"{next(counter):012x}"


def context(policy: Policy | dict[str, Any] | None = None,
            store: ObjectStore | None = None) -> Context:
    if not isinstance(policy, Policy):
        policy = parse_policy(policy or {})
    return Context(policy=policy, cluster=store, new_id=counting_ids())


# --- The documented example, as YAML files would hold it ------------------------------
EXAMPLE_SOURCE_VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: example-decentralized-lm-vm
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          disks:
          - name: disk0
            disk: {bus: virtio}
          interfaces:
          - {name: default, masquerade: {}}
        resources:
          requests: {memory: 128Mi}
      networks:
      - {name: default, pod: {}}
      volumes:
      - name: disk0
        dataVolume: {name: example-decentralized-lm-vm-dv}
"""
EXAMPLE_TARGET_VM = (
    EXAMPLE_SOURCE_VM
    .replace("runStrategy: Always", "runStrategy: WaitAsReceiver")
    .replace("  name: example-decentralized-lm-vm\n",
             "  name: example-decentralized-lm-vm\n"
             "  annotations:\n    kubevirt.io/restore-run-strategy: Always\n", 1)
)
EXAMPLE_SOURCE_VMIM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata:
  name: example-source-migration
spec:
  vmiName: example-decentralized-lm-vm
  sendTo:
    migrationID: example-decentralized-lm-vm-7f3a9c
    connectURL: "10.244.1.17:9185"
"""
EXAMPLE_TARGET_VMIM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata:
  name: example-target-migration
spec:
  vmiName: example-decentralized-lm-vm
  receive:
    migrationID: example-decentralized-lm-vm-7f3a9c
"""
EXAMPLE_TARGET_DV = """\
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: example-decentralized-lm-vm-dv
  annotations: {cdi.kubevirt.io/storage.usePopulator: "true"}
spec:
  source: {blank: {}}
  storage:
    storageClassName: other-storage-class
    resources: {requests: {storage: 10Gi}}
"""
EXAMPLE_EXTERNAL_CA = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: kubevirt-external-ca, namespace: kubevirt}
data: {ca-bundle: ""}
"""
EXAMPLES = {
    "source-vm.yaml": EXAMPLE_SOURCE_VM,
    "source-vmim.yaml": EXAMPLE_SOURCE_VMIM,
    "target-vm.yaml": EXAMPLE_TARGET_VM,
    "target-vmim.yaml": EXAMPLE_TARGET_VMIM,
    "target-dv.yaml": EXAMPLE_TARGET_DV,
    "kubevirt-external-ca.yaml": EXAMPLE_EXTERNAL_CA,
}
