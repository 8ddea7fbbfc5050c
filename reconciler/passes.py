"""One reconcile pass: gather (freeze the caches) -> decide (pure) -> act.

A pass always works on the full set of clusters (reconcile sets, not events) and reads only the
caches (reconciler/watches.py): no list call per pass, so its cost in API requests does not
grow with the number of objects, and a CA rotation needs no special, narrower kind of pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.act import Actor, ActOutcome, ActResult
from reconciler.clusters import Registry
from reconciler.gather import GatherResult, gather_all
from reconciler.gc import Deletion, GcMemory, GcPlan, GcSettings, Mark, decide_gc
from reconciler.metrics import ReconcilerMetrics
from reconciler.readd import CaHistory, record_write
from reconciler.settings import Settings
from reconciler.trust import ClusterTrust, TrustPlan, decide_trust
from reconciler.watches import ClusterWatches

log = logging.getLogger(__name__)


@dataclass
class PassReport:
    errors: list[str] = field(default_factory=list)
    ca: list[tuple[ClusterTrust, ActResult | None]] = field(default_factory=list)
    deletions: list[tuple[Deletion, ActResult]] = field(default_factory=list)
    marks: list[tuple[Mark, ActResult]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Reconciler:
    """Runs passes; keeps what must survive between them (GC memory, last problems)."""

    def __init__(self, settings: Settings, registry: Registry, metrics: ReconcilerMetrics,
                 watches: ClusterWatches, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 may_act: Callable[[], bool] = lambda: True) -> None:
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._watches = watches
        self._clock = clock
        self._may_act = may_act
        self._gc_settings = GcSettings(grace=settings.gc_grace, orphan_ttl=settings.orphan_ttl,
                                       stuck_timeout=settings.stuck_timeout)
        self.gc_memory = GcMemory()
        self.ca_history = CaHistory()  # evidence of merged-and-dropped CAs (reconciler/readd.py)
        self._reported_problems: dict[str, tuple[str, ...]] = {}

    def refresh_clusters(self) -> None:
        """Watch the known clusters, then re-read the peers (in a pod) from the local cache."""
        self._watches.sync(self._registry.clusters)
        self._watches.sync(self._registry.refresh(self._watches.peer_secrets()))

    def run_pass(self) -> PassReport:
        started = time.perf_counter()
        now = self._clock()
        self.refresh_clusters()
        clusters = self._registry.clusters
        gathered = gather_all(clusters, self._watches.caches)
        self._metrics.set_clusters_up({n: s is not None for n, s in gathered.snapshots.items()})
        report = PassReport(errors=[f"cluster {name}: {error}"
                                    for name, error in sorted(gathered.errors.items())])
        for name, error in sorted(gathered.errors.items()):
            log.debug("cluster unreachable", extra={"cluster": name, "error": error})
        actor = Actor({c.name: c for c in clusters}, dry_run=self._settings.dry_run,
                      timeout=self._settings.api_timeout.total_seconds(),
                      metrics=self._metrics, may_act=self._may_act, clock=self._clock)
        managed = frozenset(c.name for c in clusters if c.managed)
        self._trust(actor, gathered, managed, now, report)
        stores = {n: (s.store if s is not None else None) for n, s in gathered.snapshots.items()}
        plan = decide_gc(stores, managed, now, self._gc_settings, self.gc_memory)
        self.gc_memory = plan.memory
        self._act_gc(actor, plan, gathered, report)
        self._metrics.passes.labels("ok" if report.ok else "error").inc()
        log.info("reconcile pass done", extra={
            **_summary(report, len(clusters)),
            "seconds": round(time.perf_counter() - started, 4)})
        return report

    def _trust(self, actor: Actor, gathered: GatherResult, managed: frozenset[str],
               now: datetime, report: PassReport) -> None:
        plan = decide_trust(gathered.snapshots, managed, now, self._settings.max_certificates,
                            own_ca_only=self._settings.trust_own_ca_only,
                            history=self.ca_history)
        self._metrics.know_pairs(plan.expiry.keys() | plan.latest_expiry.keys())
        self._metrics.set_peer_expiry(plan.expiry)
        self._metrics.set_peer_latest_expiry(plan.latest_expiry)
        self._report_bundle_problems(plan)
        for decision in plan.clusters:
            if decision.write is None:
                self._metrics.ca_sync.labels(decision.cluster, decision.outcome.value).inc()
                log.debug("CA trust", extra={"cluster": decision.cluster,
                                             "result": decision.outcome.value,
                                             "detail": decision.detail})
                report.ca.append((decision, None))
                continue
            result = actor.write_ca(decision.write)
            report.ca.append((decision, result))
            if result.outcome in (ActOutcome.CREATED, ActOutcome.UPDATED):
                write = decision.write
                record_write(self.ca_history, write.cluster, write.fingerprints, write.readded,
                             now)
            if not result.ok:
                report.errors.append(f"cluster {decision.cluster}: CA sync: {result.detail}")

    def _act_gc(self, actor: Actor, plan: GcPlan, gathered: GatherResult,
                report: PassReport) -> None:
        for deletion in plan.deletions:
            snapshot = gathered.snapshots.get(deletion.cluster)
            observed = (snapshot.store.get(deletion.kind, deletion.namespace, deletion.name)
                        if snapshot is not None else None)
            result = actor.delete(deletion, observed)
            report.deletions.append((deletion, result))
            if not result.ok:
                report.errors.append(f"cluster {deletion.cluster}: delete {deletion.kind} "
                                     f"{deletion.namespace}/{deletion.name}: {result.detail}")
        for mark in plan.marks:
            result = actor.annotate(mark)
            report.marks.append((mark, result))
            if not result.ok:
                report.errors.append(f"cluster {mark.cluster}: annotate "
                                     f"{mark.namespace}/{mark.name}: {result.detail}")

    def _report_bundle_problems(self, plan: TrustPlan) -> None:
        """Log a peer's bundle problems when they change, not on every pass."""
        for name, peer in plan.peers.items():
            problems = peer.notable_problems
            if problems and self._reported_problems.get(name) != problems:
                log.warning("skipped entries in a peer's kubevirt-ca bundle",
                            extra={"peer": name, "problems": "; ".join(problems)})
            self._reported_problems[name] = problems


def _summary(report: PassReport, clusters: int) -> dict[str, Any]:
    writes = sum(1 for _, r in report.ca if r is not None
                 and r.outcome in (ActOutcome.CREATED, ActOutcome.UPDATED))
    deleted = sum(1 for _, r in report.deletions if r.outcome is ActOutcome.DELETED)
    return {"clusters": clusters, "ca_writes": writes, "deletions": deleted,
            "evidence_writes": sum(1 for _, r in report.marks
                                   if r.outcome is ActOutcome.ANNOTATED),
            "errors": len(report.errors)}
