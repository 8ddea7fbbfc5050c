"""Strict PEM CA-bundle handling for the reconciler's CA sync (pure: the clock is passed in).

KubeVirt facts this follows (docs/kubevirt-facts.md, "CA bundles"): virt-operator keeps only
certificates valid *now*,
drops duplicates by SHA-256, keeps at most 50 in `kubevirt-ca`, and ignores the **whole**
`kubevirt-external-ca` inbox if any PEM in it fails to parse. So what we write must be
well-formed CERTIFICATE blocks and nothing else: every other block (a private key above all),
text between blocks and unparsable certificates are reported with their position and skipped,
never copied, and never fatal to the rest of the bundle. Problem messages never quote the
offending text: it may be key material.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from dlm_guard.domain import MAX_CERTIFICATES_IN_BUNDLE

CERTIFICATE_LABEL = "CERTIFICATE"
_BEGIN = re.compile(r"^-----BEGIN ([A-Z0-9 ]+)-----$")
_END = re.compile(r"^-----END ([A-Z0-9 ]+)-----$")


class ProblemKind(StrEnum):
    PRIVATE_KEY = "private-key"
    NOT_CERTIFICATE = "not-certificate"
    GARBAGE = "garbage"
    UNTERMINATED = "unterminated"
    UNPARSABLE = "unparsable"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    NOT_CA = "not-ca"
    OVER_LIMIT = "over-limit"


@dataclass(frozen=True, slots=True)
class BundleProblem:
    """Something in a bundle that was skipped: where (1-based PEM block and line) and why."""

    kind: ProblemKind
    line: int
    message: str
    block: int | None = None
    fingerprint: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" (block {self.block})" if self.block else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class LocatedCertificate:
    cert: x509.Certificate
    block: int
    line: int


@dataclass(frozen=True, slots=True)
class ParsedBundle:
    located: tuple[LocatedCertificate, ...] = ()
    problems: list[BundleProblem] = field(default_factory=list)

    @property
    def certificates(self) -> list[x509.Certificate]:
        """The parsed certificates in order of appearance (duplicates kept)."""
        return [entry.cert for entry in self.located]


# --- Parsing --------------------------------------------------------------------------
def parse_bundle(text: str) -> ParsedBundle:
    """Split a PEM text into certificates and problems; never raises on bad content."""
    lines = text.splitlines()
    located: list[LocatedCertificate] = []
    problems: list[BundleProblem] = []
    index, block = 0, 0
    garbage: list[int] = []  # indexes of non-blank lines outside blocks, since the last block
    while index < len(lines):
        begin = _BEGIN.match(lines[index].strip())
        if not begin:
            if lines[index].strip():
                garbage.append(index)
            index += 1
            continue
        if garbage:
            problems.append(_garbage(garbage))
            garbage = []
        block += 1
        end = _find_end(lines, index + 1, begin.group(1))
        if end is None:
            problems.append(_unterminated(lines, index, block, begin.group(1)))
            index = _next_begin(lines, index + 1)
            continue
        _read_block(begin.group(1), lines[index:end + 1], index + 1, block, located, problems)
        index = end + 1
    if garbage:
        problems.append(_garbage(garbage))
    return ParsedBundle(tuple(located), problems)


def _find_end(lines: Sequence[str], start: int, label: str) -> int | None:
    """Index of the END line closing `label`; None when another BEGIN, a different END or the
    end of the text comes first."""
    for index in range(start, len(lines)):
        stripped = lines[index].strip()
        end = _END.match(stripped)
        if end:
            return index if end.group(1) == label else None
        if _BEGIN.match(stripped):
            return None
    return None


def _next_begin(lines: Sequence[str], start: int) -> int:
    for index in range(start, len(lines)):
        if _BEGIN.match(lines[index].strip()):
            return index
    return len(lines)


def _is_private_key(label: str) -> bool:
    # PRIVATE KEY, ENCRYPTED PRIVATE KEY, RSA/EC/DSA PRIVATE KEY, OPENSSH PRIVATE KEY, ...
    return "PRIVATE KEY" in label


def _read_block(label: str, block_lines: Sequence[str], line: int, block: int,
                located: list[LocatedCertificate], problems: list[BundleProblem]) -> None:
    if _is_private_key(label):
        problems.append(BundleProblem(
            ProblemKind.PRIVATE_KEY, line,
            f"a {label} block: skipped, private keys are never copied", block))
        return
    if label != CERTIFICATE_LABEL:
        problems.append(BundleProblem(ProblemKind.NOT_CERTIFICATE, line,
                                      f"a {label} block, not a CERTIFICATE: skipped", block))
        return
    cert = _load_certificate("\n".join(s.strip() for s in block_lines) + "\n")
    if cert is None:
        problems.append(BundleProblem(ProblemKind.UNPARSABLE, line,
                                      "a CERTIFICATE block that does not parse: skipped "
                                      "(KubeVirt would ignore the whole inbox for it)", block))
        return
    located.append(LocatedCertificate(cert, block, line))


def _load_certificate(pem: str) -> x509.Certificate | None:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        # cryptography parses extensions lazily; touch them now so that a certificate Go
        # (virt-operator) would reject is caught here, not later in a filter.
        _ = cert.extensions, cert.not_valid_after_utc, cert.subject
    except (ValueError, UnicodeEncodeError):
        return None
    return cert


def _garbage(indexes: Sequence[int]) -> BundleProblem:
    count = len(indexes)
    return BundleProblem(ProblemKind.GARBAGE, indexes[0] + 1,
                         f"{count} line{'s' if count > 1 else ''} of text outside any PEM block: "
                         "skipped")


def _unterminated(lines: Sequence[str], index: int, block: int, label: str) -> BundleProblem:
    kind = ProblemKind.PRIVATE_KEY if _is_private_key(label) else ProblemKind.UNTERMINATED
    return BundleProblem(kind, index + 1, f"a {label} block without its END line: skipped", block)


# --- Single-certificate facts ---------------------------------------------------------
def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lower-case hex: KubeVirt's dedupe key."""
    return cert.fingerprint(hashes.SHA256()).hex()


def is_valid_at(cert: x509.Certificate, now: datetime) -> bool:
    """NotBefore <= now <= NotAfter, both inclusive (RFC 5280 §4.1.2.5)."""
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


# --- Filters and set operations -------------------------------------------------------
def valid_at(certs: Iterable[x509.Certificate], now: datetime) -> list[x509.Certificate]:
    return [cert for cert in certs if is_valid_at(cert, now)]


def ca_only(certs: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    return [cert for cert in certs if is_ca(cert)]


def dedupe(certs: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """First occurrence of each fingerprint, in order."""
    seen: dict[str, x509.Certificate] = {}
    for cert in certs:
        seen.setdefault(fingerprint(cert), cert)
    return list(seen.values())


def _longest_lived_first(cert: x509.Certificate) -> tuple[float, str]:
    return (-cert.not_valid_after_utc.timestamp(), fingerprint(cert))


def normalize(certs: Iterable[x509.Certificate],
              max_count: int = MAX_CERTIFICATES_IN_BUNDLE) -> list[x509.Certificate]:
    """Deduplicated, capped to max_count keeping the latest NotAfter, sorted by fingerprint.

    The same set always yields the same list, hence byte-identical PEM and no needless write.
    """
    kept = sorted(dedupe(certs), key=_longest_lived_first)[:max_count]
    return sorted(kept, key=fingerprint)


def to_pem(certs: Iterable[x509.Certificate]) -> str:
    """Canonical PEM: deduplicated, sorted by fingerprint, re-encoded from DER (so nothing
    but CERTIFICATE blocks, whatever the input looked like). Empty set -> ""."""
    ordered = sorted(dedupe(certs), key=fingerprint)
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in ordered)


def missing_from(wanted: Iterable[x509.Certificate],
                 present: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """Certificates of `wanted` (deduplicated, in order) whose fingerprint is not in `present`."""
    have = {fingerprint(cert) for cert in present}
    return [cert for cert in dedupe(wanted) if fingerprint(cert) not in have]


def earliest_not_after(certs: Iterable[x509.Certificate]) -> datetime | None:
    """When the first of these expires (when to look again); None for no certificates."""
    return min((cert.not_valid_after_utc for cert in certs), default=None)


# --- The whole pipeline ---------------------------------------------------------------
def trusted_cas(text: str, now: datetime, max_count: int = MAX_CERTIFICATES_IN_BUNDLE,
                ) -> tuple[list[x509.Certificate], list[BundleProblem]]:
    """parse -> CA only -> valid now -> normalize; every certificate left out is a problem."""
    parsed = parse_bundle(text)
    problems = list(parsed.problems)
    usable: list[LocatedCertificate] = []
    for entry in parsed.located:
        problem = _rejection(entry, now)
        if problem:
            problems.append(problem)
        else:
            usable.append(entry)
    kept = normalize((entry.cert for entry in usable), max_count)
    problems.extend(_over_limit(usable, kept, max_count))
    return kept, sorted(problems, key=lambda problem: problem.line)


def _rejection(entry: LocatedCertificate, now: datetime) -> BundleProblem | None:
    cert = entry.cert
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    if not is_ca(cert):
        kind, why = ProblemKind.NOT_CA, "is not a CA (basicConstraints CA:true missing)"
    elif now < cert.not_valid_before_utc:
        kind, why = ProblemKind.NOT_YET_VALID, \
            f"is not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
    elif now > cert.not_valid_after_utc:
        kind, why = ProblemKind.EXPIRED, f"expired {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    else:
        return None
    return BundleProblem(kind, entry.line, f"certificate {subject} {why}: skipped",
                         entry.block, fingerprint(cert))


def _over_limit(usable: Sequence[LocatedCertificate], kept: Sequence[x509.Certificate],
                max_count: int) -> list[BundleProblem]:
    kept_prints = {fingerprint(cert) for cert in kept}
    dropped: dict[str, LocatedCertificate] = {}
    for entry in usable:
        fp = fingerprint(entry.cert)
        if fp not in kept_prints:
            dropped.setdefault(fp, entry)
    return [BundleProblem(ProblemKind.OVER_LIMIT, entry.line,
                          f"more than {max_count} valid CA certificates: this one expires "
                          "soonest and was left out", entry.block, fp)
            for fp, entry in dropped.items()]
