"""hybrid mode on a real kube-apiserver: CEL policies guard VMs, the webhook only VMIMs.

With the webhook server stopped, VM creates are still enforced (ValidatingAdmissionPolicy)
and defaulted (MutatingAdmissionPolicy), and VMIM creates fail closed (the validating
webhook's failurePolicy Fail), exactly as admission.mode=hybrid installs them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cel_cluster import apply_documents, ensure_namespaces
from cel_corpus import RESTORE, base_vm, base_vmim

from controlplane import Binaries, Cluster, install_crds, kubectl, start_clusters
from controlplane.webhooks import dry_run_create, run_webhook_server, webhook_configurations
from webhook.cel.export import export
from webhook.policy import parse_policy

pytestmark = pytest.mark.e2e

NAMESPACE, LABEL = "hybrid", "dlm-guard-hybrid"
POLICY = parse_policy({})
WAIT_SECONDS = 30.0
VMIM_PLURAL = "virtualmachineinstancemigrations"
VALIDATE_FAILED = 'failed calling webhook "validate.dlm-guard.io"'


def vmim_only_configurations(url_base: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """The test webhook registration, narrowed to VMIMs as the chart's hybrid mode does."""
    configs = webhook_configurations(url_base, ca_pem,
                                     namespace_selector={"matchLabels": {LABEL: "on"}})
    for config in configs:
        for entry in config["webhooks"]:
            entry["rules"][0]["resources"] = [VMIM_PLURAL]
    return configs


def until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise TimeoutError(f"not within {WAIT_SECONDS:g} s: {what}")


def created(cluster: Cluster, plural: str, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = {**obj, "metadata": {**obj["metadata"], "namespace": NAMESPACE}}
    return dry_run_create(cluster, plural, body)


def shareable_vm() -> dict[str, Any]:
    vm = base_vm("shareable")
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["shareable"] = True
    return vm


def target_vmim() -> dict[str, Any]:
    vmim = base_vmim("receive", "target")
    vmim["spec"]["receive"]["migrationID"] = ""  # the webhook fills it in
    return vmim


@pytest.fixture(scope="module")
def cluster(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("hybrid-cluster")
    with start_clusters(names=["hybrid"], workdir=workdir, binaries=binaries) as [started]:
        install_crds(started)
        ensure_namespaces(started, "kubevirt")
        apply_documents(started, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": NAMESPACE, "labels": {LABEL: "on"}}}])
        apply_documents(started, export(POLICY))
        yield started


def test_vms_need_no_webhook_and_vmims_fail_closed(
        cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    with run_webhook_server(cluster.kubeconfig, tmp_path_factory.mktemp("hybrid-server"),
                            name="dlm-guard-hybrid") as server:
        apply_documents(cluster, vmim_only_configurations(server.url_base, server.ca_pem))
        # the webhook answers VMIMs: only it knows the VMI is missing (a cluster-state rule)
        until(lambda: "[receiver-vmi]" in str(created(cluster, VMIM_PLURAL, target_vmim())[1]),
              "the VMIM webhook answers")
    # server stopped from here on
    status, answer = until(lambda: (lambda r: r if r[0] == 403 else None)(
        created(cluster, "virtualmachines", shareable_vm())), "the VM policy denies")
    assert "ValidatingAdmissionPolicy 'dlm-guard-vm-enforce'" in answer["message"]
    assert "[shareable-disk] spec.template.spec.domain.devices.disks[0].shareable" \
        in answer["message"]

    plain = base_vm("plain")
    plain["metadata"]["annotations"] = None
    body = {**plain, "metadata": {**plain["metadata"], "namespace": NAMESPACE}}
    kubectl(cluster, "create", "-f", "-", input=json.dumps(body))  # stored for real
    stored = json.loads(kubectl(cluster, "get", "vm", "plain", "-n", NAMESPACE,
                                "-o", "json").stdout)
    assert stored["metadata"]["annotations"] == {RESTORE: "Always"}

    status, answer = created(cluster, VMIM_PLURAL, base_vmim("sendTo", "source"))
    assert status >= 500 or status == 403, answer
    assert VALIDATE_FAILED in answer["message"]
    # the CEL VMIM rules still answer first, before any webhook is called
    both = base_vmim("sendTo", "both")
    both["spec"]["receive"] = {"migrationID": "x"}
    status, answer = created(cluster, VMIM_PLURAL, both)
    assert "[both-roles] spec" in answer["message"]
