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
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import hdrs, web

from dlm_guard.memory import return_freed_memory
from webhook import engine as admission
from webhook.decision import Decision
from webhook.engine import Context, Request
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

# A Decision, or an awaitable of one when a live lookup must finish first (webhook/live.py).
EngineFn = Callable[[Request, Context], Decision | Awaitable[Decision]]
# A readiness check returns why the server is not ready, or None when it is.
ReadyCheck = Callable[[], str | None]


@dataclass(frozen=True, slots=True)
class Engine:
    """The two admission functions; tests swap in fakes (e.g. one that raises)."""

    mutate: EngineFn = admission.mutate
    validate: EngineFn = admission.validate


class InFlight:
    """Counts admission calls being read or answered (logged at shutdown).

    aiohttp's own graceful shutdown stops reading from every connection first, so a call
    whose body is still arriving would hang until the timeout and get no answer
    (aio-libs/aiohttp#2298): `webhook.serve` therefore drains connections through its own
    listener (webhook.listener) before handing over to it.
    """

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *_exc: object) -> None:
        self.count -= 1


class Draining:
    """Set on SIGTERM: from then on every answer says `Connection: close`, so clients take
    their next call to another replica instead of a connection about to close."""

    def __init__(self) -> None:
        self.active = False


@web.middleware
async def _close_when_draining(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if request.app[DRAINING].active:
        response.force_close()
    return response


CONTEXT = web.AppKey("context", Context)
ENGINE = web.AppKey("engine", Engine)
METRICS = web.AppKey("metrics", AdmissionMetrics)
READY_CHECKS = web.AppKey("ready_checks", list[ReadyCheck])
MAX_BODY = web.AppKey("max_body", int)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
DRAINING = web.AppKey("draining", Draining)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
HEAVY_REVIEWS = web.AppKey("heavy_reviews", ThreadPoolExecutor)
# Ordinary reviews are a few KiB and answered in well under a millisecond on the loop.
HEAVY_BODY_BYTES = 256 * 1024
_T = TypeVar("_T")
# The API server gives up on a webhook call after 10 s by default: a body still arriving
# after half of that will not be answered in time anyway.
DEFAULT_BODY_TIMEOUT = 5.0


def create_app(ctx: Context, *, engine: Engine | None = None,
               metrics: AdmissionMetrics | None = None,
               ready_checks: Sequence[ReadyCheck] = (),
               max_body: int = MAX_BODY_BYTES,
               body_timeout: float = DEFAULT_BODY_TIMEOUT) -> web.Application:
    # client_max_size only guards request.read()/post(), which we never call: the admission
    # handlers stream the body themselves with the same cap.
    app = web.Application(client_max_size=max_body, middlewares=[_close_when_draining])
    app[CONTEXT] = ctx
    app[ENGINE] = engine or Engine()
    app[METRICS] = metrics or AdmissionMetrics()
    app[READY_CHECKS] = list(ready_checks)
    app[MAX_BODY] = max_body
    app[IN_FLIGHT] = InFlight()
    app[DRAINING] = Draining()
    app[BODY_TIMEOUT] = body_timeout
    app[HEAVY_REVIEWS] = ThreadPoolExecutor(1, thread_name_prefix="heavy-review")
    app.on_cleanup.append(_stop_heavy_reviews)
    app.router.add_post("/mutate", _mutate)
    app.router.add_post("/validate", _validate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _stop_heavy_reviews(app: web.Application) -> None:
    app[HEAVY_REVIEWS].shutdown(wait=False, cancel_futures=True)


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
        body = await read_body(request, request.app[MAX_BODY], request.app[BODY_TIMEOUT])
        started = time.perf_counter()  # the histogram measures our work, not the upload
        review = await _off_loop_if_heavy(request.app, len(body), decode_review, body)
    except ReviewError as err:
        # Kind and operation unknown: recorded as "unknown" (see webhook.metrics).
        metrics.observe(endpoint, "", "", RESULT_ERROR, time.perf_counter() - started)
        log.info("rejected admission call: %s", err.reason,
                 extra={"endpoint": endpoint, "status": err.status})
        response = web.Response(status=err.status, text=err.reason + "\n")
        if err.status != 400:  # 413, 415, 408: part of the body may be unread; close
            response.force_close()  # right after the answer (webhook.listener)
        return response
    try:
        decision = await _off_loop_if_heavy(request.app, len(body), decide, review.request,
                                            request.app[CONTEXT])
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


async def _off_loop_if_heavy(app: web.Application, size: int,
                             work: Callable[..., _T], *args: Any) -> _T:
    """`work(*args)` inline for an ordinary body; on the heavy-review thread for a body over
    HEAVY_BODY_BYTES, so that one 3 MiB review (~0.5 s of decoding and rules) shares the
    interpreter with the event loop instead of stopping it. One thread: heavy reviews wait
    for each other, never for the small ones."""
    if size <= HEAVY_BODY_BYTES:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(
        app[HEAVY_REVIEWS], _then_trim, work, *args)


def _then_trim(work: Callable[..., _T], *args: Any) -> _T:
    try:
        return work(*args)
    finally:
        return_freed_memory()


async def read_body(request: web.Request, limit: int,
                    timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    """The request body, refused (415/413) before or while reading, never buffered past
    limit, and 408 when it has not all arrived within `timeout` seconds."""
    declared = request.headers.get(hdrs.CONTENT_TYPE)
    check_content_type(request.content_type if declared else "")
    check_declared_length(request.content_length, limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                if len(body) + len(chunk) > limit:
                    raise ReviewError(413, f"body exceeds the {limit} byte limit")
                body.extend(chunk)
    except TimeoutError:
        raise ReviewError(408, f"body not received within {timeout:g} s") from None
    except ConnectionError:  # the client went away mid-body: a log line, not a traceback
        raise ReviewError(400, "connection closed before the whole body arrived") from None
    return bytes(body)


# json.dumps escapes DEL and non-ASCII (ensure_ascii); orjson writes them raw. Answers are
# ASCII in practice; any other answer is encoded by json, so the bytes never change.
_NOT_JSON_ASCII = re.compile(rb"[\x7f-\xff]")


def encode_answer(review: Review, decision: Decision) -> bytes:
    """The AdmissionReview answer, in the apiVersion/kind the request came in."""
    answer = decision.review(review.uid, review.api_version)
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
