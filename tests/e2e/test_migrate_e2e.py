"""`dlm-guard migrate` against two real clusters, their dlm-guard webhooks registered, and the
KubeVirt stand-in playing virt-controller (controlplane/kubevirt_standin.py).

The clusters, webhook servers and the stand-in are shared by the module; each test works in
its own namespace (same name in both clusters).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Guarded
from migrate_support import (
    CAPACITY,
    CONFIG_MAP,
    DATA_VOLUME,
    MIGRATE,
    SECRET_SSH,
    SECRET_USERDATA,
    SOURCE_CLASS,
    TARGET_CLASS,
    VM,
    argv,
    create,
    get_json,
    items,
    make_source,
    migrate,
    migration_namespace,
    migrator_kubeconfig,
    set_status,
    source_vm,
    start,
    until,
)

from controlplane import Cluster
from controlplane.kubevirt_standin import KubeVirtStandIn, StandInCluster
from migrate.kube import Kube, api_client

pytestmark = pytest.mark.e2e

SOURCE_ADDRESSES = ["10.244.0.17:9185"]
TARGET_ADDRESSES = ["10.244.1.17:9185", "[fd00:10:244:1::17]:9185"]
TIMEOUT = ["--timeout", "90s"]


@pytest.fixture(scope="module")
def pair(guarded: list[Guarded]) -> list[Cluster]:
    return [g.cluster for g in guarded]


@pytest.fixture(scope="module")
def standin(pair: list[Cluster]) -> Iterator[KubeVirtStandIn]:
    kubes = [Kube(c.name, api_client(str(c.kubeconfig))) for c in pair]
    clusters = [StandInCluster(pair[0].name, kubes[0], SOURCE_ADDRESSES),
                StandInCluster(pair[1].name, kubes[1], TARGET_ADDRESSES)]
    with KubeVirtStandIn(clusters) as running:
        for cluster, wanted in zip(pair, (SOURCE_ADDRESSES, TARGET_ADDRESSES), strict=True):
            def done(c: Cluster = cluster, w: list[str] = wanted) -> bool:
                return bool(published(c) == w)
            until(f"{cluster.name}'s KubeVirt CR published", done,
                  explain=lambda: str(running.errors))
        yield running
    for k in kubes:
        k.close()
    assert not running.errors, running.errors


def published(cluster: Cluster) -> Any:
    """The synchronizationAddresses in the cluster's KubeVirt CR status."""
    kubevirt = get_json(cluster, "kubevirt", "kubevirt", "kubevirt") or {}
    return kubevirt.get("status", {}).get("synchronizationAddresses")


@pytest.fixture
def fresh(standin: KubeVirtStandIn) -> Iterator[KubeVirtStandIn]:
    """The stand-in with nothing held, whatever a test did to it."""
    yield standin
    standin.hold_migrations = standin.hold_receivers = False


def explain(standin: KubeVirtStandIn, *results: object) -> str:
    parts = [str(getattr(r, "stdout", r)) + str(getattr(r, "stderr", "")) for r in results]
    return "\n".join([*parts, "stand-in events:", *standin.events[-30:]])


def vmims(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return items(cluster, namespace, "vmim")


def test_plan_lists_every_object_in_order_and_creates_nothing(
        pair: list[Cluster], fresh: KubeVirtStandIn) -> None:
    source, target = pair
    ns = migration_namespace(pair, "mig-plan")
    make_source(source, ns)
    result = migrate(*argv("plan", source, ns, target, "-o", "json",
                           "--storage-class", f"{SOURCE_CLASS}={TARGET_CLASS}"))
    assert result.returncode == 0, explain(fresh, result)
    plan = json.loads(result.stdout)
    steps = [(o["step"], o["cluster"], o["object"]["metadata"]["name"]) for o in plan["objects"]]
    assert steps[:5] == [("Secret", "target", SECRET_SSH), ("Secret", "target", SECRET_USERDATA),
                         ("ConfigMap", "target", CONFIG_MAP),
                         ("DataVolume", "target", DATA_VOLUME), ("VirtualMachine", "target", VM)]
    assert [step[:2] for step in steps[5:]] == [("TargetVMIM", "target"), ("SourceVMIM", "source")]
    assert steps[5][2].startswith(f"{VM}-target-") and steps[6][2].startswith(f"{VM}-source-")
    dv = plan["objects"][3]["object"]
    assert dv["spec"]["storage"] == {"resources": {"requests": {"storage": CAPACITY}},
                                     "storageClassName": TARGET_CLASS}
    target_vm = plan["objects"][4]["object"]
    assert target_vm["spec"]["runStrategy"] == "WaitAsReceiver"
    assert target_vm["metadata"]["annotations"]["kubevirt.io/restore-run-strategy"] == "Always"
    # connectURL from the target KubeVirt CR, which the stand-in's virt-operator published
    assert plan["objects"][6]["object"]["spec"]["sendTo"]["connectURL"] == TARGET_ADDRESSES[0]
    assert plan["objects"][5]["object"]["spec"]["receive"]["migrationID"] == plan["migrationID"]
    for kind in ("vm", "vmim", "datavolume", "secret", "configmap"):
        assert items(target, ns, kind) == [], kind


def test_run_across_clusters_maps_storage_copies_secrets_and_halts_the_source(
        pair: list[Cluster], fresh: KubeVirtStandIn) -> None:
    source, target = pair
    ns = migration_namespace(pair, "mig-x")
    make_source(source, ns)
    result = migrate(*argv("run", source, ns, target, "--yes", *TIMEOUT,
                           "--storage-class", f"{SOURCE_CLASS}={TARGET_CLASS}"))
    assert result.returncode == 0, explain(fresh, result)
    # the last phases line (which intermediate phases a poll sees depends on timing)
    assert "target VMIM Succeeded, source VMIM Succeeded" in result.stdout
    assert "SUCCEEDED: target VM" in result.stdout and "runStrategy Always" in result.stdout
    assert get_json(target, ns, "vm", VM)["spec"]["runStrategy"] == "Always"
    until("source VM Halted", lambda: get_json(source, ns, "vm", VM)["spec"]["runStrategy"]
          == "Halted", explain=lambda: explain(fresh))
    until("source VMI gone", lambda: get_json(source, ns, "vmi", VM) is None,
          explain=lambda: explain(fresh))
    dv = get_json(target, ns, "datavolume", DATA_VOLUME)
    assert dv["spec"]["storage"]["storageClassName"] == TARGET_CLASS
    assert dv["spec"]["source"] == {"blank": {}}
    for name in (SECRET_SSH, SECRET_USERDATA):
        copied, original = get_json(target, ns, "secret", name), get_json(source, ns, "secret",
                                                                           name)
        assert copied["data"] == original["data"] and copied["type"] == original["type"]
    assert get_json(target, ns, "configmap", CONFIG_MAP)["data"] == \
        get_json(source, ns, "configmap", CONFIG_MAP)["data"]
    pairs = [vmims(target, ns), vmims(source, ns)]
    assert [len(p) for p in pairs] == [1, 1]
    assert {v["status"]["phase"] for p in pairs for v in p} == {"Succeeded"}
    labels = pairs[0][0]["metadata"]["labels"]
    assert labels["dlm-guard.io/role"] == "target"
    mid = pairs[0][0]["spec"]["receive"]["migrationID"]
    status = migrate(*MIGRATE, "status", mid, "--from", str(source.kubeconfig),
                     "--to", str(target.kubeconfig))
    assert status.returncode == 0, status.stderr
    assert f"target VMIM {ns}/{pairs[0][0]['metadata']['name']}  phase Succeeded" \
        in status.stdout


def test_run_across_namespaces_in_one_cluster(pair: list[Cluster],
                                              fresh: KubeVirtStandIn) -> None:
    source = pair[0]
    ns, other = migration_namespace([source], "mig-ns"), migration_namespace([source], "mig-ns2")
    make_source(source, ns)
    result = migrate(*argv("run", source, ns, None, "--target-namespace", other, "--yes",
                           *TIMEOUT))
    assert result.returncode == 0, explain(fresh, result)
    assert get_json(source, other, "vm", VM)["spec"]["runStrategy"] == "Always"
    assert [v["status"]["phase"] for v in vmims(source, other) + vmims(source, ns)] == \
        ["Succeeded", "Succeeded"]
    assert vmims(source, ns)[0]["spec"]["sendTo"]["connectURL"] == SOURCE_ADDRESSES[0]


def test_without_access_to_kubevirt_crs_the_address_comes_from_the_target_vmim(
        pair: list[Cluster], fresh: KubeVirtStandIn, tmp_path: Path) -> None:
    source = pair[0]
    ns = migration_namespace(pair, "mig-rbac")
    make_source(source, ns)
    configs = [migrator_kubeconfig(c, tmp_path) for c in pair]
    result = migrate(*MIGRATE, "run", VM, "-n", ns, "--from", str(configs[0]),
                     "--to", str(configs[1]), "--yes", *TIMEOUT)
    assert result.returncode == 0, explain(fresh, result)
    assert "may not read KubeVirt CRs" in result.stderr
    assert "waiting for the target VMIM's status.synchronizationAddresses" in result.stdout
    assert f"connect address {TARGET_ADDRESSES[0]}" in result.stdout
    assert vmims(source, ns)[0]["spec"]["sendTo"]["connectURL"] == TARGET_ADDRESSES[0]


def test_a_legacy_running_source_is_restored_as_always_and_not_halted(
        pair: list[Cluster], fresh: KubeVirtStandIn) -> None:
    source, target = pair
    ns = migration_namespace(pair, "mig-legacy")
    make_source(source, ns, source_vm(running=True))
    result = migrate(*argv("run", source, ns, target, "--yes", *TIMEOUT))
    assert result.returncode == 0, explain(fresh, result)
    assert "note: source VM uses legacy spec.running" in result.stderr
    target_vm = get_json(target, ns, "vm", VM)
    assert target_vm["metadata"]["annotations"]["kubevirt.io/restore-run-strategy"] == "Always"
    assert target_vm["spec"]["runStrategy"] == "Always" and "running" not in target_vm["spec"]
    # upstream's update to Halted would set both fields, which its VM admitter refuses
    assert f"source VM {ns}/{VM} runStrategy spec.running=True" in result.stdout
    assert get_json(source, ns, "vm", VM)["spec"].get("running") is True


def test_a_plan_the_webhook_would_deny_is_refused_and_nothing_is_created(
        pair: list[Cluster], fresh: KubeVirtStandIn) -> None:
    source, target = pair
    ns = migration_namespace(pair, "mig-deny")
    shared = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
              "metadata": {"name": "shared-pvc"},
              "spec": {"accessModes": ["ReadWriteMany"],
                       "resources": {"requests": {"storage": "1Gi"}}}}
    create(source, ns, shared)
    set_status(source, ns, "pvc", "shared-pvc", {"phase": "Bound",
                                                 "capacity": {"storage": "1Gi"}})
    make_source(source, ns, source_vm(shareable=True))
    result = migrate(*argv("run", source, ns, target, "--yes", *TIMEOUT))
    assert result.returncode == 2, explain(fresh, result)
    assert ("DENY target VirtualMachine " f"{ns}/{VM}: [shareable-disk] "
            "spec.template.spec.domain.devices.disks[3].shareable") in result.stderr
    assert "the plan is refused" in result.stderr
    for kind in ("vm", "vmim", "datavolume", "configmap"):
        assert items(target, ns, kind) == [], kind
    assert vmims(source, ns) == []


def test_failure_is_cleaned_up_and_a_second_run_succeeds(
        pair: list[Cluster], fresh: KubeVirtStandIn) -> None:
    source, target = pair
    ns = migration_namespace(pair, "mig-fail")
    make_source(source, ns)
    mid = f"{VM}-first-attempt"
    fresh.fail(mid)
    failed = migrate(*argv("run", source, ns, target, "--yes", "--migration-id", mid,
                           *TIMEOUT))
    assert failed.returncode == 1, explain(fresh, failed)
    assert "FAILED: target VMIM phase Failed, source VMIM phase Failed" in failed.stdout
    assert "target VMI back in phase WaitingForSync with migrationState.failed" in failed.stdout
    assert "cleaned up: deleted target VMIM" in failed.stdout
    assert vmims(target, ns) == [] and vmims(source, ns) == []
    assert get_json(target, ns, "vm", VM) is None
    assert get_json(target, ns, "datavolume", DATA_VOLUME) is not None  # no --cleanup-volumes
    assert get_json(source, ns, "vmi", VM)["status"]["phase"] == "Running"
    again = migrate(*argv("run", source, ns, target, "--yes", *TIMEOUT))
    assert again.returncode == 0, explain(fresh, again)
    assert (f"target DataVolume {ns}/{DATA_VOLUME}: exists, blank, left by an earlier attempt "
            "(reused)") in again.stdout
    assert get_json(target, ns, "vm", VM)["spec"]["runStrategy"] == "Always"


def test_a_timeout_is_a_failure_with_the_clean_up(pair: list[Cluster],
                                                  fresh: KubeVirtStandIn) -> None:
    source, target = pair
    ns = migration_namespace(pair, "mig-slow")
    make_source(source, ns)
    fresh.hold_migrations = True  # stuck in WaitingForSync/Synchronizing (kubevirt #17317)
    result = migrate(*argv("run", source, ns, target, "--yes", "--timeout", "15s"))
    assert result.returncode == 1, explain(fresh, result)
    # (how far it got in 15 s depends on the machine's load; that it stops does not)
    assert "TIMED OUT: target VMIM phase" in result.stdout
    assert "cleaned up: deleted" in result.stdout
    assert vmims(target, ns) == [] and vmims(source, ns) == []
    assert get_json(target, ns, "vm", VM) is None


def test_sigint_cancels_by_deleting_both_vmims(pair: list[Cluster], fresh: KubeVirtStandIn,
                                               tmp_path: Path) -> None:
    source, target = pair
    ns = migration_namespace(pair, "mig-int")
    make_source(source, ns)
    fresh.hold_migrations = True
    run = start(tmp_path / "run.log", *argv("run", source, ns, target, "--yes", *TIMEOUT))
    try:
        until("both VMIMs waiting", lambda: "target VMIM WaitingForSync, source VMIM "
              "Synchronizing" in run.output(), explain=lambda: explain(fresh, run.output()))
        run.signal(signal.SIGINT)
        assert run.wait() == 1, explain(fresh, run.output())
    finally:
        run.stop()
    assert "cancelled (Ctrl-C): deleted target VMIM" in run.output()
    assert vmims(target, ns) == [] and vmims(source, ns) == []


def test_cancel_by_migration_id_stops_a_run_in_both_clusters(
        pair: list[Cluster], fresh: KubeVirtStandIn, tmp_path: Path) -> None:
    source, target = pair
    ns = migration_namespace(pair, "mig-cancel")
    make_source(source, ns)
    fresh.hold_migrations = True
    mid = f"{VM}-to-cancel"
    run = start(tmp_path / "run.log", *argv("run", source, ns, target, "--yes",
                                            "--migration-id", mid, *TIMEOUT))
    clusters = ["--from", str(source.kubeconfig), "--to", str(target.kubeconfig)]
    try:
        until("both VMIMs waiting", lambda: "target VMIM WaitingForSync, source VMIM "
              "Synchronizing" in run.output(), explain=lambda: explain(fresh, run.output()))
        status = migrate(*MIGRATE, "status", mid, *clusters)
        assert "phase WaitingForSync" in status.stdout and "phase Synchronizing" in \
            status.stdout, status.stdout + status.stderr
        cancel = migrate(*MIGRATE, "cancel", mid, *clusters)
        assert cancel.returncode == 0, cancel.stderr
        assert run.wait() == 1, explain(fresh, run.output())
    finally:
        run.stop()
    assert f"cancelled migration {mid}: deleted target VMIM" in cancel.stdout
    assert f"target VM {ns}/{VM}" in cancel.stdout
    assert "CANCELLED" in run.output()
    assert vmims(target, ns) == [] and vmims(source, ns) == []
    assert get_json(target, ns, "vm", VM) is None
    gone = migrate(*MIGRATE, "status", mid, *clusters)
    assert gone.returncode == 1 and f"nothing in either cluster carries migration {mid}" \
        in gone.stderr


def test_an_interrupted_run_resumes_without_duplicates(
        pair: list[Cluster], fresh: KubeVirtStandIn, tmp_path: Path) -> None:
    source, target = pair
    ns = migration_namespace(pair, "mig-resume")
    make_source(source, ns)
    fresh.hold_receivers = True  # KubeVirt is slow to start the receiver VMI
    run = start(tmp_path / "first.log", *argv("run", source, ns, target, "--yes", *TIMEOUT))
    try:
        until("the first run waits for the receiver", lambda: "waiting for the receiver VMI"
              in run.output(), explain=lambda: explain(fresh, run.output()))
        run.signal(signal.SIGKILL)  # no clean-up at all: the process is just gone
        run.wait()
    finally:
        run.stop()
    first_vm = get_json(target, ns, "vm", VM)
    fresh.hold_receivers = False
    again = migrate(*argv("run", source, ns, target, "--yes", *TIMEOUT))
    assert again.returncode == 0, explain(fresh, again)
    mid = first_vm["metadata"]["labels"]["dlm-guard.io/migration-id"]
    assert f"migration {mid}:" in again.stdout  # the same migration, continued
    assert f"target VirtualMachine {ns}/{VM}: exists (this migration)" in again.stdout
    assert [len(items(target, ns, k)) for k in ("vm", "vmim", "datavolume")] == [1, 1, 1]
    assert len(vmims(source, ns)) == 1
    assert get_json(target, ns, "vm", VM)["metadata"]["uid"] == first_vm["metadata"]["uid"]

