"""certs.tls: a real aiohttp TLS server on 127.0.0.1 whose certificate is swapped under it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from prometheus_client import CollectorRegistry

from certs.bundle import fingerprint
from certs.generate import Issued, cert_pem, key_pem, make_ca, make_leaf
from certs.tls import (
    EXPIRY_GAUGE_NAME,
    ServingTLS,
    TLSLoadError,
    add_sighup_reload,
    register_expiry_gauge,
    reload_ctx,
)

# OpenSSL checks validity against the wall clock, so the certificates served here are built
# around the real time (to the second, as certificates store it), not conftest's fixed NOW.
NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
LeafFactory = Callable[..., Issued]
WriteIssued = Callable[[Issued, Path], tuple[Path, Path]]
StartServer = Callable[[ServingTLS], Awaitable["Server"]]


@dataclass
class Server:
    port: int
    slow_entered: asyncio.Event
    release_slow: asyncio.Event


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca(NOW - 30 * DAY, NOW + 335 * DAY, common_name="tls-test-ca")


@pytest.fixture(scope="module")
def leaf_factory(ca: Issued) -> LeafFactory:
    def factory(end: datetime = NOW + 30 * DAY) -> Issued:
        return make_leaf(ca, NOW - DAY, end, dns=["localhost"], ips=["127.0.0.1"])
    return factory


@pytest.fixture(scope="module")
def leaves(leaf_factory: LeafFactory) -> tuple[Issued, Issued]:
    """Two serving pairs from the same CA, told apart by fingerprint."""
    return leaf_factory(), leaf_factory()


@pytest.fixture
def client_context(ca: Issued) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=cert_pem(ca.cert).decode())
    return context


@pytest.fixture
def clock() -> Callable[[], datetime]:
    return lambda: NOW


@pytest.fixture
async def server() -> AsyncIterator[StartServer]:
    """Start aiohttp apps serving `/` and a `/slow` that waits to be released."""
    runners: list[web.AppRunner] = []
    started: list[Server] = []

    async def start(tls: ServingTLS) -> Server:
        slow_entered, release_slow = asyncio.Event(), asyncio.Event()

        async def fast(_request: web.Request) -> web.Response:
            return web.Response(text="fast")

        async def slow(_request: web.Request) -> web.Response:
            slow_entered.set()
            await release_slow.wait()
            return web.Response(text="slow")

        app = web.Application()
        app.router.add_get("/", fast)
        app.router.add_get("/slow", slow)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock, ssl_context=tls.context).start()
        srv = Server(sock.getsockname()[1], slow_entered, release_slow)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.release_slow.set()
    for runner in runners:
        await runner.cleanup()


async def connect(port: int, context: ssl.SSLContext, host: str = "localhost",
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """Open a TLS connection, verifying the chain and hostname; return the peer fingerprint."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                   server_hostname=host)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return reader, writer, fingerprint(x509.load_der_x509_certificate(der))


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> str:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    return response


async def served_fingerprint(port: int, context: ssl.SSLContext, host: str = "localhost") -> str:
    reader, writer, served = await connect(port, context, host)
    assert (await get(reader, writer, "/")).endswith("fast")
    return served


def replace_files(issued: Issued, cert_path: Path, key_path: Path) -> None:
    key_path.write_bytes(key_pem(issued.key))
    cert_path.write_bytes(cert_pem(issued.cert))


# --- kubelet-style Secret volume --------------------------------------------------------
class SecretVolume:
    """Mimics kubelet's AtomicWriter: files live in a timestamped dir, reached through the
    `..data` symlink, which is swapped with a rename; tls.crt -> ..data/tls.crt."""

    def __init__(self, root: Path, issued: Issued) -> None:
        self.root, self.generation = root, 0
        root.mkdir()
        self._write(issued)
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(f"..data/{name}")

    def _write(self, issued: Issued) -> None:
        self.generation += 1
        payload = self.root / f"..2026_08_01_12_00_0{self.generation}.000000001"
        payload.mkdir()
        (payload / "tls.crt").write_bytes(cert_pem(issued.cert))
        (payload / "tls.key").write_bytes(key_pem(issued.key))
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(payload.name)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        os.rename(tmp_link, self.root / "..data")
        if old is not None:
            for child in old.iterdir():
                child.unlink()
            old.rmdir()

    def update(self, issued: Issued) -> None:
        self._write(issued)


# --- tests ------------------------------------------------------------------------------
async def test_new_connections_get_the_new_pair_while_a_slow_request_completes(
        tmp_path: Path, leaves: tuple[Issued, Issued], write_pair: WriteIssued,
        server: StartServer,
        client_context: ssl.SSLContext, clock: Callable[[], datetime]) -> None:
    old, new = leaves
    cert_path, key_path = write_pair(old, tmp_path)
    tls = ServingTLS(cert_path, key_path, clock=clock)
    srv = await server(tls)

    reader, writer, first = await connect(srv.port, client_context)
    assert first == fingerprint(old.cert)
    slow = asyncio.create_task(get(reader, writer, "/slow"))
    await asyncio.wait_for(srv.slow_entered.wait(), 5)

    replace_files(new, cert_path, key_path)
    assert tls.reload() is True
    assert await served_fingerprint(srv.port, client_context) == fingerprint(new.cert)
    # By IP address the client sends no SNI; the callback still runs (server_name None).
    assert await served_fingerprint(srv.port, client_context, "127.0.0.1") == \
        fingerprint(new.cert)

    srv.release_slow.set()
    response = await asyncio.wait_for(slow, 5)
    assert response.startswith("HTTP/1.1 200") and response.endswith("slow")


async def test_kubelet_data_symlink_swap_is_picked_up_by_watch(
        tmp_path: Path, leaves: tuple[Issued, Issued],
        server: StartServer,
        client_context: ssl.SSLContext, clock: Callable[[], datetime]) -> None:
    old, new = leaves
    volume = SecretVolume(tmp_path / "secret", old)
    tls = ServingTLS(volume.root / "tls.crt", volume.root / "tls.key", clock=clock)
    srv = await server(tls)
    assert await served_fingerprint(srv.port, client_context) == fingerprint(old.cert)

    watcher = asyncio.create_task(tls.watch(0.02))
    try:
        volume.update(new)
        for _ in range(250):
            if await served_fingerprint(srv.port, client_context) == fingerprint(new.cert):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the swapped Secret was never served")
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
    assert tls.not_after == new.cert.not_valid_after_utc


@pytest.mark.parametrize("breakage", ["mismatched", "garbage", "empty-key", "expired"])
async def test_a_broken_new_pair_keeps_the_old_one_serving(
        breakage: str, tmp_path: Path, leaves: tuple[Issued, Issued], ca: Issued,
        write_pair: WriteIssued, server: StartServer,
        client_context: ssl.SSLContext, clock: Callable[[], datetime],
        caplog: pytest.LogCaptureFixture) -> None:
    old, new = leaves
    cert_path, key_path = write_pair(old, tmp_path)
    tls = ServingTLS(cert_path, key_path, clock=clock)
    srv = await server(tls)
    if breakage == "mismatched":
        cert_path.write_bytes(cert_pem(new.cert))  # new cert, old key
    elif breakage == "garbage":
        cert_path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    elif breakage == "empty-key":
        key_path.write_text("")
    else:
        expired = make_leaf(ca, NOW - 10 * DAY, NOW - DAY, dns=["localhost"])
        replace_files(expired, cert_path, key_path)

    with caplog.at_level(logging.ERROR, logger="certs.tls"):
        assert tls.reload() is False
        assert tls.reload() is False  # same broken content: logged once
    assert [r.getMessage() for r in caplog.records] == [
        "new serving certificate rejected, keeping the current pair"]
    assert "PRIVATE" not in caplog.text and key_pem(old.key).decode()[40:80] not in caplog.text
    assert await served_fingerprint(srv.port, client_context) == fingerprint(old.cert)
    assert tls.not_after == old.cert.not_valid_after_utc

    replace_files(new, cert_path, key_path)  # fixed: picked up
    assert tls.reload() is True
    assert await served_fingerprint(srv.port, client_context) == fingerprint(new.cert)


def test_unchanged_or_missing_files_do_not_swap(
        tmp_path: Path, leaves: tuple[Issued, Issued], write_pair: WriteIssued,
        clock: Callable[[], datetime]) -> None:
    cert_path, key_path = write_pair(leaves[0], tmp_path)
    tls = ServingTLS(cert_path, key_path, clock=clock)
    before = tls._pair
    write_pair(leaves[0], tmp_path)  # rewritten, same content
    assert tls.reload() is False and tls._pair is before
    key_path.unlink()
    assert tls.reload() is False and tls._pair is before


def test_an_expired_pair_starts_expired_and_recovers_by_reload(
        tmp_path: Path, ca: Issued, leaves: tuple[Issued, Issued], write_pair: WriteIssued,
        caplog: pytest.LogCaptureFixture) -> None:
    expired = make_leaf(ca, NOW - 10 * DAY, NOW - DAY, dns=["localhost"])
    cert_path, key_path = write_pair(expired, tmp_path)
    with caplog.at_level(logging.WARNING, logger="certs.tls"):
        tls = ServingTLS(cert_path, key_path)
    assert tls.expired(NOW) and "has expired" in caplog.text
    write_pair(leaves[0], tmp_path)
    assert tls.reload() and not tls.expired(NOW)


def test_missing_files_are_logged_once(
        tmp_path: Path, leaves: tuple[Issued, Issued], write_pair: WriteIssued,
        caplog: pytest.LogCaptureFixture) -> None:
    cert_path, key_path = write_pair(leaves[0], tmp_path)
    tls = ServingTLS(cert_path, key_path)
    cert_path.unlink()
    with caplog.at_level(logging.WARNING, logger="certs.tls"):
        assert not tls.reload() and not tls.reload()
    assert len(caplog.records) == 1 and "unreadable" in caplog.text


def test_a_server_does_not_start_with_a_broken_pair(
        tmp_path: Path, leaves: tuple[Issued, Issued], write_pair: WriteIssued) -> None:
    cert_path, key_path = write_pair(leaves[0], tmp_path)
    key_path.write_bytes(key_pem(leaves[1].key))
    with pytest.raises(TLSLoadError, match="KEY_VALUES_MISMATCH"):
        ServingTLS(cert_path, key_path)
    with pytest.raises(TLSLoadError, match="No such file"):
        ServingTLS(tmp_path / "absent.crt", key_path)


def test_context_settings_and_expiry(
        tmp_path: Path, leaves: tuple[Issued, Issued], write_pair: WriteIssued,
        clock: Callable[[], datetime]) -> None:
    tls = ServingTLS(*write_pair(leaves[0], tmp_path), clock=clock)
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls._pair.context.minimum_version == ssl.TLSVersion.TLSv1_2
    end = leaves[0].cert.not_valid_after_utc
    assert tls.not_after == end and tls.not_after.tzinfo is not None
    assert not tls.expired(end) and tls.expired(end + timedelta(seconds=1))


def test_expiry_gauge_follows_reloads(
        tmp_path: Path, leaves: tuple[Issued, Issued], write_pair: WriteIssued,
        leaf_factory: LeafFactory, clock: Callable[[], datetime]) -> None:
    cert_path, key_path = write_pair(leaves[0], tmp_path)
    tls = ServingTLS(cert_path, key_path, clock=clock)
    registry = CollectorRegistry()
    register_expiry_gauge(registry, tls)
    value = registry.get_sample_value(EXPIRY_GAUGE_NAME)
    assert value == leaves[0].cert.not_valid_after_utc.timestamp()
    longer = leaf_factory(end=NOW + 60 * DAY)
    replace_files(longer, cert_path, key_path)
    assert tls.reload()
    assert registry.get_sample_value(EXPIRY_GAUGE_NAME) == (NOW + 60 * DAY).timestamp()


@pytest.fixture
def restore_sighup() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


async def test_reload_ctx_watches_and_reloads_on_sighup(
        tmp_path: Path, leaves: tuple[Issued, Issued], write_pair: WriteIssued,
        leaf_factory: LeafFactory, clock: Callable[[], datetime],
        restore_sighup: None) -> None:
    cert_path, key_path = write_pair(leaves[0], tmp_path)
    tls = ServingTLS(cert_path, key_path, clock=clock)
    context = reload_ctx(tls, interval=3600)(None)  # as aiohttp's cleanup_ctx drives it
    await context.__anext__()
    try:
        assert [t for t in asyncio.all_tasks() if t.get_name() == "certificate-reload"]
        # Without the handler SIGHUP would end the test run: make sure it is ours.
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)
        replace_files(leaf_factory(end=NOW + 60 * DAY), cert_path, key_path)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if tls.not_after == NOW + 60 * DAY:
                break
            await asyncio.sleep(0.01)
        assert tls.not_after == NOW + 60 * DAY
    finally:
        with pytest.raises(StopAsyncIteration):
            await context.__anext__()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "certificate-reload"]


async def test_interval_zero_means_sighup_only(
        tmp_path: Path, leaves: tuple[Issued, Issued], write_pair: WriteIssued,
        restore_sighup: None) -> None:
    tls = ServingTLS(*write_pair(leaves[0], tmp_path))
    with pytest.raises(ValueError, match="positive"):
        await tls.watch(0)
    context = reload_ctx(tls, interval=0)(None)
    await context.__anext__()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "certificate-reload"]
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)
    with pytest.raises(StopAsyncIteration):
        await context.__anext__()


async def test_add_sighup_reload_reports_success(
        tmp_path: Path, leaves: tuple[Issued, Issued], write_pair: WriteIssued,
        restore_sighup: None) -> None:
    tls = ServingTLS(*write_pair(leaves[0], tmp_path))
    assert add_sighup_reload(tls) is True
    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
