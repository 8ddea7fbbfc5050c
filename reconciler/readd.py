"""Detect CA trust that flaps: a CA written again into a cluster's inbox after virt-operator had
merged it into that cluster's kubevirt-ca and then dropped it.

Why it happens (docs/kubevirt-facts.md, "CA trust that flaps"): virt-operator's `MergeCABundle`
drops every merged CA once its own CA is older than renewBefore, and with the default rotation
(7 days, renewBefore 20 %) that is 4.2 of every 5.6 days. Each merge is a change of kubevirt-ca,
which re-triggers virt-operator (5 s later: `defaultAddDelay` in pkg/virt-operator/kubevirt.go)
and that reconcile drops the CA again; we see the drop and re-add it. So the loop turns about
every 10 s and the peer's CA is trusted about half the time. Re-adding at once is kept on
purpose: waiting longer would only lower that share, and the loop costs a few ConfigMap writes
every 10 s (ours, virt-operator's merge, inbox reset and drop). The fix is on the KubeVirt side
(`renewBefore >= duration / 2`), so the job here is to notice, count and say so.

Evidence that a CA `fp` was merged into cluster C (either is enough):
- it was seen in C's kubevirt-ca;
- we delivered it into C's inbox and later saw the inbox without it while it was still missing
  from kubevirt-ca (virt-operator empties the inbox only after merging it: `cleanupExternalCACerts`
  after `createOrUpdateKubeVirtCAConfigMap` in pkg/virt-operator/resource/apply/core.go). This
  catches merge-and-drop pairs faster than one pass, which never show the merged bundle.
A write that carries `fp` while there is such evidence is a re-add, counted when `fp` is the CA a
peer signs with now (reconciler/trust.py `current_cas` says why only those). A successful write
clears the evidence, so each further cycle needs fresh evidence and counts once.

The memory lives in the process. Where else it could live was checked upstream: virt-operator
replaces the metadata of both CA ConfigMaps on every reconcile (an Update of kubevirt-external-ca
built from its own template in `cleanupExternalCACerts`; `add /metadata/annotations` with its own
map on kubevirt-ca in `createLabelsAndAnnotationsPatch`), so an annotation of ours on either would
be gone within seconds. A ConfigMap of our own would cost a write permission and a write per
delivery; after a restart the in-process memory misses only the first cycle of a flap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from certs.bundle import fingerprint, parse_bundle
from dlm_guard.rotation import FIX, SETTINGS_PATH, CaRotation, RotationProblem
from reconciler.snapshot import CaSnapshot

# A flap repeats about every 10 s: the Warning Event and log line repeat at most this often per
# (cluster, peer); the counter counts every re-add.
WARN_INTERVAL = timedelta(hours=1)


@dataclass(frozen=True)
class Readd:
    """A CA of `peer` that this write puts back into `cluster`'s inbox after a merge and drop."""

    cluster: str
    peer: str
    fingerprint: str
    warn: bool  # emit the Warning Event and log line for this (cluster, peer) now


@dataclass
class CaHistory:
    """What this process saw of each cluster's CA ConfigMaps; pass the same one every pass."""

    delivered: dict[str, set[str]] = field(default_factory=dict)  # cluster -> fingerprints
    merged: dict[str, set[str]] = field(default_factory=dict)  # cluster -> evidence of merge
    warned_at: dict[tuple[str, str], datetime] = field(default_factory=dict)


def observe(history: CaHistory, snapshots: Mapping[str, CaSnapshot | None],
            offered: Mapping[str, Iterable[str]]) -> None:
    """Record the evidence of merges in this pass's snapshots.

    `offered[cluster]`: the fingerprints peers currently offer to it; evidence about anything
    else (expired CAs, removed peers) is forgotten, which keeps the memory bounded."""
    for name, snapshot in snapshots.items():
        if snapshot is None or snapshot.kubevirt_ca is None:
            continue  # unknown this pass: keep what we had
        present = _fingerprints(snapshot.kubevirt_ca.bundle)
        inbox = (_fingerprints(snapshot.external_ca.bundle)
                 if snapshot.external_ca is not None else set())
        delivered = history.delivered.get(name, set())
        drained = {fp for fp in delivered if fp not in inbox and fp not in present}
        wanted = set(offered.get(name, ()))
        merged = (history.merged.get(name, set()) | present | drained) & wanted
        history.merged[name] = merged
        history.delivered[name] = (delivered - drained - present) & wanted


def readds(history: CaHistory, cluster: str, fingerprints: Iterable[str],
           current: Mapping[str, str], now: datetime) -> tuple[Readd, ...]:
    """The peers' current CAs (`current`: fingerprint -> peer) among the certificates of a write
    to `cluster` that had been merged there before."""
    merged = history.merged.get(cluster, set())
    found = [(current[fp], fp) for fp in fingerprints if fp in merged and fp in current]
    return tuple(Readd(cluster, peer, fp, _warn_due(history, cluster, peer, now))
                 for peer, fp in sorted(found))


def record_write(history: CaHistory, cluster: str, fingerprints: Iterable[str],
                 found: Iterable[Readd], now: datetime) -> None:
    """After a successful write: these are delivered, their old evidence is used up."""
    written = set(fingerprints)
    history.delivered.setdefault(cluster, set()).update(written)
    history.merged[cluster] = history.merged.get(cluster, set()) - written
    for readd in found:
        if readd.warn:
            history.warned_at[(readd.cluster, readd.peer)] = now


def _warn_due(history: CaHistory, cluster: str, peer: str, now: datetime) -> bool:
    last = history.warned_at.get((cluster, peer))
    return last is None or now - last >= WARN_INTERVAL


def _fingerprints(bundle: str) -> set[str]:
    return {fingerprint(cert) for cert in parse_bundle(bundle).certificates}


def flap_message(cluster: str, peers: Iterable[str], settings: CaRotation | RotationProblem | str,
                 ) -> str:
    """The Warning's text: what happens, the fix, and this cluster's current values (or why
    they are unknown)."""
    names = ", ".join(sorted(set(peers))) or "-"
    head = (f"virt-operator on {cluster} merged CA certificate(s) of peer(s) {names} into "
            f"kubevirt-ca and dropped them again (MergeCABundle drops merged CAs once its own CA "
            f"is older than renewBefore), so dlm-guard re-added them and trust flaps. Fix: "
            f"{FIX} in the KubeVirt CR {SETTINGS_PATH} on every cluster")
    if isinstance(settings, CaRotation):
        state = ("which these values break" if settings.flaps else
                 "which these values meet: check the peers' values, a peer CA older than this "
                 "cluster's renewBefore is dropped too")
        return f"{head}; {cluster} has {settings.describe()}, {state}."
    if isinstance(settings, RotationProblem):
        return f"{head}; {cluster}'s value cannot be read: {settings}."
    return f"{head}; {cluster}'s current values are unknown: {settings}."
