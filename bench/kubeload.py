"""Fill harness clusters with KubeVirt objects fast, and count the API requests a server got.

- `dataset`: a deterministic multi-cluster migration history (pure): VMs living in both
  clusters and decentralized VMIM pairs (source in one cluster, target in the other), most of
  them Succeeded, the latest few still waiting; nothing failed, stuck or orphaned, so a
  reconcile pass over it has nothing to delete.
- `Loader`: parallel creates (and status writes) through a thread pool, never kubectl per object.
- `request_counts`: apiserver_request_total from the API server's /metrics, by verb/resource.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from controlplane import Cluster

Obj = dict[str, Any]
GROUP, VERSION = "kubevirt.io", "v1"
VMS, VMIMS = "virtualmachines", "virtualmachineinstancemigrations"


# --- the dataset (pure) -------------------------------------------------------------------
@dataclass(frozen=True)
class Planned:
    """One object to create in one cluster, and the status to write afterwards (or None)."""

    cluster: str
    plural: str
    body: Obj
    status: Obj | None = None


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def vm_object(name: str, namespace: str, run_strategy: str) -> Obj:
    metadata: Obj = {"name": name, "namespace": namespace, "labels": {"app": "bench"}}
    if run_strategy == "WaitAsReceiver":
        metadata["annotations"] = {"kubevirt.io/restore-run-strategy": "Always"}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine", "metadata": metadata,
            "spec": {"runStrategy": run_strategy, "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                           "resources": {"requests": {"memory": "1Gi"}}},
                "volumes": [{"name": "root", "dataVolume": {"name": f"{name}-root"}}]}}}}


def vmim_object(name: str, namespace: str, vmi: str, mid: str, role: str) -> Obj:
    side: Obj = ({"sendTo": {"migrationID": mid, "connectURL": "10.0.0.1:9185"}}
                 if role == "source" else {"receive": {"migrationID": mid}})
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"dlm-guard.io/role": role,
                                    "dlm-guard.io/migration-id": mid}},
            "spec": {"vmiName": vmi, **side}}


def vmim_status(phase: str, at: datetime) -> Obj:
    # Only the phases this dataset uses: Succeeded (the history) and WaitingForSync (in flight).
    steps = ["Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady",
             "Running", "Succeeded"] if phase == "Succeeded" else ["Pending", "WaitingForSync"]
    return {"phase": phase, "phaseTransitionTimestamps": [
        {"phase": step, "phaseTransitionTimestamp": stamp(at)} for step in steps]}


def dataset(clusters: tuple[str, str], vms: int, vmims: int, namespaces: int,
            now: datetime | None = None) -> list[Planned]:
    """`vms` VMs (half per cluster: each logical VM exists on both sides) and `vmims` VMIMs
    (`vmims / 2` migrations, alternating direction, the last 2% still WaitingForSync)."""
    now = now or datetime.now(UTC)
    logical = max(1, vms // 2)
    migrations = vmims // 2
    planned: list[Planned] = []
    for index in range(logical):
        namespace = f"ns-{index % namespaces:02d}"
        name = f"vm-{index}"
        planned.append(Planned(clusters[0], VMS, vm_object(name, namespace, "Always")))
        planned.append(Planned(clusters[1], VMS, vm_object(name, namespace, "Halted")))
    in_flight_from = migrations - max(1, migrations // 50)
    for number in range(migrations):
        index = number % logical
        namespace, vmi = f"ns-{index % namespaces:02d}", f"vm-{index}"
        source, target = clusters if (number // logical) % 2 == 0 else clusters[::-1]
        mid = f"{vmi}-m{number}"
        waiting = number >= in_flight_from
        phase = "WaitingForSync" if waiting else "Succeeded"
        at = now - (timedelta(minutes=1) if waiting else timedelta(hours=migrations - number))
        planned.append(Planned(source, VMIMS, vmim_object(f"m{number}-out", namespace, vmi, mid,
                                                          "source"), vmim_status(phase, at)))
        planned.append(Planned(target, VMIMS, vmim_object(f"m{number}-in", namespace, vmi, mid,
                                                          "target"), vmim_status(phase, at)))
    return planned


# --- API clients and parallel writes ------------------------------------------------------
def api_client(cluster: Cluster, pool: int = 32) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(cluster.kubeconfig),
                                client_configuration=configuration, persist_config=False)
    configuration.connection_pool_maxsize = pool
    return k8s.ApiClient(configuration)


def ensure_namespace(api: k8s.ApiClient, name: str) -> None:
    try:
        k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    except ApiException as err:
        if err.status != 409:
            raise


def put_configmap(api: k8s.ApiClient, namespace: str, name: str, data: Mapping[str, str]) -> None:
    """Create or merge-patch a ConfigMap's data."""
    core = k8s.CoreV1Api(api)
    body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=name, namespace=namespace),
                           data=dict(data))
    try:
        core.create_namespaced_config_map(namespace, body)
    except ApiException as err:
        if err.status != 409:
            raise
        core.patch_namespaced_config_map(name, namespace, {"data": dict(data)},
                                         _content_type="application/merge-patch+json")


def configmap_data(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, str] | None:
    try:
        response: Any = k8s.CoreV1Api(api).read_namespaced_config_map(
            name, namespace, _preload_content=False)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    data: dict[str, str] = json.loads(response.data).get("data") or {}
    return data


def create_one(api: k8s.ApiClient, item: Planned) -> None:
    custom = k8s.CustomObjectsApi(api)
    namespace, name = item.body["metadata"]["namespace"], item.body["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, item.plural, item.body,
                                           _preload_content=False)
    if item.status is not None:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, item.plural, name, {"status": item.status},
            _content_type="application/merge-patch+json", _preload_content=False)


def create_all(apis: Mapping[str, k8s.ApiClient], items: Iterable[Planned],
               threads: int = 16) -> int:
    """Create every planned object, `threads` API calls at a time; how many were created."""
    todo = list(items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-create") as pool:
        for future in [pool.submit(create_one, apis[i.cluster], i) for i in todo]:
            future.result()
    return len(todo)


# --- what the API server counted ----------------------------------------------------------
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
WATCHED_RESOURCES = frozenset({VMS, VMIMS, "virtualmachineinstances", "configmaps", "events",
                               "secrets"})


def request_counts(cluster: Cluster) -> Counter[str]:
    """apiserver_request_total summed by "VERB resource[/subresource]", for the resources a
    reconciler touches (the API server's own housekeeping is left out)."""
    counts: Counter[str] = Counter()
    for line in cluster.get("/metrics", timeout=10).decode().splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match.group("labels")))
        resource = labels.get("resource", "")
        if resource not in WATCHED_RESOURCES:
            continue
        sub = labels.get("subresource", "")
        key = f"{labels.get('verb', '?')} {resource}{'/' + sub if sub else ''}"
        counts[key] += int(float(match.group("value")))
    return counts


def difference(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in sorted(after)
            if after[key] - before[key] > 0}
