"""CA trust that flaps, on two real local clusters, with virt-operator's merge-and-drop rule
played by controlplane.virt_operator_standin (upstream MergeCABundle and friends).

east signs with a CA older than its renewBefore (the vanilla default 20 % of 7 days = 1.4 days),
so its virt-operator drops west's CA at the next reconcile after merging it. The reconciler must
notice that it writes the same CA again, count it, and say what to change.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from certs.bundle import to_pem
from certs.generate import make_ca
from controlplane import Cluster, install_crds_on, start_clusters
from controlplane.pytest_plugin import binaries  # noqa: F401  (fixture)
from controlplane.virt_operator_standin import reconcile_ca_bundle
from dlm_guard.projection import KIND_CONFIGMAP
from reconciler import cli
from reconciler.clusters import Registry
from reconciler.metrics import ReconcilerMetrics
from reconciler.passes import PassReport, Reconciler
from reconciler.watches import ClusterWatches
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

NS = "kubevirt"
NOW = datetime.now(UTC)
VANILLA_OVERLAP = timedelta(days=7) * 0.2  # GetCARenewBefore without settings


class Site:
    """One cluster as virt-operator's stand-in sees it: its API and the CA it signs with."""

    def __init__(self, cluster: Cluster, ca: x509.Certificate) -> None:
        self.cluster, self.ca = cluster, ca
        self.client = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig),
                                                        persist_config=False)
        self.core = k8s.CoreV1Api(self.client)
        self.custom = k8s.CustomObjectsApi(self.client)

    def install(self, self_signed: dict[str, Any] | None) -> None:
        """What a KubeVirt install leaves: namespace, KubeVirt CR, kubevirt-ca, empty inbox."""
        self.core.create_namespace(k8s.V1Namespace.model_validate({"metadata": {"name": NS}}))
        spec = {"certificateRotateStrategy": {"selfSigned": self_signed}} if self_signed else {}
        self.custom.create_namespaced_custom_object("kubevirt.io", "v1", NS, "kubevirts", {
            "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
            "metadata": {"name": "kubevirt", "namespace": NS}, "spec": spec})
        for name, bundle in (("kubevirt-ca", to_pem([self.ca])), ("kubevirt-external-ca", "")):
            self.core.create_namespaced_config_map(NS, k8s.V1ConfigMap.model_validate({
                "metadata": {"name": name, "namespace": NS}, "data": {"ca-bundle": bundle}}))

    def virt_operator(self, overlap: timedelta) -> None:
        reconcile_ca_bundle(self.client, NS, self.ca, overlap, datetime.now(UTC))

    def configmap(self, name: str) -> Any:
        return self.core.read_namespaced_config_map(name, NS)

    def trusts(self, ca: x509.Certificate) -> bool:
        return to_pem([ca]) in (self.configmap("kubevirt-ca").data or {}).get("ca-bundle", "")

    def inbox(self) -> str:
        return str((self.configmap("kubevirt-external-ca").data or {}).get("ca-bundle") or "")

    def events(self, reason: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(NS).items if e.reason == reason]


def ca(name: str, age: timedelta) -> x509.Certificate:
    start = NOW - age
    return make_ca(start, start + timedelta(days=7), common_name=f"kubevirt.io@{name}").cert


class Passes:
    """One long-lived Reconciler (its memory spans the passes) over caches of both clusters.

    Passes read the caches, which follow the API server by watch: before each pass, wait until
    the caches hold the CA ConfigMaps as the API server has them now, so a pass decides on what
    the stand-in just wrote, never on the state before it."""

    def __init__(self, reconcile: Reconciler, watches: ClusterWatches,
                 sites: dict[str, Site]) -> None:
        self.reconcile, self.watches, self.sites = reconcile, watches, sites

    def run_pass(self) -> PassReport:
        eventually(self._caught_up, timeout=30, message="caches did not catch up")
        return self.reconcile.run_pass()

    def _caught_up(self) -> bool:
        for name, site in self.sites.items():
            cache = self.watches.caches[name]
            for configmap in ("kubevirt-ca", "kubevirt-external-ca"):
                live = site.configmap(configmap).metadata.resource_version
                found = cache.table(configmap).list(KIND_CONFIGMAP)
                if not found or found[0]["metadata"]["resourceVersion"] != live:
                    return False
        return True


@contextmanager
def reconciler(pair: tuple[Cluster, Cluster], metrics: ReconcilerMetrics,
               sites: tuple[Site, Site]) -> Iterator[Passes]:
    """Passes managing east only."""
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["reconcile", "--cluster", f"east={pair[0].kubeconfig}",
                              "--cluster", f"west={pair[1].kubeconfig}", "--manage", "east",
                              "--api-timeout", "5s"])
    settings = cli.settings_from_args(args)
    registry = Registry(settings)
    watches = ClusterWatches(settings)
    try:
        watches.sync(registry.clusters)
        assert watches.wait_synced(30)
        yield Passes(Reconciler(settings, registry, metrics, watches), watches,
                     {"east": sites[0], "west": sites[1]})
    finally:
        watches.stop()
        watches.join(10)
        registry.close()


def sites(pair: tuple[Cluster, Cluster]) -> tuple[Site, Site]:
    """east signs with a 2-day-old CA, west with a fresh one."""
    return (Site(pair[0], ca("east", timedelta(days=2))),
            Site(pair[1], ca("west", timedelta(hours=1))))


@pytest.fixture
def pair(binaries, tmp_path) -> Iterator[tuple[Cluster, Cluster]]:  # noqa: F811
    with start_clusters(2, tmp_path, names=["east", "west"], binaries=binaries) as started:
        install_crds_on(started)
        yield started[0], started[1]


def readded(metrics: ReconcilerMetrics, cluster: str, peer: str) -> float | None:
    return metrics.registry.get_sample_value("dlm_guard_ca_readded_total",
                                             {"cluster": cluster, "peer": peer})


def test_a_ca_merged_and_dropped_by_virt_operator_is_counted_and_explained(pair, caplog):
    # east's CA is 2 days old: older than the vanilla overlap, so merged CAs are dropped.
    east, west = sites(pair)
    east.install(None)
    west.install(None)
    metrics = ReconcilerMetrics()
    with reconciler(pair, metrics, (east, west)) as reconcile:
        assert reconcile.run_pass().ok
        assert east.inbox() == to_pem([west.ca])
        assert readded(metrics, "east", "west") == 0.0  # shown from the start, for increase()
        assert east.events("CATrustSynced")

        east.virt_operator(VANILLA_OVERLAP)  # merges the inbox, empties it
        assert east.trusts(west.ca) and east.inbox() == ""
        # virt-operator replaced the inbox's metadata: nothing of ours survives there.
        assert east.configmap("kubevirt-external-ca").metadata.labels == {
            "app.kubernetes.io/managed-by": "virt-operator"}
        assert reconcile.run_pass().ok
        assert east.inbox() == ""  # in sync: nothing written

        east.virt_operator(VANILLA_OVERLAP)  # the next reconcile drops it again
        assert not east.trusts(west.ca)
        assert reconcile.run_pass().ok
        assert east.inbox() == to_pem([west.ca])
        assert readded(metrics, "east", "west") == 1.0
        [warning] = east.events("CATrustFlapping")
        assert warning.type == "Warning"
        assert warning.involved_object.name == "kubevirt-external-ca"
        assert "renewBefore >= duration / 2" in warning.message
        assert "spec.certificateRotateStrategy.selfSigned.ca" in warning.message
        assert "east has duration=7d (default), renewBefore=1d9h36m (default)" in warning.message
        [line] = [r for r in caplog.records if r.levelno == logging.WARNING
                  and r.getMessage().startswith("CA trust flaps")]
        assert "renewBefore >= duration / 2 in the KubeVirt CR " \
               "spec.certificateRotateStrategy.selfSigned.ca" in line.getMessage()
        assert vars(line)["current"] == "duration=7d (default), renewBefore=1d9h36m (default)"
        assert (vars(line)["cluster"], vars(line)["peers"]) == ("east", "west")

        # Merge and drop faster than a pass (two reconciles back to back): still caught.
        east.virt_operator(VANILLA_OVERLAP)
        east.virt_operator(VANILLA_OVERLAP)
        assert not east.trusts(west.ca) and east.inbox() == ""
        assert reconcile.run_pass().ok
        assert readded(metrics, "east", "west") == 2.0
        assert len(east.events("CATrustFlapping")) == 1  # the Warning repeats only hourly
        assert reconcile.run_pass().ok  # waiting in the inbox: no write, no count
        assert readded(metrics, "east", "west") == 2.0


def test_with_renew_before_at_half_the_duration_merged_cas_stay_and_nothing_is_readded(pair):
    # The same 2-day-old CA, but renewBefore 3.5 d: it is still inside the overlap.
    settings = {"ca": {"duration": "168h0m0s", "renewBefore": "84h0m0s"}}
    east, west = sites(pair)
    east.install(settings)
    west.install(settings)
    metrics = ReconcilerMetrics()
    with reconciler(pair, metrics, (east, west)) as reconcile:
        assert reconcile.run_pass().ok
        for _ in range(3):
            east.virt_operator(timedelta(hours=84))
            assert east.trusts(west.ca)
            assert reconcile.run_pass().ok
        assert east.inbox() == ""
        assert readded(metrics, "east", "west") == 0.0
        assert east.events("CATrustFlapping") == []


def test_without_a_kubevirt_cr_the_warning_says_the_values_are_unknown(pair):
    east, west = sites(pair)
    east.install(None)
    west.install(None)
    east.custom.delete_namespaced_custom_object("kubevirt.io", "v1", NS, "kubevirts", "kubevirt")
    with pytest.raises(ApiException):
        east.custom.get_namespaced_custom_object("kubevirt.io", "v1", NS, "kubevirts", "kubevirt")
    metrics = ReconcilerMetrics()
    with reconciler(pair, metrics, (east, west)) as reconcile:
        assert reconcile.run_pass().ok
        east.virt_operator(VANILLA_OVERLAP)
        east.virt_operator(VANILLA_OVERLAP)
        assert reconcile.run_pass().ok
        [warning] = east.events("CATrustFlapping")
        assert warning.message.endswith("current values are unknown: no KubeVirt CR in "
                                        "namespace kubevirt.")
