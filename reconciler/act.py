"""Act: the only code that writes to a cluster. Honours dry-run (logs the same decisions).

- CA inbox writes are conditional on the resourceVersion that was decided on; on a 409 the
  ConfigMap is read again and the same content retried (virt-operator drains the inbox under
  us: re-adding certificates it already merged is harmless, it dedupes by SHA-256).
- GC deletions carry the uid (and the observed resourceVersion) as preconditions, so a
  re-created or changed object is never deleted on a stale decision.
- Every write gets a core/v1 Event on the object, a log line and a counter.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dlm_guard.domain import (
    CA_BUNDLE_KEY,
    KIND_VM,
    KIND_VMIM,
    KUBEVIRT_GROUP,
    Obj,
    get_path,
)
from reconciler.clusters import Cluster, decode
from reconciler.gather import (
    KUBEVIRT_VERSION,
    PLURALS,
    describe_error,
    read_configmap,
)
from reconciler.gc import Deletion
from reconciler.metrics import ReconcilerMetrics
from reconciler.trust import CaWrite, inbox_holds

log = logging.getLogger(__name__)

COMPONENT = "dlm-guard-reconciler"
MANAGED_BY = {"app.kubernetes.io/managed-by": "dlm-guard"}
MAX_ATTEMPTS = 4
# The only kinds GC may ever delete (never anything but a decentralized VMIM or a
# WaitAsReceiver VM); checked here again so a bad decision cannot widen the blast radius.
DELETABLE_KINDS = (KIND_VMIM, KIND_VM)


@dataclass(frozen=True)
class ActResult:
    ok: bool
    outcome: str  # created, updated, unchanged, deleted, gone, conflict, dry-run, not-leader,
    #               skipped, error
    detail: str = ""


class Actor:
    def __init__(self, clusters: Mapping[str, Cluster], *, dry_run: bool, timeout: float,
                 metrics: ReconcilerMetrics, may_act: Callable[[], bool] = lambda: True,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clusters = clusters
        self._dry_run = dry_run
        self._timeout = timeout
        self._metrics = metrics
        self._may_act = may_act
        self._clock = clock
        self._instance = socket.gethostname()

    # --- CA inbox -----------------------------------------------------------------------
    def write_ca(self, write: CaWrite) -> ActResult:
        context = {"cluster": write.cluster, "namespace": write.namespace,
                   "configmap": write.name, "certificates": len(write.fingerprints),
                   "peers": ",".join(write.peers)}
        result = self._write_ca(write)
        self._metrics.ca_sync.labels(write.cluster, result.outcome).inc()
        if not result.ok:
            self._metrics.ca_sync_errors.inc()
            log.error("CA sync failed", extra=context | {"error": result.detail})
        elif result.outcome in ("created", "updated", "dry-run"):
            verb = "would write" if self._dry_run else "wrote"
            log.info(f"{verb} missing peer CAs into the inbox",
                     extra=context | {"result": result.outcome})
        return result

    def _write_ca(self, write: CaWrite) -> ActResult:
        if self._dry_run:
            return ActResult(True, "dry-run")
        cluster = self._clusters.get(write.cluster)
        if cluster is None or not cluster.managed:
            return ActResult(False, "error", "not a managed cluster: refusing to write")
        resource_version = write.resource_version
        for _ in range(MAX_ATTEMPTS):
            if not self._may_act():
                return ActResult(True, "not-leader", "lost leadership: not writing")
            try:
                obj = self._put_inbox(cluster.api, write, resource_version)
            except ApiException as err:
                if err.status not in (404, 409) or (err.status == 404 and resource_version is None):
                    return ActResult(False, "error", describe_error(err))
                fresh = self._reread(cluster.api, write)
                if isinstance(fresh, ActResult):
                    return fresh
                resource_version = fresh
                continue
            except Exception as err:  # transport errors
                return ActResult(False, "error", describe_error(err))
            outcome = "created" if resource_version is None else "updated"
            self._event(cluster.api, obj, "CATrustSynced",
                        f"dlm-guard added {len(write.fingerprints)} CA certificate(s) of peer(s) "
                        f"{', '.join(write.peers) or '-'} for virt-operator to merge into "
                        "kubevirt-ca")
            return ActResult(True, outcome)
        return ActResult(False, "error", f"still conflicting after {MAX_ATTEMPTS} attempts")

    def _put_inbox(self, api: k8s.ApiClient, write: CaWrite,
                   resource_version: str | None) -> Obj:
        core = k8s.CoreV1Api(api)
        if resource_version is None:
            body = k8s.V1ConfigMap.model_validate({
                "metadata": {"name": write.name, "namespace": write.namespace,
                             "labels": MANAGED_BY},
                "data": {CA_BUNDLE_KEY: write.bundle}})
            response = core.create_namespaced_config_map(
                write.namespace, body, _preload_content=False, _request_timeout=self._timeout)
            return decode(response)
        # A merge patch carrying resourceVersion is conditional: 409 if it changed since.
        patch = {"metadata": {"resourceVersion": resource_version},
                 "data": {CA_BUNDLE_KEY: write.bundle}}
        response = core.patch_namespaced_config_map(
            write.name, write.namespace, patch, _content_type="application/merge-patch+json",
            _preload_content=False, _request_timeout=self._timeout)
        return decode(response)

    def _reread(self, api: k8s.ApiClient, write: CaWrite) -> str | ActResult | None:
        """After a conflict: the new resourceVersion to retry with (None: create), or the
        final result when nothing is left to do."""
        try:
            current = read_configmap(api, write.namespace, write.name, self._timeout)
        except Exception as err:
            return ActResult(False, "error", describe_error(err))
        if current is None:
            return None
        if current.terminating:
            return ActResult(True, "skipped", "kubevirt-external-ca is being deleted")
        if inbox_holds(current, write.fingerprints):
            return ActResult(True, "unchanged", "the inbox already holds these certificates")
        return current.resource_version

    # --- GC deletions -------------------------------------------------------------------
    def delete(self, deletion: Deletion, observed: Obj | None) -> ActResult:
        context = {"cluster": deletion.cluster, "kind": deletion.kind,
                   "object": f"{deletion.namespace}/{deletion.name}",
                   "reason": deletion.reason, "detail": deletion.detail}
        result = self._delete(deletion, observed)
        if result.outcome == "deleted":
            self._metrics.gc_deletions.labels(deletion.reason).inc()
            log.info("deleted migration leftover", extra=context)
        elif result.outcome == "dry-run":
            log.info("would delete migration leftover (dry run)", extra=context)
        elif not result.ok:
            self._metrics.gc_errors.inc()
            log.error("clean-up deletion failed", extra=context | {"error": result.detail})
        else:
            log.info("clean-up deletion not done", extra=context | {
                "result": result.outcome, "why": result.detail})
        return result

    def _delete(self, deletion: Deletion, observed: Obj | None) -> ActResult:
        cluster = self._clusters.get(deletion.cluster)
        if deletion.kind not in DELETABLE_KINDS:
            return ActResult(False, "error", f"refusing to delete a {deletion.kind}")
        if cluster is None or not cluster.managed:
            return ActResult(False, "error", "not a managed cluster: refusing to delete")
        if not deletion.uid:
            return ActResult(False, "error", "no uid to use as precondition: refusing to delete")
        if self._dry_run:
            return ActResult(True, "dry-run")
        if not self._may_act():
            return ActResult(True, "not-leader", "lost leadership: not deleting")
        try:
            self._delete_call(cluster.api, deletion, _resource_version(deletion, observed))
        except ApiException as err:
            if err.status == 404:
                return ActResult(True, "gone", "already deleted")
            if err.status == 409:  # precondition failed: changed or re-created since the pass
                return ActResult(True, "conflict", "changed since it was observed; next pass")
            return ActResult(False, "error", describe_error(err))
        except Exception as err:
            return ActResult(False, "error", describe_error(err))
        self._event(cluster.api, _reference(deletion, observed), "MigrationCleanedUp",
                    f"dlm-guard deleted this {deletion.kind} ({deletion.reason}): "
                    f"{deletion.detail}")
        return ActResult(True, "deleted")

    def _delete_call(self, api: k8s.ApiClient, deletion: Deletion,
                     resource_version: str | None) -> None:
        options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(
            uid=deletion.uid, resource_version=resource_version))
        k8s.CustomObjectsApi(api).delete_namespaced_custom_object(
            KUBEVIRT_GROUP, KUBEVIRT_VERSION, deletion.namespace, PLURALS[deletion.kind],
            deletion.name, body=options, _request_timeout=self._timeout)

    # --- Events ---------------------------------------------------------------------------
    def _event(self, api: k8s.ApiClient, obj: Obj, reason: str, message: str) -> None:
        """A core/v1 Event on `obj`; failing to record one never fails the write itself."""
        try:
            k8s.CoreV1Api(api).create_namespaced_event(
                str(get_path(obj, "metadata", "namespace")),
                k8s.CoreV1Event.model_validate(event_body(obj, reason, message, self._clock(),
                                                          self._instance)),
                _request_timeout=self._timeout)
        except Exception as err:
            log.warning("cannot record event", extra={"reason": reason,
                                                      "error": describe_error(err)})


def event_body(obj: Obj, reason: str, message: str, now: datetime, instance: str,
               ) -> dict[str, Any]:
    """Pure: a core/v1 Event about `obj` (firstTimestamp/lastTimestamp, no MicroTime)."""
    meta = obj.get("metadata") or {}
    stamp = now.replace(microsecond=0)
    return {
        "metadata": {"generateName": f"{meta.get('name', 'object')}.",
                     "namespace": meta.get("namespace")},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                           "name": meta.get("name"), "namespace": meta.get("namespace"),
                           "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
        "reason": reason, "message": message[:1024], "type": "Normal",
        "source": {"component": COMPONENT, "host": instance},
        "reportingComponent": COMPONENT, "reportingInstance": instance,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


def _resource_version(deletion: Deletion, observed: Obj | None) -> str | None:
    """The observed resourceVersion, only when the observed object is the decided one."""
    if observed is None or get_path(observed, "metadata", "uid") != deletion.uid:
        return None
    value = get_path(observed, "metadata", "resourceVersion")
    return value if isinstance(value, str) and value else None


def _reference(deletion: Deletion, observed: Obj | None) -> Obj:
    meta = dict(observed.get("metadata") or {}) if observed else {}
    meta.update({"name": deletion.name, "namespace": deletion.namespace, "uid": deletion.uid})
    return {"apiVersion": f"{KUBEVIRT_GROUP}/{KUBEVIRT_VERSION}", "kind": deletion.kind,
            "metadata": meta}
