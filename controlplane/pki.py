"""What a test control plane's certificates look like; certs.generate makes them.

certs/ is the one package that knows X.509: this module only picks names, groups,
SANs and lifetimes for a throwaway cluster, and writes the files kube-apiserver reads.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from certs.generate import (
    Issued,
    PrivateKey,
    cert_pem,
    key_pem,
    make_ca,
    make_leaf,
    new_key,
    public_key_pem,
)

VALIDITY = datetime.timedelta(days=7)
# Clocks in CI containers drift; a cert that is "not yet valid" fails TLS in confusing ways.
BACKDATE = datetime.timedelta(hours=1)

__all__ = [
    "Issued",
    "client_cert",
    "new_ca",
    "new_key",
    "serving_cert",
    "write_key",
    "write_pair",
    "write_public_key",
]


def _window() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - BACKDATE, now + VALIDITY


def new_ca(common_name: str) -> Issued:
    """The cluster's CA: it signs the API server's serving cert and the admin client cert."""
    return make_ca(*_window(), common_name=common_name)


def serving_cert(
    ca: Issued,
    common_name: str,
    ips: Sequence[str] = ("127.0.0.1",),
    dns: Sequence[str] = ("localhost",),
) -> Issued:
    """A TLS server certificate. Go ignores the CN: clients match the SANs only."""
    return make_leaf(ca, *_window(), dns=dns, ips=ips, common_name=common_name)


def client_cert(ca: Issued, user: str, groups: Sequence[str] = ()) -> Issued:
    """A client certificate: kube-apiserver reads the user from the CN, groups from O."""
    return make_leaf(ca, *_window(), common_name=user, organizations=groups, client_auth=True)


def write_key(key: PrivateKey, path: Path) -> None:
    path.write_bytes(key_pem(key))
    path.chmod(0o600)


def write_public_key(key: PrivateKey, path: Path) -> None:
    path.write_bytes(public_key_pem(key))


def write_pair(pair: Issued, cert_path: Path, key_path: Path) -> None:
    cert_path.write_bytes(cert_pem(pair.cert))
    write_key(pair.key, key_path)
