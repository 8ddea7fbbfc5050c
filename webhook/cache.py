"""Cluster state for the webhook: the shared informer cache (dlm_guard/kube), the kinds its
rules read, and what a review sees while the cache is stale.

Rules read a view of the cache, taken once per evaluation (one consistent state, no lock per
lookup). The one API call on the admission path is webhook/live.py's bounded GET of a VMI the
cache lacks (DESIGN.md): a watch cache lags, and KubeVirt's own admitter reads the VMI live.

Staleness: when a watch has been failing for longer than `stale_after`, its table may miss
anything created or deleted since, and a rule could deny on old data (a VMI that now exists,
a migrationID that is free again). From then on the cluster-state rules answer as offline
(skipped) and each review they would have checked carries a warning that says so, until the
watch recovers. Readiness never depends on staleness, only on the first list: a watch hiccup
must not take every replica out of the Service at once and turn into a webhook outage (the
API server's failurePolicy then decides every call).
"""

from __future__ import annotations

import logging
from typing import Any

from dlm_guard.kube.api import ApiSource
from dlm_guard.kube.cache import ClusterCache, Watched
from dlm_guard.kube.resources import KUBEVIRT, VM, VMI, VMIM
from dlm_guard.store import ObjectStore

# The kinds a webhook rule reads: VMIs (receiver-vmi, source-vmi, the named VMI's volumes),
# VMIMs (duplicate-migration-id), VMs (legacy-running reads the owner VM's spec.running; the
# projection keeps little else of a VM) and the KubeVirt CR (feature-gate).
WEBHOOK_WATCHED = (Watched(VMI), Watched(VMIM), Watched(VM), Watched(KUBEVIRT))
DEFAULT_STALE_AFTER_SECONDS = 120.0

log = logging.getLogger(__name__)


class WebhookCluster:
    """The webhook's cluster cache; `view()` per review (the engine's cluster source)."""

    def __init__(self, cache: ClusterCache, stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
                 ) -> None:
        self.cache = cache
        self.stale_after = stale_after

    @classmethod
    def for_client(cls, api_client: Any, stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
                   ) -> WebhookCluster:
        return cls(ClusterCache(ApiSource(api_client), WEBHOOK_WATCHED), stale_after)

    def view(self) -> ObjectStore:
        stale = self.cache.stale_reason(self.stale_after)
        store = self.cache.view()
        if stale is None:
            return store
        return store.marked_stale(f"cluster state is stale (watch of {stale}; "
                                  f"--stale-after {self.stale_after:g}s)")

    def not_ready_reason(self) -> str | None:
        """For /readyz: the first list of every kind, nothing more (see module doc)."""
        return self.cache.not_synced_reason()

    def start(self) -> None:
        self.cache.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the watches; True when their threads ended within `timeout` seconds."""
        self.cache.stop()
        ended = self.cache.join(timeout)
        if not ended:
            log.warning("cluster watches still blocked at shutdown",
                        extra={"watches": ",".join(self.cache.alive())})
        if ended and isinstance(self.cache.source, ApiSource):
            self.cache.source.api.close()
        return ended

