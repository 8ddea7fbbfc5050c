"""Raw list and watch calls over the official client's connection and auth.

Raw, because the typed clients decode into models or generic dicts slowly, and because a watch
must be stoppable from another thread: `WatchStream.close` shuts the socket down, which ends a
blocked read at once (closing the buffered response instead would wait for that read).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dlm_guard.kube.resources import Resource

log = logging.getLogger(__name__)

# The API server ends a watch after timeoutSeconds; we resume from the last resourceVersion.
# The read timeout is longer, so only a dead connection trips it.
WATCH_TIMEOUT_SECONDS = 300
CONNECT_TIMEOUT_SECONDS = 10
LIST_TIMEOUT_SECONDS = 60
PAGE_SIZE = 500


class Expired(Exception):
    """410 Gone: the resourceVersion (or continue token) is compacted away; relist."""


class WatchError(Exception):
    """An ERROR event other than 410 (e.g. 500 from the API server)."""


@dataclass(frozen=True, slots=True)
class Selector:
    """Which objects of a resource: a namespace (None: cluster-wide) and selectors."""

    namespace: str | None = None
    field: str | None = None
    label: str | None = None

    def query(self) -> list[tuple[str, str]]:
        found = []
        if self.field:
            found.append(("fieldSelector", self.field))
        if self.label:
            found.append(("labelSelector", self.label))
        return found


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    resource_version: str
    next: str | None  # the continue token, None on the last page


def get(api: client.ApiClient, path: str, query: list[tuple[str, str]],
        timeout: float | tuple[float, float]) -> Any:
    """GET `path`; the urllib3 response (not yet read) for a 2xx, else ApiException."""
    request = api.param_serialize("GET", path, query_params=query,
                                  header_params={"Accept": "application/json"},
                                  auth_settings=["BearerToken"])
    response = api.call_api(*request, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        response.read()
        if response.status == 410:
            raise Expired(f"HTTP 410 {response.reason}")
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


def get_json(api: client.ApiClient, path: str, timeout: float) -> Any:
    """One object (or a 404 ApiException)."""
    response = get(api, path, [], timeout)
    try:
        return orjson.loads(response.data)
    finally:
        response.release_conn()


class ApiSource:
    """Lists and watches one cluster's resources through an API client."""

    def __init__(self, api: client.ApiClient, page_size: int = PAGE_SIZE,
                 list_timeout: float = LIST_TIMEOUT_SECONDS) -> None:
        self.api = api
        self._page_size, self._list_timeout = page_size, list_timeout

    def list_page(self, resource: Resource, selector: Selector, token: str | None) -> Page:
        query = [("limit", str(self._page_size)), *selector.query()]
        if token:
            query.append(("continue", token))
        response = get(self.api, resource.path(selector.namespace), query,
                       (CONNECT_TIMEOUT_SECONDS, self._list_timeout))
        try:
            body = orjson.loads(response.data)
        finally:
            response.release_conn()
        meta = body.get("metadata") if isinstance(body, Mapping) else None
        meta = meta if isinstance(meta, Mapping) else {}
        items = body.get("items") if isinstance(body, Mapping) else None
        return Page([i for i in items or () if isinstance(i, dict)],
                    str(meta.get("resourceVersion") or ""), meta.get("continue") or None)

    def watch(self, resource: Resource, selector: Selector, version: str) -> WatchStream:
        """An open watch from `version` (with bookmarks): the API server accepted it."""
        query = [("watch", "true"), ("resourceVersion", version),
                 ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(WATCH_TIMEOUT_SECONDS)), *selector.query()]
        response = get(self.api, resource.path(selector.namespace), query,
                       (CONNECT_TIMEOUT_SECONDS, WATCH_TIMEOUT_SECONDS + 30))
        return WatchStream(response)


class WatchStream:
    """The events of one open watch, one JSON object per line, until the server ends it."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        buffer = b""
        try:
            for chunk in self._response.stream(64 * 1024, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _event(line)
                if self._closed.is_set():
                    return
            if buffer.strip() and not self._closed.is_set():
                yield _event(buffer)
        finally:
            self.release()

    def close(self) -> None:
        """Thread-safe: end the stream now, also while another thread is blocked reading it
        (shutting the socket down wakes that read; closing the buffered file would wait)."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._response.shutdown()
        except Exception as err:  # already released or closed: nothing blocks on it
            log.debug("watch socket shutdown: %s", describe_error(err))

    def release(self) -> None:
        """Drop the connection (from the reading thread, once it no longer reads)."""
        self._closed.set()
        self._response.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


def _event(line: bytes) -> dict[str, Any]:
    event = orjson.loads(line)
    if not isinstance(event, dict):
        raise WatchError(f"watch sent a non-object line: {line[:100]!r}")
    return event


def describe_error(err: BaseException) -> str:
    """One short line for a log or an error list (no response bodies: they can be big)."""
    if isinstance(err, ApiException):
        return f"HTTP {err.status} {err.reason}"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:300]
