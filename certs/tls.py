"""The webhook's serving certificate, hot-reloaded from files without a restart.

How the swap works: the server is started once with `ServingTLS.context`. Its `sni_callback`
runs during every handshake (with server_name None when the client sends no SNI) and points
the connection's SSLObject at the newest per-pair context, so new connections get the new
certificate while established ones keep the one they negotiated. asyncio, hence aiohttp,
wraps connections in SSLObject, whose `context` is settable from that callback (Python ssl
docs, SSLContext.sni_callback). A new pair is loaded into a fresh context first; a broken or
mismatched one is rejected with a log line and never replaces the pair that serves.

Kubernetes updates a mounted Secret by writing a new timestamped directory and swapping the
`..data` symlink that tls.crt/tls.key point through, so the files' mtime and inode may not
change: we hash their content (open() follows the symlinks) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
EXPIRY_GAUGE_NAME = "dlm_guard_certificate_expiry_timestamp_seconds"
DEFAULT_RELOAD_INTERVAL = 10.0


class TLSLoadError(Exception):
    """A certificate/key pair that cannot serve; the message never contains key material."""


class _Unsettled(TLSLoadError):
    """The files changed while being loaded: a writer is mid-update, look again later."""


@dataclass(frozen=True, slots=True)
class _Pair:
    context: ssl.SSLContext
    not_after: datetime
    digest: str


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # The apiserver speaks TLS 1.2+; nothing older is worth the risk.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _digest(cert_path: Path, key_path: Path) -> tuple[str, bytes]:
    cert_bytes = cert_path.read_bytes()
    digest = hashlib.sha256(cert_bytes + b"\0" + key_path.read_bytes()).hexdigest()
    return digest, cert_bytes


def _load_pair(cert_path: Path, key_path: Path, now: datetime | None) -> _Pair:
    """Load and check a pair into a fresh context; TLSLoadError when it cannot serve.

    The files are hashed before and after loading: if they changed in between (a writer is
    mid-update) the result is refused and the next check sees a settled state. With `now`,
    a certificate expired at `now` is refused too.
    """
    try:
        digest, cert_bytes = _digest(cert_path, key_path)
        context = _server_context()
        context.load_cert_chain(cert_path, key_path)
        settled, _ = _digest(cert_path, key_path)
        leaf = x509.load_pem_x509_certificates(cert_bytes)[0]
    except OSError as exc:  # includes ssl.SSLError (e.g. KEY_VALUES_MISMATCH)
        raise TLSLoadError(f"cannot load {cert_path} / {key_path}: {_reason(exc)}") from None
    except ValueError:
        raise TLSLoadError(f"{cert_path} does not hold a PEM certificate") from None
    if settled != digest:
        raise _Unsettled(f"{cert_path} / {key_path} changed while loading")
    if now is not None and now > leaf.not_valid_after_utc:
        raise TLSLoadError(f"{cert_path} expired {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    return _Pair(context, leaf.not_valid_after_utc, digest)


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or "TLS error"  # OpenSSL's short reason, e.g. KEY_VALUES_MISMATCH
    return exc.strerror or type(exc).__name__


class ServingTLS:
    """A server-side SSLContext whose certificate follows cert_path/key_path.

    The constructor loads the pair and raises TLSLoadError when it cannot serve: a server
    must not start without a certificate. An expired one is accepted with a warning, so the
    server runs not-ready (see `expired`) and recovers by reload once the Secret is renewed,
    instead of crash-looping with back-off. Afterwards only `reload()` changes the pair.
    """

    def __init__(self, cert_path: str | Path, key_path: str | Path, *,
                 clock: Clock = _utcnow) -> None:
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self._clock = clock
        self._pair = _load_pair(self.cert_path, self.key_path, None)
        self._seen_digest = self._pair.digest
        self._unreadable = False
        if self.expired(clock()):
            log.warning("serving certificate has expired; waiting for a new one",
                        extra={"not_after": self.not_after.isoformat()})
        # The context the server is created with holds no certificate of its own: OpenSSL runs
        # the servername callback for every ClientHello, SNI or not (tested by connecting by IP),
        # and the callback hands the handshake to the newest pair's context.
        self.context = _server_context()
        self.context.sni_callback = self._select_context

    @property
    def not_after(self) -> datetime:
        """NotAfter of the serving (leaf) certificate, tz-aware UTC."""
        return self._pair.not_after

    def expired(self, now: datetime) -> bool:
        return now > self._pair.not_after

    def _select_context(self, ssl_object: Any, server_name: str | None,
                        context: ssl.SSLContext) -> None:
        ssl_object.context = self._pair.context  # returning None lets the handshake go on

    def reload(self) -> bool:
        """Swap to the files' current pair if their content changed; True when swapped.

        A pair that cannot serve is logged once (per content) and the old pair keeps serving.
        """
        try:
            digest, _ = _digest(self.cert_path, self.key_path)
        except OSError as exc:
            # Mid-swap or deleted: try again next time, keep serving what we have.
            if not self._unreadable:
                log.warning("serving certificate files unreadable, keeping the current pair",
                            extra={"error": exc.strerror or type(exc).__name__})
            self._unreadable = True
            return False
        self._unreadable = False
        if digest == self._seen_digest:
            return False
        try:
            pair = _load_pair(self.cert_path, self.key_path, self._clock())
        except _Unsettled:
            return False  # digest not recorded: the next check looks again
        except TLSLoadError as exc:
            self._seen_digest = digest  # log a broken pair once, not every interval
            log.error("new serving certificate rejected, keeping the current pair",
                      extra={"reason": str(exc)})
            return False
        self._pair, self._seen_digest = pair, pair.digest
        log.info("serving certificate reloaded",
                 extra={"not_after": pair.not_after.isoformat(), "cert": str(self.cert_path)})
        return True

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except Exception:  # a reload bug must never stop the watch loop or the server
            log.exception("serving certificate reload failed")

    async def watch(self, interval: float = DEFAULT_RELOAD_INTERVAL) -> None:
        """Check the files every `interval` seconds until cancelled."""
        if interval <= 0:
            raise ValueError("the reload interval must be positive")  # else a busy loop
        while True:
            await asyncio.sleep(interval)
            self._reload_logged()


def register_expiry_gauge(registry: CollectorRegistry, tls: ServingTLS) -> Gauge:
    """Export the serving certificate's NotAfter (Unix seconds) into `registry`.

    The gauge reads `tls` at scrape time, so it follows reloads without any bookkeeping.
    """
    gauge = Gauge(EXPIRY_GAUGE_NAME, "NotAfter of the serving certificate, Unix seconds",
                  registry=registry)
    gauge.set_function(lambda: tls.not_after.timestamp())
    return gauge


def add_sighup_reload(tls: ServingTLS, loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Reload on SIGHUP as well; False where signals cannot be hooked (not main thread)."""
    loop = loop or asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, tls._reload_logged)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def reload_ctx(tls: ServingTLS, interval: float = DEFAULT_RELOAD_INTERVAL,
               *, sighup: bool = True) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp `cleanup_ctx` entry: watch the files (and SIGHUP) while the app runs.

        app.cleanup_ctx.append(reload_ctx(tls, args.cert_reload_interval))

    An interval <= 0 means no polling: reload on SIGHUP only.
    """
    async def context(_app: Any) -> AsyncIterator[None]:
        hooked = sighup and add_sighup_reload(tls)
        task = (asyncio.create_task(tls.watch(interval), name="certificate-reload")
                if interval > 0 else None)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if hooked:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    return context
