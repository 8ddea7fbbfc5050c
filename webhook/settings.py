"""The settings of `dlm-guard serve`, typed and checked once, then passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits of the listener (webhook.listener)."""

    max_connections: int = 1000
    handshake_timeout: float = 5.0
    idle_timeout: float = 5.0  # also the deadline for a request's headers
    backlog: int = 1024


@dataclass(frozen=True, slots=True)
class ServeSettings:
    host: str = "0.0.0.0"
    port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cert_reload_interval: float = 10.0  # 0: only on SIGHUP
    policy_file: Path | None = None
    kubeconfig: str | None = None
    stale_after: float = 120.0  # a watch failed this long: cluster-state rules are skipped
    offline: bool = False
    dev: bool = False
    dev_dir: Path = Path("certs/dev")
    reuse_port: bool = False
    limits: Limits = Limits()
    body_timeout: float = 5.0
    log_format: str = "text"
    log_level: str = "info"
