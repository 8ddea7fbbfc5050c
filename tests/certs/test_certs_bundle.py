"""certs.bundle: every rule of strict PEM bundle handling, with a fixed clock."""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.bundle import (
    BundleProblem,
    ParsedBundle,
    ProblemKind,
    ca_only,
    earliest_not_after,
    fingerprint,
    missing_from,
    normalize,
    parse_bundle,
    to_pem,
    trusted_cas,
    valid_at,
)
from certs.generate import Issued, cert_pem, key_pem, make_ca, make_leaf, new_key

NOW = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def ca_valid(days_left: int = 100, name: str = "ca") -> x509.Certificate:
    return make_ca(NOW - 10 * DAY, NOW + days_left * DAY, common_name=name).cert


@cache
def pool() -> tuple[x509.Certificate, ...]:
    """Five distinct valid CAs, built once for the module (and for hypothesis)."""
    return tuple(ca_valid(10 + i, f"pool-{i}") for i in range(5))


@pytest.fixture(scope="module")
def issuer() -> Issued:
    return make_ca(NOW - 10 * DAY, NOW + 100 * DAY, common_name="issuer")


def pem(*certs: x509.Certificate) -> str:
    return "".join(cert_pem(c).decode() for c in certs)


def kinds(parsed: ParsedBundle | Sequence[BundleProblem]) -> list[ProblemKind]:
    problems = parsed.problems if isinstance(parsed, ParsedBundle) else parsed
    return [p.kind for p in problems]


# --- parsing --------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "\n", "  \n\t\n"])
def test_empty_bundle(text: str) -> None:
    assert parse_bundle(text) == ParsedBundle()
    assert trusted_cas(text, NOW) == ([], [])
    assert to_pem([]) == ""


def test_certificates_in_order_of_appearance() -> None:
    a, b = pool()[:2]
    parsed = parse_bundle(pem(b, a, b))
    assert [fingerprint(c) for c in parsed.certificates] == [fingerprint(x) for x in (b, a, b)]
    assert parsed.problems == []
    starts = [i + 1 for i, line in enumerate(pem(b, a, b).splitlines()) if "BEGIN" in line]
    assert [(e.block, e.line) for e in parsed.located] == list(zip([1, 2, 3], starts, strict=True))


def test_positions_are_block_and_line() -> None:
    a, b = pool()[:2]
    text = pem(a) + "garbage\n" + pem(b)
    parsed = parse_bundle(text)
    lines = text.splitlines()
    assert [e.block for e in parsed.located] == [1, 2]
    assert lines[parsed.located[1].line - 1] == "-----BEGIN CERTIFICATE-----"
    (problem,) = parsed.problems
    assert problem.kind is ProblemKind.GARBAGE and lines[problem.line - 1] == "garbage"
    assert str(problem).startswith(f"line {problem.line}:")


@pytest.mark.parametrize("label", ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY",
                                   "ENCRYPTED PRIVATE KEY"])
def test_private_key_is_reported_never_copied_never_echoed(label: str) -> None:
    a, b = pool()[:2]
    body = key_pem(new_key()).decode().replace("PRIVATE KEY", label)
    text = pem(a) + body + pem(b)
    parsed = parse_bundle(text)
    assert kinds(parsed) == [ProblemKind.PRIVATE_KEY]
    assert parsed.problems[0].block == 2 and label in parsed.problems[0].message
    secret_lines = [line for line in body.splitlines() if not line.startswith("-----")]
    messages = " ".join(str(p) for p in parsed.problems)
    assert not any(line in messages for line in secret_lines)
    assert len(parsed.certificates) == 2
    kept, problems = trusted_cas(text, NOW)
    out = to_pem(kept)
    assert "PRIVATE" not in out and not any(line in out for line in secret_lines)
    assert kinds(problems) == [ProblemKind.PRIVATE_KEY]


def test_other_blocks_are_skipped(issuer: Issued) -> None:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(issuer.key, hashes.SHA256()))
    text = csr.public_bytes(serialization.Encoding.PEM).decode() + pem(issuer.cert)
    parsed = parse_bundle(text)
    assert kinds(parsed) == [ProblemKind.NOT_CERTIFICATE]
    assert "CERTIFICATE REQUEST" in parsed.problems[0].message
    assert parsed.certificates == [issuer.cert]


def test_garbage_between_and_around_blocks_is_reported_not_echoed() -> None:
    a, b = pool()[:2]
    text = "leading secret-ish\n" + pem(a) + "in\nbetween\n\n" + pem(b) + "trailing"
    parsed = parse_bundle(text)
    assert kinds(parsed) == [ProblemKind.GARBAGE] * 3
    lines = text.splitlines()
    assert [lines[p.line - 1] for p in parsed.problems] == ["leading secret-ish", "in",
                                                            "trailing"]
    assert "2 lines" in parsed.problems[1].message
    assert "secret-ish" not in str(parsed.problems[0])
    assert len(parsed.certificates) == 2


def test_unparsable_certificate_does_not_spoil_the_rest() -> None:
    a, b = pool()[:2]
    der = a.public_bytes(serialization.Encoding.DER)
    truncated = base64.encodebytes(der[: len(der) // 2]).decode()
    bad = f"-----BEGIN CERTIFICATE-----\n{truncated}-----END CERTIFICATE-----\n"
    not_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"
    parsed = parse_bundle(pem(a) + bad + not_base64 + pem(b))
    assert kinds(parsed) == [ProblemKind.UNPARSABLE] * 2
    assert [p.block for p in parsed.problems] == [2, 3]
    assert [fingerprint(c) for c in parsed.certificates] == [fingerprint(a), fingerprint(b)]


def test_unterminated_and_mismatched_blocks() -> None:
    a, b = pool()[:2]
    cut = "\n".join(pem(a).splitlines()[:-1]) + "\n"  # END line missing
    mismatched = pem(a).replace("END CERTIFICATE", "END X509 CRL")
    parsed = parse_bundle(cut + mismatched + pem(b))
    assert kinds(parsed)[:2] == [ProblemKind.UNTERMINATED] * 2
    assert parsed.certificates == [b]


def test_windows_line_endings_and_indentation_parse() -> None:
    a = pool()[0]
    text = "".join(f"    {line}\r\n" for line in pem(a).splitlines())
    parsed = parse_bundle(text)
    assert parsed.problems == [] and parsed.certificates == [a]


# --- filters --------------------------------------------------------------------------
def test_validity_is_inclusive_at_both_ends() -> None:
    cert = make_ca(NOW - DAY, NOW + DAY).cert
    assert valid_at([cert], NOW - DAY) == [cert]
    assert valid_at([cert], NOW + DAY) == [cert]
    assert valid_at([cert], NOW + DAY + timedelta(seconds=1)) == []
    assert valid_at([cert], NOW - DAY - timedelta(seconds=1)) == []


def test_expired_and_not_yet_valid_are_reported() -> None:
    good = ca_valid()
    expired = make_ca(NOW - 10 * DAY, NOW - DAY, common_name="old").cert
    future = make_ca(NOW + DAY, NOW + 10 * DAY, common_name="future").cert
    kept, problems = trusted_cas(pem(expired, good, future), NOW)
    assert kept == [good]
    assert kinds(problems) == [ProblemKind.EXPIRED, ProblemKind.NOT_YET_VALID]
    assert problems[0].fingerprint == fingerprint(expired) and problems[0].block == 1
    assert "CN=old" in problems[0].message and "CN=future" in problems[1].message


def test_non_ca_certificates_are_reported(issuer: Issued) -> None:
    leaf = make_leaf(issuer, NOW - DAY, NOW + DAY, dns=["x.example"]).cert
    key = new_key()
    bare = (x509.CertificateBuilder()  # no basicConstraints at all
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")]))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
            .sign(key, hashes.SHA256()))
    assert ca_only([leaf, issuer.cert, bare]) == [issuer.cert]
    kept, problems = trusted_cas(pem(leaf, issuer.cert, bare), NOW)
    assert kept == [issuer.cert]
    assert kinds(problems) == [ProblemKind.NOT_CA, ProblemKind.NOT_CA]


def test_duplicates_are_dropped() -> None:
    a, b = pool()[:2]
    kept, problems = trusted_cas(pem(a, b, a, a), NOW)
    assert sorted(kept, key=fingerprint) == sorted([a, b], key=fingerprint)
    assert problems == []
    assert to_pem([a, b, a]) == to_pem([b, a])


def test_sixty_certificates_are_capped_to_fifty_longest_lived() -> None:
    certs = [ca_valid(days_left=10 + i, name=f"ca-{i}") for i in range(60)]
    random.Random(4).shuffle(certs)
    kept, problems = trusted_cas(pem(*certs), NOW)
    assert len(kept) == 50
    assert min(c.not_valid_after_utc for c in kept) == NOW + 20 * DAY
    assert kinds(problems) == [ProblemKind.OVER_LIMIT] * 10
    dropped = {p.fingerprint for p in problems}
    assert dropped == {fingerprint(c) for c in certs if c.not_valid_after_utc < NOW + 20 * DAY}
    assert [fingerprint(c) for c in kept] == sorted(fingerprint(c) for c in kept)
    assert normalize(certs) == kept
    assert len(normalize(certs, max_count=3)) == 3


# --- canonical output and set operations ----------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(range(5)), min_size=1, max_size=12), st.randoms())
def test_same_set_gives_byte_identical_pem(indexes: list[int], rnd: random.Random) -> None:
    certs = [pool()[i] for i in indexes]
    shuffled = certs[:]
    rnd.shuffle(shuffled)
    out = to_pem(certs)
    assert out == to_pem(shuffled) == to_pem(normalize(shuffled))
    reparsed = parse_bundle(out)
    assert reparsed.problems == []
    assert {fingerprint(c) for c in reparsed.certificates} == {fingerprint(c) for c in certs}
    assert trusted_cas(out, NOW)[0] == reparsed.certificates  # a fixed point


def test_output_is_only_certificate_blocks() -> None:
    a, b = pool()[:2]
    messy = "junk\n" + pem(a) + key_pem(new_key()).decode() + pem(b).replace("\n", "\r\n")
    out = to_pem(trusted_cas(messy, NOW)[0])
    assert out.count("-----BEGIN CERTIFICATE-----") == 2
    assert set(line[:10] for line in out.splitlines() if line.startswith("-----")) == {
        "-----BEGIN", "-----END C"}
    assert out.endswith("-----END CERTIFICATE-----\n") and "\r" not in out


def test_fingerprint_is_sha256_of_der() -> None:
    a = pool()[0]
    der = a.public_bytes(serialization.Encoding.DER)
    assert fingerprint(a) == hashlib.sha256(der).hexdigest()


def test_missing_from() -> None:
    a, b, c = pool()[:3]
    assert missing_from([a, b, c, a], [b]) == [a, c]
    assert missing_from([a], [a, b]) == []
    assert missing_from([], [a]) == []


def test_earliest_not_after() -> None:
    certs = list(pool())
    assert earliest_not_after(certs) == NOW + 10 * DAY
    assert earliest_not_after([]) is None

