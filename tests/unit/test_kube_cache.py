"""The shared informer layer without a cluster (dlm_guard/kube): watch events into immutable
tables, the list/watch loop (pages, relist on 410, back off on errors, health, clean stop) over
a scripted source, the store's projections, and which cluster to use. Against a real API
server: tests/server/test_server_e2e.py and the reconciler's end-to-end tests."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from dlm_guard.domain import KIND_KUBEVIRT, KIND_VM, KIND_VMI, KIND_VMIM, Role
from dlm_guard.kube.api import Expired, Page, Selector
from dlm_guard.kube.backoff import backoff_delay
from dlm_guard.kube.cache import ClusterCache, Watched
from dlm_guard.kube.config import (
    IN_CLUSTER,
    ClusterConfigError,
    load_api_client,
    resolve_kube_config,
)
from dlm_guard.kube.informer import Informer
from dlm_guard.kube.metrics import WatchHealthCollector
from dlm_guard.kube.resources import KUBEVIRT, VM, VMI, VMIM, Resource
from dlm_guard.store import KindTable, ObjectStore
from tests.waiting import eventually
from webhook.cache import WEBHOOK_WATCHED, WebhookCluster

Obj = dict[str, Any]


def vmim(name: str, version: str = "1", migration_id: str = "mid-1", **meta: Any) -> Obj:
    return {"kind": KIND_VMIM, "metadata": {"name": name, "namespace": "vms",
                                            "resourceVersion": version, **meta},
            "spec": {"vmiName": "vm", "receive": {"migrationID": migration_id}}}


def event(kind: str, obj: Any) -> Obj:
    return {"type": kind, "object": obj}


def names(table: KindTable) -> set[str]:
    return {o["metadata"]["name"] for o in table.values()}


# --- Tables ---------------------------------------------------------------------------
def test_upsert_projects_and_never_changes_the_old_table() -> None:
    empty = KindTable(KIND_VMIM)
    big = vmim("a", "5", managedFields=[{"manager": "kubectl"}])
    one = empty.upserted(big)
    stored = one.get(("vms", "a"))
    assert stored is not None and "managedFields" not in stored["metadata"]
    assert "managedFields" in big["metadata"]  # the event's own object is left alone
    assert len(empty) == 0 and len(one) == 1
    two = one.upserted(vmim("a", "6", "mid-2"))
    assert one.with_migration_id((Role.TARGET, "mid-1")) and \
        not one.with_migration_id((Role.TARGET, "mid-2"))
    assert two.with_migration_id((Role.TARGET, "mid-1")) == []
    assert len(two.with_migration_id((Role.TARGET, "mid-2"))) == 1
    assert two.deleted(vmim("a")).by_migration_id == {}


def test_an_update_of_fields_nobody_reads_keeps_the_same_table() -> None:
    vmi: dict[str, Any] = {
        "kind": KIND_VMI, "metadata": {"name": "v", "namespace": "vms", "uid": "u"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready"}]}}
    table = KindTable(KIND_VMI).upserted(vmi)
    later = {**vmi, "metadata": {**vmi["metadata"], "resourceVersion": "9"},
             "status": {"phase": "Running", "conditions": [{"type": "Paused"}]}}
    assert table.upserted(later) is table


def test_readers_get_copies() -> None:
    store = ObjectStore([vmim("a")])
    got = store.get(KIND_VMIM, "vms", "a")
    assert got is not None
    got["spec"]["vmiName"] = "changed"
    assert store.get(KIND_VMIM, "vms", "a") == ObjectStore([vmim("a")]).get(KIND_VMIM, "vms", "a")


def test_projection_keeps_what_the_vmi_rules_read_and_drops_the_rest() -> None:
    vmi = {"kind": KIND_VMI, "metadata": {
        "name": "v", "namespace": "vms", "uid": "u", "labels": {"app": "x"},
        "annotations": {"kubevirt.io/create-migration-target": "true", "other": "y"},
        "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                             "name": "v", "uid": "w", "controller": True,
                             "blockOwnerDeletion": True}]},
        "spec": {"domain": {"devices": {"disks": [{"name": "d", "shareable": True,
                                                   "lun": {"reservation": True}}]},
                            "firmware": {"bootloader": {"efi": {"persistent": True}}},
                            "resources": {"requests": {"memory": "1Gi"}}},
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "p",
                                                                     "readOnly": True}},
                             {"name": "ci", "cloudInitNoCloud": {"userData": "x" * 5000}}]},
        "status": {"phase": "Running", "interfaces": [{"ipAddress": "10.0.0.1"}],
                   "migrationState": {"failed": True, "sourceNode": "n1"}}}
    kept = ObjectStore([vmi]).vmi("vms", "v")
    assert kept == {
        "metadata": {"name": "v", "namespace": "vms", "uid": "u",
                     "annotations": {"kubevirt.io/create-migration-target": "true"},
                     "ownerReferences": [{"apiVersion": "kubevirt.io/v1",
                                          "kind": "VirtualMachine", "name": "v", "uid": "w",
                                          "controller": True}]},
        "spec": {"domain": {"devices": {"disks": [{"name": "d", "shareable": True,
                                                   "lun": {}}]},
                            "firmware": {"bootloader": {"efi": {"persistent": True}}}},
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "p"}},
                             {"name": "ci", "cloudInitNoCloud": {}}]},
        "status": {"phase": "Running", "migrationState": {"failed": True}}}


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    assert [backoff_delay(n, rand=lambda: 1.0) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(2, rand=lambda: 0.0) == 1.0  # half of 2.0 at the low end
    assert backoff_delay(10_000, rand=lambda: 1.0) == 30.0


# --- The loop over a scripted source --------------------------------------------------
class ScriptedStream:
    def __init__(self, steps: list[Any] | None, closed: threading.Event) -> None:
        self._steps, self._closed, self._mine = steps, closed, threading.Event()

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        if self._steps is None:  # a quiet cluster: block until closed
            self._mine.wait(10)
            return
        for step in self._steps:
            if isinstance(step, Exception):
                raise step
            yield step

    def close(self) -> None:
        self._mine.set()

    def release(self) -> None:
        self._mine.set()


class ScriptedSource:
    """Per kind, scripted list pages and watch streams; an Exception entry is raised. When a
    kind's watch script runs out, the watch blocks like a quiet cluster until closed."""

    def __init__(self, lists: Mapping[str, list[Any]], watches: Mapping[str, list[Any]]):
        self._lists = {k: list(v) for k, v in lists.items()}
        self._watches = {k: list(v) for k, v in watches.items()}
        self.calls: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def list_page(self, resource: Resource, selector: Selector, token: str | None) -> Page:
        with self._lock:
            self.calls.append(("list", resource.kind, token))
            step = self._lists[resource.kind].pop(0)
        if isinstance(step, Exception):
            raise step
        items, version, *rest = step
        return Page(items, version, rest[0] if rest else None)

    def watch(self, resource: Resource, selector: Selector, version: str) -> ScriptedStream:
        with self._lock:
            self.calls.append(("watch", resource.kind, version))
            script = self._watches.get(resource.kind, [])
            steps = script.pop(0) if script else None
        if isinstance(steps, Exception):
            raise steps
        return ScriptedStream(steps, self._closed)


def no_wait(failures: int) -> float:
    return 0.0


def informer(source: ScriptedSource, resource: Resource = VMIM, **kw: Any) -> Informer:
    found = Informer(source, resource, delay=kw.pop("delay", no_wait), **kw)
    found.start()
    return found


def stopped(found: Informer) -> bool:
    found.stop()
    return found.join(5)


def test_pages_then_watch_events_and_410_relists() -> None:
    source = ScriptedSource(
        lists={KIND_VMIM: [([vmim("a")], "10", "token-1"), ([vmim("b")], "10"),
                           ([vmim("c", "30")], "30")]},
        watches={KIND_VMIM: [
            [event("MODIFIED", vmim("a", "11", "mid-2")), event("DELETED", vmim("b", "12"))],
            [event("ADDED", vmim("d", "13")), event("BOOKMARK", {"metadata": {
                "resourceVersion": "14"}}), Expired("gone")],
        ]})
    changes: list[int] = []
    found = informer(source, on_change=lambda: changes.append(1))
    try:
        eventually(lambda: ("watch", KIND_VMIM, "30") in source.calls)
        # The relist replaced everything the watches had built up.
        assert names(found.table) == {"c"}
        assert source.calls == [("list", KIND_VMIM, None), ("list", KIND_VMIM, "token-1"),
                                ("watch", KIND_VMIM, "10"),
                                ("watch", KIND_VMIM, "12"),  # a watch that ended: resume
                                ("list", KIND_VMIM, None), ("watch", KIND_VMIM, "30")]
        assert len(changes) >= 4 and found.health.healthy
    finally:
        assert stopped(found)


def test_errors_back_off_and_a_watch_error_resumes_without_relisting() -> None:
    source = ScriptedSource(
        lists={KIND_VMIM: [RuntimeError("connection refused"), ([vmim("a")], "10")]},
        watches={KIND_VMIM: [[event("ADDED", vmim("b", "11")), RuntimeError("reset")],
                             ConnectionError("refused"),
                             [event("ERROR", {"kind": "Status", "code": 500})]]})
    delays: list[int] = []

    def record(failures: int) -> float:
        delays.append(failures)
        return 0.0

    found = informer(source, delay=record)
    try:
        eventually(lambda: source.calls.count(("watch", KIND_VMIM, "11")) == 3)
        # list failed; then the watch failed; failed again: longer; reconnected, failed.
        assert delays == [0, 0, 1, 0]
        assert [c[0] for c in source.calls].count("list") == 2
        assert names(found.table) == {"a", "b"}
    finally:
        assert stopped(found)


def test_health_record_and_one_error_line_after_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    source = ScriptedSource(lists={KIND_VMIM: [([], "1")]},
                            watches={KIND_VMIM: [ConnectionError(f"refused {i}")
                                                 for i in range(40)]})
    calls, hold = [0], threading.Event()

    def step(failures: int) -> float:
        now[0] += 10  # every retry 10 s later
        calls[0] += 1
        if calls[0] >= 8:
            hold.wait(5)  # keep the failure streak where it is while the test looks
        return 0.0

    caplog.set_level(logging.INFO, "dlm_guard.kube.informer")
    found = informer(source, delay=step, clock=lambda: now[0])
    try:
        eventually(lambda: calls[0] >= 8)
        health = found.health
        assert health.synced and not health.healthy and health.failures == 8
        assert health.failing_since == 1000.0 and "refused" in health.error
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "failing for" in errors[0].getMessage()
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    finally:
        hold.set()
        assert stopped(found)


def test_cache_ready_only_after_the_first_list_of_every_kind_and_never_stale_on_readyz(
        ) -> None:
    gate = threading.Event()

    class SlowVMIs(ScriptedSource):
        def list_page(self, resource: Resource, selector: Selector,
                      token: str | None) -> Page:
            if resource.kind == KIND_VMI:
                gate.wait(5)
            return super().list_page(resource, selector, token)

    source = SlowVMIs(lists={w.resource.kind: [([], "1")] for w in WEBHOOK_WATCHED},
                      watches={})
    cache = WebhookCluster(ClusterCache(source, WEBHOOK_WATCHED, delay=no_wait))
    cache.start()
    try:
        eventually(lambda: all(cache.cache.informers[k].synced.is_set()
                               for k in (KIND_VMIM, KIND_VM, KIND_KUBEVIRT)))
        assert cache.not_ready_reason() == ("cluster cache waiting for the first list of "
                                            "VirtualMachineInstance")
        gate.set()
        eventually(lambda: cache.not_ready_reason() is None)
        assert {c[1] for c in source.calls} == {KIND_VMI, KIND_VMIM, KIND_VM, KIND_KUBEVIRT}
    finally:
        assert cache.stop(timeout=5)


def test_a_view_turns_stale_after_stale_after_and_metrics_say_so() -> None:
    now = [0.0]
    source = ScriptedSource(lists={KIND_VMIM: [([vmim("a")], "1")]},
                            watches={KIND_VMIM: [ConnectionError("refused")] * 1000})
    gate = threading.Semaphore(0)

    def slow(failures: int) -> float:
        gate.release()
        return 0.01

    cache = ClusterCache(source, [Watched(VMIM)], delay=slow, clock=lambda: now[0])
    cluster = WebhookCluster(cache, stale_after=60)
    cache.start()
    try:
        assert gate.acquire(timeout=5)
        assert cluster.view().stale is None  # failing, but only since a moment
        now[0] = 61.0
        stale = cluster.view()
        assert stale.stale is not None and "VirtualMachineInstanceMigration" in stale.stale
        assert stale.get(KIND_VMIM, "vms", "a") is not None  # the data is still there
        assert cluster.not_ready_reason() is None  # readiness does not follow staleness
        text = "\n".join(str(m) for m in WatchHealthCollector(
            lambda: {"": cache}, clock=lambda: now[0]).collect())
        assert "dlm_guard_watch_healthy" in text and "value=0.0" in text
    finally:
        cache.stop()
        assert cache.join(5)


def test_stop_ends_every_thread_even_when_asked_before_start_finished() -> None:
    for _ in range(20):
        source = ScriptedSource(lists={w.resource.kind: [([], "1")] for w in WEBHOOK_WATCHED},
                                watches={})
        cache = ClusterCache(source, WEBHOOK_WATCHED, delay=no_wait)
        cache.start()
        cache.stop()
        started = time.monotonic()
        assert cache.join(5)
        assert time.monotonic() - started < 2
    assert not [t for t in threading.enumerate() if t.name.startswith("watch-")]


def test_webhook_watches_only_kinds_its_rules_read() -> None:
    # VMs: legacy-running reads the owner VM of a sendTo VMIM's VMI.
    assert {w.resource for w in WEBHOOK_WATCHED} == {VMI, VMIM, VM, KUBEVIRT}


def test_store_blobs_are_compact_json() -> None:
    table = KindTable.build(KIND_VMIM, [vmim("a")])
    assert isinstance(table.blobs[("vms", "a")], bytes)
    assert orjson.loads(table.blobs[("vms", "a")])["metadata"]["name"] == "a"


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


def test_the_last_object_with_a_key_wins_in_the_index_too() -> None:
    table = KindTable.build(KIND_VMIM, [vmim("a", migration_id="first"),
                                        vmim("a", migration_id="second")])
    assert table.with_migration_id((Role.TARGET, "first")) == []
    assert len(table.with_migration_id((Role.TARGET, "second"))) == 1
