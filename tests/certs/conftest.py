"""Fixtures for the certs tests: a fixed clock and cheap ECDSA P-256 CAs/leaves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certs.generate import Issued, cert_pem, key_pem, make_ca, make_leaf

NOW = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

WriteIssued = Callable[[Issued, Path], tuple[Path, Path]]


@pytest.fixture(scope="session")
def now() -> datetime:
    return NOW


@pytest.fixture(scope="module")
def ca() -> Issued:
    """A CA valid from 30 days before NOW for a year."""
    return make_ca(NOW - 30 * DAY, NOW + 335 * DAY, common_name="test-ca")


@pytest.fixture(scope="module")
def leaf_factory(ca: Issued) -> Callable[..., Issued]:
    def factory(dns: Sequence[str] = ("localhost",), ips: Sequence[str] = ("127.0.0.1",),
                start: datetime = NOW - DAY, end: datetime = NOW + 30 * DAY) -> Issued:
        return make_leaf(ca, start, end, dns=dns, ips=ips)
    return factory


def write_issued(issued: Issued, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert_pem(issued.cert))
    key_path.write_bytes(key_pem(issued.key))
    return cert_path, key_path


@pytest.fixture
def write_pair() -> WriteIssued:
    return write_issued
