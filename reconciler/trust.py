"""Decide the CA trust sync (pure: snapshots and a clock in, the writes wanted out).

KubeVirt facts (docs/kubevirt-facts.md, "CA bundles"): each cluster trusts the PEM bundle of its
`kubevirt-ca` ConfigMap
(key `ca-bundle`, at most 50 certificates). `kubevirt-external-ca` is an inbox: virt-operator keeps
the certificates valid now, dedupes them by SHA-256, merges them into `kubevirt-ca` and resets the
inbox to "" (the whole inbox is ignored if any PEM in it fails to parse). It can also drop merged
external CAs later, and CAs rotate (7 days upstream, 48 h on OpenShift), so this is re-checked on
every pass instead of being pushed once.

Desired for a managed cluster C: every currently valid CA certificate of every *other* reachable
known cluster's `kubevirt-ca` is in C's own `kubevirt-ca`. Whatever is missing is written, and only
that, into C's inbox. The steady state is "nothing missing, inbox empty": no write.

A peer's bundle also holds the CAs it merged from its own peers (ours included, after a sync), so
its CAs cannot be told apart by content. Only their order tells: virt-operator always writes the
CA it currently signs with first, then older and merged external CAs (upstream `MergeCABundle`,
pkg/virt-operator/resource/generate/components/secrets.go: `append(current, newBundle...)`).

So copying every valid CA of a peer also trusts the peer's own peers, named to us or not
(docs/kubevirt-facts.md, "CA bundles"). `own_ca_only` narrows the copy to each peer's current CA.
Its price: a peer's previous CA is
not re-added once our virt-operator has dropped it, so right after the peer rotates, until its
components carry leaf certificates from the new CA (virt-operator re-issues them at once), a
migration with it can fail TLS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from cryptography import x509

from certs.bundle import (
    BundleProblem,
    ProblemKind,
    fingerprint,
    is_ca,
    missing_from,
    normalize,
    parse_bundle,
    to_pem,
    trusted_cas,
)
from certs.bundle import earliest_not_after as _earliest
from dlm_guard.domain import EXTERNAL_CA_CONFIGMAP, MAX_CERTIFICATES_IN_BUNDLE
from reconciler.gather import CaSnapshot, ConfigMapState


class Outcome(StrEnum):
    """What one managed cluster needs this pass (the `result` label of dlm_guard_ca_sync_total,
    together with act's `created` / `updated` / `error`)."""

    IN_SYNC = "in-sync"  # nothing missing from kubevirt-ca
    PENDING = "pending"  # the inbox already holds exactly the missing certificates
    WRITE = "write"  # the inbox must be (re)written
    SKIPPED = "skipped"  # cannot decide for this cluster this pass (reason in detail)


# Entries left out in normal operation (rotation leaves expired CAs behind for a while).
ROUTINE_PROBLEMS = frozenset({ProblemKind.EXPIRED, ProblemKind.NOT_YET_VALID})


@dataclass(frozen=True)
class PeerCAs:
    """One cluster's currently trusted CAs as a peer offers them."""

    cluster: str
    certificates: tuple[x509.Certificate, ...]
    problems: tuple[BundleProblem, ...] = ()
    # The CA the peer signs with now (the first CA of its bundle), valid or not.
    current: x509.Certificate | None = None

    @property
    def notable_problems(self) -> tuple[str, ...]:
        """What a person should look at: garbage, keys, non-CAs, overflow; not expiry."""
        return tuple(str(p) for p in self.problems if p.kind not in ROUTINE_PROBLEMS)

    @property
    def earliest_not_after(self) -> datetime | None:
        return _earliest(self.certificates)

    def offered(self, own_ca_only: bool) -> tuple[x509.Certificate, ...]:
        """What a peer's trust brings: every valid CA of its bundle, or only its current CA
        when that is valid (a CA in `certificates`)."""
        if not own_ca_only:
            return self.certificates
        own = fingerprint(self.current) if self.current is not None else None
        return tuple(c for c in self.certificates if fingerprint(c) == own)

    @property
    def current_not_after(self) -> datetime | None:
        """When the peer's newest CA expires: soon means the peer failed to rotate. Not the
        latest NotAfter of the whole bundle: the CAs the peer merged from others (ours too)
        would hide a peer whose own rotation is stuck."""
        return self.current.not_valid_after_utc if self.current is not None else None


@dataclass(frozen=True)
class CaWrite:
    """Set `ca-bundle` of a cluster's kubevirt-external-ca (create it when resource_version is
    None) to `bundle`, conditional on resource_version."""

    cluster: str
    namespace: str
    bundle: str
    fingerprints: tuple[str, ...]
    peers: tuple[str, ...]  # whose CAs these are, for the Event and the log
    resource_version: str | None
    name: str = EXTERNAL_CA_CONFIGMAP

    @property
    def create(self) -> bool:
        return self.resource_version is None


@dataclass(frozen=True)
class ClusterTrust:
    cluster: str
    outcome: Outcome
    detail: str = ""
    missing: tuple[str, ...] = ()  # fingerprints
    write: CaWrite | None = None
    unknown_peers: tuple[str, ...] = ()  # unreachable this pass: their CAs were not checked


@dataclass(frozen=True)
class TrustPlan:
    peers: Mapping[str, PeerCAs]  # every reachable cluster with a kubevirt-ca
    clusters: tuple[ClusterTrust, ...]  # one per managed cluster
    # (cluster, peer) -> earliest NotAfter of the peer's valid CAs / NotAfter of its current CA
    expiry: Mapping[tuple[str, str], datetime] = field(default_factory=dict)
    latest_expiry: Mapping[tuple[str, str], datetime] = field(default_factory=dict)

    @property
    def writes(self) -> list[CaWrite]:
        return [c.write for c in self.clusters if c.write is not None]


def peer_cas(snapshot: CaSnapshot, now: datetime, max_count: int) -> PeerCAs | None:
    """The valid CA certificates of a cluster's kubevirt-ca; problems never stop the rest."""
    if snapshot.kubevirt_ca is None:
        return None
    bundle = snapshot.kubevirt_ca.bundle
    certs, problems = trusted_cas(bundle, now, max_count)
    current = next((c for c in parse_bundle(bundle).certificates if is_ca(c)), None)
    return PeerCAs(snapshot.cluster, tuple(certs), tuple(problems), current)


def decide_trust(snapshots: Mapping[str, CaSnapshot | None], managed: frozenset[str],
                 now: datetime, max_count: int = MAX_CERTIFICATES_IN_BUNDLE, *,
                 own_ca_only: bool = False) -> TrustPlan:
    """The CA writes every managed cluster needs. `snapshots[name] is None`: unreachable."""
    peers = {name: cas for name, snap in sorted(snapshots.items())
             if snap is not None and (cas := peer_cas(snap, now, max_count)) is not None}
    offered = {name: cas.offered(own_ca_only) for name, cas in peers.items()}
    decisions = tuple(_decide_cluster(name, snapshots, offered, max_count)
                      for name in sorted(managed & set(snapshots)))
    pairs = [(cluster, peer, cas) for cluster in sorted(managed & set(snapshots))
             for peer, cas in peers.items() if peer != cluster]
    expiry = {(cluster, peer): when for cluster, peer, cas in pairs
              if (when := cas.earliest_not_after) is not None}
    latest = {(cluster, peer): when for cluster, peer, cas in pairs
              if (when := cas.current_not_after) is not None}
    return TrustPlan(peers, decisions, expiry, latest)


def _decide_cluster(name: str, snapshots: Mapping[str, CaSnapshot | None],
                    offered: Mapping[str, tuple[x509.Certificate, ...]],
                    max_count: int) -> ClusterTrust:
    snapshot = snapshots[name]
    unknown = tuple(sorted(n for n, s in snapshots.items() if s is None and n != name))
    if snapshot is None:
        return ClusterTrust(name, Outcome.SKIPPED, "cluster unreachable")
    if snapshot.kubevirt_ca is None:
        # virt-operator creates kubevirt-ca when it installs; without it nobody would ever
        # drain the inbox, and the namespace may not even exist yet.
        return ClusterTrust(name, Outcome.SKIPPED,
                            f"no kubevirt-ca in {snapshot.kubevirt_namespace}: KubeVirt not "
                            "installed or not ready", unknown_peers=unknown)
    if snapshot.external_ca is not None and snapshot.external_ca.terminating:
        return ClusterTrust(name, Outcome.SKIPPED, "kubevirt-external-ca is being deleted",
                            unknown_peers=unknown)
    wanted = [cert for peer, certs in offered.items() if peer != name for cert in certs]
    present = parse_bundle(snapshot.kubevirt_ca.bundle).certificates
    missing = normalize(missing_from(wanted, present), max_count)
    prints = tuple(fingerprint(cert) for cert in missing)
    if not missing:
        return ClusterTrust(name, Outcome.IN_SYNC, unknown_peers=unknown)
    if snapshot.external_ca is not None and inbox_holds(snapshot.external_ca, prints):
        return ClusterTrust(name, Outcome.PENDING, "waiting for virt-operator to merge the inbox",
                            prints, unknown_peers=unknown)
    write = CaWrite(cluster=name, namespace=snapshot.kubevirt_namespace, bundle=to_pem(missing),
                    fingerprints=prints, peers=_owners(prints, offered, name),
                    resource_version=(snapshot.external_ca.resource_version
                                      if snapshot.external_ca is not None else None))
    return ClusterTrust(name, Outcome.WRITE, f"{len(prints)} CA certificate(s) missing", prints,
                        write, unknown)


def inbox_holds(inbox: ConfigMapState, prints: tuple[str, ...]) -> bool:
    """Whether the inbox already says exactly this: the same certificates and nothing else
    (anything unparsable would make virt-operator ignore the whole inbox)."""
    parsed = parse_bundle(inbox.bundle)
    return not parsed.problems and {fingerprint(c) for c in parsed.certificates} == set(prints)


def _owners(prints: tuple[str, ...], offered: Mapping[str, tuple[x509.Certificate, ...]],
            cluster: str) -> tuple[str, ...]:
    wanted = set(prints)
    return tuple(peer for peer, certs in offered.items() if peer != cluster
                 and any(fingerprint(c) in wanted for c in certs))
