"""The reconciler against two real local clusters (etcd + kube-apiserver from the harness).

Nothing runs KubeVirt here: the tests play virt-operator (merging the inbox into kubevirt-ca)
and virt-controller (writing VMIM status) by hand, as docs/kubevirt-facts.md describes.
The tests share one pair of clusters and run in order; the last one stops a peer's apiserver.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from certs.bundle import parse_bundle, to_pem
from certs.generate import make_ca
from controlplane import Cluster, install_crds_on, start_clusters
from controlplane.pytest_plugin import binaries  # noqa: F401  (fixture)
from reconciler import cli, gather
from reconciler.act import Actor
from reconciler.clusters import Registry
from reconciler.gc import Deletion
from reconciler.leader import LeaderElector, LeaseConfig
from reconciler.loop import PassReport, Reconciler, Service
from reconciler.metrics import ReconcilerMetrics
from reconciler.trust import CaWrite

pytestmark = pytest.mark.e2e

NS = "kubevirt"
VM_NS = "vms"
NOW = datetime.now(UTC)


# --- helpers ---------------------------------------------------------------------------------
def new_ca(name: str, start: timedelta = -timedelta(hours=1),
           end: timedelta = timedelta(days=7)) -> x509.Certificate:
    return make_ca(NOW + start, NOW + end, common_name=f"kubevirt.io@{name}").cert


class Api:
    """A cluster's API as the tests (KubeVirt's stand-ins) use it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.client = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig),
                                                        persist_config=False)
        self.core = k8s.CoreV1Api(self.client)
        self.custom = k8s.CustomObjectsApi(self.client)

    def ensure_namespace(self, name: str) -> None:
        try:
            self.core.create_namespace(k8s.V1Namespace.model_validate({"metadata":
                                                                       {"name": name}}))
        except ApiException as err:
            if err.status != 409:
                raise

    def configmap(self, name: str) -> dict[str, Any] | None:
        try:
            return self.client.sanitize_for_serialization(
                self.core.read_namespaced_config_map(name, NS))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def bundle(self, name: str) -> str | None:
        cm = self.configmap(name)
        return None if cm is None else (cm.get("data") or {}).get("ca-bundle", "")

    def rv(self, name: str) -> str | None:
        cm = self.configmap(name)
        return None if cm is None else cm["metadata"]["resourceVersion"]

    def set_bundle(self, name: str, text: str) -> None:
        body = {"metadata": {"name": name, "namespace": NS}, "data": {"ca-bundle": text}}
        if self.configmap(name) is None:
            self.core.create_namespaced_config_map(NS, k8s.V1ConfigMap.model_validate(body))
        else:
            self.core.patch_namespaced_config_map(
                name, NS, body, _content_type="application/merge-patch+json")

    def merge_inbox(self) -> None:
        """What virt-operator does: merge kubevirt-external-ca into kubevirt-ca, reset it."""
        inbox = self.bundle("kubevirt-external-ca") or ""
        merged = parse_bundle((self.bundle("kubevirt-ca") or "") + inbox).certificates
        self.set_bundle("kubevirt-ca", to_pem(merged))
        self.set_bundle("kubevirt-external-ca", "")

    def events(self, reason: str, namespace: str = NS) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(namespace).items
                if e.reason == reason]

    # KubeVirt objects
    def create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        result: Any = self.custom.create_namespaced_custom_object(
            "kubevirt.io", "v1", VM_NS, plural, obj)
        return dict(result)

    def set_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            "kubevirt.io", "v1", VM_NS, plural, name, {"status": status},
            _content_type="application/merge-patch+json")

    def exists(self, plural: str, name: str) -> bool:
        try:
            self.custom.get_namespaced_custom_object("kubevirt.io", "v1", VM_NS, plural, name)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True


@pytest.fixture(scope="module")
def pair(binaries, tmp_path_factory) -> Iterator[tuple[Cluster, Cluster]]:  # noqa: F811
    """Two clusters of our own: the last test stops one, so they are not shared."""
    with start_clusters(2, tmp_path_factory.mktemp("reconcile-e2e"), names=["east", "west"],
                        binaries=binaries) as started:
        install_crds_on(started)
        yield started[0], started[1]


@pytest.fixture(scope="module")
def east(pair) -> Api:
    return Api(pair[0])


@pytest.fixture(scope="module")
def west(pair) -> Api:
    return Api(pair[1])


@pytest.fixture(scope="module")
def cas() -> dict[str, x509.Certificate]:
    return {"east1": new_ca("east1"), "west1": new_ca("west1"), "west3": new_ca("west3"),
            "west-expired": new_ca("west0", -timedelta(days=9), -timedelta(days=2)),
            "west2": new_ca("west2"), "east2": new_ca("east2"), "east3": new_ca("east3"),
            "west4": new_ca("west4")}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Every log call of ours really formats a record (a bad `extra` key raises), and
    cli.main()'s process-wide logging set-up is undone for the next tests."""
    root, ours = logging.getLogger(), logging.getLogger("reconciler")
    handlers, level, our_level = root.handlers[:], root.level, ours.level
    ours.setLevel(logging.DEBUG)
    yield
    root.handlers[:], root.level = handlers, level
    ours.setLevel(our_level)


def flags(pair: tuple[Cluster, Cluster], *extra: str, manage: tuple[str, ...] = ("east", "west"),
          ) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    argv = ["reconcile", "--cluster", f"east={pair[0].kubeconfig}",
            "--cluster", f"west={pair[1].kubeconfig}", "--api-timeout", "5s", *extra]
    for name in manage:
        argv += ["--manage", name]
    return parser.parse_args(argv)


def run_once(pair: tuple[Cluster, Cluster], *extra: str, manage: tuple[str, ...] = ("east", "west"),
             metrics: ReconcilerMetrics | None = None) -> PassReport:
    """One `reconcile --once` pass, in process, returning its report."""
    settings = cli.settings_from_args(flags(pair, "--once", *extra, manage=manage))
    registry = Registry(settings)
    try:
        return Reconciler(settings, registry, metrics or ReconcilerMetrics()).run_pass()
    finally:
        registry.close()


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


# --- CA trust ----------------------------------------------------------------------------------
def test_each_inbox_gets_exactly_the_other_clusters_missing_cas(pair, east, west, cas):
    for api in (east, west):
        api.ensure_namespace(NS)
    east.set_bundle("kubevirt-ca", to_pem([cas["east1"]]))
    west.set_bundle("kubevirt-ca", to_pem([cas["west1"], cas["west-expired"]]))

    report = run_once(pair)

    assert report.ok, report.errors
    assert east.bundle("kubevirt-external-ca") == to_pem([cas["west1"]])  # not the expired one
    assert west.bundle("kubevirt-external-ca") == to_pem([cas["east1"]])
    assert east.events("CATrustSynced") and west.events("CATrustSynced")


def test_the_cli_entry_point_exits_0_and_a_second_run_writes_nothing(pair, east, west):
    before = (east.rv("kubevirt-external-ca"), west.rv("kubevirt-external-ca"))
    assert cli.main(flags(pair, "--once", "--log-level", "warning")) == 0
    assert (east.rv("kubevirt-external-ca"), west.rv("kubevirt-external-ca")) == before


def test_after_virt_operator_merged_the_inbox_nothing_is_written(pair, east, west):
    east.merge_inbox()
    west.merge_inbox()
    before = (east.rv("kubevirt-external-ca"), west.rv("kubevirt-external-ca"))
    report = run_once(pair)
    assert report.ok and report.errors == []
    assert (east.rv("kubevirt-external-ca"), west.rv("kubevirt-external-ca")) == before
    assert east.bundle("kubevirt-external-ca") == ""


def test_a_rotated_ca_is_synced(pair, east, west, cas):
    west.set_bundle("kubevirt-ca", to_pem([cas["west1"], cas["west2"], cas["east1"]]))
    report = run_once(pair)
    assert report.ok, report.errors
    assert east.bundle("kubevirt-external-ca") == to_pem([cas["west2"]])
    east.merge_inbox()


def test_a_read_only_cluster_is_never_written(pair, east, west, cas):
    east.set_bundle("kubevirt-ca", (east.bundle("kubevirt-ca") or "") + to_pem([cas["east2"]]))
    before = west.rv("kubevirt-external-ca")
    report = run_once(pair, manage=("east",))
    assert report.ok, report.errors
    assert west.rv("kubevirt-external-ca") == before  # east2 is missing there, but read-only
    assert run_once(pair, "--dry-run").ok  # dry run: decides, writes nothing
    assert west.rv("kubevirt-external-ca") == before
    assert run_once(pair).ok
    assert west.bundle("kubevirt-external-ca") == to_pem([cas["east2"]])
    west.merge_inbox()


# --- the long-running service: watch-driven passes, /healthz, /metrics ----------------------------
@contextlib.contextmanager
def serving(pair: tuple[Cluster, Cluster]) -> Iterator[Service]:
    """The service (resync 1h) on a thread, yielded once its first pass ran and every watch
    has listed: changes from then on are seen."""
    settings = cli.settings_from_args(flags(pair, "--metrics-port", "0", "--resync-period", "1h"))
    registry = Registry(settings)
    service = Service(settings, registry, ReconcilerMetrics())
    loop = asyncio.new_event_loop()
    task = loop.create_task(service.run(host="127.0.0.1"))

    def serve() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        eventually(lambda: service.port is not None and service.watches.all_ready())
        yield service
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=30)
        registry.close()
    assert not thread.is_alive()


def test_the_service_reacts_to_a_ca_change_and_serves_metrics(pair, east, west, cas):
    with serving(pair) as service:
        east.set_bundle("kubevirt-ca", (east.bundle("kubevirt-ca") or "") +
                        to_pem([cas["east3"]]))
        # Resync is 1h: only the kubevirt-ca watch can trigger this pass.
        eventually(lambda: west.bundle("kubevirt-external-ca") == to_pem([cas["east3"]]))
        base = f"http://127.0.0.1:{service.port}"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
            assert response.status == 200

        def metrics_text() -> str:
            with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
                return str(response.read().decode())

        # The counter follows the write (and its Event): poll, do not race it.
        eventually(lambda: 'dlm_guard_ca_sync_total{cluster="west",result="updated"}'
                   in metrics_text())
        text = metrics_text()
        assert 'dlm_guard_cluster_up{cluster="west"} 1.0' in text
        assert 'dlm_guard_peer_ca_expiry_timestamp_seconds{cluster="east",peer="west"}' in text
        assert ('dlm_guard_peer_ca_latest_expiry_timestamp_seconds{cluster="east",peer="west"}'
                in text)
    west.merge_inbox()


def test_ca_events_run_ca_passes_that_list_no_vmims_and_vmim_events_full_ones(
        pair, east, west, cas, monkeypatch):
    listed: list[str] = []
    real_list = gather.list_kubevirt

    def counting_list(api: k8s.ApiClient, kind: str, timeout: float) -> list[dict[str, Any]]:
        listed.append(kind)
        return real_list(api, kind, timeout)

    monkeypatch.setattr(gather, "list_kubevirt", counting_list)
    with serving(pair) as service:
        scopes: list[str] = []

        def recording(method: Callable[[], PassReport], scope: str) -> Callable[[], PassReport]:
            def run() -> PassReport:
                scopes.append(scope)
                return method()
            return run

        for name, scope in (("run_pass", "full"), ("run_ca_pass", "ca")):
            monkeypatch.setattr(service.reconciler, name,
                                recording(getattr(service.reconciler, name), scope))
        assert listed  # the first pass is a full one
        listed.clear()
        west.set_bundle("kubevirt-ca", (west.bundle("kubevirt-ca") or "") +
                        to_pem([cas["west4"]]))
        eventually(lambda: east.bundle("kubevirt-external-ca") == to_pem([cas["west4"]]))
        # Our write echoes back on east's inbox watch: one more CA pass, still no lists.
        eventually(lambda: len(scopes) >= 2)
        assert set(scopes) == {"ca"} and listed == []

        east.ensure_namespace(VM_NS)
        east.create("virtualmachineinstancemigrations", vmim("probe-in", "receive", "probe",
                                                             "probe"))
        try:
            eventually(lambda: "full" in scopes)
            eventually(lambda: "VirtualMachineInstanceMigration" in listed)
        finally:
            east.custom.delete_namespaced_custom_object(
                "kubevirt.io", "v1", VM_NS, "virtualmachineinstancemigrations", "probe-in")
    east.merge_inbox()


# --- migration clean-up ---------------------------------------------------------------------------
def vm(name: str, run_strategy: str) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": VM_NS},
            "spec": {"runStrategy": run_strategy, "template": {"spec": {
                "domain": {"devices": {}, "resources": {"requests": {"memory": "128Mi"}}}}}}}


def vmim(name: str, role: str, mid: str, vmi: str) -> dict[str, Any]:
    side = ({"sendTo": {"migrationID": mid, "connectURL": "10.0.0.1:9185"}} if role == "sendTo"
            else {"receive": {"migrationID": mid}})
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": name, "namespace": VM_NS}, "spec": {"vmiName": vmi, **side}}


def failed_status(at: datetime) -> dict[str, Any]:
    """The status virt-controller leaves on a failed migration (docs/kubevirt-facts.md)."""
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"phase": "Failed", "phaseTransitionTimestamps": [
        {"phase": "Pending", "phaseTransitionTimestamp": stamp},
        {"phase": "Failed", "phaseTransitionTimestamp": stamp}]}


def test_failed_migration_leftovers_are_deleted_and_the_source_vm_is_untouched(pair, east, west):
    for api in (east, west):
        api.ensure_namespace(VM_NS)
    west.create("virtualmachines", vm("guest", "Always"))  # the source
    west.create("virtualmachineinstancemigrations", vmim("guest-out", "sendTo", "mig-1", "guest"))
    east.create("virtualmachines", vm("guest", "WaitAsReceiver"))  # the target
    east.create("virtualmachineinstancemigrations", vmim("guest-in", "receive", "mig-1", "guest"))
    # An unrelated, still waiting pair must survive.
    east.create("virtualmachines", vm("other", "WaitAsReceiver"))
    east.create("virtualmachineinstancemigrations", vmim("other-in", "receive", "mig-2", "other"))
    west.create("virtualmachineinstancemigrations", vmim("other-out", "sendTo", "mig-2", "other"))
    failed_at = datetime.now(UTC) - timedelta(minutes=1)
    east.set_status("virtualmachineinstancemigrations", "guest-in", failed_status(failed_at))
    west.set_status("virtualmachineinstancemigrations", "guest-out", failed_status(failed_at))
    source_vm_before = west.custom.get_namespaced_custom_object(
        "kubevirt.io", "v1", VM_NS, "virtualmachines", "guest")

    metrics = ReconcilerMetrics()
    report = run_once(pair, "--gc-grace", "0", metrics=metrics)

    assert report.ok, report.errors
    assert not east.exists("virtualmachineinstancemigrations", "guest-in")
    assert not east.exists("virtualmachines", "guest")  # the WaitAsReceiver target VM
    assert not west.exists("virtualmachineinstancemigrations", "guest-out")
    source_vm_after = west.custom.get_namespaced_custom_object(
        "kubevirt.io", "v1", VM_NS, "virtualmachines", "guest")
    assert source_vm_after["metadata"]["resourceVersion"] == \
        source_vm_before["metadata"]["resourceVersion"]
    for name in ("other-in",):
        assert east.exists("virtualmachineinstancemigrations", name)
    assert east.exists("virtualmachines", "other")
    assert west.exists("virtualmachineinstancemigrations", "other-out")
    assert east.events("MigrationCleanedUp", VM_NS)
    text = metrics.exposition().decode()
    assert 'dlm_guard_gc_deletions_total{reason="failed-target"} 2.0' in text
    assert 'dlm_guard_gc_deletions_total{reason="failed-source"} 1.0' in text


def test_gc_dry_run_deletes_nothing(pair, east):
    east.create("virtualmachines", vm("dry", "WaitAsReceiver"))
    east.create("virtualmachineinstancemigrations", vmim("dry-in", "receive", "mig-3", "dry"))
    east.set_status("virtualmachineinstancemigrations", "dry-in",
                    failed_status(datetime.now(UTC) - timedelta(minutes=1)))
    report = run_once(pair, "--gc-grace", "0", "--dry-run")
    assert report.ok and [r.outcome for _, r in report.deletions] == ["dry-run", "dry-run"]
    assert east.exists("virtualmachineinstancemigrations", "dry-in")
    assert east.exists("virtualmachines", "dry")


# --- concurrency and ownership guards against a real apiserver ----------------------------------
def test_a_stale_resource_version_is_retried_after_rereading(pair, east, cas):
    registry = Registry(cli.settings_from_args(flags(pair)))
    try:
        stale = east.rv("kubevirt-external-ca")
        east.set_bundle("kubevirt-external-ca", "")  # somebody (virt-operator) wrote since
        write = CaWrite(cluster="east", namespace=NS, bundle=to_pem([cas["west2"]]),
                        fingerprints=("x",), peers=("west",), resource_version=stale)
        result = Actor({c.name: c for c in registry.clusters}, dry_run=False, timeout=5.0,
                       metrics=ReconcilerMetrics()).write_ca(write)
        assert (result.ok, result.outcome) == (True, "updated")
        assert east.bundle("kubevirt-external-ca") == to_pem([cas["west2"]])
    finally:
        registry.close()
        east.set_bundle("kubevirt-external-ca", "")


def test_gc_never_deletes_an_object_recreated_under_the_same_name(pair, east):
    east.ensure_namespace(VM_NS)
    old = east.create("virtualmachineinstancemigrations", vmim("again", "receive", "mig-9", "x"))
    east.custom.delete_namespaced_custom_object("kubevirt.io", "v1", VM_NS,
                                                "virtualmachineinstancemigrations", "again")
    east.create("virtualmachineinstancemigrations", vmim("again", "receive", "mig-9", "x"))
    registry = Registry(cli.settings_from_args(flags(pair)))
    try:
        stale = Deletion("east", "VirtualMachineInstanceMigration", VM_NS, "again",
                         old["metadata"]["uid"], "failed-target")
        result = Actor({c.name: c for c in registry.clusters}, dry_run=False, timeout=5.0,
                       metrics=ReconcilerMetrics()).delete(stale, old)
    finally:
        registry.close()
    assert result.ok and result.outcome == "conflict"
    assert east.exists("virtualmachineinstancemigrations", "again")


def test_leader_election_on_a_real_lease(east):
    config = LeaseConfig("e2e-lease", "default", "replica-a", duration=timedelta(seconds=2),
                         renew_deadline=timedelta(seconds=1), retry_period=timedelta(seconds=0.2))
    a = LeaderElector(east.client, config)
    b = LeaderElector(east.client, replace(config, identity="replica-b"))
    assert a.step() and a.is_leader()
    assert not b.step()
    # a stops renewing (a crash): within its renew deadline it stops acting by itself...
    time.sleep(1.1)
    assert not a.is_leader()
    # ...and b takes over once it has seen the same record for a whole lease duration.
    eventually(b.step, timeout=10)
    assert not a.step() and not a.is_leader()
    b.release()  # hand over at shutdown: a can take it at once
    assert a.step()
    a.release()


def test_in_a_pod_peers_come_from_labelled_secrets_without_restart(pair, east, west, cas):
    """`local` is east (standing in for in-cluster config); west arrives as a Secret."""
    settings = cli.settings_from_args(argparse.Namespace(**{
        **vars(flags(pair)), "cluster": [], "manage": [], "namespace": "dlm"}))
    east.ensure_namespace("dlm")
    registry = Registry(settings, local_client=lambda: Api(pair[0]).client)
    try:
        assert [c.name for c in registry.refresh()] == ["local"]
        kubeconfig = base64.b64encode(pair[1].kubeconfig.read_bytes()).decode()
        east.core.create_namespaced_secret("dlm", k8s.V1Secret.model_validate({
            "metadata": {"name": "west-peer", "labels": {"dlm-guard.io/peer": "west"}},
            "data": {"kubeconfig": kubeconfig}}))
        west.set_bundle("kubevirt-ca", (west.bundle("kubevirt-ca") or "") +
                        to_pem([cas["west3"]]))
        report = Reconciler(settings, registry, ReconcilerMetrics()).run_pass()
        assert report.ok, report.errors
        assert sorted(c.name for c in registry.clusters) == ["local", "west"]
        assert east.bundle("kubevirt-external-ca") == to_pem([cas["west3"]])
        assert west.bundle("kubevirt-external-ca") == ""  # a peer from a Secret is read-only
        east.core.delete_namespaced_secret("west-peer", "dlm")
        assert [c.name for c in registry.refresh()] == ["local"]
    finally:
        registry.close()
        east.merge_inbox()


def test_the_command_holds_the_lease_and_releases_it_on_sigterm(pair, east):
    """`dlm-guard reconcile` as a process: leader election, /healthz, clean SIGTERM."""
    argv = [sys.executable, "-m", "dlm_guard", "reconcile",
            "--cluster", f"east={pair[0].kubeconfig}", "--cluster", f"west={pair[1].kubeconfig}",
            "--manage", "east", "--leader-elect", "--leader-election-namespace", "default",
            "--metrics-port", "0", "--log-format", "json"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: lines.extend(
        json.loads(line) for line in process.stderr or () if line.startswith("{")), daemon=True)
    reader.start()
    try:
        eventually(lambda: any(e.get("msg") == "reconcile pass done" for e in list(lines)))
        port = next(e["port"] for e in list(lines) if e.get("msg", "").startswith("serving"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        lease = east.custom.get_namespaced_custom_object(
            "coordination.k8s.io", "v1", "default", "leases", "dlm-guard-reconciler")
        assert lease["spec"]["holderIdentity"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        if process.stderr:
            process.stderr.close()
    lease = east.custom.get_namespaced_custom_object(
        "coordination.k8s.io", "v1", "default", "leases", "dlm-guard-reconciler")
    assert lease["spec"]["holderIdentity"] == ""  # handed over, not left to expire


# --- a peer goes down (keep last: it stops west's apiserver) ------------------------------------
def test_a_peer_going_down_leaves_the_other_cluster_intact_and_reports_the_error(pair, east):
    names = ("kubevirt-ca", "kubevirt-external-ca")
    before = {n: (east.rv(n), east.bundle(n)) for n in names}
    vmims_before = east.custom.list_namespaced_custom_object(
        "kubevirt.io", "v1", VM_NS, "virtualmachineinstancemigrations")["items"]
    pair[1].processes[-1].stop()  # west's kube-apiserver

    metrics = ReconcilerMetrics()
    started = time.monotonic()
    report = run_once(pair, "--orphan-ttl", "0", metrics=metrics)

    assert time.monotonic() - started < 60
    assert not report.ok and any("west" in error for error in report.errors)
    assert {n: (east.rv(n), east.bundle(n)) for n in names} == before
    vmims_after = east.custom.list_namespaced_custom_object(
        "kubevirt.io", "v1", VM_NS, "virtualmachineinstancemigrations")["items"]
    # Orphan clean-up needs every cluster reachable: nothing of east's was deleted.
    assert [o["metadata"]["resourceVersion"] for o in vmims_after] == \
        [o["metadata"]["resourceVersion"] for o in vmims_before]
    text = metrics.exposition().decode()
    assert 'dlm_guard_cluster_up{cluster="west"} 0.0' in text
    assert 'dlm_guard_cluster_up{cluster="east"} 1.0' in text
    assert cli.main(flags(pair, "--once", "--log-level", "error")) == 1
