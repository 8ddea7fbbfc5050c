"""Create a private CA and a serving certificate for the webhook (ECDSA P-256).

Pure helpers (`make_ca`, `make_leaf`) take the validity window explicitly, so tests, the
control-plane harness and the reconciler tests can build real CAs that are expired, not yet
valid or about to expire. `generate_pair` is the file shell used by `dlm-guard certs generate`:
it reuses what is already in the directory whenever it still fits, so running it again with the
same arguments changes nothing (byte-identical files), which keeps GitOps and `make` idempotent.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
# Kubernetes TLS Secrets use tls.crt/tls.key; ca.crt is what cert-manager adds next to them.

DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 365
# NotBefore is set a little in the past so that a peer whose clock lags ours does not reject a
# certificate issued a moment ago as "not yet valid".
BACKDATE = timedelta(minutes=5)
# Renew the leaf once less than a third of its lifetime is left (cert-manager's default
# renewBefore), so a re-run well before expiry rotates it instead of waiting for an outage.
RENEW_FRACTION = 1 / 3
CA_COMMON_NAME = "dlm-guard-ca"
LEAF_FALLBACK_COMMON_NAME = "dlm-guard"
_MAX_CN = 64  # ub-common-name (RFC 5280)
_DNS_RE = re.compile(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class CertError(Exception):
    """A certificate or key file exists but cannot be used; the message says what to do."""


class Issued(NamedTuple):
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True, slots=True)
class PairPaths:
    """The four files of a generated pair, and what this run changed."""

    ca_cert: Path
    ca_key: Path
    tls_cert: Path
    tls_key: Path
    ca_created: bool = False
    leaf_issued: bool = False


# --- Pure helpers ---------------------------------------------------------------------
def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names the apiserver uses to reach a webhook Service (service.namespace.svc)."""
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def normalize_dns(names: Sequence[str]) -> list[str]:
    """Lower-cased, de-duplicated (first occurrence wins) DNS names; ValueError on a bad one."""
    result: list[str] = []
    for raw in names:
        name = raw.strip().lower().rstrip(".")
        if len(name) > 253 or not _DNS_RE.match(name):
            raise ValueError(f"not a valid DNS name: {raw!r}")
        if name not in result:
            result.append(name)
    return result


def normalize_ips(addresses: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Parsed, de-duplicated IP addresses; ValueError on a bad one."""
    result: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in addresses:
        address = ipaddress.ip_address(raw.strip())
        if address not in result:
            result.append(address)
    return result


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ski(key: PrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def make_ca(not_before: datetime, not_after: datetime, *, common_name: str = CA_COMMON_NAME,
            key: PrivateKey | None = None) -> Issued:
    """A self-signed CA: basicConstraints CA:true (critical), keyCertSign + cRLSign.

    pathLen 0: it signs serving certificates only, never another CA.
    """
    key = key or new_key()
    ski = _ski(key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_leaf(ca: Issued, not_before: datetime, not_after: datetime, *,
              dns: Sequence[str] = (), ips: Sequence[str] = (),
              common_name: str | None = None, key: PrivateKey | None = None,
              client_auth: bool = False, organizations: Sequence[str] = ()) -> Issued:
    """A serving certificate signed by `ca`: digitalSignature, ExtKeyUsage serverAuth.

    The SANs are what clients check (Go, hence the apiserver, ignores the CN); the CN is only
    for people reading logs. `client_auth` adds clientAuth for mTLS test fixtures. As a
    client certificate, kube-apiserver reads the user from the CN and the groups from
    `organizations` (subject O), e.g. the test control plane's system:masters admin.
    """
    key = key or new_key()
    dns_names, addresses = normalize_dns(dns), normalize_ips(ips)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH]
                                                  if client_auth else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name or leaf_common_name(dns_names, addresses),
                            organizations))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(_ski(key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(a) for a in addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def leaf_common_name(dns_names: Sequence[str], addresses: Sequence[object]) -> str:
    candidates = [*dns_names, *(str(a) for a in addresses)]
    fitting = [c for c in candidates if len(c) <= _MAX_CN]
    return fitting[0] if fitting else LEAF_FALLBACK_COMMON_NAME


def sans_of(cert: x509.Certificate) -> tuple[frozenset[str], frozenset[str]]:
    """(DNS names, IP addresses as text) of a certificate; empty when it has no SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    return (frozenset(san.get_values_for_type(x509.DNSName)),
            frozenset(str(a) for a in san.get_values_for_type(x509.IPAddress)))


def is_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def leaf_reusable(leaf: Issued, ca: Issued, now: datetime, *, dns: Sequence[str],
                  ips: Sequence[str], days: int) -> bool:
    """Whether an existing leaf still fits the request, so a re-run leaves it untouched.

    It must be signed by this CA, match its key, carry exactly the requested SANs, have the
    requested lifetime (or be capped at the CA's end), and have more than RENEW_FRACTION of
    its lifetime left.
    """
    cert = leaf.cert
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    wanted_sans = (frozenset(normalize_dns(dns)), frozenset(str(a) for a in normalize_ips(ips)))
    lifetime_ok = (round((end - start - BACKDATE) / timedelta(days=1)) == days
                   or end == ca.cert.not_valid_after_utc)
    return (is_signed_by(cert, ca.cert) and key_matches(cert, leaf.key)
            and sans_of(cert) == wanted_sans and lifetime_ok
            and start <= now and (end - now) > (end - start) * RENEW_FRACTION)


def leaf_window(ca: x509.Certificate, now: datetime, days: int) -> tuple[datetime, datetime]:
    """Backdated start; the end is capped at the CA's, since a chain is only as valid as its CA."""
    return now - BACKDATE, min(now + timedelta(days=days), ca.not_valid_after_utc)


def ca_usable(ca: Issued, now: datetime) -> str | None:
    """Why an existing CA cannot sign a new leaf, or None when it can."""
    cert = ca.cert
    if not key_matches(cert, ca.key):
        return "ca.key does not belong to ca.crt"
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca.crt is not a CA certificate"
    except x509.ExtensionNotFound:
        return "ca.crt has no basicConstraints, so it is not a CA"
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return f"ca.crt is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}" \
               f" to {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
    return None


# --- PEM encoding ---------------------------------------------------------------------
def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    # PKCS#8, unencrypted: what Kubernetes TLS Secrets, ssl and Go's tls.X509KeyPair all accept.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: PrivateKey) -> bytes:
    # SubjectPublicKeyInfo ("PUBLIC KEY"): kube-apiserver's --service-account-key-file reads
    # public keys, and PKCS#8 private keys there are not recognised.
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Read a cert/key pair; CertError when either cannot be parsed."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        raise CertError(f"cannot parse {cert_path.name} / {key_path.name}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path.name} is not an ECDSA key; use --force to replace it")
    return Issued(cert, key)


# --- File shell -----------------------------------------------------------------------
def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so a reader (the server's reload) never sees
    half a file; the mode is set before the content exists under the final name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _existing(paths: tuple[Path, Path], what: str) -> bool:
    present = [p.exists() for p in paths]
    if any(present) and not all(present):
        found = [p.name for p, ok in zip(paths, present, strict=True) if ok]
        raise CertError(f"only {', '.join(found)} of the {what} exists; use --force to start over")
    return all(present)


def _ensure_ca(paths: PairPaths, now: datetime, ca_days: int, force: bool) -> tuple[Issued, bool]:
    if not force and _existing((paths.ca_cert, paths.ca_key), "CA"):
        ca = load_issued(paths.ca_cert, paths.ca_key)
        reason = ca_usable(ca, now)
        if reason:
            # Replacing a CA silently would break every caBundle that trusts the old one.
            raise CertError(f"{reason}; use --force to create a new CA (then update caBundle)")
        return ca, False
    # A timestamped CN tells rotated CAs apart in a bundle (client-go does "<host>-ca@<unix>").
    name = f"{CA_COMMON_NAME}@{int(now.timestamp())}"
    ca = make_ca(now - BACKDATE, now + timedelta(days=ca_days), common_name=name)
    write_atomic(paths.ca_key, key_pem(ca.key), 0o600)
    write_atomic(paths.ca_cert, cert_pem(ca.cert), 0o644)
    return ca, True


def _reusable_leaf(paths: PairPaths, ca: Issued, now: datetime, dns: Sequence[str],
                   ips: Sequence[str], days: int) -> bool:
    if not (paths.tls_cert.exists() and paths.tls_key.exists()):
        return False  # half a pair is simply re-issued: the leaf is ours, nothing pins it
    try:
        leaf = load_issued(paths.tls_cert, paths.tls_key)
    except CertError:
        return False  # the leaf is ours to re-issue: nothing else trusts it directly
    return leaf_reusable(leaf, ca, now, dns=dns, ips=ips, days=days)


def generate_pair(out_dir: Path, *, dns: Sequence[str] = (), ips: Sequence[str] = (),
                  ca_days: int = DEFAULT_CA_DAYS, days: int = DEFAULT_LEAF_DAYS,
                  force: bool = False, now: datetime | None = None) -> PairPaths:
    """Write ca.crt, ca.key, tls.crt, tls.key into out_dir (keys 0600).

    An existing valid CA is reused unless `force`; the leaf is re-issued only when it no longer
    fits (see leaf_reusable). ValueError for bad arguments, CertError for unusable files.
    """
    if not dns and not ips:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    if ca_days < 1 or days < 1:
        raise ValueError("lifetimes must be at least one day")
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    normalize_dns(dns)  # fail before touching any file
    normalize_ips(ips)
    now = now or datetime.now(UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = PairPaths(out_dir / CA_CERT, out_dir / CA_KEY, out_dir / TLS_CERT, out_dir / TLS_KEY)
    ca, ca_created = _ensure_ca(paths, now, ca_days, force)
    if not ca_created and not force and _reusable_leaf(paths, ca, now, dns, ips, days):
        return paths
    leaf = make_leaf(ca, *leaf_window(ca.cert, now, days), dns=dns, ips=ips)
    # Key first: a reloading server that sees the new key with the old cert rejects the
    # mismatched pair and keeps serving, then picks up both on its next check.
    write_atomic(paths.tls_key, key_pem(leaf.key), 0o600)
    write_atomic(paths.tls_cert, cert_pem(leaf.cert), 0o644)
    return PairPaths(paths.ca_cert, paths.ca_key, paths.tls_cert, paths.tls_key,
                     ca_created=ca_created, leaf_issued=True)
