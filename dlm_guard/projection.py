"""What the caches keep of each kind: only the fields a webhook rule or a reconciler decision
reads (rules.py, gc.py, trust.py and the domain views above them), so memory follows what
dlm-guard needs, not the size of the objects (a VMI carries cloud-init, status conditions and
managedFields that nothing here reads).

A projection is a tree of field names. `True` keeps a value whole; a mapping keeps only the
named keys of a mapping value, or of every mapping inside a list value; an empty mapping keeps
the key with an empty value (presence is what the rule reads, e.g. `disks[i].lun`); the key `*`
applies to every key not named. Keys absent from the object stay absent.

Change a rule to read another field and its projection here must name it: the rule tests build
their stores through these projections (dlm_guard/store.py), so a field left out fails them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dlm_guard.domain import (
    ANNOTATION_CREATE_MIGRATION_TARGET,
    ANNOTATION_PEER_MISSING_SINCE,
    ANNOTATION_STATE_SINCE,
    CA_BUNDLE_KEY,
    KIND_KUBEVIRT,
    KIND_VM,
    KIND_VMI,
    KIND_VMIM,
    LABEL_MIGRATION_ID,
    LABEL_PEER,
    LABEL_ROLE,
)

Projection = Mapping[str, "Projection | bool"]

KIND_CONFIGMAP = "ConfigMap"
KIND_SECRET = "Secret"

_IDENTITY: Projection = {"name": True, "namespace": True, "uid": True}
# What a conditional write or delete needs on top (uid and resourceVersion preconditions).
_WRITABLE: Projection = {**_IDENTITY, "resourceVersion": True, "deletionTimestamp": True}

PROJECTIONS: Mapping[str, Projection] = {
    # receiver-vmi / source-vmi (annotation, phase), the volume rules on the named VMI, the
    # owner VM for legacy-running, and gc.py's view of a target's failure (migrationState).
    KIND_VMI: {
        "metadata": {**_IDENTITY, "deletionTimestamp": True,
                     "annotations": {ANNOTATION_CREATE_MIGRATION_TARGET: True},
                     "ownerReferences": {"apiVersion": True, "kind": True, "name": True,
                                         "uid": True, "controller": True}},
        "spec": {
            "domain": {
                "devices": {"disks": {"name": True, "shareable": True, "lun": {}},
                            "filesystems": {"name": True, "virtiofs": {}},
                            "tpm": {"persistent": True}},
                "firmware": {"bootloader": {"efi": {"persistent": True}}},
            },
            # Which source each volume has, not its content (cloud-init user data is big).
            "volumes": {"name": True, "persistentVolumeClaim": {"claimName": True},
                        "dataVolume": {"name": True}, "*": {}},
        },
        "status": {"phase": True,
                   "migrationState": {"failed": True, "endTimestamp": True,
                                      "migrationUid": True}},
    },
    # duplicate-migration-id (role, migrationID, phase) and every gc.py rule (phases and
    # their timestamps, our labels and the evidence annotations we write).
    KIND_VMIM: {
        "metadata": {**_WRITABLE, "creationTimestamp": True,
                     "labels": {LABEL_MIGRATION_ID: True, LABEL_ROLE: True},
                     "annotations": {ANNOTATION_PEER_MISSING_SINCE: True,
                                     ANNOTATION_STATE_SINCE: True}},
        "spec": True,
        "status": {"phase": True, "phaseTransitionTimestamps": True},
    },
    # gc.py's target VM (runStrategy, uid precondition); legacy-running reads spec.running.
    KIND_VM: {
        "metadata": _WRITABLE,
        "spec": {"runStrategy": True, "running": True},
    },
    # feature-gate: the gate lists and the version KubeVirt reports.
    KIND_KUBEVIRT: {
        "metadata": _IDENTITY,
        "spec": {"configuration": {"developerConfiguration": {"featureGates": True,
                                                              "disabledFeatureGates": True}}},
        "status": {"observedKubeVirtVersion": True, "targetKubeVirtVersion": True,
                   "phase": True},
    },
    # trust.py: the CA bundles; act.py: the inbox's resourceVersion for a conditional write.
    KIND_CONFIGMAP: {"metadata": _WRITABLE, "data": {CA_BUNDLE_KEY: True}},
    # clusters.py: a peer Secret's name, label and kubeconfig.
    KIND_SECRET: {"metadata": {**_IDENTITY, "labels": {LABEL_PEER: True}}, "data": True},
}


def project(value: Any, projection: Projection | bool) -> Any:
    """The part of `value` that `projection` keeps (a new object; `value` is not changed)."""
    if projection is True:
        return value
    if not isinstance(projection, Mapping):
        return None
    if isinstance(value, list):
        return [project(item, projection) if isinstance(item, Mapping) else item
                for item in value]
    if not isinstance(value, Mapping):
        return value
    other = projection.get("*", False)
    kept = {}
    for key, item in value.items():
        rule = projection.get(key, other)
        if rule is not False:
            kept[key] = project(item, rule)
    return kept


def project_object(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the caches keep of one object of `kind` (the whole object for an unknown kind)."""
    projection = PROJECTIONS.get(kind)
    return dict(obj) if projection is None else project(obj, projection)
