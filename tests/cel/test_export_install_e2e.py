"""`dlm-guard policy export --api v1beta1` installs and acts on a cluster serving the beta
MutatingAdmissionPolicy API (Kubernetes 1.34/1.35 with it enabled; kube-apiserver v1.36.3 keeps
v1beta1 off by default, admissionregistration.k8s.io/v1beta1 being in
genericBetaAPIGroupVersionsDisabledByDefault of pkg/controlplane/instance.go, so this
cluster alone gets --runtime-config)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from cel_cluster import ensure_namespaces
from cel_corpus import RESTORE, base_vm

from controlplane import Binaries, Cluster, install_crds, kubectl, start_clusters
from controlplane.webhooks import dry_run_create

pytestmark = pytest.mark.e2e

BETA = "--runtime-config=admissionregistration.k8s.io/v1beta1=true"
WAIT_SECONDS = 30.0


@pytest.fixture(scope="module")
def cluster(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_clusters(names=["beta"], workdir=tmp_path_factory.mktemp("beta"),
                        binaries=binaries, apiserver_args=[BETA]) as [started]:
        install_crds(started)
        ensure_namespaces(started, "vms")
        yield started


def test_the_v1beta1_export_installs_and_mutates(cluster: Cluster) -> None:
    exported = subprocess.run([sys.executable, "-m", "dlm_guard", "policy", "export",
                               "--api", "v1beta1", "-o", "json"],
                              capture_output=True, text=True, check=True).stdout
    items = json.loads(exported)["items"]
    assert {i["apiVersion"] for i in items if i["kind"].startswith("Mutating")} == \
        {"admissionregistration.k8s.io/v1beta1"}
    kubectl(cluster, "apply", "-f", "-", input=exported)
    vm = base_vm("beta")
    vm["metadata"] |= {"namespace": "vms", "annotations": {}}
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status, answer = dry_run_create(cluster, "virtualmachines", vm)
        if status == 201 and answer["metadata"].get("annotations") == {RESTORE: "Always"}:
            break
        assert time.monotonic() < deadline, (status, answer)
        time.sleep(0.2)
