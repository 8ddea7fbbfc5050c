"""One reconcile pass (gather -> decide -> act), and the long-running loop that triggers it.

A pass always works on the full set of clusters (reconcile sets, not events): a watch event only
says "look again soon". Passes run on a thread (the Kubernetes client is blocking) one at a time;
events arriving meanwhile coalesce into one more pass. Triggers: a change of either CA ConfigMap
or of any VMIM on any cluster, a peer Secret change (in a pod), leadership gained, the periodic
resync, and a cluster's backoff expiring.

When every event since the last pass came from a CA ConfigMap watch, the next pass is a CA trust
pass: it lists only the two CA ConfigMaps of each cluster, so a peer's CA rotation propagates in
the same time whatever the number of VMIMs and VMs (a full pass re-lists all of them). Anything
else (a VMIM, a peer Secret, leadership, resync, backoff expiry, `--once`) runs a full pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from dlm_guard.domain import (
    EXTERNAL_CA_CONFIGMAP,
    KIND_VMIM,
    KUBEVIRT_CA_CONFIGMAP,
    KUBEVIRT_GROUP,
    get_path,
)
from reconciler.act import Actor, ActResult
from reconciler.clusters import PEER_SECRET_SELECTOR, Cluster, Registry, decode
from reconciler.gather import (
    KUBEVIRT_VERSION,
    PLURALS,
    Backoff,
    CaSnapshot,
    GatherResult,
    Snapshot,
    describe_error,
    gather_all,
    gather_all_ca,
)
from reconciler.gc import Deletion, GcMemory, GcSettings, decide_gc
from reconciler.http import make_app, start_server
from reconciler.leader import LeaderElector
from reconciler.metrics import ReconcilerMetrics
from reconciler.readd import CaHistory, record_write
from reconciler.settings import LOCAL_CLUSTER, Settings
from reconciler.trust import ClusterTrust, TrustPlan, decide_trust

log = logging.getLogger(__name__)

# Coalesce bursts of watch events (our own writes echo back too) into one pass. Short, because it
# adds to every propagation delay (bench/README.md: 1.0 s made a CA rotation miss its 2 s target).
DEBOUNCE_SECONDS = 0.2
WATCH_TIMEOUT_SECONDS = 240


@dataclass
class PassReport:
    errors: list[str] = field(default_factory=list)
    ca: list[tuple[ClusterTrust, ActResult | None]] = field(default_factory=list)
    deletions: list[tuple[Deletion, ActResult]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Reconciler:
    """Runs passes; keeps what must survive between them (GC memory, backoff, last problems)."""

    def __init__(self, settings: Settings, registry: Registry, metrics: ReconcilerMetrics, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 may_act: Callable[[], bool] = lambda: True) -> None:
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._clock = clock
        self._may_act = may_act
        self._gc_settings = GcSettings(grace=settings.gc_grace, orphan_ttl=settings.orphan_ttl,
                                       stuck_timeout=settings.stuck_timeout)
        self.gc_memory = GcMemory()
        self.ca_history = CaHistory()  # evidence of merged-and-dropped CAs (reconciler/readd.py)
        self.backoff = Backoff(maximum=max(settings.resync_period, timedelta(seconds=1)))
        self._reported_problems: dict[str, tuple[str, ...]] = {}

    def run_pass(self) -> PassReport:
        """A full pass: CA trust and migration clean-up over every object."""
        now = self._clock()
        clusters = self._registry.refresh()
        gathered = gather_all(clusters, self._settings.api_timeout.total_seconds(), now,
                              None if self._settings.once else self.backoff)
        report, actor = self._trust_pass(clusters, gathered, now)
        managed = frozenset(c.name for c in clusters if c.managed)
        stores = {n: (s.store if s is not None else None) for n, s in gathered.snapshots.items()}
        deletions = decide_gc(stores, managed, now, self._gc_settings, self.gc_memory)
        self._act_gc(actor, deletions, gathered, report)
        return self._done(report, len(clusters), "full")

    def run_ca_pass(self) -> PassReport:
        """CA trust only, from the CA ConfigMaps alone. Uses the clusters already known: a peer
        Secret change is a watch event of its own, and that triggers a full pass."""
        now = self._clock()
        clusters = self._registry.clusters
        gathered = gather_all_ca(clusters, self._settings.api_timeout.total_seconds(), now,
                                 None if self._settings.once else self.backoff)
        report, _ = self._trust_pass(clusters, gathered, now)
        return self._done(report, len(clusters), "ca")

    def _trust_pass(self, clusters: list[Cluster],
                    gathered: GatherResult[CaSnapshot] | GatherResult[Snapshot],
                    now: datetime) -> tuple[PassReport, Actor]:
        """What both kinds of pass share: cluster health, trust decided and acted upon."""
        self.backoff.forget(c.name for c in clusters)
        self._metrics.set_clusters_up({n: s is not None for n, s in gathered.snapshots.items()})
        report = PassReport(errors=[f"cluster {name}: {error}"
                                    for name, error in sorted(gathered.errors.items())])
        managed = frozenset(c.name for c in clusters if c.managed)
        plan = decide_trust(gathered.snapshots, managed, now, self._settings.max_certificates,
                            own_ca_only=self._settings.trust_own_ca_only,
                            history=self.ca_history)
        self._metrics.know_pairs(plan.expiry.keys() | plan.latest_expiry.keys())
        self._metrics.set_peer_expiry(plan.expiry)
        self._metrics.set_peer_latest_expiry(plan.latest_expiry)
        self._report_bundle_problems(plan)
        actor = Actor({c.name: c for c in clusters}, dry_run=self._settings.dry_run,
                      timeout=self._settings.api_timeout.total_seconds(),
                      metrics=self._metrics, may_act=self._may_act, clock=self._clock)
        self._act_trust(actor, plan, report, now)
        return report, actor

    def _done(self, report: PassReport, clusters: int, scope: str) -> PassReport:
        self._metrics.passes.labels("ok" if report.ok else "error").inc()
        log.info("reconcile pass done", extra={**_summary(report, clusters), "scope": scope})
        return report

    def _act_trust(self, actor: Actor, plan: TrustPlan, report: PassReport,
                   now: datetime) -> None:
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
            if result.outcome in ("created", "updated"):
                write = decision.write
                record_write(self.ca_history, write.cluster, write.fingerprints, write.readded,
                             now)
            if not result.ok:
                report.errors.append(f"cluster {decision.cluster}: CA sync: {result.detail}")

    def _act_gc(self, actor: Actor, deletions: list[Deletion], gathered: GatherResult[Snapshot],
                report: PassReport) -> None:
        for deletion in deletions:
            snapshot = gathered.snapshots.get(deletion.cluster)
            observed = (snapshot.store.get(deletion.kind, deletion.namespace, deletion.name)
                        if snapshot is not None else None)
            result = actor.delete(deletion, observed)
            report.deletions.append((deletion, result))
            if not result.ok:
                report.errors.append(f"cluster {deletion.cluster}: delete {deletion.kind} "
                                     f"{deletion.namespace}/{deletion.name}: {result.detail}")

    def _report_bundle_problems(self, plan: TrustPlan) -> None:
        """Log a peer's bundle problems when they change, not on every pass."""
        for name, peer in plan.peers.items():
            problems = peer.notable_problems
            if problems and self._reported_problems.get(name) != problems:
                log.warning("skipped entries in a peer's kubevirt-ca bundle",
                            extra={"peer": name, "problems": "; ".join(problems)})
            self._reported_problems[name] = problems


def _summary(report: PassReport, clusters: int) -> dict[str, Any]:
    writes = sum(1 for _, r in report.ca if r is not None and r.outcome in ("created", "updated"))
    deleted = sum(1 for _, r in report.deletions if r.outcome == "deleted")
    return {"clusters": clusters, "ca_writes": writes, "deletions": deleted,
            "errors": len(report.errors)}


# --- watches: "something changed, look again" ----------------------------------------------------
class Watcher(threading.Thread):
    """Watches one list call and pokes on every change; re-lists on expiry or failure."""

    def __init__(self, label: str, list_call: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], poke: Callable[[], None]) -> None:
        super().__init__(name=f"watch-{label}", daemon=True)
        self.label = label
        self._list_call, self._args, self._kwargs = list_call, args, kwargs
        self._poke = poke
        self._stopped = threading.Event()
        self._watch: k8s_watch.Watch | None = None
        self.ready = threading.Event()  # set once the first list succeeded: watching from now

    def stop(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()  # takes effect at the next event only...
            # ...so also close the streaming response to end a blocked read now.
            response = getattr(self._watch, "_resp", None)
            if response is not None:
                with contextlib.suppress(Exception):
                    response.close()

    def run(self) -> None:
        delay, first, version = 1.0, True, None
        while not self._stopped.is_set():
            try:
                if version is None:  # (re)list: where to watch from
                    version = self._resource_version()
                    self.ready.set()
                    if not first:  # changes may have been missed while not watching
                        self._poke()
                    first = False
                # A watch that simply timed out resumes from the last version seen.
                version = self._stream(version)
                delay = 1.0
            except Exception as err:  # 410 Gone, transport errors: re-list after a pause
                if self._stopped.is_set():
                    return
                log.debug("watch interrupted", extra={"watch": self.label,
                                                      "error": describe_error(err)})
                first, version = False, None
                self._stopped.wait(delay)
                delay = min(delay * 2, 60.0)

    def _resource_version(self) -> str:
        response = self._list_call(*self._args, limit=1, _preload_content=False,
                                   _request_timeout=30, **self._kwargs)
        return str(decode(response).get("metadata", {}).get("resourceVersion") or "")

    def _stream(self, version: str) -> str:
        """Poke on every change until the server ends the watch; the last version seen."""
        self._watch = k8s_watch.Watch()
        events = self._watch.stream(self._list_call, *self._args, resource_version=version,
                                    timeout_seconds=WATCH_TIMEOUT_SECONDS, deserialize=False,
                                    _request_timeout=(10, WATCH_TIMEOUT_SECONDS + 30),
                                    **self._kwargs)
        for event in events:
            if self._stopped.is_set():
                break
            if not isinstance(event, dict):
                continue
            seen = get_path(event, "object", "metadata", "resourceVersion")
            version = str(seen) if seen else version
            if event.get("type") != "BOOKMARK":
                self._poke()
        return version


def watchers_for(cluster: Cluster, settings: Settings, poke: Callable[[], None],
                 poke_ca: Callable[[], None]) -> list[Watcher]:
    """`poke_ca` for the CA ConfigMap watches (a CA trust pass is enough), `poke` for the rest."""
    core, custom = k8s.CoreV1Api(cluster.api), k8s.CustomObjectsApi(cluster.api)
    found = [Watcher(f"{cluster.name}/{name}", core.list_namespaced_config_map,
                     (cluster.namespace,), {"field_selector": f"metadata.name={name}"}, poke_ca)
             for name in (KUBEVIRT_CA_CONFIGMAP, EXTERNAL_CA_CONFIGMAP)]
    found.append(Watcher(f"{cluster.name}/vmims", custom.list_cluster_custom_object,
                         (KUBEVIRT_GROUP, KUBEVIRT_VERSION, PLURALS[KIND_VMIM]), {}, poke))
    if settings.in_pod and cluster.name == LOCAL_CLUSTER:
        found.append(Watcher(f"{cluster.name}/peer-secrets", core.list_namespaced_secret,
                             (settings.own_namespace,), {"label_selector": PEER_SECRET_SELECTOR},
                             poke))
    return found


class WatchSet:
    """The watches of the current clusters; a changed or removed cluster's watches stop."""

    def __init__(self, settings: Settings, poke: Callable[[], None],
                 poke_ca: Callable[[], None]) -> None:
        self._settings = settings
        self._poke, self._poke_ca = poke, poke_ca
        self._by_cluster: dict[str, tuple[Cluster, list[Watcher]]] = {}

    def sync(self, clusters: list[Cluster]) -> None:
        wanted = {c.name: c for c in clusters}
        for name, (cluster, watchers) in list(self._by_cluster.items()):
            if wanted.get(name) is not cluster:
                for watcher in watchers:
                    watcher.stop()
                del self._by_cluster[name]
        for name, cluster in wanted.items():
            if name not in self._by_cluster:
                watchers = watchers_for(cluster, self._settings, self._poke, self._poke_ca)
                for watcher in watchers:
                    watcher.start()
                self._by_cluster[name] = (cluster, watchers)

    def stop(self) -> None:
        self.sync([])

    def all_ready(self) -> bool:
        """Every current watch has listed once (False before the first sync)."""
        return bool(self._by_cluster) and all(
            w.ready.is_set() for _, watchers in self._by_cluster.values() for w in watchers)


# --- the service ---------------------------------------------------------------------------------
class Service:
    """Long-running reconciler: HTTP endpoints, optional leader election, watches, passes."""

    def __init__(self, settings: Settings, registry: Registry, metrics: ReconcilerMetrics,
                 leader: LeaderElector | None = None) -> None:
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._leader = leader
        self.reconciler = Reconciler(settings, registry, metrics,
                                     may_act=leader.is_leader if leader else lambda: True)
        self._trigger = asyncio.Event()
        self._full_wanted = True  # some trigger since the last pass needs a full pass
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_tick = time.monotonic()
        self.port: int | None = None  # bound /metrics port, once serving
        self.watches = WatchSet(settings, self.poke, self.poke_ca)

    def healthy(self) -> bool:
        limit = self._settings.resync_period.total_seconds() * 2 + 120
        return time.monotonic() - self._last_tick < limit

    def poke(self) -> None:
        """Thread-safe: ask for another full pass soon."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._request, True)

    def poke_ca(self) -> None:
        """Thread-safe: a CA ConfigMap changed; a CA trust pass is enough unless more happens."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._request, False)

    def _request(self, full: bool) -> None:
        self._full_wanted = self._full_wanted or full
        self._trigger.set()

    async def run(self, host: str = "0.0.0.0") -> int:
        self._loop = asyncio.get_running_loop()
        runner, self.port = await start_server(make_app(self._metrics, self.healthy), host,
                                               self._settings.metrics_port)
        log.info("serving /healthz and /metrics", extra={"port": self.port})
        watches = self.watches
        leader_task = (asyncio.create_task(self._leader.run(self._on_leadership))
                       if self._leader else None)
        try:
            await self._forever(watches)
        finally:
            watches.stop()
            if leader_task is not None:
                leader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await leader_task
            if self._leader is not None:
                await asyncio.to_thread(self._leader.release)
            await runner.cleanup()
        return 0

    def _on_leadership(self, leading: bool) -> None:
        if leading:
            self.poke()

    async def _forever(self, watches: WatchSet) -> None:
        resync = self._settings.resync_period.total_seconds()
        while True:
            self._last_tick = time.monotonic()
            if self._leader is None or self._leader.is_leader():
                full, self._full_wanted = self._full_wanted, False
                await asyncio.to_thread(self.reconciler.run_pass if full
                                        else self.reconciler.run_ca_pass)
            watches.sync(self._registry.clusters)
            await self._wait(self._next_timeout(resync))

    def _next_timeout(self, resync: float) -> float:
        timeout = resync
        retry_at = self.reconciler.backoff.next_retry()
        if retry_at is not None:
            timeout = min(timeout, max((retry_at - datetime.now(UTC)).total_seconds(), 0.0))
        if self._leader is not None and not self._leader.is_leader():
            timeout = min(timeout, 2.0)  # a standby checks again soon, without busy-looping
        return max(timeout, DEBOUNCE_SECONDS)

    async def _wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._trigger.wait(), timeout)
        except TimeoutError:  # resync, a backoff expiring, a standby checking: all full passes
            self._full_wanted = True
        await asyncio.sleep(DEBOUNCE_SECONDS)
        self._trigger.clear()


def run_once(settings: Settings, registry: Registry, metrics: ReconcilerMetrics,
             leader: LeaderElector | None = None) -> int:
    """`--once`: one full pass; 0 when it had no errors, else 1."""
    if leader is not None and not leader.step():
        log.info("another replica holds the lease: nothing to do")
        return 0
    try:
        report = Reconciler(settings, registry, metrics,
                            may_act=leader.is_leader if leader else lambda: True).run_pass()
    finally:
        if leader is not None:
            leader.release()
    for error in report.errors:
        log.error("pass error", extra={"error": error})
    return 0 if report.ok else 1


def run_service(service: Service) -> int:
    """Run until SIGTERM/SIGINT, then shut down cleanly (lease released, watches stopped)."""
    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await service.run()
        except asyncio.CancelledError:
            log.info("shutting down")
            return 0

    return asyncio.run(main())
