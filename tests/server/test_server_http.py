"""The real server over real TLS on 127.0.0.1: answers, bad calls, failures, load, probes."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import logging
import ssl
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import jsonpatch
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_support import SOURCE_VMIM, TARGET_VM, TARGET_VMIM, Obj, offline_context, review

from certs.generate import PairPaths
from dlm_guard.kube.api import Page, Selector
from dlm_guard.kube.cache import ClusterCache
from dlm_guard.kube.resources import Resource
from tests.waiting import eventually_async
from webhook.cache import WEBHOOK_WATCHED, WebhookCluster
from webhook.decision import Decision
from webhook.engine import Context, Request
from webhook.review import MAX_BODY_BYTES
from webhook.server import Engine, create_app

JSON = {"Content-Type": "application/json"}


async def _post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json()


def _patched(obj: Obj, response: Mapping[str, Any]) -> Obj:
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(obj, patch)


# --- Happy paths ----------------------------------------------------------------------
async def test_mutate_adds_the_restore_run_strategy(session: aiohttp.ClientSession,
                                                    base_url: str) -> None:
    vm = copy.deepcopy(TARGET_VM)  # no kubevirt.io/restore-run-strategy annotation
    sent = review(vm)
    status, answer = await _post(session, f"{base_url}/mutate", sent)
    assert status == 200
    assert (answer["apiVersion"], answer["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    response = answer["response"]
    assert response["uid"] == sent["request"]["uid"] and response["allowed"] is True
    mutated = _patched(vm, response)
    assert mutated["metadata"]["annotations"] == {"kubevirt.io/restore-run-strategy": "Always"}


async def test_mutate_without_changes_sends_no_patch(session: aiohttp.ClientSession,
                                                     base_url: str) -> None:
    vm = copy.deepcopy(TARGET_VM)
    vm["metadata"]["annotations"] = {"kubevirt.io/restore-run-strategy": "Halted"}
    _, answer = await _post(session, f"{base_url}/mutate", review(vm))
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"] and "patchType" not in answer["response"]


@pytest.mark.parametrize("obj", [TARGET_VMIM, SOURCE_VMIM], ids=["target", "source"])
async def test_validate_allows_the_documented_example(session: aiohttp.ClientSession,
                                                      base_url: str, obj: Obj) -> None:
    sent = review(obj)
    status, answer = await _post(session, f"{base_url}/validate", sent)
    assert status == 200
    assert answer["response"] == {"uid": sent["request"]["uid"], "allowed": True}


async def test_validate_denies_with_every_finding(session: aiohttp.ClientSession,
                                                  base_url: str) -> None:
    vmim = copy.deepcopy(SOURCE_VMIM)
    vmim["spec"]["sendTo"]["connectURL"] = "https://10.244.1.17:9185"
    del vmim["spec"]["vmiName"]
    status, answer = await _post(session, f"{base_url}/validate", review(vmim))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403 and response["status"]["reason"] == "Forbidden"
    assert "[connect-url] spec.sendTo.connectURL" in response["status"]["message"]
    assert "[vmi-name]" in response["status"]["message"]


async def test_answer_echoes_the_request_api_version(session: aiohttp.ClientSession,
                                                     base_url: str) -> None:
    sent = review(TARGET_VMIM) | {"apiVersion": "admission.k8s.io/v1beta1"}
    _, answer = await _post(session, f"{base_url}/validate", sent)
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1"
    assert answer["response"]["uid"] == sent["request"]["uid"]


async def test_healthz(session: aiohttp.ClientSession, base_url: str) -> None:
    async with session.get(f"{base_url}/healthz") as resp:
        assert resp.status == 200 and await resp.text() == "ok\n"


# --- Bad calls ------------------------------------------------------------------------
BAD_CALLS = [
    # (id, method, path, headers, body, status, words in the reason)
    ("not-json", "POST", "/validate", JSON, b"{oops", 400, "not valid JSON"),
    ("missing-uid", "POST", "/mutate", JSON,
     json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"operation": "CREATE"}}).encode(), 400, "request.uid"),
    ("not-an-object", "POST", "/validate", JSON, b"[]", 400, "not an AdmissionReview"),
    ("text-plain", "POST", "/validate", {"Content-Type": "text/plain"},
     json.dumps(review(TARGET_VMIM)).encode(), 415, "application/json"),
    ("no-content-type", "POST", "/mutate", {}, b"{}", 415, "application/json"),
    ("unknown-path", "POST", "/admit", JSON, b"{}", 404, "Not Found"),
    ("wrong-method", "GET", "/mutate", {}, None, 405, "Method Not Allowed"),
    ("post-healthz", "POST", "/healthz", JSON, b"{}", 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "words"),
                         [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
async def test_bad_calls(session: aiohttp.ClientSession, base_url: str, method: str, path: str,
                         headers: dict[str, str], body: bytes | None, status: int,
                         words: str) -> None:
    async with session.request(method, base_url + path, data=body, headers=headers) as resp:
        assert resp.status == status
        text = await resp.text()
    assert words in text
    assert text.count("\n") <= 1  # one line


async def test_body_over_the_limit_is_413(base_url: str,
                                          session: aiohttp.ClientSession) -> None:
    # The client stops sending once it has the answer; the server keeps the connection
    # (reading and discarding) until the client closes it: fixtures close the client first.
    body = io.BytesIO(b" " * (MAX_BODY_BYTES + 1))  # sized: Content-Length, refused up front
    async with session.post(f"{base_url}/validate", data=body, headers=JSON) as resp:
        assert resp.status == 413
        assert "exceeds" in await resp.text()


async def test_chunked_body_over_the_limit_is_413(session: aiohttp.ClientSession,
                                                  base_url: str) -> None:
    async def chunks() -> Any:  # no Content-Length: the cap applies while streaming
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    async with session.post(f"{base_url}/validate", data=chunks(), headers=JSON) as resp:
        assert resp.status == 413


async def test_huge_declared_length_is_refused_without_reading_the_body(
        base_url: str, client_ssl: ssl.SSLContext) -> None:
    # Headers only: if the server waited for (or buffered) the 1 GiB body it would never
    # answer, and wait_for would time out.
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl,
                                                   server_hostname="127.0.0.1")
    try:
        writer.write(b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413")


# --- Failures -------------------------------------------------------------------------
def _broken(_request: Request, _ctx: Context) -> Decision:
    raise KeyError("a rule bug")


async def test_engine_exception_is_500_and_the_server_stays_up(
        serve: Any, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(offline_context(), engine=Engine(mutate=_broken))
    sent = review(TARGET_VM, uid="uid-of-the-crash")
    async with serve(app) as url:
        with caplog.at_level(logging.ERROR, logger="webhook.server"):
            async with session.post(f"{url}/mutate", json=sent) as resp:
                assert resp.status == 500
                assert "uid-of-the-crash" in await resp.text()
        failure = next(r for r in caplog.records if r.levelno == logging.ERROR)
        assert getattr(failure, "uid", None) == "uid-of-the-crash" and failure.exc_info
        # Still serving, on both the broken and the healthy endpoint.
        async with session.post(f"{url}/mutate", json=sent) as resp:
            assert resp.status == 500
        status, answer = await _post(session, f"{url}/validate", review(TARGET_VMIM))
        assert status == 200 and answer["response"]["allowed"] is True


async def test_200_concurrent_requests(session: aiohttp.ClientSession, base_url: str) -> None:
    reviews = [review(TARGET_VM if i % 2 else TARGET_VMIM) for i in range(200)]
    paths = ["/mutate" if i % 3 else "/validate" for i in range(200)]
    results = await asyncio.gather(*(_post(session, base_url + path, sent)
                                     for path, sent in zip(paths, reviews, strict=True)))
    assert all(status == 200 for status, _ in results)
    assert [a["response"]["uid"] for _, a in results] == [r["request"]["uid"] for r in reviews]


# --- Metrics --------------------------------------------------------------------------
def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_count_by_outcome_and_time_requests(
        session: aiohttp.ClientSession, base_url: str) -> None:
    denied = copy.deepcopy(SOURCE_VMIM)
    denied["spec"]["sendTo"]["connectURL"] = "https://x:1"
    await _post(session, f"{base_url}/validate", review(denied))
    await _post(session, f"{base_url}/validate", review(TARGET_VMIM))
    await _post(session, f"{base_url}/mutate", review(TARGET_VM))
    await _post(session, f"{base_url}/mutate", review(TARGET_VM))
    async with session.post(f"{base_url}/mutate", data=b"x", headers=JSON):
        pass
    async with session.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        samples = _samples(await resp.text())

    def count(endpoint: str, kind: str, operation: str, result: str) -> float:
        labels = {"endpoint": endpoint, "kind": kind, "operation": operation, "result": result}
        return samples[("dlm_guard_admission_requests_total", frozenset(labels.items()))]

    vmim, vm = "VirtualMachineInstanceMigration", "VirtualMachine"
    assert count("validate", vmim, "CREATE", "denied") == 1
    assert count("validate", vmim, "CREATE", "allowed") == 1
    assert count("mutate", vm, "CREATE", "patched") == 2
    assert count("mutate", "unknown", "unknown", "error") == 1
    mutate = frozenset({("endpoint", "mutate")})
    assert samples[("dlm_guard_admission_duration_seconds_count", mutate)] == 3
    assert samples[("dlm_guard_admission_duration_seconds_sum", mutate)] > 0
    buckets = {dict(labels)["le"] for name, labels in samples
               if name == "dlm_guard_admission_duration_seconds_bucket"
               and ("endpoint", "mutate") in labels}
    assert {"0.0001", "0.001", "1.0", "+Inf"} <= buckets


async def test_each_app_has_its_own_registry(serve: Any,
                                             session: aiohttp.ClientSession) -> None:
    async with serve(create_app(offline_context())) as first, \
            serve(create_app(offline_context())) as second:
        await _post(session, f"{first}/validate", review(TARGET_VMIM))
        async with session.get(f"{second}/metrics") as resp:
            assert "dlm_guard_admission_requests_total{" not in await resp.text()


# --- Readiness ------------------------------------------------------------------------
class _QuietStream:
    def __init__(self) -> None:
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        self._closed.wait(10)
        return iter(())

    def close(self) -> None:
        self._closed.set()

    def release(self) -> None:
        self._closed.set()


class _SlowSource:
    """A cluster whose first list completes only when the test says so."""

    def __init__(self) -> None:
        self.listing_allowed = threading.Event()

    def list_page(self, resource: Resource, selector: Selector, token: str | None) -> Page:
        self.listing_allowed.wait(10)
        return Page([], "1", None)

    def watch(self, resource: Resource, selector: Selector, version: str) -> _QuietStream:
        return _QuietStream()


async def test_readyz_waits_for_the_first_cluster_list(serve: Any,
                                                       session: aiohttp.ClientSession) -> None:
    source = _SlowSource()
    cache = WebhookCluster(ClusterCache(source, WEBHOOK_WATCHED))
    app = create_app(Context(policy=offline_context().policy, cluster=cache,
                             new_id=lambda: "x"), ready_checks=[cache.not_ready_reason])
    cache.start()
    try:
        async with serve(app) as url:
            async with session.get(f"{url}/readyz") as resp:
                assert resp.status == 503
                assert "VirtualMachineInstanceMigration" in await resp.text()
            source.listing_allowed.set()

            async def ready() -> bool:
                async with session.get(f"{url}/readyz") as resp:
                    return resp.status == 200

            await eventually_async(ready, timeout=5, message="never ready")
    finally:
        assert await asyncio.get_running_loop().run_in_executor(None, cache.stop)


async def test_a_failing_ready_check_is_503_not_500(serve: Any,
                                                    session: aiohttp.ClientSession) -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    app = create_app(offline_context(), ready_checks=[lambda: None, broken])
    async with serve(app) as url, session.get(f"{url}/readyz") as resp:
        assert resp.status == 503 and "RuntimeError" in await resp.text()


# --- TLS ------------------------------------------------------------------------------
def _client_context(pki: PairPaths, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    with warnings.catch_warnings():  # deprecated on purpose: this client plays an old peer
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = maximum
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # lets OpenSSL 3 really offer TLS 1.1
    return context


async def test_tls_1_1_is_refused_and_1_2_accepted(base_url: str, pki: PairPaths) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    # The server's protocol_version alert surfaces as SSLError, or as a reset when the
    # server closes before the client reads it.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", port,
                                      ssl=_client_context(pki, ssl.TLSVersion.TLSv1_1))
    _, writer = await asyncio.open_connection("127.0.0.1", port,
                                              ssl=_client_context(pki, ssl.TLSVersion.TLSv1_2))
    assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
    writer.close()
    await writer.wait_closed()


async def test_client_leaving_mid_body_is_counted_and_the_server_stays_up(
        base_url: str, client_ssl: ssl.SSLContext, session: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webhook.server")
    port = int(base_url.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl)
    writer.write(b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\"")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    for _ in range(100):
        if any("connection closed before" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("connection closed before" in r.getMessage() for r in caplog.records)
    status, _ = await _post(session, f"{base_url}/validate", review(TARGET_VMIM))
    assert status == 200
