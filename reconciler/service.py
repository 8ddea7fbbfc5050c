"""The long-running reconciler (and `--once`): caches, passes, HTTP, leader election, stop.

Passes run on a thread of their own (the Kubernetes client blocks), one at a time; changes
arriving meanwhile coalesce into one more pass. Triggers: any change in any cache (a CA
ConfigMap, a VMIM, VM or VMI, a peer Secret), a cache that is trustworthy again, leadership
gained, and the periodic resync (which also lets GC deadlines expire without an event).

Stopping (SIGTERM, or the task cancelled) is bounded: the watches are told to stop (that never
blocks: it shuts their sockets down), a running pass writes nothing more (`may_act` turns
false) and is waited for at most STOP_TIMEOUT, as are the watch threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable

from aiohttp import web

from dlm_guard.kube.metrics import WatchHealthCollector
from reconciler.clusters import Registry
from reconciler.http import make_app, start_server
from reconciler.leader import LeaderElector
from reconciler.metrics import ReconcilerMetrics
from reconciler.passes import PassReport, Reconciler
from reconciler.settings import Settings
from reconciler.watches import ClusterWatches

log = logging.getLogger(__name__)

# Coalesce bursts of changes (our own writes echo back too) into one pass. Short, because it
# adds to every propagation delay (bench/README.md: 1.0 s made a CA rotation miss its 2 s target).
DEBOUNCE_SECONDS = 0.2
STOP_TIMEOUT = 4.0
POLL_SECONDS = 0.05


def sync_timeout(settings: Settings) -> float:
    """How long to wait for the first list of every cache before deciding without it."""
    return max(3 * settings.api_timeout.total_seconds(), 1.0)


class PassThread:
    """A pass on its own thread, awaitable; never abandoned while it may still write."""

    def __init__(self, run: Callable[[], PassReport]) -> None:
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._body, args=(run,), daemon=True,
                                        name="reconcile-pass")
        self.report: PassReport | None = None

    def _body(self, run: Callable[[], PassReport]) -> None:
        try:
            self.report = run()
        except Exception:
            log.exception("reconcile pass failed")
        finally:
            self._done.set()

    async def run(self) -> None:
        self._thread.start()
        while not self._done.is_set():
            await asyncio.sleep(POLL_SECONDS)

    def join(self, timeout: float) -> bool:
        self._done.wait(timeout)
        return self._done.is_set()


class Service:
    """Long-running reconciler: HTTP endpoints, optional leader election, caches, passes."""

    def __init__(self, settings: Settings, registry: Registry, metrics: ReconcilerMetrics,
                 leader: LeaderElector | None = None) -> None:
        self._settings = settings
        self._registry = registry
        self._leader = leader
        self._stopping = threading.Event()
        self._trigger = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_tick = time.monotonic()
        self._pass: PassThread | None = None
        self.port: int | None = None  # bound /metrics port, once serving
        self.watches = ClusterWatches(settings, on_change=self.poke)
        self.reconciler = Reconciler(settings, registry, metrics, self.watches,
                                     may_act=self._may_act)
        self._metrics = metrics
        metrics.registry.register(WatchHealthCollector(lambda: self.watches.caches,
                                                       by_cluster=True))

    def _may_act(self) -> bool:
        if self._stopping.is_set():
            return False
        return self._leader.is_leader() if self._leader is not None else True

    def healthy(self) -> bool:
        limit = self._settings.resync_period.total_seconds() * 2 + 120
        return time.monotonic() - self._last_tick < limit

    def poke(self) -> None:
        """Thread-safe: ask for another pass soon."""
        loop = self._loop
        if loop is not None and not self._stopping.is_set():
            with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to do
                loop.call_soon_threadsafe(self._trigger.set)

    async def run(self, host: str = "0.0.0.0") -> int:
        self._loop = asyncio.get_running_loop()
        runner: web.AppRunner | None = None
        leader_task: asyncio.Task[None] | None = None
        try:
            runner, self.port = await start_server(make_app(self._metrics, self.healthy),
                                                   host, self._settings.metrics_port)
            log.info("serving /healthz and /metrics", extra={"port": self.port})
            self.watches.sync(self._registry.clusters)
            if self._leader is not None:
                leader_task = asyncio.create_task(self._leader.run(self._on_leadership))
            await self._wait_synced(sync_timeout(self._settings))
            await self._forever()
        finally:
            await self._shutdown(runner, leader_task)
        return 0

    async def _shutdown(self, runner: web.AppRunner | None,
                        leader_task: asyncio.Task[None] | None) -> None:
        self._stopping.set()
        self.watches.stop()
        if leader_task is not None:
            leader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leader_task
        deadline = time.monotonic() + STOP_TIMEOUT
        if self._pass is not None and not self._pass.join(0):
            await _wait_for(lambda: self._pass is None or self._pass.join(0), deadline)
        if self._leader is not None:
            await asyncio.to_thread(self._leader.release)
        if not await _wait_for(lambda: self.watches.join(0), deadline):
            log.warning("watches still blocked at shutdown",
                        extra={"watches": ",".join(self.watches.alive())})
        if runner is not None:
            await runner.cleanup()

    async def _wait_synced(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        await _wait_for(self.watches.all_synced, deadline)

    def _on_leadership(self, leading: bool) -> None:
        if leading:
            self.poke()

    async def _forever(self) -> None:
        resync = self._settings.resync_period.total_seconds()
        while True:
            self._last_tick = time.monotonic()
            if self._leader is None or self._leader.is_leader():
                self._trigger.clear()
                self._pass = PassThread(self.reconciler.run_pass)
                await self._pass.run()
            await self._wait(self._next_timeout(resync))

    def _next_timeout(self, resync: float) -> float:
        if self._leader is not None and not self._leader.is_leader():
            resync = min(resync, 2.0)  # a standby checks again soon, without busy-looping
        return max(resync, DEBOUNCE_SECONDS)

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):  # resync
            await asyncio.wait_for(self._trigger.wait(), timeout)
        await asyncio.sleep(DEBOUNCE_SECONDS)


async def _wait_for(condition: Callable[[], bool], deadline: float) -> bool:
    """Poll `condition` until it holds or `deadline` (time.monotonic) passes."""
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


def run_once(settings: Settings, registry: Registry, metrics: ReconcilerMetrics,
             leader: LeaderElector | None = None) -> PassReport | None:
    """`--once`: fill the caches, one pass, stop. None when another replica leads."""
    if leader is not None and not leader.step():
        log.info("another replica holds the lease: nothing to do")
        return None
    watches = ClusterWatches(settings)
    reconciler = Reconciler(settings, registry, metrics, watches,
                            may_act=leader.is_leader if leader else lambda: True)
    try:
        timeout = sync_timeout(settings)
        watches.sync(registry.clusters)
        watches.wait_synced(timeout)
        if settings.in_pod:  # the peers come from the local cache's Secrets
            reconciler.refresh_clusters()
            watches.wait_synced(timeout)
        return reconciler.run_pass()
    finally:
        watches.stop()
        if not watches.join(STOP_TIMEOUT):
            log.warning("watches still blocked at shutdown",
                        extra={"watches": ",".join(watches.alive())})
        if leader is not None:
            leader.release()


def once_exit_code(report: PassReport | None) -> int:
    """0 when the pass had no errors (or another replica leads), else 1."""
    if report is None:
        return 0
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

