"""The cache-miss path of the validating webhook, against a real kube-apiserver.

A VMIM whose VMI is not in the watch cache costs one live GET (webhook/live.py) on top of the
engine's two evaluations; a cached VMI costs nothing extra. Measured in-process, with the
production VmiLookup (the kubernetes client in a worker thread) against one harness cluster:

- hit: the VMI is cached (the synchronous path every other review takes);
- miss, found: not cached, the GET finds it (what a cache lagging behind Forklift costs);
- miss, absent: not cached, the GET answers 404 (the denial then stands);
- miss, unreachable: the API server's port is closed, the GET fails at once (allowed, warning).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from bench.kubeload import ensure_namespace
from bench.stats import latency_summary
from controlplane import install_crds, start_clusters
from dlm_guard.store import ObjectStore
from webhook.decision import Decision
from webhook.engine import Context, random_suffix
from webhook.live import KubeVmiLookup, confirming_validate
from webhook.policy import Policy

NAMESPACE = "bench-live"
VMI_NAME = "bench-receiver"
KUBEVIRT = {"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
            "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
            "spec": {"configuration": {"developerConfiguration": {
                "featureGates": ["DecentralizedLiveMigration"]}}}}


@dataclass(frozen=True)
class Settings:
    calls: int = 300  # per case
    warmup: int = 20


def receiver_vmi() -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": VMI_NAME, "namespace": NAMESPACE,
                         "annotations": {"kubevirt.io/create-migration-target": "true"}},
            "spec": {"domain": {"devices": {}}}, "status": {"phase": "WaitingForSync"}}


def review(vmi: str) -> dict[str, Any]:
    vmim = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "target", "namespace": NAMESPACE},
            "spec": {"vmiName": vmi, "receive": {"migrationID": "bench-id"}}}
    return {"uid": "u", "kind": {"group": "kubevirt.io", "version": "v1",
                                 "kind": "VirtualMachineInstanceMigration"},
            "namespace": NAMESPACE, "operation": "CREATE", "object": vmim}


async def _series(decide: Callable[[], Decision | Any], settings: Settings,
                  expect_allowed: bool) -> dict[str, Any]:
    samples = []
    for index in range(settings.warmup + settings.calls):
        began = time.perf_counter()
        answer = decide()
        decision = answer if isinstance(answer, Decision) else await answer
        elapsed = time.perf_counter() - began
        if decision.allowed is not expect_allowed:
            raise AssertionError(f"unexpected decision {decision}")
        if index >= settings.warmup:
            samples.append(elapsed)
    return latency_summary(samples)


async def _measure(api: k8s.ApiClient, dead: k8s.ApiClient,
                   settings: Settings) -> dict[str, Any]:
    cached = ObjectStore([KUBEVIRT, receiver_vmi()])
    empty = ObjectStore([KUBEVIRT])
    policy = Policy()
    hit_ctx = Context(policy=policy, cluster=cached, new_id=random_suffix)
    miss_ctx = Context(policy=policy, cluster=empty, new_id=random_suffix)
    live = confirming_validate(KubeVmiLookup(api))
    unreachable = confirming_validate(KubeVmiLookup(dead))
    present, absent = review(VMI_NAME), review("no-such-vmi")
    return {
        "hit": await _series(lambda: live(present, hit_ctx), settings, True),
        "miss_found": await _series(lambda: live(present, miss_ctx), settings, True),
        "miss_absent": await _series(lambda: live(absent, miss_ctx), settings, False),
        "miss_unreachable": await _series(lambda: unreachable(present, miss_ctx), settings,
                                          True),
    }


def _dead_client() -> k8s.ApiClient:
    """A client for a loopback port nothing listens on."""
    configuration = k8s.Configuration()
    configuration.host = "https://127.0.0.1:1"
    configuration.verify_ssl = False  # never reached: nothing listens there
    return k8s.ApiClient(configuration)


def run(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="dlm-guard-bench-live-") as tmp, \
            start_clusters(1, Path(tmp) / "clusters", names=["bench"]) as (cluster,):
        install_crds(cluster)
        api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig),
                                                persist_config=False)
        dead = _dead_client()
        try:
            ensure_namespace(api, NAMESPACE)
            k8s.CustomObjectsApi(api).create_namespaced_custom_object(
                "kubevirt.io", "v1", NAMESPACE, "virtualmachineinstances", receiver_vmi())
            cases = asyncio.run(_measure(api, dead, settings))
            version = cluster.version().get("gitVersion")
        finally:
            api.close()
            dead.close()
    return {"settings": settings.__dict__, "apiserver": version, "cases": cases}
