"""The local control-plane harness against real etcd + kube-apiserver processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from controlplane import Binaries, Cluster, ClusterStartError, install_crds, kubectl, start_clusters
from controlplane.binaries import REPO_ROOT
from controlplane.crds import BUNDLED_CRDS_DIR

pytestmark = pytest.mark.e2e

UPSTREAM_CRDS = REPO_ROOT.parent / "shared" / "kubevirt-crds"
CRD_NAMES = [
    "virtualmachines.kubevirt.io",
    "virtualmachineinstances.kubevirt.io",
    "virtualmachineinstancemigrations.kubevirt.io",
    "kubevirts.kubevirt.io",
    "datavolumes.cdi.kubevirt.io",
]
VMIM = """
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata: {name: vmim-target, namespace: default}
spec:
  vmiName: vm1
  receive: {migrationID: mig-1}
"""
VMI = """
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: vm1, namespace: default}
spec:
  domain: {devices: {}}
status: {phase: Running}
"""


def _processes_mentioning(path: Path) -> list[int]:
    """PIDs whose command line names `path` (our etcd/apiserver flags all do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(path).encode() in cmdline:
                found.append(int(entry.name))
    return found


def _get(cluster: Cluster, *args: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(kubectl(cluster, "get", *args, "-o", "json").stdout)
    return result


def _established(cluster: Cluster, crd: str) -> bool:
    conditions = _get(cluster, "crd", crd)["status"]["conditions"]  # type: ignore[index]
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _check_python_client(cluster: Cluster) -> None:
    from kubernetes import client

    with cluster.api_client() as api:
        namespaces = client.CoreV1Api(api).list_namespace().items
    names = {ns.metadata.name for ns in namespaces if ns.metadata}
    assert {"default", "kube-system"} <= names


def _check_crd_behaviour(cluster: Cluster) -> None:
    """Objects round-trip; VMIM status goes through its subresource, VMI status with the object."""
    kubectl(cluster, "create", "-f", "-", input=VMIM)
    vmim = _get(cluster, "vmim", "vmim-target", "-n", "default")
    assert vmim["spec"] == {"vmiName": "vm1", "receive": {"migrationID": "mig-1"}}
    patch = '{"status": {"phase": "Pending"}}'
    kubectl(
        cluster, "patch", "vmim", "vmim-target", "--subresource=status", "--type=merge", "-p", patch
    )
    assert _get(cluster, "vmim", "vmim-target")["status"] == {"phase": "Pending"}
    kubectl(cluster, "create", "-f", "-", input=VMI)
    assert _get(cluster, "vmi", "vm1")["status"] == {"phase": "Running"}


def test_two_clusters_crds_objects_and_teardown(binaries: Binaries, tmp_path: Path) -> None:
    started = time.monotonic()
    with start_clusters(2, tmp_path, binaries=binaries) as clusters:
        ready = time.monotonic() - started
        assert len({c.server for c in clusters}) == 2
        for cluster in clusters:
            assert cluster.version()["gitVersion"].startswith("v1.36.")
            _check_python_client(cluster)
        # The first cluster gets our compact CRDs, the second the real upstream ones if present.
        install_crds(clusters[0], BUNDLED_CRDS_DIR)
        install_crds(clusters[1], UPSTREAM_CRDS if UPSTREAM_CRDS.is_dir() else BUNDLED_CRDS_DIR)
        for cluster in clusters:
            assert all(_established(cluster, crd) for crd in CRD_NAMES)
            _check_crd_behaviour(cluster)
        assert _processes_mentioning(tmp_path)
    print(f"two clusters ready in {ready:.1f}s")
    assert not _processes_mentioning(tmp_path)
    assert not (tmp_path / "cluster1" / "etcd-data").exists()
    assert (tmp_path / "cluster1" / "kube-apiserver.log").exists()


def test_temporary_workdir_is_removed(binaries: Binaries) -> None:
    with start_clusters(1, binaries=binaries) as (cluster,):
        root = cluster.workdir.parent
        assert kubectl(cluster, "get", "namespace", "default").returncode == 0
    assert not root.exists()
    assert not _processes_mentioning(root)


def test_failed_start_reports_log_and_leaves_nothing(binaries: Binaries, tmp_path: Path) -> None:
    bad_flag = ["--no-such-flag"]
    with (
        pytest.raises(ClusterStartError, match="no-such-flag"),
        start_clusters(2, tmp_path, binaries=binaries, apiserver_args=bad_flag),
    ):
        pytest.fail("the clusters should not have started")
    assert not _processes_mentioning(tmp_path)


def test_interrupt_during_start_tears_down(binaries: Binaries, tmp_path: Path) -> None:
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        timer.start()
        with start_clusters(2, tmp_path, binaries=binaries):
            time.sleep(30)  # only reached if the start beat the timer: the signal lands here
    timer.join()
    assert not _processes_mentioning(tmp_path)
