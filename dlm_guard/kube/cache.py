"""A cluster's informers as one cache: start and stop them together, take a consistent view.

Both services use it: the webhook's rules read `view()` once per review, the reconciler's
gather freezes it into the snapshot its pure decisions take (no relist per pass).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from dlm_guard.kube.api import Selector
from dlm_guard.kube.informer import Health, Informer, Source
from dlm_guard.kube.resources import Resource
from dlm_guard.store import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Watched:
    """One informer of a cache: a resource, which of its objects, and its name in the cache
    (the kind, unless one cache watches a kind twice, e.g. two ConfigMaps)."""

    resource: Resource
    selector: Selector = field(default_factory=Selector)
    name: str = ""

    @property
    def key(self) -> str:
        return self.name or self.resource.kind


class ClusterCache:
    def __init__(self, source: Source, watched: Iterable[Watched], *, label: str = "",
                 on_change: Callable[[], None] | None = None,
                 delay: Callable[[int], float] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.label = label
        self._clock = clock
        extra = {"delay": delay} if delay is not None else {}
        self.informers: dict[str, Informer] = {
            w.key: Informer(source, w.resource, w.selector, on_change=on_change, clock=clock,
                            label=f"{label}/{w.key}" if label else w.key, **extra)
            for w in watched}

    # --- lifetime -------------------------------------------------------------------------
    def start(self) -> None:
        for informer in self.informers.values():
            informer.start()

    def stop(self) -> None:
        """Ask every informer to end; never blocks (see join)."""
        for informer in self.informers.values():
            informer.stop()

    def join(self, timeout: float) -> bool:
        """Wait, `timeout` seconds in all, for the threads; True when all have ended."""
        deadline = time.monotonic() + timeout
        return all([i.join(max(deadline - time.monotonic(), 0.0))
                    for i in self.informers.values()])

    def alive(self) -> list[str]:
        """The watches whose threads have not ended yet."""
        return [i.label for i in self.informers.values() if not i.join(0)]

    def wait_synced(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first list of every informer."""
        deadline = self._clock() + timeout
        return all([i.synced.wait(max(deadline - self._clock(), 0.0))
                    for i in self.informers.values()])

    # --- reading --------------------------------------------------------------------------
    def view(self) -> ObjectStore:
        """The current tables, as one view that never changes (cheap: no copy)."""
        return ObjectStore(tables={i.resource.kind: i.table for i in self._by_kind()})

    def table(self, key: str) -> ObjectStore:
        """One informer's table alone (for a kind watched under several names)."""
        informer = self.informers[key]
        return ObjectStore(tables={informer.resource.kind: informer.table})

    def _by_kind(self) -> Iterable[Informer]:
        seen: set[str] = set()
        for informer in self.informers.values():
            if informer.resource.kind not in seen:
                seen.add(informer.resource.kind)
                yield informer

    def health(self) -> Mapping[str, Health]:
        return {key: informer.health for key, informer in self.informers.items()}

    @property
    def synced(self) -> bool:
        return all(h.synced for h in self.health().values())

    def not_synced_reason(self) -> str | None:
        """For /readyz: which watches still wait for their first list."""
        waiting = [key for key, h in self.health().items() if not h.synced]
        return (f"cluster cache waiting for the first list of {', '.join(waiting)}"
                if waiting else None)

    def unhealthy_reason(self) -> str | None:
        """Why this cache cannot be trusted right now (None: every watch synced and current)."""
        problems = [f"{key}: {h.error or 'not listed yet'}"
                    for key, h in self.health().items() if not h.healthy]
        return "; ".join(problems) or None

    def stale_reason(self, stale_after: float) -> str | None:
        """Which watches have been failing (or unlisted) for longer than `stale_after`
        seconds: their tables may miss anything that changed since."""
        now = self._clock()
        stale = [f"{key} ({h.error or 'never listed'}, failing for {h.failing_for(now):.0f}s)"
                 for key, h in self.health().items()
                 if h.synced and h.failing_for(now) > stale_after]
        return ", ".join(stale) or None
