"""A rolling restart of two `serve --reuse-port` processes on one port, while VMs keep being
created through a real kube-apiserver: no create fails (both webhooks failurePolicy Fail).

This module registers its own configurations (another name, another namespace label), so the
shared registration of conftest.py is untouched.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e_support import RESTORE, TARGET_VM, Guarded, new_namespace, without_restore_annotation

from certs.generate import generate_pair
from controlplane import Cluster
from controlplane.ports import free_ports
from controlplane.process import ManagedProcess
from controlplane.webhooks import (
    WebhookServer,
    register_webhooks,
    serve_argv,
    unregister_webhooks,
)

pytestmark = pytest.mark.e2e

NAME = "dlm-guard-restart"
LABEL = "dlm-guard-e2e-restart"
WORKERS = 3  # concurrent creates: a bounded load for a shared 2-core machine
READY_TIMEOUT = 60.0


@dataclass
class Load:
    created: int = 0
    failures: list[str] = field(default_factory=list)
    unmutated: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def create_vm(cluster: Cluster, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
    vm = without_restore_annotation(copy.deepcopy(TARGET_VM))
    vm["metadata"] = {"name": name, "namespace": namespace}
    request = urllib.request.Request(
        f"{cluster.server}/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines",
        data=json.dumps(vm).encode(), headers={"Content-Type": "application/json"},
        method="POST")
    try:
        with urllib.request.urlopen(request, context=cluster.ssl_context(), timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def keep_creating(cluster: Cluster, namespace: str, worker: int, load: Load,
                  stop: threading.Event) -> None:
    count = 0
    while not stop.is_set():
        name = f"vm-{worker}-{count}"
        count += 1
        try:
            status, body = create_vm(cluster, namespace, name)
        except OSError as err:  # the API server itself: not what is under test, but counted
            status, body = 0, {"message": repr(err)}
        with load.lock:
            if status != 201:
                load.failures.append(f"{name}: HTTP {status}: {body.get('message')}")
                continue
            load.created += 1
            annotations = body.get("metadata", {}).get("annotations") or {}
            if RESTORE not in annotations:
                load.unmutated.append(name)


class Replica:
    """One `dlm-guard serve --reuse-port` process on the shared port."""

    def __init__(self, cluster: Cluster, workdir: Path, port: int, name: str) -> None:
        cert_dir = workdir / "certs"
        argv = serve_argv(cluster.kubeconfig, cert_dir, port, ["--reuse-port"])
        process = ManagedProcess.spawn(name, argv, workdir / f"{name}.log", workdir)
        self.server = WebhookServer(process=process, port=port,
                                    ca_cert=cert_dir / "ca.crt")

    def wait_ready(self) -> Replica:
        """Until this process listens (its log says so: on a shared port, /readyz may be
        answered by the other one) and the port answers ready."""
        deadline = time.monotonic() + READY_TIMEOUT
        while "serving https://" not in self.server.log.read_text() or not self.server.ready():
            assert self.server.process.exit_code() is None, self.server.process.tail()
            assert time.monotonic() < deadline, self.server.process.tail()
            time.sleep(0.1)
        return self

    def stop(self) -> int | None:
        self.server.stop()
        return self.server.process.exit_code()


@pytest.fixture
def replicas(guarded: list[Guarded], tmp_path: Path) -> Iterator[tuple[Cluster, list[Replica]]]:
    cluster = guarded[0].cluster
    generate_pair(tmp_path / "certs", ips=("127.0.0.1",))
    (port,) = free_ports(1)
    running = [Replica(cluster, tmp_path, port, f"replica-{i}") for i in range(2)]
    try:
        for replica in running:
            replica.wait_ready()
        yield cluster, running
    finally:
        for replica in running:
            replica.stop()


def test_rolling_restart_under_load_fails_no_create(
        replicas: tuple[Cluster, list[Replica]], tmp_path: Path) -> None:
    cluster, running = replicas
    probe = new_namespace(cluster, "e2e-restart", {LABEL: "on"})
    server = running[0].server
    register_webhooks(cluster, server.url_base, server.ca_pem, name=NAME,
                      failure_policy_mutate="Fail", failure_policy_validate="Fail",
                      namespace_selector={"matchLabels": {LABEL: "on"}}, probe_namespace=probe)
    load, stop = Load(), threading.Event()
    workers = [threading.Thread(target=keep_creating, args=(cluster, probe, i, load, stop))
               for i in range(WORKERS)]
    try:
        for worker in workers:
            worker.start()
        for index in range(2):
            wait_for_creates(load, 20)
            exit_code = running[index].stop()
            assert exit_code == 0, running[index].server.process.tail()
            running[index] = Replica(cluster, tmp_path, server.port,
                                     f"replica-{index}-again").wait_ready()
        wait_for_creates(load, 20)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
        unregister_webhooks(cluster, NAME)
    assert load.failures == []
    assert load.unmutated == []  # every create went through our mutation, none around it
    assert load.created >= 60


def wait_for_creates(load: Load, more: int, timeout: float = 120) -> None:
    """Until `more` further creates succeeded (the load is flowing again)."""
    with load.lock:
        target = load.created + more
    deadline = time.monotonic() + timeout
    while True:
        with load.lock:
            if load.created >= target or load.failures:
                return
        assert time.monotonic() < deadline, "the creates stopped flowing"
        time.sleep(0.05)
