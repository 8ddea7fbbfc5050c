"""The one API call on the admission path: a bounded live GET of a VMI the cache lacks.

Rules read a watch cache, which lags the API server: Forklift creates the target VMIM right
after it sees the target VMI (kubev2v/forklift pkg/controller/plan/migrator/ocp/live.go), and
upstream's own VMIM admitter reads the VMI live. So before `receiver-vmi` or `source-vmi`
report a VMI missing, one GET (at most LIVE_GET_TIMEOUT_SECONDS) confirms it; the engine
then evaluates again with what it found. A GET that fails or times out never denies: the
findings become warnings. Nothing is fetched when the cache has the VMI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from dlm_guard.domain import KUBEVIRT_GROUP, Obj
from webhook import engine
from webhook.decision import Decision
from webhook.engine import Context, LiveVmi, VmiKey

log = logging.getLogger(__name__)

LIVE_GET_TIMEOUT_SECONDS = 2.0
VMI_PLURAL = "virtualmachineinstances"
ValidateFn = Callable[[Mapping[str, Any], Context], Decision | Awaitable[Decision]]


class VmiLookup(Protocol):
    """Reads one VMI from the API server: the object, None when it does not exist; raises on
    any other failure."""

    async def get_vmi(self, namespace: str, name: str) -> Obj | None: ...


class KubeVmiLookup:
    """VmiLookup over the official kubernetes client (the cache's ApiClient). The client is
    synchronous, so the GET runs in a worker thread, bounded by its own request timeout."""

    def __init__(self, api_client: Any, timeout: float = LIVE_GET_TIMEOUT_SECONDS) -> None:
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client)
        self._timeout = timeout

    async def get_vmi(self, namespace: str, name: str) -> Obj | None:
        return await asyncio.to_thread(self._get, namespace, name)

    def _get(self, namespace: str, name: str) -> Obj | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self._api.get_namespaced_custom_object(
                KUBEVIRT_GROUP, "v1", namespace, VMI_PLURAL, name,
                _request_timeout=self._timeout)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        if not isinstance(found, Mapping):
            raise TypeError(f"the API server answered a {type(found).__name__}, not an object")
        return found


async def look_up(lookup: VmiLookup, key: VmiKey,
                  timeout: float = LIVE_GET_TIMEOUT_SECONDS) -> LiveVmi:
    """One GET of the VMI; every failure is an answer (`error`), never an exception."""
    namespace, name = key
    try:
        obj = await asyncio.wait_for(lookup.get_vmi(namespace, name), timeout)
    except TimeoutError:
        error = f"no answer within {timeout:g} s"
    except Exception as err:  # any failure means "cannot tell", which allows
        error = _reason(err)
    else:
        return LiveVmi(namespace, name, obj=obj)
    log.info("live VMI lookup failed: %s", error,
             extra={"namespace": namespace, "object_name": name})
    return LiveVmi(namespace, name, error=error)


def _reason(err: Exception) -> str:
    status = getattr(err, "status", None)
    kind = type(err).__name__
    return f"{kind} {status}" if isinstance(status, int) else kind


def confirming_validate(lookup: VmiLookup,
                        timeout: float = LIVE_GET_TIMEOUT_SECONDS) -> ValidateFn:
    """engine.validate, but a VMI missing from the cache is confirmed with one live GET.

    Returns the Decision directly when there is nothing to confirm (the common case stays
    synchronous), else an awaitable of it.
    """
    def validate(request: Mapping[str, Any], ctx: Context) -> Decision | Awaitable[Decision]:
        evaluation = engine.evaluate(request, ctx)
        if evaluation.vmi_to_confirm is None:
            return evaluation.decision()
        return _confirmed(request, ctx, evaluation.vmi_to_confirm)

    async def _confirmed(request: Mapping[str, Any], ctx: Context, key: VmiKey) -> Decision:
        live = await look_up(lookup, key, timeout)
        return engine.evaluate(request, ctx, live).decision()

    return validate
