"""The cluster cache and `dlm-guard serve` against a real kube-apiserver + etcd (the harness in
controlplane/) with the KubeVirt CRDs installed: nothing runs KubeVirt, objects are created by
hand."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client as k8s
from server_support import TARGET_VMIM, free_port, review, wait_for_port

from controlplane import Cluster, install_crds_on, start_clusters
from controlplane.pytest_plugin import binaries  # noqa: F401  (fixture)
from dlm_guard.domain import KIND_KUBEVIRT, KIND_VMIM, Role
from dlm_guard.kube.api import ApiSource
from dlm_guard.kube.cache import ClusterCache
from dlm_guard.kube.config import load_api_client
from tests.waiting import eventually, eventually_async
from webhook.cache import WEBHOOK_WATCHED, WebhookCluster

pytestmark = pytest.mark.e2e

NS = "vms"
GROUP, VERSION = "kubevirt.io", "v1"


@pytest.fixture(scope="module")
def cluster(binaries: Any,  # noqa: F811  (the fixture imported above)
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_clusters(1, tmp_path_factory.mktemp("webhook-e2e"), names=["webhook"],
                        binaries=binaries) as started:
        install_crds_on(started)
        api_client = load_api_client(str(started[0].kubeconfig))
        for namespace in (NS, "kubevirt"):
            k8s.CoreV1Api(api_client).create_namespace(
                k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
        api_client.close()
        yield started[0]


@pytest.fixture
def custom(cluster: Cluster) -> Iterator[k8s.CustomObjectsApi]:
    api_client = load_api_client(str(cluster.kubeconfig))
    yield k8s.CustomObjectsApi(api_client)
    api_client.close()


def vmim(name: str, migration_id: str) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"vmiName": "vm-1", "receive": {"migrationID": migration_id}}}


def test_cache_lists_in_pages_then_follows_watches_and_stops_promptly(
        cluster: Cluster, custom: k8s.CustomObjectsApi) -> None:
    for index in range(5):  # more than one page of 2
        custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualmachineinstancemigrations",
            vmim(f"listed-{index}", f"mid-listed-{index}"))
    api = load_api_client(str(cluster.kubeconfig))
    cache = WebhookCluster(ClusterCache(ApiSource(api, page_size=2), WEBHOOK_WATCHED))
    cache.start()
    try:
        eventually(lambda: cache.not_ready_reason() is None)
        listed = cache.view()
        assert all(listed.get(KIND_VMIM, NS, f"listed-{i}") for i in range(5))
        custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualmachineinstancemigrations", vmim("watched", "mid-w"))
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "kubevirt", "kubevirts",
            {"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
             "metadata": {"name": "kubevirt", "namespace": "kubevirt"}, "spec": {}})
        eventually(lambda: cache.view().vmims_with_migration_id(Role.TARGET, "mid-w"))
        eventually(lambda: cache.view().get(KIND_KUBEVIRT, "kubevirt", "kubevirt"))
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualmachineinstancemigrations", "listed-0")
        eventually(lambda: cache.view().get(KIND_VMIM, NS, "listed-0") is None)
        # A view taken earlier does not change under its reader.
        assert listed.get(KIND_VMIM, NS, "listed-0") is not None
        assert listed.get(KIND_VMIM, NS, "watched") is None
        assert all(h.healthy for h in cache.cache.health().values())
    finally:
        started = time.monotonic()
        # The watches are blocked in reads on quiet streams: stop must unblock them.
        assert cache.stop(timeout=5)
        assert time.monotonic() - started < 3


async def _until_ready(session: aiohttp.ClientSession, base: str) -> None:
    async def ready() -> bool:
        async with session.get(f"{base}/readyz") as resp:
            return resp.status == 200

    await eventually_async(ready, message="never ready")


async def test_serve_reads_cluster_state_and_stops_on_sigterm(
        cluster: Cluster, custom: k8s.CustomObjectsApi, tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dlm_guard", "serve", "--dev", "--dev-dir", str(tmp_path / "dev"),
        "--kubeconfig", str(cluster.kubeconfig), "--host", "127.0.0.1", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for_port(port, process)
        client_ssl = ssl.create_default_context(cafile=str(tmp_path / "dev" / "ca.crt"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as s:
            base = f"https://127.0.0.1:{port}"
            await _until_ready(s, base)
            duplicate = vmim("second", "mid-dup")
            assert "duplicate-migration-id" not in await _denial(s, base, duplicate)
            await asyncio.to_thread(
                custom.create_namespaced_custom_object, GROUP, VERSION, NS,
                "virtualmachineinstancemigrations", vmim("first", "mid-dup"))
            for _ in range(200):  # the watch event arrives shortly after the create
                message = await _denial(s, base, duplicate)
                if "[duplicate-migration-id]" in message:
                    break
                await asyncio.sleep(0.05)
            assert "[duplicate-migration-id]" in message
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _denial(session: aiohttp.ClientSession, base: str, obj: dict[str, Any]) -> str:
    sent = review(TARGET_VMIM | obj)
    async with session.post(f"{base}/validate", json=sent) as resp:
        answer = await resp.json()
    return str(answer["response"].get("status", {}).get("message", ""))
