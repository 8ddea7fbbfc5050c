"""Certificates of a test control plane: what kube-apiserver and Go's TLS client need.

controlplane.pki makes them with certs.generate (the one package that knows X.509).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.generate import is_signed_by
from controlplane import pki


def _eku(cert: x509.Certificate) -> x509.ExtendedKeyUsage:
    return cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_serving_cert_has_ip_san_and_is_signed_by_the_ca() -> None:
    ca = pki.new_ca("test-ca")
    served = pki.serving_cert(ca, "kube-apiserver", dns=("localhost", "kubernetes"))
    assert is_signed_by(served.cert, ca.cert)
    sans = served.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "kubernetes"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in _eku(served.cert)


def test_client_cert_carries_user_and_groups() -> None:
    ca = pki.new_ca("test-ca")
    admin = pki.client_cert(ca, "admin", groups=("system:masters",))
    subject = admin.cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "admin"
    orgs = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _eku(admin.cert)
    assert is_signed_by(admin.cert, ca.cert)


def test_certs_are_backdated_against_clock_drift() -> None:
    ca = pki.new_ca("test-ca")
    leaf = pki.serving_cert(ca, "x")
    for cert in (ca.cert, leaf.cert):
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime == pki.VALIDITY + pki.BACKDATE


def test_ca_is_a_ca_and_files_round_trip_with_private_keys_0600(tmp_path: Path) -> None:
    ca = pki.new_ca("test-ca")
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    pki.write_pair(ca, tmp_path / "ca.crt", tmp_path / "ca.key")
    assert x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes()) == ca.cert
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    loaded = load_pem_private_key((tmp_path / "ca.key").read_bytes(), password=None)
    assert loaded.public_key() == ca.key.public_key()


def test_public_key_file_holds_only_the_public_half(tmp_path: Path) -> None:
    key = pki.new_key()
    pki.write_public_key(key, tmp_path / "sa.pub")
    text = (tmp_path / "sa.pub").read_bytes()
    assert text.startswith(b"-----BEGIN PUBLIC KEY-----") and b"PRIVATE" not in text
