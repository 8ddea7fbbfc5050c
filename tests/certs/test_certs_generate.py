"""certs.generate: extensions, SANs, lifetimes, reuse, --force, file modes."""

from __future__ import annotations

import ipaddress
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.bundle import is_ca
from certs.generate import (
    BACKDATE,
    CertError,
    PairPaths,
    generate_pair,
    is_signed_by,
    key_pem,
    load_issued,
    make_ca,
    make_leaf,
    new_key,
    public_key_pem,
    service_dns_names,
)

DAY = timedelta(days=1)
DNS = ["webhook.dlm.svc", "Localhost"]
IPS = ["127.0.0.1", "::1"]


def contents(paths: PairPaths) -> list[bytes]:
    return [p.read_bytes() for p in (paths.ca_cert, paths.ca_key, paths.tls_cert, paths.tls_key)]


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture
def pair(tmp_path: Path, now: datetime) -> PairPaths:
    return generate_pair(tmp_path / "out", dns=DNS, ips=IPS, now=now)


def test_writes_four_files_with_private_keys_0600(pair: PairPaths) -> None:
    assert (pair.ca_cert.name, pair.ca_key.name) == ("ca.crt", "ca.key")
    assert (pair.tls_cert.name, pair.tls_key.name) == ("tls.crt", "tls.key")
    assert stat.S_IMODE(pair.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.tls_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.tls_cert.stat().st_mode) == 0o644
    assert pair.ca_created and pair.leaf_issued
    assert not [p for p in pair.ca_cert.parent.iterdir() if p.name.startswith(".")]


def test_ca_extensions(pair: PairPaths, now: datetime) -> None:
    ca = load_issued(pair.ca_cert, pair.ca_key)
    assert isinstance(ca.key.curve, ec.SECP256R1)
    constraints = ext(ca.cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ext(ca.cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert ext(ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert ca.cert.not_valid_after_utc - now == 3650 * DAY
    assert ca.cert.not_valid_before_utc == now - BACKDATE
    cn = ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"dlm-guard-ca@{int(now.timestamp())}"


def test_leaf_extensions_and_sans(pair: PairPaths, now: datetime) -> None:
    ca = load_issued(pair.ca_cert, pair.ca_key)
    leaf = load_issued(pair.tls_cert, pair.tls_key)
    assert isinstance(leaf.key.curve, ec.SECP256R1)
    assert is_signed_by(leaf.cert, ca.cert) and not is_ca(leaf.cert)
    assert list(ext(leaf.cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = ext(leaf.cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    san = ext(leaf.cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["webhook.dlm.svc", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in IPS]
    aki = ext(leaf.cert, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == ext(ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert leaf.cert.not_valid_after_utc - now == 365 * DAY
    assert leaf.cert.subject.rfc4514_string() == "CN=webhook.dlm.svc"


def test_same_arguments_again_change_nothing(pair: PairPaths, tmp_path: Path,
                                             now: datetime) -> None:
    before = contents(pair)
    again = generate_pair(tmp_path / "out", dns=DNS, ips=IPS, now=now + 30 * DAY)
    assert contents(again) == before
    assert not again.ca_created and not again.leaf_issued


def test_new_names_reissue_only_the_leaf(pair: PairPaths, tmp_path: Path, now: datetime) -> None:
    before = contents(pair)
    again = generate_pair(tmp_path / "out", dns=[*DNS, "extra.example"], ips=IPS, now=now)
    after = contents(again)
    assert after[:2] == before[:2] and after[2] != before[2] and after[3] != before[3]
    assert again.leaf_issued and not again.ca_created


def test_other_lifetime_reissues_the_leaf(pair: PairPaths, tmp_path: Path, now: datetime) -> None:
    again = generate_pair(tmp_path / "out", dns=DNS, ips=IPS, days=30, now=now)
    assert again.leaf_issued
    leaf = load_issued(again.tls_cert, again.tls_key).cert
    assert leaf.not_valid_after_utc - now == 30 * DAY


def test_leaf_renewed_when_a_third_of_its_life_is_left(pair: PairPaths, tmp_path: Path,
                                                       now: datetime) -> None:
    before = contents(pair)
    later = now + 250 * DAY  # 115 of 365 days left
    again = generate_pair(tmp_path / "out", dns=DNS, ips=IPS, now=later)
    assert again.leaf_issued and contents(again)[:2] == before[:2]
    assert load_issued(again.tls_cert, again.tls_key).cert.not_valid_after_utc == later + 365 * DAY


def test_force_replaces_the_ca(pair: PairPaths, tmp_path: Path, now: datetime) -> None:
    before = contents(pair)
    again = generate_pair(tmp_path / "out", dns=DNS, ips=IPS, force=True, now=now)
    after = contents(again)
    assert all(b != a for b, a in zip(before, after, strict=True))
    assert again.ca_created


def test_leaf_is_capped_at_the_ca_end_and_then_kept(tmp_path: Path, now: datetime) -> None:
    first = generate_pair(tmp_path, dns=["a.example"], ca_days=10, days=365, now=now)
    ca = load_issued(first.ca_cert, first.ca_key).cert
    leaf = load_issued(first.tls_cert, first.tls_key).cert
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc
    again = generate_pair(tmp_path, dns=["a.example"], ca_days=10, days=365, now=now + DAY)
    assert not again.leaf_issued


def test_expired_ca_needs_force(pair: PairPaths, tmp_path: Path, now: datetime) -> None:
    with pytest.raises(CertError, match="--force"):
        generate_pair(tmp_path / "out", dns=DNS, now=now + 3651 * DAY)
    assert generate_pair(tmp_path / "out", dns=DNS, now=now + 3651 * DAY, force=True).ca_created


def test_foreign_ca_key_is_refused(pair: PairPaths, tmp_path: Path, now: datetime) -> None:
    pair.ca_key.write_bytes(key_pem(new_key()))
    with pytest.raises(CertError, match=r"ca\.key does not belong"):
        generate_pair(tmp_path / "out", dns=DNS, now=now)


def test_half_a_ca_is_refused(tmp_path: Path, now: datetime) -> None:
    (tmp_path / "ca.crt").write_text("")
    with pytest.raises(CertError, match=r"only ca\.crt"):
        generate_pair(tmp_path, dns=DNS, now=now)


def test_broken_leaf_is_reissued(pair: PairPaths, tmp_path: Path, now: datetime) -> None:
    pair.tls_cert.write_text("not a certificate\n")
    again = generate_pair(tmp_path / "out", dns=DNS, ips=IPS, now=now)
    assert again.leaf_issued and not again.ca_created


def test_half_a_serving_pair_is_reissued(pair: PairPaths, tmp_path: Path, now: datetime) -> None:
    pair.tls_key.unlink()
    again = generate_pair(tmp_path / "out", dns=DNS, ips=IPS, now=now)
    assert again.leaf_issued and not again.ca_created and again.tls_key.exists()


@pytest.mark.parametrize(("dns", "ips", "message"), [
    ([], [], "at least one"),
    (["bad name"], [], "not a valid DNS name"),
    (["https://x.example"], [], "not a valid DNS name"),
    ([], ["10.0.0.300"], "does not appear to be an IPv4 or IPv6 address"),
])
def test_bad_arguments_write_nothing(tmp_path: Path, dns: list[str], ips: list[str],
                                     message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_pair(tmp_path / "out", dns=dns, ips=ips)
    assert not (tmp_path / "out").exists()


def test_service_names() -> None:
    assert service_dns_names("dlm-guard", "kube-system") == [
        "dlm-guard.kube-system.svc", "dlm-guard.kube-system.svc.cluster.local"]


def test_make_ca_and_leaf_take_any_window(now: datetime) -> None:
    ca = make_ca(now - 10 * DAY, now - DAY, common_name="old")
    assert ca.cert.not_valid_after_utc == now - DAY and is_ca(ca.cert)
    leaf = make_leaf(ca, now - 5 * DAY, now - 2 * DAY, client_auth=True)
    assert ext(leaf.cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    assert leaf.cert.subject.rfc4514_string() == "CN=dlm-guard"
    with pytest.raises(x509.ExtensionNotFound):
        ext(leaf.cert, x509.SubjectAlternativeName)


# --- client identities (the test control plane's admin) and public keys ----------------------
@pytest.mark.parametrize("groups", [("system:masters",), ("team-a", "team-b"), ()])
def test_leaf_organizations_are_the_subject_o_before_the_cn(now: datetime,
                                                            groups: tuple[str, ...]) -> None:
    # kube-apiserver reads a client certificate's user from the CN, its groups from every O.
    ca = make_ca(now - DAY, now + DAY)
    leaf = make_leaf(ca, now - DAY, now + DAY, common_name="admin", organizations=groups,
                     client_auth=True)
    subject = leaf.cert.subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == list(
        groups)
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["admin"]
    # O first, CN last: the order Go's pkix.Name writes.
    assert subject.rdns[-1].get_attributes_for_oid(NameOID.COMMON_NAME)
    assert is_signed_by(leaf.cert, ca.cert) and leaf.cert.issuer == ca.cert.subject


def test_organizations_never_reach_the_ca_or_a_default_leaf(now: datetime) -> None:
    ca = make_ca(now - DAY, now + DAY, common_name="ca")
    assert ca.cert.subject.rfc4514_string() == "CN=ca"
    leaf = make_leaf(ca, now - DAY, now + DAY, dns=["a.example"])
    assert leaf.cert.subject.rfc4514_string() == "CN=a.example"


def test_public_key_pem_is_subject_public_key_info_of_the_key(now: datetime) -> None:
    key = new_key()
    text = public_key_pem(key)
    assert text.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert text.rstrip().endswith(b"-----END PUBLIC KEY-----") and b"PRIVATE" not in text
    assert serialization.load_pem_public_key(text) == key.public_key()
    with pytest.raises(ValueError):  # never something a private-key reader would take
        serialization.load_pem_private_key(text, password=None)
    leaf = make_leaf(make_ca(now - DAY, now + DAY), now - DAY, now + DAY, key=key)
    assert text == leaf.cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public_key_pem(new_key()) != text
