"""admission.mode against a real kube-apiserver: every mode's objects pass a server-side dry
run (the CEL compiles against 1.36's library), and the policies the chart renders enforce."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chart_support import NAMESPACE, Manifest, of_kind, render
from test_chart_admission import POLICY_KINDS, V1

from controlplane.binaries import Binaries
from controlplane.cluster import Cluster, start_clusters
from controlplane.crds import install_crds
from controlplane.kubectl import kubectl
from controlplane.webhooks import dry_run_create

pytestmark = pytest.mark.e2e

NO_MONITORING = ["metrics.serviceMonitor.enabled=false", "metrics.prometheusRule.enabled=false"]
VMS = "vms"
RESTORE = "kubevirt.io/restore-run-strategy"
WAIT_SECONDS = 30.0


@pytest.fixture(scope="module")
def cluster(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_clusters(1, tmp_path_factory.mktemp("chart-admission"), names=["admission"],
                        binaries=binaries) as started:
        install_crds(started[0])
        for name in (NAMESPACE, VMS, "kubevirt"):  # the reconciler's Role lives there
            kubectl(started[0], "create", "namespace", name)
        yield started[0]


def docs_for(helm: Path, mode: str, *sets: str) -> list[Manifest]:
    return render(helm, sets=[f"admission.mode={mode}", *NO_MONITORING, *sets],
                  extra_args=[f"--api-versions={v}" for v in V1])


@pytest.mark.parametrize("mode", ["webhook", "hybrid", "cel"])
def test_every_mode_passes_a_server_side_dry_run(helm: Path, cluster: Cluster,
                                                 mode: str) -> None:
    docs = docs_for(helm, mode)
    listing = {"apiVersion": "v1", "kind": "List", "items": docs}
    result = kubectl(cluster, "apply", "--server-side", "--dry-run=server",
                     "--field-manager=helm", "-o", "name", "-f", "-", input=json.dumps(listing))
    assert len(result.stdout.split()) == len(docs), result.stdout
    assert bool(of_kind(docs, *POLICY_KINDS)) == (mode != "webhook")


def vm(name: str, *, shareable: bool, annotated: bool) -> Manifest:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": VMS,
                         "annotations": {RESTORE: "Halted"} if annotated else {}},
            "spec": {"runStrategy": "WaitAsReceiver", "template": {"spec": {"domain": {
                "devices": {"disks": [{"name": "d", "disk": {}, "shareable": shareable}]}}}}}}


def test_the_rendered_policies_enforce_and_default(helm: Path, cluster: Cluster) -> None:
    docs = of_kind(docs_for(helm, "cel", "policy.defaults.restoreRunStrategy=Manual"),
                   *POLICY_KINDS)
    kubectl(cluster, "apply", "--server-side", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    deadline = time.monotonic() + WAIT_SECONDS
    while True:  # the admission plugins pick policies up from an informer
        denied = dry_run_create(cluster, "virtualmachines", vm("a", shareable=True,
                                                               annotated=True))
        defaulted = dry_run_create(cluster, "virtualmachines", vm("b", shareable=False,
                                                                  annotated=False))
        if denied[0] == 403 and defaulted[0] == 201 and \
                defaulted[1]["metadata"].get("annotations") == {RESTORE: "Manual"}:
            break
        assert time.monotonic() < deadline, (denied, defaulted)
        time.sleep(0.2)
    assert "[shareable-disk] spec.template.spec.domain.devices.disks[0].shareable" \
        in denied[1]["message"]
    # the release namespace is exempt, like the webhooks' namespaceSelector
    exempt = vm("c", shareable=True, annotated=True)
    exempt["metadata"]["namespace"] = NAMESPACE
    assert dry_run_create(cluster, "virtualmachines", exempt)[0] == 201
