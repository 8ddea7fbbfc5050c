"""The server under abuse, in process over real TLS: deep JSON, slow and idle clients, the
connection cap, huge answers, oversize uploads, malformed HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import ssl
import threading
import time
from typing import Any

import pytest
from server_support import (
    SOURCE_VMIM,
    TARGET_VM,
    Obj,
    closed_by_peer,
    listening,
    offline_context,
    open_tls,
    post_head,
    read_answer,
    review,
)

from certs.generate import PairPaths
from dlm_guard.safeload import MAX_DEPTH, MAX_DOCUMENT_BYTES
from webhook import engine
from webhook.decision import Decision
from webhook.engine import MAX_FINDINGS_PER_RULE, Context, Request
from webhook.server import HEAVY_BODY_BYTES, Engine, create_app
from webhook.settings import Limits

SHORT = Limits(max_connections=50, handshake_timeout=0.5, idle_timeout=0.5)


DEEP = "@deep@"  # stands for the nested object until `encoded` writes it out


def nested(levels: int) -> Any:
    return f"{DEEP}{levels}"


def encoded(sent: Obj) -> bytes:
    """The JSON of `sent`, `nested(n)` written as n levels of {"x": ...} (deeper than
    json.dumps itself could write)."""
    text = json.dumps(sent)
    while DEEP in text:
        start = text.index(f'"{DEEP}')
        end = text.index('"', start + 1)
        levels = int(text[start + len(DEEP) + 1:end])
        text = text[:start] + '{"x":' * levels + '"leaf"' + "}" * levels + text[end + 1:]
    return text.encode()


def deep_vm(levels: int) -> Obj:
    """A WaitAsReceiver VM without the restore annotation (so /mutate rewrites its
    metadata) carrying a `levels`-deep object in that metadata."""
    vm = copy.deepcopy(TARGET_VM)
    vm["metadata"]["labels"] = {"deep": nested(levels)}  # type: ignore[dict-item]
    return vm


def deep_vmim(levels: int) -> Obj:
    vmim = copy.deepcopy(SOURCE_VMIM)
    vmim["metadata"]["extra"] = nested(levels)
    del vmim["spec"]["sendTo"]["migrationID"]  # /mutate generates one: rewrites metadata
    return vmim


async def call(port: int, ca: ssl.SSLContext, path: str, body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await open_tls(port, ca)
    try:
        writer.write(post_head(len(body), path) + body)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 30)
    finally:
        writer.close()


# --- Depth ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@pytest.mark.parametrize("make", [deep_vm, deep_vmim], ids=["vm", "vmim"])
@pytest.mark.parametrize("levels", [500, 950])
async def test_deep_objects_are_400_on_every_endpoint(
        path: str, make: Any, levels: int, pki: PairPaths, client_ssl: ssl.SSLContext) -> None:
    """These depths made jsonpatch.make_patch raise RecursionError: HTTP 500."""
    async with listening(create_app(offline_context()), pki) as server:
        status, _, body = await call(server.port, client_ssl, path,
                                     encoded(review(make(levels))))
    assert status == 400
    assert body.decode().strip() == f"body is nested deeper than {MAX_DEPTH} levels"


async def test_depth_just_inside_the_limit_is_answered(pki: PairPaths,
                                                       client_ssl: ssl.SSLContext) -> None:
    # review -> request -> object -> metadata -> labels -> deep: 6 levels above `nested`.
    sent = review(deep_vm(MAX_DEPTH - 6))
    async with listening(create_app(offline_context()), pki) as server:
        status, _, body = await call(server.port, client_ssl, "/mutate", encoded(sent))
    assert status == 200 and json.loads(body)["response"]["allowed"] is True


# --- Timeouts and the connection cap ----------------------------------------------------
async def test_slow_headers_idle_tls_and_stalled_handshakes_are_closed(
        pki: PairPaths, client_ssl: ssl.SSLContext) -> None:
    async with listening(create_app(offline_context()), pki, SHORT) as server:
        slow_reader, slow = await open_tls(server.port, client_ssl)
        slow.write(b"POST /validate HTTP/1.1\r\nHost: local")  # and never the rest
        idle_reader, idle = await open_tls(server.port, client_ssl)
        raw_reader, raw = await asyncio.open_connection("127.0.0.1", server.port)  # no TLS
        started = time.monotonic()
        closed = await asyncio.gather(*(closed_by_peer(r, 10)
                                        for r in (slow_reader, idle_reader, raw_reader)))
        elapsed = time.monotonic() - started
        for writer in (slow, idle, raw):
            writer.close()
    assert closed == [True, True, True]
    assert elapsed < 5  # 0.5 s limits: well before the 10 s wait gives up


async def test_a_stalled_body_is_408_and_closed(pki: PairPaths,
                                                client_ssl: ssl.SSLContext) -> None:
    app = create_app(offline_context(), body_timeout=0.5)
    async with listening(app, pki) as server:
        reader, writer = await open_tls(server.port, client_ssl)
        writer.write(post_head(1000) + b'{"apiVersion":')
        status, headers, body = await asyncio.wait_for(read_answer(reader), 10)
        assert await closed_by_peer(reader, 5)
        writer.close()
    assert status == 408 and b"not received within 0.5 s" in body
    assert headers["connection"] == "close"


async def test_the_connection_cap_holds_new_clients_in_the_backlog(
        pki: PairPaths, client_ssl: ssl.SSLContext, caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(max_connections=3, handshake_timeout=30, idle_timeout=30)
    body = json.dumps(review(SOURCE_VMIM)).encode()
    with caplog.at_level(logging.WARNING, logger="webhook.listener"):
        async with listening(create_app(offline_context()), pki, limits) as server:
            held = [await open_tls(server.port, client_ssl) for _ in range(3)]
            waiting = asyncio.ensure_future(call(server.port, client_ssl, "/validate", body))
            done, _ = await asyncio.wait([waiting], timeout=1.0)
            assert not done  # the 4th waits: its TLS handshake is not even started
            assert server.open_connections == 3
            held[0][1].close()  # a slot frees up: the 4th is accepted and answered
            status, _, _ = await asyncio.wait_for(waiting, 10)
            for _, writer in held[1:]:
                writer.close()
    assert status == 200
    cap_lines = [r for r in caplog.records if "connection cap reached" in r.getMessage()]
    assert len(cap_lines) == 1 and cap_lines[0].levelno == logging.WARNING


async def test_failed_handshakes_give_their_slot_back(pki: PairPaths,
                                                     client_ssl: ssl.SSLContext) -> None:
    limits = Limits(max_connections=3, handshake_timeout=5, idle_timeout=5)
    body = json.dumps(review(SOURCE_VMIM)).encode()
    async with listening(create_app(offline_context()), pki, limits) as server:
        for _ in range(10):  # plain HTTP on the TLS port: each handshake fails
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await closed_by_peer(reader, 10)
            writer.close()
        status, _, _ = await call(server.port, client_ssl, "/validate", body)
        deadline = time.monotonic() + 10
        while server.open_connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert server.open_connections == 0
    assert status == 200


# --- Bounded answers ------------------------------------------------------------------
async def test_a_3_mib_vm_gets_a_bounded_denial(pki: PairPaths,
                                                client_ssl: ssl.SSLContext) -> None:
    """The biggest VM the API server would send (3 MiB), every disk denied three ways."""
    vm = copy.deepcopy(TARGET_VM)
    devices = vm["spec"]["template"]["spec"]["domain"]["devices"]
    one = {"name": "d999999", "shareable": True, "lun": {}}
    count = (MAX_DOCUMENT_BYTES - 4096) // (len(json.dumps(one)) + 2)
    devices["disks"] = [{**one, "name": f"d{i}"} for i in range(count)]
    sent = json.dumps(review(vm)).encode()
    assert 0.95 * MAX_DOCUMENT_BYTES < len(sent) < MAX_DOCUMENT_BYTES
    async with listening(create_app(offline_context()), pki) as server:
        status, _, body = await call(server.port, client_ssl, "/validate", sent)
    assert status == 200
    assert len(body) < 64 * 1024  # was 38.9 MB for 100,000 disks
    message = json.loads(body)["response"]["status"]["message"]
    for rule in ("shareable-disk", "lun-disk"):
        assert message.count(f"[{rule}]") == MAX_FINDINGS_PER_RULE + 1
        assert f"[{rule}] (more): and {count - MAX_FINDINGS_PER_RULE} more" in message


async def test_heavy_reviews_run_off_the_event_loop(pki: PairPaths,
                                                    client_ssl: ssl.SSLContext) -> None:
    """A review over HEAVY_BODY_BYTES is decided on the heavy-review thread, so the loop
    keeps answering the small ones meanwhile; small ones stay inline."""
    threads: dict[str, str] = {}

    def recording(request: Request, ctx: Context) -> Decision:
        assert request.object is not None
        threads[request.object["metadata"]["name"]] = threading.current_thread().name
        return engine.validate(request, ctx)

    big = copy.deepcopy(TARGET_VM)
    big["metadata"]["name"] = "big"
    big["metadata"]["annotations"] = {"padding": "x" * HEAVY_BODY_BYTES}
    app = create_app(offline_context(), engine=Engine(validate=recording))
    async with listening(app, pki) as server:
        for obj in (big, TARGET_VM):
            status, _, _ = await call(server.port, client_ssl, "/validate",
                                      json.dumps(review(obj)).encode())
            assert status == 200
    assert threads["big"].startswith("heavy-review")
    assert threads[TARGET_VM["metadata"]["name"]] == "MainThread"


# --- 413 ------------------------------------------------------------------------------
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_an_oversize_upload_is_413_and_the_connection_closed_at_once(
        declared: bool, pki: PairPaths, client_ssl: ssl.SSLContext) -> None:
    chunk = b" " * 65536
    async with listening(create_app(offline_context()), pki) as server:
        reader, writer = await open_tls(server.port, client_ssl)
        head = post_head(4 << 30) if declared else post_head(0).replace(
            b"Content-Length: 0", b"Transfer-Encoding: chunked")

        async def upload() -> None:  # a 4 GiB body, sent as fast as the server reads it
            writer.write(head)
            with contextlib.suppress(OSError):  # the server closes on us
                for _ in range((4 << 30) // len(chunk)):
                    writer.write(chunk if declared else b"10000\r\n" + chunk + b"\r\n")
                    await writer.drain()

        sending = asyncio.ensure_future(upload())
        status, headers, _ = await asyncio.wait_for(read_answer(reader), 10)
        assert await closed_by_peer(reader, 2)  # was: read and discarded for 10 s
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()
    assert status == 413 and headers["connection"] == "close"


# --- Malformed HTTP -------------------------------------------------------------------
async def test_malformed_http_is_one_rate_limited_warning_line(
        pki: PairPaths, client_ssl: ssl.SSLContext, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with listening(create_app(offline_context()), pki) as server:
        for _ in range(50):
            reader, writer = await open_tls(server.port, client_ssl)
            writer.write(b"POST /validate HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
            status, _, _ = await asyncio.wait_for(read_answer(reader), 10)
            assert status == 400
            writer.close()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert loud[0].levelno == logging.WARNING and loud[0].exc_info is None
    assert "malformed HTTP request from 127.0.0.1" in loud[0].getMessage()
    assert "\n" not in loud[0].getMessage()
