"""The cluster cache without a cluster: watch events into the store, and the list/watch loop
(relist on 410, back off on errors, ready after the first lists, clean stop) over a scripted
source. Against a real API server: the control-plane end-to-end tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from dlm_guard.domain import KIND_KUBEVIRT, KIND_VM, KIND_VMI, KIND_VMIM, Role
from dlm_guard.store import ObjectStore
from webhook.cache import (
    IN_CLUSTER,
    RESOURCES,
    ClusterCache,
    ClusterConfigError,
    Expired,
    Resource,
    WatchError,
    apply_event,
    backoff_delay,
    load_api_client,
    resolve_kube_config,
)

Obj = dict[str, Any]
VMIMS = Resource(KIND_VMIM, "virtualmachineinstancemigrations")


def vmim(name: str, version: str = "1", migration_id: str = "mid-1", **meta: Any) -> Obj:
    return {"kind": KIND_VMIM, "metadata": {"name": name, "namespace": "vms",
                                            "resourceVersion": version, **meta},
            "spec": {"vmiName": "vm", "receive": {"migrationID": migration_id}}}


def event(kind: str, obj: Any) -> Obj:
    return {"type": kind, "object": obj, "raw_object": obj}


# --- apply_event ----------------------------------------------------------------------
def test_added_and_modified_upsert_without_managed_fields() -> None:
    store = ObjectStore()
    big = vmim("a", "5", managedFields=[{"manager": "kubectl"}])
    assert apply_event(store, KIND_VMIM, event("ADDED", big)) == "5"
    stored = store.get(KIND_VMIM, "vms", "a")
    assert stored is not None and "managedFields" not in stored["metadata"]
    assert "managedFields" in big["metadata"]  # the event's own object is left alone
    assert apply_event(store, KIND_VMIM, event("MODIFIED", vmim("a", "6", "mid-2"))) == "6"
    assert store.vmims_with_migration_id(Role.TARGET, "mid-1") == []
    assert len(store.vmims_with_migration_id(Role.TARGET, "mid-2")) == 1


def test_deleted_removes_and_bookmark_only_moves_the_version() -> None:
    store = ObjectStore([vmim("a")])
    bookmark = {"kind": KIND_VMIM, "metadata": {"resourceVersion": "9"}}
    assert apply_event(store, KIND_VMIM, event("BOOKMARK", bookmark)) == "9"
    assert store.counts()[KIND_VMIM] == 1
    assert apply_event(store, KIND_VMIM, event("DELETED", vmim("a", "10"))) == "10"
    assert store.get(KIND_VMIM, "vms", "a") is None
    assert store.vmims_with_migration_id(Role.TARGET, "mid-1") == []


@pytest.mark.parametrize("bad", [event("ADDED", None), event("ADDED", "x"),
                                 event("SOMETHING", vmim("a")), {}])
def test_odd_events_change_nothing(bad: Obj) -> None:
    store = ObjectStore()
    assert apply_event(store, KIND_VMIM, bad) is None
    assert store.counts()[KIND_VMIM] == 0


def test_error_events() -> None:
    gone = {"kind": "Status", "code": 410, "message": "too old resource version"}
    with pytest.raises(Expired, match="too old"):
        apply_event(ObjectStore(), KIND_VMIM, event("ERROR", gone))
    with pytest.raises(WatchError, match="500"):
        apply_event(ObjectStore(), KIND_VMIM, event("ERROR", {"kind": "Status", "code": 500}))


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    assert [backoff_delay(n, rand=lambda: 1.0) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(2, rand=lambda: 0.0) == 1.0  # half of 2.0 at the low end
    assert backoff_delay(10_000, rand=lambda: 1.0) == 30.0


# --- The loop over a scripted source --------------------------------------------------
class ScriptedSource:
    """Per kind, scripted list answers and watch streams; an Exception entry is raised.

    When a kind's script runs out, watch blocks until close() like a quiet cluster.
    """

    def __init__(self, lists: Mapping[str, list[Any]], watches: Mapping[str, list[Any]]):
        self._lists = {k: list(v) for k, v in lists.items()}
        self._watches = {k: list(v) for k, v in watches.items()}
        self.calls: list[tuple[str, str, str | None]] = []
        self.closed, self.released = threading.Event(), False
        self._lock = threading.Lock()

    def list(self, resource: Resource) -> tuple[list[Mapping[str, Any]], str]:
        with self._lock:
            self.calls.append(("list", resource.kind, None))
            step = self._lists[resource.kind].pop(0)
        if isinstance(step, Exception):
            raise step
        items, version = step
        return items, version

    def watch(self, resource: Resource, version: str) -> Iterator[Mapping[str, Any]]:
        with self._lock:
            self.calls.append(("watch", resource.kind, version))
            script = self._watches.get(resource.kind, [])
            stream = script.pop(0) if script else None
        if stream is None:
            self.closed.wait(10)
            return
        for step in stream:
            if isinstance(step, Exception):
                raise step
            yield step

    def close(self) -> None:
        self.closed.set()

    def release(self) -> None:
        self.released = True


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def run_cache(source: ScriptedSource, resources: tuple[Resource, ...] = (VMIMS,),
              delays: list[int] | None = None) -> ClusterCache:
    def no_wait(failures: int) -> float:
        if delays is not None:
            delays.append(failures)
        return 0.0

    cache = ClusterCache(source, resources=resources, delay=no_wait)
    cache.start()
    return cache


def test_watch_events_follow_the_list_and_410_relists() -> None:
    source = ScriptedSource(
        lists={KIND_VMIM: [([vmim("a"), vmim("b")], "10"), ([vmim("c", "30")], "30")]},
        watches={KIND_VMIM: [
            [event("MODIFIED", vmim("a", "11", "mid-2")), event("DELETED", vmim("b", "12"))],
            [event("ADDED", vmim("d", "13")), Expired("gone")],
        ]})
    cache = run_cache(source)
    try:
        wait_until(lambda: ("watch", KIND_VMIM, "30") in source.calls)
        # The relist replaced everything the watches had built up.
        assert [o["metadata"]["name"] for o in cache.store.list(KIND_VMIM)] == ["c"]
        assert source.calls == [("list", KIND_VMIM, None), ("watch", KIND_VMIM, "10"),
                                ("watch", KIND_VMIM, "12"),  # a watch that ended: resume
                                ("list", KIND_VMIM, None), ("watch", KIND_VMIM, "30")]
    finally:
        assert cache.stop()


def test_errors_back_off_and_a_watch_error_resumes_without_relisting() -> None:
    source = ScriptedSource(
        lists={KIND_VMIM: [RuntimeError("connection refused"), ([vmim("a")], "10")]},
        watches={KIND_VMIM: [[event("ADDED", vmim("b", "11")), RuntimeError("reset")],
                             [ConnectionError("reset again")]]})
    delays: list[int] = []
    cache = run_cache(source, delays=delays)
    try:
        wait_until(lambda: source.calls.count(("watch", KIND_VMIM, "11")) == 2)
        assert delays == [0, 0, 1]  # list failed; watch failed; failed again: longer
        assert [c[0] for c in source.calls].count("list") == 2
        assert {o["metadata"]["name"] for o in cache.store.list(KIND_VMIM)} == {"a", "b"}
    finally:
        assert cache.stop()


def test_ready_only_after_the_first_list_of_every_kind() -> None:
    gate = threading.Event()

    class SlowVMs(ScriptedSource):
        def list(self, resource: Resource) -> tuple[list[Mapping[str, Any]], str]:
            if resource.kind == KIND_VM:
                gate.wait(5)
            return super().list(resource)

    source = SlowVMs(lists={r.kind: [([], "1")] for r in RESOURCES}, watches={})
    cache = run_cache(source, resources=RESOURCES)
    try:
        wait_until(lambda: sum(c[0] == "list" for c in source.calls) == 3)
        assert not cache.ready
        assert cache.not_ready_reason() == ("cluster cache waiting for the first list of "
                                            "VirtualMachine")
        gate.set()
        wait_until(lambda: cache.ready)
        assert cache.not_ready_reason() is None
        assert {KIND_VMI, KIND_VMIM, KIND_KUBEVIRT} <= {c[1] for c in source.calls}
    finally:
        assert cache.stop()


def test_stop_ends_every_thread_and_releases_the_source() -> None:
    source = ScriptedSource(lists={r.kind: [([], "1")] for r in RESOURCES}, watches={})
    cache = run_cache(source, resources=RESOURCES)
    wait_until(lambda: cache.ready)
    started = time.monotonic()
    assert cache.stop(timeout=5)
    assert time.monotonic() - started < 2
    assert source.released
    assert not [t for t in threading.enumerate() if t.name.startswith("watch-")]


# --- Which cluster --------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "environ", "home_config", "expected"), [
    ("/x/flag", {"KUBECONFIG": "/x/env"}, True, "/x/flag"),
    (None, {"KUBECONFIG": "/x/a:/x/b"}, True, "/x/a:/x/b"),
    (None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, True,
     "HOME"),
    (None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, False,
     IN_CLUSTER),
])
def test_kube_config_resolution_order(tmp_path: Path, flag: str | None,
                                      environ: dict[str, str], home_config: bool,
                                      expected: str) -> None:
    if home_config:
        (tmp_path / ".kube").mkdir()
        (tmp_path / ".kube" / "config").write_text("{}")
    if expected == "HOME":
        expected = str(tmp_path / ".kube" / "config")
    assert resolve_kube_config(flag, environ, tmp_path) == expected


def test_no_kube_config_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError) as caught:
        resolve_kube_config(None, {}, tmp_path)
    assert "--kubeconfig" in str(caught.value) and "--offline" in str(caught.value)


def test_unusable_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="cannot use"):
        load_api_client(str(tmp_path / "missing"))
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(ClusterConfigError):
        load_api_client(str(broken))


def test_kubeconfig_gives_a_client_for_its_server(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    api_client = load_api_client(str(path))
    try:
        assert api_client.configuration.host == "https://127.0.0.1:6443"
    finally:
        api_client.close()
