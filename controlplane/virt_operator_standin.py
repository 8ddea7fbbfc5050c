"""Stand-in for virt-operator's CA bundle handling, for tests on the local clusters.

Nothing runs KubeVirt here, so this plays the part of one virt-operator reconcile of the CA
ConfigMaps, each step after the upstream function it mimics (kubevirt/kubevirt v1.9.0 and main
d923fdb815; docs/kubevirt-facts.md):

1. `getRemotePublicCas` + `getValidCerts` (pkg/virt-operator/resource/apply/core.go): read
   `kubevirt-external-ca`; if any block fails to parse the whole inbox is ignored; keep the
   certificates valid now, deduplicated by SHA-256.
2. `MergeCABundle` + `filterValidCertificates` (pkg/virt-operator/resource/generate/components/
   secrets.go): drop expired CAs from the existing `kubevirt-ca`, newest NotBefore first, at most
   50; walk them and stop (dropping the rest) at the first one whose predecessor (for the first:
   the current CA) has existed longer than the overlap (renewBefore); the current CA goes first.
3. `shouldUpdateBundle` (core.go): append the inbox certificates not already in the result.
4. `cleanupExternalCACerts` (core.go): an Update of `kubevirt-external-ca` from virt-operator's
   own template, so the inbox is "" and its labels and annotations are virt-operator's only.

It is a test helper: a real virt-operator also rotates its CA, re-issues leaf certificates and
runs on every change of the ConfigMaps; tests call `reconcile_ca_bundle` where that would happen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.bundle import ProblemKind, parse_bundle

MAX_CERTIFICATES_IN_BUNDLE = 50  # maxCertificatesInBundle
MANAGED_BY = {"app.kubernetes.io/managed-by": "virt-operator"}  # v1.ManagedByLabel


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def valid_external_cas(inbox: str, now: datetime) -> list[x509.Certificate]:
    """Step 1: what virt-operator takes from the inbox."""
    parsed = parse_bundle(inbox)
    # cert.ParseCertsPEM fails on a CERTIFICATE block that x509 cannot parse: nothing is taken.
    # (A block whose base64 is broken ends Go's pem.Decode loop instead: not played here.)
    if any(p.kind is ProblemKind.UNPARSABLE for p in parsed.problems):
        return []
    seen: set[str] = set()
    valid = []
    for cert in parsed.certificates:
        if cert.not_valid_before_utc <= now <= cert.not_valid_after_utc \
                and _sha256(cert) not in seen:
            seen.add(_sha256(cert))
            valid.append(cert)
    return valid


def merge_ca_bundle(current: x509.Certificate, existing: list[x509.Certificate],
                    overlap: timedelta, now: datetime) -> list[x509.Certificate]:
    """Step 2: upstream `MergeCABundle(currentCert, currentBundle, overlapDuration)`."""
    valid = [c for c in existing if not c.not_valid_after_utc < now]
    valid.sort(key=lambda c: -int(c.not_valid_before_utc.timestamp()))  # stable, newest first
    valid = valid[:MAX_CERTIFICATES_IN_BUNDLE]
    kept: list[x509.Certificate] = []
    for index, cert in enumerate(valid):
        previous = current if index == 0 else valid[index - 1]
        if previous.not_valid_before_utc + overlap < now:
            break  # "Kept old CA certificates for a duration of at least ..., dropping them now"
        if cert.public_bytes(Encoding.PEM) != current.public_bytes(Encoding.PEM):
            kept.append(cert)
    return [current, *kept]


def merged_bundle(current: x509.Certificate, existing: str, inbox: str, overlap: timedelta,
                  now: datetime) -> str:
    """Steps 1 to 3: the new `kubevirt-ca` bundle."""
    existing_certs = parse_bundle(existing).certificates
    bundle = merge_ca_bundle(current, existing_certs, overlap, now)
    present = {_sha256(c) for c in bundle}
    for cert in valid_external_cas(inbox, now):
        if _sha256(cert) not in present:
            present.add(_sha256(cert))
            bundle.append(cert)
    return pem_in_order(bundle)


def pem_in_order(certs: list[x509.Certificate]) -> str:
    """PEM in the given order (certs.bundle.to_pem sorts; virt-operator puts its CA first)."""
    return "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certs)


@dataclass(frozen=True)
class StandInResult:
    kubevirt_ca_changed: bool
    bundle: str


def reconcile_ca_bundle(api: Any, namespace: str, current: x509.Certificate,
                        overlap: timedelta, now: datetime) -> StandInResult:
    """One virt-operator reconcile of the CA ConfigMaps through the real API server.

    `api` is a kubernetes.client.ApiClient; `current` is the CA this cluster signs with;
    `overlap` is its renewBefore (`GetCARenewBefore`)."""
    from kubernetes import client as k8s  # lazily, as Cluster.api_client does

    core = k8s.CoreV1Api(api)
    inbox = _bundle(core.read_namespaced_config_map("kubevirt-external-ca", namespace))
    existing = _bundle(core.read_namespaced_config_map("kubevirt-ca", namespace))
    bundle = merged_bundle(current, existing, inbox, overlap, now)
    changed = bundle != existing
    if changed:  # createOrUpdateKubeVirtCAConfigMap patches only on a difference
        core.patch_namespaced_config_map("kubevirt-ca", namespace,
                                         {"data": {"ca-bundle": bundle}})
    # cleanupExternalCACerts: an Update (no resourceVersion) with virt-operator's own metadata.
    core.replace_namespaced_config_map("kubevirt-external-ca", namespace,
                                       k8s.V1ConfigMap.model_validate({
                                           "metadata": {"name": "kubevirt-external-ca",
                                                        "namespace": namespace,
                                                        "labels": dict(MANAGED_BY)},
                                           "data": {"ca-bundle": ""}}))
    return StandInResult(changed, bundle)


def _bundle(configmap: Any) -> str:
    return str((configmap.data or {}).get("ca-bundle") or "")
