"""The HTTP shell around the admission engine: an aiohttp app factory.

Routes: POST /mutate, POST /validate (AdmissionReview in and out), GET /healthz, GET /readyz,
GET /metrics. Everything the app needs is passed to `create_app` and kept under AppKeys, so
tests build apps with a fake engine or fake readiness checks, and TLS, the cluster cache and
signals stay in `webhook.serve`.

The engine is pure and answers in microseconds from memory, so it runs inline on the event
loop; an executor hop would cost more than the call. The one exception is a VMI missing
from the cache: then the validate function returns an awaitable that confirms it with one
bounded live GET (webhook/live.py), awaited here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import hdrs, web

from webhook import engine as admission
from webhook.decision import Decision
from webhook.engine import Context
from webhook.metrics import RESULT_DENIED, RESULT_ERROR, AdmissionMetrics, result_of
from webhook.review import (
    MAX_BODY_BYTES,
    Review,
    ReviewError,
    check_content_type,
    check_declared_length,
    decode_review,
)

log = logging.getLogger(__name__)

EngineFn = Callable[[Mapping[str, Any], Context], Decision | Awaitable[Decision]]
# A readiness check returns why the server is not ready, or None when it is.
ReadyCheck = Callable[[], str | None]


@dataclass(frozen=True, slots=True)
class Engine:
    """The two admission functions; tests swap in fakes (e.g. one that raises)."""

    mutate: EngineFn = admission.mutate
    validate: EngineFn = admission.validate


class InFlight:
    """Counts admission calls being read or answered, so shutdown can wait for them.

    aiohttp's own graceful shutdown stops reading from every connection first, so a call
    whose body is still arriving would hang until the timeout and get no answer
    (aio-libs/aiohttp#2298): `webhook.serve` waits here before handing over to it.
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *_exc: object) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


CONTEXT = web.AppKey("context", Context)
ENGINE = web.AppKey("engine", Engine)
METRICS = web.AppKey("metrics", AdmissionMetrics)
READY_CHECKS = web.AppKey("ready_checks", list[ReadyCheck])
MAX_BODY = web.AppKey("max_body", int)
IN_FLIGHT = web.AppKey("in_flight", InFlight)


def create_app(ctx: Context, *, engine: Engine | None = None,
               metrics: AdmissionMetrics | None = None,
               ready_checks: Sequence[ReadyCheck] = (),
               max_body: int = MAX_BODY_BYTES) -> web.Application:
    # client_max_size only guards request.read()/post(), which we never call: the admission
    # handlers stream the body themselves with the same cap.
    app = web.Application(client_max_size=max_body)
    app[CONTEXT] = ctx
    app[ENGINE] = engine or Engine()
    app[METRICS] = metrics or AdmissionMetrics()
    app[READY_CHECKS] = list(ready_checks)
    app[MAX_BODY] = max_body
    app[IN_FLIGHT] = InFlight()
    app.router.add_post("/mutate", _mutate)
    app.router.add_post("/validate", _validate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


# --- Admission ------------------------------------------------------------------------
async def _mutate(request: web.Request) -> web.Response:
    with request.app[IN_FLIGHT]:
        return await _admit(request, "mutate", request.app[ENGINE].mutate)


async def _validate(request: web.Request) -> web.Response:
    with request.app[IN_FLIGHT]:
        return await _admit(request, "validate", request.app[ENGINE].validate)


async def _admit(request: web.Request, endpoint: str, decide: EngineFn) -> web.Response:
    metrics, started = request.app[METRICS], time.perf_counter()
    try:
        body = await read_body(request, request.app[MAX_BODY])
        started = time.perf_counter()  # the histogram measures our work, not the upload
        review = decode_review(body)
    except ReviewError as err:
        # Kind and operation unknown: recorded as "unknown" (see webhook.metrics).
        metrics.observe(endpoint, "", "", RESULT_ERROR, time.perf_counter() - started)
        log.info("rejected admission call: %s", err.reason,
                 extra={"endpoint": endpoint, "status": err.status})
        # An unread rest of the body is read and discarded by aiohttp for up to its
        # lingering_time, so the client still gets to read this answer.
        return web.Response(status=err.status, text=err.reason + "\n")
    try:
        decision = decide(review.request, request.app[CONTEXT])
        if not isinstance(decision, Decision):  # a live lookup to finish (webhook/live.py)
            decision = await decision
        payload = encode_answer(review, decision)
    except Exception:  # a rule bug must cost one request, never the server
        log.exception("admission engine failed", extra=_request_fields(review, endpoint))
        metrics.observe(endpoint, review.object_kind, review.operation, RESULT_ERROR,
                        time.perf_counter() - started)
        return web.Response(status=500, text=f"internal error evaluating request {review.uid}; "
                                             "see the dlm-guard log\n")
    _record(metrics, review, endpoint, decision, time.perf_counter() - started)
    return web.Response(body=payload, content_type="application/json")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused (415/413) before or while reading, never buffered past limit."""
    declared = request.headers.get(hdrs.CONTENT_TYPE)
    check_content_type(request.content_type if declared else "")
    check_declared_length(request.content_length, limit)
    body = bytearray()
    try:
        async for chunk in request.content.iter_any():
            if len(body) + len(chunk) > limit:
                raise ReviewError(413, f"body exceeds the {limit} byte limit")
            body.extend(chunk)
    except ConnectionError:  # the client went away mid-body: a log line, not a traceback
        raise ReviewError(400, "connection closed before the whole body arrived") from None
    return bytes(body)


# json.dumps escapes DEL and non-ASCII (ensure_ascii); orjson writes them raw. Answers are
# ASCII in practice; any other answer is encoded by json, so the bytes never change.
_NOT_JSON_ASCII = re.compile(rb"[\x7f-\xff]")


def encode_answer(review: Review, decision: Decision) -> bytes:
    """The AdmissionReview answer, in the apiVersion/kind the request came in."""
    answer = decision.review(review.uid)
    answer["apiVersion"], answer["kind"] = review.api_version, review.kind
    try:
        encoded: bytes = orjson.dumps(answer)
    except orjson.JSONEncodeError:  # e.g. a lone surrogate echoed from the request
        pass
    else:
        if _NOT_JSON_ASCII.search(encoded) is None:
            return encoded
    return json.dumps(answer, allow_nan=False, separators=(",", ":")).encode()


def _record(metrics: AdmissionMetrics, review: Review, endpoint: str, decision: Decision,
            seconds: float) -> None:
    result = result_of(decision)
    metrics.observe(endpoint, review.object_kind, review.operation, result, seconds)
    fields = _request_fields(review, endpoint) | {"result": result,
                                                  "ms": round(seconds * 1000, 3)}
    if result == RESULT_DENIED:
        # Findings carry field paths and advice, never object content: fine at info.
        log.info("denied: %s", decision.message, extra=fields)
    else:
        log.debug("admitted", extra=fields)


def _request_fields(review: Review, endpoint: str) -> dict[str, Any]:
    # `name` would clash with LogRecord.name, hence object_name.
    return {"endpoint": endpoint, "uid": review.uid, "kind": review.object_kind,
            "operation": review.operation, "namespace": review.namespace,
            "object_name": review.name}


# --- Probes and metrics ---------------------------------------------------------------
async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    problems = not_ready_reasons(request.app[READY_CHECKS])
    if problems:
        return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
    return web.Response(text="ok\n")


def not_ready_reasons(checks: list[ReadyCheck]) -> list[str]:
    reasons = []
    for check in checks:
        try:
            reason = check()
        except Exception as err:  # a broken check means "not ready", not a 500
            log.exception("readiness check failed")
            reason = f"readiness check failed: {type(err).__name__}"
        if reason:
            reasons.append(reason)
    return reasons


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    return web.Response(body=metrics.render(),
                        headers={hdrs.CONTENT_TYPE: metrics.content_type})
