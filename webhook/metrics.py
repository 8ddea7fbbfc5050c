"""Prometheus metrics of the admission endpoints, in a registry owned by one app.

A registry per app (not prometheus_client's global one) keeps apps independent: tests start
many, and a second app in one process would otherwise fail with "Duplicated timeseries".

`dlm_guard_admission_requests_total{endpoint, kind, operation, result}` where result is:
- `allowed`  allowed, no patch, no warnings
- `patched`  allowed with a JSON patch (warnings or not)
- `warned`   allowed with warnings, no patch
- `denied`   allowed: false (warnings or not)
- `error`    no AdmissionReview answer: a bad call (400/413/415) or an engine failure (500)
Precedence: denied > patched > warned > allowed. Labels are bounded: kind and operation are
mapped to a fixed set (`other`, or `unknown` for calls we could not decode), so a client sending
made-up kinds cannot blow up the series count.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from dlm_guard.domain import KIND_VM, KIND_VMI, KIND_VMIM
from webhook.decision import Decision

RESULT_ALLOWED, RESULT_PATCHED, RESULT_WARNED = "allowed", "patched", "warned"
RESULT_DENIED, RESULT_ERROR = "denied", "error"
UNKNOWN, OTHER = "unknown", "other"

_KINDS = frozenset({KIND_VM, KIND_VMI, KIND_VMIM})
_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
# The engine is pure and in-memory: answers take well under a millisecond, so the buckets
# start at 100 us; a few reach 1 s to show a starved event loop or a huge object.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0)


def result_of(decision: Decision) -> str:
    if not decision.allowed:
        return RESULT_DENIED
    if decision.patch:
        return RESULT_PATCHED
    return RESULT_WARNED if decision.warnings else RESULT_ALLOWED


def kind_label(kind: str) -> str:
    return kind if kind in _KINDS else (OTHER if kind else UNKNOWN)


def operation_label(operation: str) -> str:
    return operation if operation in _OPERATIONS else (OTHER if operation else UNKNOWN)


class AdmissionMetrics:
    """The request counter and latency histogram of one app, and their text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dlm_guard_admission_requests", "Admission requests answered, by outcome.",
            ("endpoint", "kind", "operation", "result"), registry=self.registry)
        self.duration = Histogram(
            "dlm_guard_admission_duration_seconds",
            "Time to decode, evaluate and encode one admission request (body read excluded).",
            ("endpoint",), buckets=DURATION_BUCKETS, registry=self.registry)
        # .labels() takes a lock and checks the labels on every call: keep the children, keyed
        # by the mapped labels, so the cache is as bounded as the series.
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def observe(self, endpoint: str, kind: str, operation: str, result: str,
                seconds: float) -> None:
        key = (endpoint, kind_label(kind), operation_label(operation), result)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(*key),
                                              self.duration.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
