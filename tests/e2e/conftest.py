"""End-to-end fixtures. `binaries` and `clusters` come from controlplane.pytest_plugin (root
conftest); `guarded` adds a real `dlm-guard serve` per cluster, registered with the API server.

Isolation: the `clusters` are shared by the whole session, so the webhooks registered here
only see namespaces labelled `dlm-guard-e2e=on` (each test makes its own), and they are
unregistered before the clusters stop. Tests that stop a server register their own copy under
another name and label.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_support import E2E_LABEL, KUBEVIRT_NAMESPACE, Guarded, set_gate

from controlplane import Cluster, kubectl
from controlplane.webhooks import (
    register_webhooks,
    start_webhook_server,
    unregister_webhooks,
)

PROBE_NAMESPACE = "dlm-guard-e2e-probe"
SELECTOR = {"matchLabels": {E2E_LABEL: "on"}}


def ensure_namespace(cluster: Cluster, name: str, labels: dict[str, str] | None = None) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": name, "labels": labels or {}}}
    kubectl(cluster, "apply", "--server-side", "-f", "-", input=json.dumps(namespace))


def _prepare(cluster: Cluster) -> None:
    """What KubeVirt's install would leave: its namespace and a KubeVirt CR, gate on."""
    ensure_namespace(cluster, KUBEVIRT_NAMESPACE)
    set_gate(cluster, on=True)
    ensure_namespace(cluster, PROBE_NAMESPACE, {E2E_LABEL: "on"})


def _start(cluster: Cluster, workdir: Path) -> Guarded:
    _prepare(cluster)
    server = start_webhook_server(cluster.kubeconfig, workdir, name=f"dlm-guard-{cluster.name}")
    try:
        register_webhooks(cluster, server.url_base, server.ca_pem, namespace_selector=SELECTOR,
                          probe_namespace=PROBE_NAMESPACE)
    except BaseException:
        server.stop()
        raise
    return Guarded(cluster, server)


@pytest.fixture(scope="session")
def guarded(clusters: list[Cluster], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[list[Guarded]]:
    """Both session clusters, each with a webhook server watching it and registered on it."""
    workdir = tmp_path_factory.mktemp("webhook-servers")
    with ThreadPoolExecutor(max_workers=len(clusters)) as pool:
        futures = [pool.submit(_start, c, workdir) for c in clusters]
    started = [f.result() for f in futures if f.exception() is None]
    try:
        for future in futures:
            future.result()  # re-raise a failed start, after collecting the good ones
        yield started
    finally:
        for guard in started:
            unregister_webhooks(guard.cluster)
            guard.server.stop()
