"""Human-readable description of the certificates in a PEM text (`dlm-guard certs inspect`).

Pure: the clock is passed in, the result is lines plus a verdict, the CLI prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from certs.bundle import ProblemKind, fingerprint, is_ca, parse_bundle
from certs.generate import sans_of

_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True, slots=True)
class Report:
    lines: list[str]
    problems: list[str] = field(default_factory=list)
    invalid: int = 0  # certificates expired or not yet valid at `now`
    unparsable: int = 0
    certificates: int = 0

    @property
    def ok(self) -> bool:
        return self.certificates > 0 and not self.invalid and not self.unparsable


def _span(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


def status(cert: x509.Certificate, now: datetime) -> tuple[bool, str]:
    """(valid now, wording) for one certificate."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return False, f"NOT YET VALID (starts in {_span(start - now)})"
    if now > end:
        return False, f"EXPIRED ({_span(now - end)} ago)"
    return True, f"valid (expires in {_span(end - now)})"


def describe(cert: x509.Certificate, now: datetime) -> list[str]:
    dns, ips = sans_of(cert)
    sans = [f"DNS:{name}" for name in sorted(dns)] + [f"IP:{ip}" for ip in sorted(ips)]
    return [
        f"  subject:    {cert.subject.rfc4514_string() or '(empty)'}",
        f"  issuer:     {cert.issuer.rfc4514_string() or '(empty)'}",
        f"  SANs:       {', '.join(sans) or '(none)'}",
        f"  CA:         {'yes' if is_ca(cert) else 'no'}",
        f"  not before: {cert.not_valid_before_utc:{_TIME}}",
        f"  not after:  {cert.not_valid_after_utc:{_TIME}}",
        f"  status:     {status(cert, now)[1]}",
        f"  sha256:     {fingerprint(cert)}",
    ]


def inspect_pem(text: str, now: datetime) -> Report:
    parsed = parse_bundle(text)
    lines: list[str] = []
    invalid = 0
    for number, entry in enumerate(parsed.located, start=1):
        lines.append(f"certificate {number} (line {entry.line}):")
        lines.extend(describe(entry.cert, now))
        invalid += not status(entry.cert, now)[0]
    unparsable = sum(p.kind in (ProblemKind.UNPARSABLE, ProblemKind.UNTERMINATED)
                     for p in parsed.problems)
    return Report(lines, [str(p) for p in parsed.problems], invalid, unparsable,
                  len(parsed.located))
