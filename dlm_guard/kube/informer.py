"""One informer: keeps a `KindTable` of one resource in step with the cluster from a thread.

paged list (limit/continue) -> watch from the list's resourceVersion, with bookmarks, resumed
from the last resourceVersion seen whenever the server ends it -> 410 Gone: relist at once ->
any other error: back off (jittered) and resume. Every change publishes a new immutable table
(dlm_guard/store.py) and calls `on_change`. The health record says whether the table can be
trusted: synced once, when the last event came, how many attempts in a row failed.

The kubernetes client is synchronous: its calls run on this thread, never on an event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from dlm_guard.kube.api import Expired, Page, Selector, WatchError, describe_error
from dlm_guard.kube.backoff import backoff_delay
from dlm_guard.kube.memory import release_free_memory
from dlm_guard.kube.resources import Resource
from dlm_guard.store import KindTable, TableBuilder

log = logging.getLogger(__name__)

# A watch failing for longer than this gets an error log line (once per failure streak).
FAILING_LOG_AFTER_SECONDS = 60.0


class Stream(Protocol):
    def __iter__(self) -> Iterator[Mapping[str, Any]]: ...
    def close(self) -> None: ...
    def release(self) -> None: ...


class Source(Protocol):
    """Where objects come from: dlm_guard.kube.api.ApiSource, or a script in tests."""

    def list_page(self, resource: Resource, selector: Selector, token: str | None) -> Page: ...

    def watch(self, resource: Resource, selector: Selector, version: str) -> Stream: ...


@dataclass(frozen=True, slots=True)
class Health:
    """A watch's health at one moment (times from time.monotonic)."""

    synced: bool = False  # listed at least once: the table holds the cluster's objects
    last_event: float | None = None  # last list, event or bookmark
    failures: int = 0  # failed attempts in a row; 0 while watching normally
    failing_since: float | None = None  # start of the current failure streak
    error: str = ""  # the last failure, while failing

    @property
    def healthy(self) -> bool:
        return self.synced and self.failures == 0

    def failing_for(self, now: float) -> float:
        return 0.0 if self.failing_since is None else now - self.failing_since


class Informer:
    def __init__(self, source: Source, resource: Resource, selector: Selector | None = None, *,
                 label: str = "", on_change: Callable[[], None] | None = None,
                 delay: Callable[[int], float] = backoff_delay,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.resource, self.selector = resource, selector or Selector()
        self.label = label or resource.kind
        self.table = KindTable(resource.kind)  # replaced, never changed: read it any time
        self.health = Health()  # likewise
        self.synced = threading.Event()
        self._source, self._on_change = source, on_change
        self._delay, self._clock = delay, clock
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _stream against stop()
        self._stream: Stream | None = None
        self._version: str | None = None  # where to resume watching; None: relist
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"watch-{self.label}")
        self._logged_failing = False

    # --- lifetime -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end, and end a blocked watch read now. Never blocks."""
        with self._lock:
            self._stopping.set()
            stream = self._stream
        if stream is not None:
            stream.close()

    def join(self, timeout: float) -> bool:
        """True when the thread has ended (or never started) within `timeout` seconds."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._version is None:
                    self._version = self._relist()
                if self._stopping.is_set():
                    break
                # `_version` advances with every event, so after an error we resume from the
                # last one seen instead of replaying (or relisting) everything.
                self._watch(self._version)
            except Expired as err:
                # Routine (etcd compacted our resourceVersion), but a relist of a big kind is
                # costly: worth one line. Relist at once.
                log.info("watch of %s expired (%s), relisting", self.label, err,
                         extra={"watch": self.label})
                self._version = None
            except Exception as err:
                if self._stopping.is_set():
                    break
                self._failed(err, listing=self._version is None)
                self._stopping.wait(self._delay(self.health.failures - 1))

    def _relist(self) -> str:
        builder = TableBuilder(self.resource.kind)
        token: str | None = None
        version = ""
        while not self._stopping.is_set():
            page = self._source.list_page(self.resource, self.selector, token)
            # Every page of one list is at the first page's resourceVersion.
            version, token = version or page.resource_version, page.next
            builder.stage(page.items)
            del page  # before settle(): see TableBuilder
            builder.settle()
            if not token:
                break
        if self._stopping.is_set():
            return version
        first = not self.health.synced
        table = builder.table()
        self._publish(table)
        self._succeeded(synced=True)
        self.synced.set()
        release_free_memory()
        if first:
            log.info("listed %d %s", len(table), self.label,
                     extra={"watch": self.label, "count": len(table)})
        return version

    def _watch(self, version: str) -> None:
        """Apply events until the server ends the watch."""
        stream = self._source.watch(self.resource, self.selector, version)
        with self._lock:
            if self._stopping.is_set():
                stream.release()
                return
            self._stream = stream
        try:
            # The server accepted the watch: we are current as of `version` again.
            self._succeeded()
            for event in stream:
                self._version = self._apply(event) or self._version
                if self._stopping.is_set():
                    break
        finally:
            with self._lock:
                self._stream = None
            stream.release()

    def _apply(self, event: Mapping[str, Any]) -> str | None:
        """One watch event into the table; the resourceVersion it carries (None: none)."""
        kind, obj = event.get("type"), event.get("object")
        if kind == "ERROR":
            status = obj if isinstance(obj, Mapping) else {}
            code = status.get("code")
            if code == 410:
                raise Expired(str(status.get("message", "resource version too old")))
            raise WatchError(f"watch error {code}: {str(obj)[:200]}")
        if not isinstance(obj, Mapping):
            return None
        self.health = replace(self.health, last_event=self._clock())
        if kind in ("ADDED", "MODIFIED"):
            self._publish(self.table.upserted(obj))
        elif kind == "DELETED":
            self._publish(self.table.deleted(obj))
        elif kind != "BOOKMARK":  # a bookmark only moves the resourceVersion on
            return None
        metadata = obj.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        return version if isinstance(version, str) and version else None

    def _publish(self, table: KindTable) -> None:
        if table is self.table:
            return
        self.table = table
        if self._on_change is not None:
            self._on_change()

    # --- health ---------------------------------------------------------------------------
    def _succeeded(self, synced: bool = False) -> None:
        before = self.health
        if before.failures:
            log.info("watch recovered after %d failed attempt(s)", before.failures,
                     extra={"watch": self.label})
        self._logged_failing = False
        self.health = Health(synced=before.synced or synced, last_event=self._clock())
        if before.failures and self._on_change is not None:
            self._on_change()  # trustworthy again: worth another look

    def _failed(self, err: BaseException, *, listing: bool) -> None:
        now = self._clock()
        before = self.health
        self.health = replace(before, failures=before.failures + 1,
                              failing_since=before.failing_since or now,
                              error=describe_error(err))
        what = "list" if listing else "watch"
        if before.failures == 0:
            log.warning("%s of %s failed, retrying: %s", what, self.label, self.health.error,
                        extra={"watch": self.label})
        elif (not self._logged_failing
              and self.health.failing_for(now) > FAILING_LOG_AFTER_SECONDS):
            self._logged_failing = True
            log.error("%s of %s failing for %.0fs (%d attempts), cluster state for it is "
                      "getting stale: %s", what, self.label, self.health.failing_for(now),
                      self.health.failures, self.health.error, extra={"watch": self.label})
