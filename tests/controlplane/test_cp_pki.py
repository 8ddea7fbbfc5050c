"""Certificates made by controlplane.pki: what kube-apiserver and Go's TLS client need."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane import pki


def test_serving_cert_has_ip_san_and_is_signed_by_the_ca() -> None:
    ca = pki.new_ca("test-ca")
    served = pki.serving_cert(ca, "kube-apiserver")
    served.cert.verify_directly_issued_by(ca.cert)
    sans = served.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    eku = served.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_client_cert_carries_user_and_groups() -> None:
    ca = pki.new_ca("test-ca")
    admin = pki.client_cert(ca, "admin", groups=("system:masters",))
    subject = admin.cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "admin"
    orgs = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    eku = admin.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_ca_is_a_ca_and_pems_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = pki.new_ca("test-ca")
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    assert x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes()) == ca.cert
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PUBLIC KEY" in pki.public_key_pem(ca.key)
