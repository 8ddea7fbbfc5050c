"""The reconciler's Prometheus metrics, on a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class ReconcilerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.peer_ca_expiry = Gauge(
            "dlm_guard_peer_ca_expiry_timestamp_seconds",
            "Earliest NotAfter of the currently valid CAs a peer offers to a managed cluster",
            ["cluster", "peer"], registry=r)
        # The one to alert on: the earliest dips below a day in every normal rotation overlap.
        self.peer_ca_latest_expiry = Gauge(
            "dlm_guard_peer_ca_latest_expiry_timestamp_seconds",
            "NotAfter of the newest CA of a peer (the one it signs with, first in its "
            "kubevirt-ca): within a day means the peer failed to rotate its CA",
            ["cluster", "peer"], registry=r)
        self.ca_sync = Counter(
            "dlm_guard_ca_sync_total",
            "CA sync outcomes per managed cluster and pass "
            "(in-sync, pending, created, updated, dry-run, skipped, error)",
            ["cluster", "result"], registry=r)
        self.ca_sync_errors = Counter(
            "dlm_guard_ca_sync_errors_total", "CA sync writes that failed", registry=r)
        # Flapping trust: the fix is in the KubeVirt CR (reconciler/readd.py).
        self.ca_readded = Counter(
            "dlm_guard_ca_readded_total",
            "CA certificates written again into a cluster's kubevirt-external-ca after "
            "virt-operator had merged them into its kubevirt-ca and dropped them",
            ["cluster", "peer"], registry=r)
        self.cluster_up = Gauge(
            "dlm_guard_cluster_up", "1 when the last pass could read the cluster, else 0",
            ["cluster"], registry=r)
        self.gc_deletions = Counter(
            "dlm_guard_gc_deletions_total", "Objects deleted by migration clean-up",
            ["reason"], registry=r)
        self.gc_errors = Counter(
            "dlm_guard_gc_errors_total", "Migration clean-up deletions that failed", registry=r)
        self.passes = Counter(
            "dlm_guard_reconcile_passes_total", "Reconcile passes, by whether one had errors",
            ["result"], registry=r)
        self._shown: dict[Gauge, set[tuple[str, ...]]] = {}

    def set_peer_expiry(self, expiry: Mapping[tuple[str, str], datetime]) -> None:
        self._replace(self.peer_ca_expiry, {k: v.timestamp() for k, v in expiry.items()})

    def set_peer_latest_expiry(self, expiry: Mapping[tuple[str, str], datetime]) -> None:
        self._replace(self.peer_ca_latest_expiry, {k: v.timestamp() for k, v in expiry.items()})

    def know_pairs(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Show the re-add counter at 0 for every (cluster, peer) pair, so that the alert's
        increase() sees the first re-add too (a series that starts at 1 has no increase)."""
        for cluster, peer in pairs:
            self.ca_readded.labels(cluster, peer)

    def set_clusters_up(self, up: Mapping[str, bool]) -> None:
        self._replace(self.cluster_up, {(name,): 1.0 if value else 0.0
                                        for name, value in up.items()})

    def _replace(self, gauge: Gauge, values: Mapping[tuple[str, ...], float]) -> None:
        """Replace a gauge's whole set of label values, so a removed peer stops being reported."""
        for labels in self._shown.get(gauge, set()) - set(values):
            gauge.remove(*labels)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        self._shown[gauge] = set(values)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
