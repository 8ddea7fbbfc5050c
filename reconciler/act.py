"""Act: the only code that writes to a cluster. Honours dry-run (logs the same decisions).

- CA inbox writes are conditional on the resourceVersion that was decided on; on a 409 the
  ConfigMap is read again and the same content retried (virt-operator drains the inbox under
  us: re-adding certificates it already merged is harmless, it dedupes by SHA-256).
- GC deletions carry the uid (and the observed resourceVersion) as preconditions, so a
  re-created or changed object is never deleted on a stale decision.
- Every write gets a core/v1 Event on the object, a log line and a counter. A write that puts
  back CAs virt-operator had merged and dropped (reconciler/readd.py) is counted in
  dlm_guard_ca_readded_total and, at most hourly per (cluster, peer), gets a Warning Event and a
  log line naming the fix instead: in a flap those writes repeat about every 10 seconds.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
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
from dlm_guard.kube.api import describe_error, get_json
from dlm_guard.kube.resources import CONFIGMAP, KUBEVIRT, KUBEVIRT_RESOURCES
from dlm_guard.rotation import FIX, SETTINGS_PATH, CaRotation, RotationProblem, ca_rotation
from reconciler.clusters import Cluster
from reconciler.gc import Deletion, Mark
from reconciler.metrics import ReconcilerMetrics
from reconciler.readd import flap_message
from reconciler.snapshot import ConfigMapState
from reconciler.trust import CaWrite, inbox_holds

log = logging.getLogger(__name__)

COMPONENT = "dlm-guard-reconciler"
MANAGED_BY = {"app.kubernetes.io/managed-by": "dlm-guard"}
MAX_ATTEMPTS = 4
# The only kinds GC may ever delete (never anything but a decentralized VMIM or a
# WaitAsReceiver VM); checked here again so a bad decision cannot widen the blast radius.
DELETABLE_KINDS = (KIND_VMIM, KIND_VM)


class ActOutcome(StrEnum):
    """What one write did (the `result` label of dlm_guard_ca_sync_total for CA writes)."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    ANNOTATED = "annotated"  # GC evidence written on a VMIM
    GONE = "gone"
    CONFLICT = "conflict"
    DRY_RUN = "dry-run"
    NOT_LEADER = "not-leader"
    SKIPPED = "skipped"
    ERROR = "error"


@dataclass(frozen=True)
class ActResult:
    ok: bool
    outcome: ActOutcome
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
        elif result.outcome in (ActOutcome.CREATED, ActOutcome.UPDATED, ActOutcome.DRY_RUN):
            verb = "would write" if self._dry_run else "wrote"
            # A flap repeats this about every 10 s; its Warning says it hourly instead.
            level = logging.DEBUG if write.readded else logging.INFO
            log.log(level, f"{verb} missing peer CAs into the inbox",
                    extra=context | {"result": result.outcome})
        return result

    def _write_ca(self, write: CaWrite) -> ActResult:
        if self._dry_run:
            return ActResult(True, ActOutcome.DRY_RUN)
        cluster = self._clusters.get(write.cluster)
        if cluster is None or not cluster.managed:
            return ActResult(False, ActOutcome.ERROR, "not a managed cluster: refusing to write")
        resource_version = write.resource_version
        for _ in range(MAX_ATTEMPTS):
            if not self._may_act():
                return ActResult(True, ActOutcome.NOT_LEADER, "lost leadership: not writing")
            try:
                obj = self._put_inbox(cluster.api, write, resource_version)
            except ApiException as err:
                if err.status not in (404, 409) or (err.status == 404 and resource_version is None):
                    return ActResult(False, ActOutcome.ERROR, describe_error(err))
                fresh = self._reread(cluster.api, write)
                if isinstance(fresh, ActResult):
                    return fresh
                resource_version = fresh
                continue
            except Exception as err:  # transport errors
                return ActResult(False, ActOutcome.ERROR, describe_error(err))
            outcome = ActOutcome.CREATED if resource_version is None else ActOutcome.UPDATED
            if write.readded:
                self._report_readded(cluster, obj, write)
            else:
                self._event(cluster.api, obj, "CATrustSynced",
                            f"dlm-guard added {len(write.fingerprints)} CA certificate(s) of "
                            f"peer(s) {', '.join(write.peers) or '-'} for virt-operator to merge "
                            "into kubevirt-ca")
            return ActResult(True, outcome)
        return ActResult(False, ActOutcome.ERROR,
                         f"still conflicting after {MAX_ATTEMPTS} attempts")

    def _report_readded(self, cluster: Cluster, inbox: Obj, write: CaWrite) -> None:
        for readd in write.readded:
            self._metrics.ca_readded.labels(readd.cluster, readd.peer).inc()
        warned = [r for r in write.readded if r.warn]
        if not warned:
            return
        settings = self._rotation(cluster)
        log.warning(f"CA trust flaps: re-added CAs virt-operator had merged and dropped; fix: "
                    f"{FIX} in the KubeVirt CR {SETTINGS_PATH}",
                    extra={"cluster": write.cluster,
                           "peers": ",".join(sorted({r.peer for r in warned})),
                           "certificates": len(write.readded),
                           "current": (settings.describe() if isinstance(settings, CaRotation)
                                       else str(settings))})
        self._event(cluster.api, inbox, "CATrustFlapping",
                    flap_message(write.cluster, (r.peer for r in warned), settings),
                    event_type="Warning")

    def _rotation(self, cluster: Cluster) -> CaRotation | RotationProblem | str:
        """The cluster's CA rotation settings from its KubeVirt CR, or why they are unknown."""
        try:
            found = get_json(cluster.api, KUBEVIRT.path(cluster.namespace), self._timeout)
        except Exception as err:
            return f"cannot read the KubeVirt CR ({describe_error(err)})"
        items = found.get("items") if isinstance(found, dict) else None
        if not items:
            return f"no KubeVirt CR in namespace {cluster.namespace}"
        return ca_rotation(items[0])

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
            return orjson.loads(response.data)  # type: ignore[arg-type]
        # A merge patch carrying resourceVersion is conditional: 409 if it changed since.
        patch = {"metadata": {"resourceVersion": resource_version},
                 "data": {CA_BUNDLE_KEY: write.bundle}}
        response = core.patch_namespaced_config_map(
            write.name, write.namespace, patch, _content_type="application/merge-patch+json",
            _preload_content=False, _request_timeout=self._timeout)
        return orjson.loads(response.data)  # type: ignore[arg-type]

    def _reread(self, api: k8s.ApiClient, write: CaWrite) -> str | ActResult | None:
        """After a conflict: the new resourceVersion to retry with (None: create), or the
        final result when nothing is left to do."""
        try:
            current = self._read_configmap(api, write.namespace, write.name)
        except Exception as err:
            return ActResult(False, ActOutcome.ERROR, describe_error(err))
        if current is None:
            return None
        if current.terminating:
            return ActResult(True, ActOutcome.SKIPPED, "kubevirt-external-ca is being deleted")
        if inbox_holds(current, write.fingerprints):
            return ActResult(True, ActOutcome.UNCHANGED,
                             "the inbox already holds these certificates")
        return current.resource_version

    def _read_configmap(self, api: k8s.ApiClient, namespace: str,
                        name: str) -> ConfigMapState | None:
        try:
            obj = get_json(api, CONFIGMAP.item_path(namespace, name), self._timeout)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return ConfigMapState.from_object(obj)

    # --- GC evidence ----------------------------------------------------------------------
    def annotate(self, mark: Mark) -> ActResult:
        """Write (or remove) GC evidence annotations on a VMIM, conditional on its uid and
        resourceVersion: a changed VMIM is decided again next pass."""
        context = {"cluster": mark.cluster, "object": f"{mark.namespace}/{mark.name}",
                   "annotations": ",".join(sorted(mark.annotations))}
        result = self._annotate(mark)
        if not result.ok:
            self._metrics.gc_errors.inc()
            log.error("writing clean-up evidence failed", extra=context | {
                "error": result.detail})
        else:
            log.debug("clean-up evidence", extra=context | {"result": result.outcome})
        return result

    def _annotate(self, mark: Mark) -> ActResult:
        cluster = self._clusters.get(mark.cluster)
        if cluster is None or not cluster.managed:
            return ActResult(False, ActOutcome.ERROR, "not a managed cluster: refusing to write")
        if self._dry_run:
            return ActResult(True, ActOutcome.DRY_RUN)
        if not self._may_act():
            return ActResult(True, ActOutcome.NOT_LEADER, "lost leadership: not writing")
        resource = KUBEVIRT_RESOURCES[KIND_VMIM]
        # uid is immutable (a different one is refused) and resourceVersion makes it
        # conditional (409 when the VMIM changed since it was observed).
        patch = {"metadata": {"uid": mark.uid, "resourceVersion": mark.resource_version,
                              "annotations": dict(mark.annotations)}}
        try:
            k8s.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
                resource.group, resource.version, mark.namespace, resource.plural, mark.name,
                patch, _content_type="application/merge-patch+json",
                _request_timeout=self._timeout)
        except ApiException as err:
            if err.status == 404:
                return ActResult(True, ActOutcome.GONE, "already deleted")
            if err.status in (409, 422):
                return ActResult(True, ActOutcome.CONFLICT, "changed since it was observed")
            return ActResult(False, ActOutcome.ERROR, describe_error(err))
        except Exception as err:
            return ActResult(False, ActOutcome.ERROR, describe_error(err))
        return ActResult(True, ActOutcome.ANNOTATED)

    # --- GC deletions -------------------------------------------------------------------
    def delete(self, deletion: Deletion, observed: Obj | None) -> ActResult:
        context = {"cluster": deletion.cluster, "kind": deletion.kind,
                   "object": f"{deletion.namespace}/{deletion.name}",
                   "reason": deletion.reason, "detail": deletion.detail}
        result = self._delete(deletion, observed)
        if result.outcome is ActOutcome.DELETED:
            self._metrics.gc_deletions.labels(deletion.reason).inc()
            log.info("deleted migration leftover", extra=context)
        elif result.outcome is ActOutcome.DRY_RUN:
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
            return ActResult(False, ActOutcome.ERROR, f"refusing to delete a {deletion.kind}")
        if cluster is None or not cluster.managed:
            return ActResult(False, ActOutcome.ERROR, "not a managed cluster: refusing to delete")
        if not deletion.uid:
            return ActResult(False, ActOutcome.ERROR,
                             "no uid to use as precondition: refusing to delete")
        if self._dry_run:
            return ActResult(True, ActOutcome.DRY_RUN)
        if not self._may_act():
            return ActResult(True, ActOutcome.NOT_LEADER, "lost leadership: not deleting")
        try:
            self._delete_call(cluster.api, deletion, _resource_version(deletion, observed))
        except ApiException as err:
            if err.status == 404:
                return ActResult(True, ActOutcome.GONE, "already deleted")
            if err.status == 409:  # precondition failed: changed or re-created since the pass
                return ActResult(True, ActOutcome.CONFLICT,
                                 "changed since it was observed; next pass")
            return ActResult(False, ActOutcome.ERROR, describe_error(err))
        except Exception as err:
            return ActResult(False, ActOutcome.ERROR, describe_error(err))
        self._event(cluster.api, _reference(deletion, observed), "MigrationCleanedUp",
                    f"dlm-guard deleted this {deletion.kind} ({deletion.reason}): "
                    f"{deletion.detail}")
        return ActResult(True, ActOutcome.DELETED)

    def _delete_call(self, api: k8s.ApiClient, deletion: Deletion,
                     resource_version: str | None) -> None:
        options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(
            uid=deletion.uid, resource_version=resource_version))
        resource = KUBEVIRT_RESOURCES[deletion.kind]
        k8s.CustomObjectsApi(api).delete_namespaced_custom_object(
            resource.group, resource.version, deletion.namespace, resource.plural,
            deletion.name, body=options, _request_timeout=self._timeout)

    # --- Events ---------------------------------------------------------------------------
    def _event(self, api: k8s.ApiClient, obj: Obj, reason: str, message: str, *,
               event_type: str = "Normal") -> None:
        """A core/v1 Event on `obj`; failing to record one never fails the write itself."""
        try:
            k8s.CoreV1Api(api).create_namespaced_event(
                str(get_path(obj, "metadata", "namespace")),
                k8s.CoreV1Event.model_validate(event_body(obj, reason, message, self._clock(),
                                                          self._instance, event_type)),
                _request_timeout=self._timeout)
        except Exception as err:
            log.warning("cannot record event", extra={"reason": reason,
                                                      "error": describe_error(err)})


def event_body(obj: Obj, reason: str, message: str, now: datetime, instance: str,
               event_type: str = "Normal") -> dict[str, Any]:
    """Pure: a core/v1 Event about `obj` (firstTimestamp/lastTimestamp, no MicroTime)."""
    meta = obj.get("metadata") or {}
    stamp = now.replace(microsecond=0)
    return {
        "metadata": {"generateName": f"{meta.get('name', 'object')}.",
                     "namespace": meta.get("namespace")},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                           "name": meta.get("name"), "namespace": meta.get("namespace"),
                           "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
        "reason": reason, "message": message[:1024], "type": event_type,
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
    return {"apiVersion": f"{KUBEVIRT_GROUP}/{KUBEVIRT_RESOURCES[deletion.kind].version}",
            "kind": deletion.kind,
            "metadata": meta}
