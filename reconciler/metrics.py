"""The reconciler's Prometheus metrics, on a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Mapping
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
        self.ca_sync = Counter(
            "dlm_guard_ca_sync_total",
            "CA sync outcomes per managed cluster and pass "
            "(in-sync, pending, created, updated, dry-run, skipped, error)",
            ["cluster", "result"], registry=r)
        self.ca_sync_errors = Counter(
            "dlm_guard_ca_sync_errors_total", "CA sync writes that failed", registry=r)
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
        self._expiry_labels: set[tuple[str, str]] = set()
        self._up_labels: set[str] = set()

    def set_peer_expiry(self, expiry: Mapping[tuple[str, str], datetime]) -> None:
        """Replace the whole set, so a removed peer stops being reported."""
        for labels in self._expiry_labels - set(expiry):
            self.peer_ca_expiry.remove(*labels)
        for (cluster, peer), when in expiry.items():
            self.peer_ca_expiry.labels(cluster, peer).set(when.timestamp())
        self._expiry_labels = set(expiry)

    def set_clusters_up(self, up: Mapping[str, bool]) -> None:
        for name in self._up_labels - set(up):
            self.cluster_up.remove(name)
        for name, value in up.items():
            self.cluster_up.labels(name).set(1 if value else 0)
        self._up_labels = set(up)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
