"""Cluster state for the webhook: list+watch KubeVirt objects into an ObjectStore.

Rules read the store, which one background thread per kind keeps current; the one API call on
the admission path is webhook/live.py's bounded GET of a VMI the store lacks (DESIGN.md).
The official kubernetes client is synchronous, so its calls live in those threads and never
touch the event loop.

Layers, so the logic is testable without a cluster:
- `apply_event`: pure-ish (store writes only): one watch event into the store.
- `ClusterCache`: the list -> watch -> (410: relist | error: back off) loop over a `Source`.
- `KubeSource`: the real Source (CustomObjectsApi + kubernetes.watch.Watch).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dlm_guard.domain import KIND_KUBEVIRT, KIND_VM, KIND_VMI, KIND_VMIM, KUBEVIRT_GROUP, Obj
from dlm_guard.store import ObjectStore

log = logging.getLogger(__name__)

API_VERSION = "v1"
# The API server ends a watch after timeout_seconds; we resume from the last resourceVersion.
# The client read timeout is longer, so only a dead connection trips it.
WATCH_TIMEOUT_SECONDS = 300
READ_TIMEOUT_SECONDS = WATCH_TIMEOUT_SECONDS + 30
LIST_TIMEOUT_SECONDS = 60
BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    plural: str


# KubeVirt CRs are kubevirt.io/v1. Listing the namespaced ones cluster-wide covers every
# namespace, which duplicate-migration-id needs (upstream looks migrationIDs up cluster-wide).
RESOURCES = (
    Resource(KIND_VMI, "virtualmachineinstances"),
    Resource(KIND_VM, "virtualmachines"),
    Resource(KIND_VMIM, "virtualmachineinstancemigrations"),
    Resource(KIND_KUBEVIRT, "kubevirts"),
)


class Expired(Exception):
    """410 Gone: the resourceVersion we watch from is compacted away; relist."""


class WatchError(Exception):
    """An ERROR event other than 410 (e.g. 500 from the API server)."""


# --- Pure part ------------------------------------------------------------------------
def slim(obj: Obj) -> dict[str, Any]:
    """The object without metadata.managedFields: often its biggest part, never read."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping) or "managedFields" not in metadata:
        return dict(obj)
    return {**obj, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}


def resource_version(obj: Any) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
    return version if isinstance(version, str) and version else None


def apply_event(store: ObjectStore, kind: str, event: Mapping[str, Any]) -> str | None:
    """Apply one watch event; returns the resourceVersion to resume from (None: no news).

    Raises Expired for 410 Gone and WatchError for other ERROR events.
    """
    event_type, obj = event.get("type"), event.get("raw_object", event.get("object"))
    if event_type == "ERROR":
        code = obj.get("code") if isinstance(obj, Mapping) else None
        if code == 410:
            raise Expired(str(obj.get("message", "resource version too old")))
        raise WatchError(f"watch error {code}: {obj}")
    if not isinstance(obj, Mapping):
        return None
    if event_type in ("ADDED", "MODIFIED"):
        store.upsert(slim(obj), kind)
    elif event_type == "DELETED":
        store.delete(obj, kind)
    elif event_type != "BOOKMARK":  # a bookmark only moves the resourceVersion on
        return None
    return resource_version(obj)


def backoff_delay(failures: int, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: ~0.5 s, 1 s, 2 s ... capped at 30 s."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures, 16))
    return delay * (0.5 + rand() / 2)  # jitter keeps replicas from relisting in lockstep


# --- The loop -------------------------------------------------------------------------
class Source(Protocol):
    """Where objects come from: the API server, or a fake in tests."""

    def list(self, resource: Resource) -> tuple[list[Obj], str]:
        """All objects of a kind and the list's resourceVersion."""
        ...

    def watch(self, resource: Resource, version: str) -> Iterator[Mapping[str, Any]]:
        """Events after `version` until the server ends the watch; raises Expired on 410."""
        ...

    def close(self) -> None:
        """Unblock running watches and refuse new ones (called on stop)."""
        ...

    def release(self) -> None:
        """Free connections once the watch threads are gone."""
        ...


class ClusterCache:
    """Keeps `store` in step with the cluster from background threads; `ready` after the
    first list of every kind."""

    def __init__(self, source: Source, store: ObjectStore | None = None,
                 resources: tuple[Resource, ...] = RESOURCES,
                 delay: Callable[[int], float] = backoff_delay) -> None:
        self.store = store if store is not None else ObjectStore()
        self._source, self._resources, self._delay = source, resources, delay
        self._stopping = threading.Event()
        self._listed: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def ready(self) -> bool:
        with self._lock:
            return len(self._listed) == len(self._resources)

    def not_ready_reason(self) -> str | None:
        """For /readyz: which kinds still wait for their first list."""
        with self._lock:
            waiting = [r.kind for r in self._resources if r.kind not in self._listed]
        return f"cluster cache waiting for the first list of {', '.join(waiting)}" \
            if waiting else None

    def start(self) -> None:
        for resource in self._resources:
            # Daemon: a thread stuck in a blocking read must not keep the process alive.
            thread = threading.Thread(target=self._run, args=(resource,), daemon=True,
                                      name=f"watch-{resource.plural}")
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the threads; True when all ended within `timeout` seconds."""
        self._stopping.set()
        self._source.close()
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("cluster watches still blocked at shutdown", extra={"threads": alive})
        else:
            self._source.release()
        return not alive

    def _run(self, resource: Resource) -> None:
        failures, version = 0, None
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._relist(resource)
                # `version` advances with every event, so after an error we resume from
                # the last one seen instead of replaying (or relisting) everything.
                for event in self._source.watch(resource, version):
                    version = apply_event(self.store, resource.kind, event) or version
                    failures = 0
                    if self._stopping.is_set():
                        break
            except Expired:
                # Routine: etcd compacted our resourceVersion. Relist at once.
                log.debug("watch expired, relisting", extra={"kind": resource.kind})
                version = None
            except Exception as err:
                if self._stopping.is_set():
                    break
                delay = self._delay(failures)
                failures += 1
                log.warning("cluster %s %s failed, retrying in %.1fs: %s",
                            "watch" if version else "list", resource.kind, delay,
                            _one_line(err), extra={"kind": resource.kind})
                self._stopping.wait(delay)

    def _relist(self, resource: Resource) -> str:
        items, version = self._source.list(resource)
        self.store.replace(resource.kind, [slim(item) for item in items])
        with self._lock:
            first = resource.kind not in self._listed
            self._listed.add(resource.kind)
        if first:
            log.info("cluster cache listed %d %s", len(items), resource.kind,
                     extra={"kind": resource.kind, "count": len(items)})
        return version


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


# --- The real source ------------------------------------------------------------------
class KubeSource:
    """Lists and watches kubevirt.io/v1 objects cluster-wide with the official client."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api_client = api_client
        self._api = client.CustomObjectsApi(api_client)
        self._watches: set[Any] = set()
        self._closed = False
        self._lock = threading.Lock()

    def list(self, resource: Resource) -> tuple[list[Obj], str]:
        result: Any = self._api.list_cluster_custom_object(
            KUBEVIRT_GROUP, API_VERSION, resource.plural,
            _request_timeout=LIST_TIMEOUT_SECONDS)
        return list(result.get("items") or []), resource_version(result) or ""

    def watch(self, resource: Resource, version: str) -> Iterator[Mapping[str, Any]]:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        stream = watch.Watch()
        if not self._register(stream):
            return
        try:
            # With timeout_seconds set, Watch raises 410 as ApiException instead of retrying.
            yield from stream.stream(
                self._api.list_cluster_custom_object, KUBEVIRT_GROUP, API_VERSION,
                resource.plural, resource_version=version, allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
                _request_timeout=(LIST_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS))
        except ApiException as err:
            if err.status == 410:
                raise Expired(str(err.reason)) from None
            raise
        finally:
            with self._lock:
                self._watches.discard(stream)

    def _register(self, stream: Any) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._watches.add(stream)
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            streams = list(self._watches)
        for stream in streams:
            stream.stop()  # shuts the socket down, unblocking the thread's read

    def release(self) -> None:
        """Close the HTTP connection pool once the threads are gone."""
        self._api_client.close()


# --- Which cluster --------------------------------------------------------------------
class ClusterConfigError(Exception):
    """No usable Kubernetes configuration; the message says what to pass instead."""


IN_CLUSTER = "in-cluster"
NO_CONFIG_MESSAGE = ("no Kubernetes configuration found (no --kubeconfig, no $KUBECONFIG, no "
                     "~/.kube/config, not running in a pod): pass --kubeconfig PATH, or "
                     "--offline to serve without cluster state")


def resolve_kube_config(flag: str | None, environ: Mapping[str, str], home: Path) -> str:
    """Which configuration to use, in kubectl's order: --kubeconfig, $KUBECONFIG,
    ~/.kube/config, then the pod's service account. Returns a path list or IN_CLUSTER."""
    if flag:
        return flag
    if environ.get("KUBECONFIG"):
        return environ["KUBECONFIG"]
    default = home / ".kube" / "config"
    if default.is_file():
        return str(default)
    if environ.get("KUBERNETES_SERVICE_HOST") and environ.get("KUBERNETES_SERVICE_PORT"):
        return IN_CLUSTER
    raise ClusterConfigError(NO_CONFIG_MESSAGE)


def load_api_client(config: str) -> Any:
    """A kubernetes ApiClient for what resolve_kube_config chose; ClusterConfigError if bad."""
    from kubernetes import client
    from kubernetes import config as kube_config

    try:
        if config == IN_CLUSTER:
            configuration = client.Configuration()
            kube_config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        return kube_config.new_client_from_config(config_file=config, persist_config=False)
    except (kube_config.ConfigException, OSError, ValueError) as err:
        raise ClusterConfigError(f"cannot use Kubernetes configuration {config}: "
                                 f"{_one_line(err)}") from None
