"""The virt-operator stand-in replays upstream's own MergeCABundle unit tests
(pkg/virt-operator/resource/generate/components/secrets_test.go, v1.9.0): same ages, same
overlap (2 minutes), same expected bundles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509

from certs.bundle import fingerprint, to_pem
from certs.generate import make_ca
from controlplane.virt_operator_standin import (
    merge_ca_bundle,
    merged_bundle,
    pem_in_order,
    valid_external_cas,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)
OVERLAP = 2 * M


def cert(start: timedelta, end: timedelta, name: str = "c") -> x509.Certificate:
    return make_ca(NOW + start, NOW + end, common_name=name).cert


def names(certs: list[x509.Certificate]) -> list[str]:
    return [fingerprint(c) for c in certs]


def test_drops_expired_cas() -> None:
    current = cert(0 * M, 60 * M)
    given = [cert(-20 * M, -10 * M)]
    assert names(merge_ca_bundle(current, given, OVERLAP, NOW)) == names([current])


def test_appended_when_within_the_overlap_period() -> None:
    current = cert(0 * M, 60 * M)
    given = [cert(-20 * M, 60 * M)]
    assert names(merge_ca_bundle(current, given, OVERLAP, NOW)) == names([current, given[0]])


def test_kicks_out_the_first_ca_cert_if_it_is_outside_of_the_overlap_period() -> None:
    current = cert(-3 * M, 60 * M)  # older than the overlap: every other CA goes
    given = [cert(-20 * M, 60 * M)]
    assert names(merge_ca_bundle(current, given, OVERLAP, NOW)) == names([current])


def test_kicks_out_a_ca_cert_which_is_outside_of_the_overlap_period() -> None:
    current = cert(0 * M, 60 * M)
    given = [cert(-20 * M, 60 * M, "old"), cert(-10 * M, 60 * M, "newer")]
    assert names(merge_ca_bundle(current, given, OVERLAP, NOW)) == names([current, given[1]])


def test_kicks_out_multiple_ca_certs_which_are_outside_of_the_overlap_period() -> None:
    current = cert(-5 * M, 55 * M)
    given = [cert(-20 * M, 60 * M), cert(-10 * M, 60 * M), cert(-5 * M, 60 * M)]
    assert names(merge_ca_bundle(current, given, OVERLAP, NOW)) == names([current])


def test_the_current_ca_is_not_added_over_and_over_again() -> None:
    current = cert(0 * M, 60 * M)
    given = [cert(-20 * M, 60 * M), current, current]
    assert names(merge_ca_bundle(current, given, OVERLAP, NOW)) == names([current, given[0]])


def test_inbox_cas_are_appended_after_the_drop_and_a_bad_inbox_is_ignored() -> None:
    """shouldUpdateBundle appends the inbox after MergeCABundle: a re-delivered CA comes back
    for exactly one reconcile, and the next one drops it again (the flap)."""
    current, peer = cert(-3 * M, 60 * M, "local"), cert(-20 * M, 60 * M, "peer")
    once = merged_bundle(current, to_pem([current]), to_pem([peer]), OVERLAP, NOW)
    assert once == pem_in_order([current, peer])  # the current CA first
    assert merged_bundle(current, once, "", OVERLAP, NOW) == pem_in_order([current])
    broken = to_pem([peer]) + ("-----BEGIN CERTIFICATE-----\n"
                                "aGVsbG8=\n-----END CERTIFICATE-----\n")  # base64, not DER
    assert valid_external_cas(broken, NOW) == []
    future = cert(5 * M, 60 * M, "not yet valid")
    assert valid_external_cas(to_pem([future, peer, peer]), NOW) == [peer]
