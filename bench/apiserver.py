"""End to end through a real kube-apiserver: what dlm-guard's webhooks add to creating a VM.

One harness cluster (etcd + kube-apiserver, KubeVirt CRDs), `dlm-guard serve` watching it (not
offline: the production setup, with its cluster cache), and the same WaitAsReceiver VMs created
without, then with, the webhooks registered, alternating in blocks so drift on a busy machine
hits both alike. Half the VMs lack the restore annotation, so the mutating webhook patches them;
all are valid, so the validating webhook allows them.

Creates go through the Python kubernetes client one at a time (a kubectl process per object
costs ~100-200 ms of its own start-up and would drown the difference); a small kubectl sample
is timed too, to show what a user at a terminal sees.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from bench import webhooks
from bench.kubeload import ensure_namespace
from bench.mix import vm as mix_vm
from bench.servers import Server, ServerSpec, tls_pair
from bench.stats import latency_summary
from controlplane import Cluster, install_crds, kubectl, start_clusters

NAMESPACE = "bench-vms"
RESTORE = "kubevirt.io/restore-run-strategy"


@dataclass(frozen=True)
class Settings:
    objects: int = 300  # per phase (without / with webhooks)
    warmup: int = 10  # per block, not timed
    kubectl_sample: int = 30  # per phase; 0 to skip
    blocks: int = 3  # phases alternate in blocks (without, with, without, ...) against drift


def vm_body(name: str, annotated: bool) -> dict[str, Any]:
    obj = copy.deepcopy(mix_vm(name, restore="Always" if annotated else None))
    metadata = obj["metadata"]
    for key in ("managedFields", "generation"):
        metadata.pop(key, None)
    metadata["namespace"] = NAMESPACE
    return obj


def _create(custom: k8s.CustomObjectsApi, body: dict[str, Any],
            dry_run: bool = False) -> dict[str, Any]:
    response: Any = custom.create_namespaced_custom_object(
        "kubevirt.io", "v1", NAMESPACE, "virtualmachines", body, _preload_content=False,
        dry_run="All" if dry_run else None)
    result: dict[str, Any] = json.loads(response.data)
    return result


def create_series(custom: k8s.CustomObjectsApi, prefix: str, count: int,
                  ) -> tuple[list[float], int]:
    """Create `count` VMs one after the other; (latencies, how many came back patched)."""
    latencies, patched = [], 0
    for index in range(count):
        body = vm_body(f"{prefix}-{index}", annotated=index % 2 == 0)
        started = time.perf_counter()
        created = _create(custom, body)
        latencies.append(time.perf_counter() - started)
        if index % 2 and RESTORE in (created["metadata"].get("annotations") or {}):
            patched += 1
    return latencies, patched


def kubectl_series(cluster: Cluster, prefix: str, count: int) -> list[float]:
    latencies = []
    for index in range(count):
        text = json.dumps(vm_body(f"{prefix}-{index}", annotated=index % 2 == 0))
        started = time.perf_counter()
        kubectl(cluster, "create", "-f", "-", input=text)
        latencies.append(time.perf_counter() - started)
    return latencies


def webhook_active(custom: k8s.CustomObjectsApi) -> Callable[[], bool]:
    """A dry-run create of an unannotated VM comes back annotated once the webhook is live."""
    def check() -> bool:
        try:
            probe = _create(custom, vm_body("probe", annotated=False), dry_run=True)
        except ApiException:
            return False  # e.g. the webhook is registered but not reachable yet
        return RESTORE in (probe["metadata"].get("annotations") or {})
    return check


def block(cluster: Cluster, custom: k8s.CustomObjectsApi, name: str,
          settings: Settings) -> dict[str, Any]:
    create_series(custom, f"{name}-warm", settings.warmup)
    latencies, patched = create_series(custom, name, settings.objects // settings.blocks)
    result: dict[str, Any] = {"python_client": latencies, "patched": patched}
    if settings.kubectl_sample:
        result["kubectl"] = kubectl_series(cluster, f"{name}-kubectl",
                                           max(1, settings.kubectl_sample // settings.blocks))
    return result


def merged(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {"patched": sum(b["patched"] for b in blocks)}
    for key in ("python_client", "kubectl"):
        if key in blocks[0]:
            result[key] = latency_summary([x for b in blocks for x in b[key]])
    return result


def served_durations(server: Server) -> dict[str, float]:
    """Mean time per admission call by endpoint, from dlm-guard's own /metrics."""
    with urllib.request.urlopen(server.base_url + "/metrics", context=server.ssl_context(),
                                timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, table in (("_sum", sums), ("_count", counts)):
            head = f"dlm_guard_admission_duration_seconds{suffix}{{"
            if line.startswith(head):
                endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
                table[endpoint] = float(line.rsplit(" ", 1)[1])
    return {endpoint: round(1000 * sums[endpoint] / counts[endpoint], 3)
            for endpoint in sorted(sums) if counts.get(endpoint)}


def added(without: dict[str, Any], with_: dict[str, Any]) -> dict[str, float]:
    return {key: round(with_[key] - without[key], 3)
            for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}


@contextmanager
def one_cluster(name: str) -> Iterator[tuple[Cluster, k8s.ApiClient, Path]]:
    """One harness cluster with the KubeVirt CRDs, an API client for it and a work folder,
    all gone on exit (the set-up every apiserver benchmark shares)."""
    with tempfile.TemporaryDirectory(prefix=f"dlm-guard-bench-{name}-") as tmp, \
            start_clusters(1, Path(tmp) / "clusters", names=[name]) as (cluster,):
        install_crds(cluster)
        api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig),
                                                persist_config=False)
        try:
            yield cluster, api, Path(tmp)
        finally:
            api.close()


def run(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    with one_cluster("bench") as (cluster, api, workdir):
        return _measure(cluster, api, workdir, settings)


def _measure(cluster: Cluster, api: k8s.ApiClient, workdir: Path,
             settings: Settings) -> dict[str, Any]:
    ensure_namespace(api, NAMESPACE)
    custom = k8s.CustomObjectsApi(api)
    pair = tls_pair(workdir / "tls")
    spec = ServerSpec("dlm-guard-online", (
        sys.executable, "-m", "dlm_guard", "serve", "--host", "127.0.0.1", "--port", "{port}",
        "--tls-cert", str(pair.tls_cert), "--tls-key", str(pair.tls_key),
        "--kubeconfig", str(cluster.kubeconfig)))
    server = Server(spec, workdir, pair.ca_cert, core=None, ready_path="/readyz")
    without_blocks, with_blocks, activation = [], [], []
    active = webhook_active(custom)
    try:
        for index in range(settings.blocks):
            without_blocks.append(block(cluster, custom, f"without{index}", settings))
            webhooks.register(api, server.base_url, pair.ca_cert.read_bytes())
            activation.append(webhooks.wait_until(active, what="webhook active"))
            with_blocks.append(block(cluster, custom, f"with{index}", settings))
            webhooks.unregister(api)
            webhooks.wait_until(lambda: not active(), what="webhook inactive")
        inside = served_durations(server)
    finally:
        server.stop()
    without, with_ = merged(without_blocks), merged(with_blocks)
    result: dict[str, Any] = {
        "settings": settings.__dict__ | {"client": "kubernetes Python client, sequential"},
        "apiserver": cluster.version().get("gitVersion"),
        "webhook_active_after_seconds": [round(a, 2) for a in activation],
        # What dlm-guard itself spent per call (its own histogram): the rest of the added
        # latency is the API server calling out (two calls per create) and the network.
        "dlm_guard_time_per_call_ms": inside,
        "without_webhooks": without, "with_webhooks": with_,
        "added_python_client_ms": added(without["python_client"], with_["python_client"]),
    }
    if settings.kubectl_sample:
        result["added_kubectl_ms"] = added(without["kubectl"], with_["kubectl"])
    expected = settings.blocks * (settings.objects // settings.blocks // 2)
    if with_["patched"] != expected or without["patched"] != 0:
        raise AssertionError(f"mutating webhook patched {with_['patched']} of {expected} VMs "
                             f"(without webhooks: {without['patched']})")
    return result
