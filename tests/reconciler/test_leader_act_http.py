"""Leader election decisions, act's guards and Event shape, metrics, the HTTP endpoints, and
how the service loop coalesces changes into passes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from dlm_guard.domain import KIND_VM, KIND_VMI, KIND_VMIM
from reconciler import service
from reconciler.act import Actor, event_body
from reconciler.clusters import Cluster, ClusterConfig
from reconciler.gc import Deletion, GcReason
from reconciler.http import make_app, start_server
from reconciler.leader import LeaseConfig, Step, decide_lease, lease_body, micro_time
from reconciler.metrics import ReconcilerMetrics
from reconciler.settings import Settings
from reconciler.trust import CaWrite
from tests.waiting import eventually_async

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


# --- leader election ---------------------------------------------------------------------------
def lease(holder: str | None, renew: str = "2026-06-01T11:59:59.000000Z",
          duration: int = 15) -> dict[str, Any]:
    return {"metadata": {"name": "l", "namespace": "ns", "resourceVersion": "9"},
            "spec": {"holderIdentity": holder, "renewTime": renew,
                     "leaseDurationSeconds": duration, "leaseTransitions": 2}}


def test_lease_decisions():
    assert decide_lease(None, "me", now=100, observed_at=100) is Step.CREATE
    assert decide_lease(lease("me"), "me", now=100, observed_at=0) is Step.RENEW
    assert decide_lease(lease(""), "me", now=100, observed_at=100) is Step.TAKE
    assert decide_lease(lease(None), "me", now=100, observed_at=100) is Step.TAKE
    # Held by another: wait until we have seen the same record for a whole duration.
    assert decide_lease(lease("other"), "me", now=114, observed_at=100) is Step.WAIT
    assert decide_lease(lease("other"), "me", now=115, observed_at=100) is Step.TAKE


def test_lease_body_is_a_conditional_write_with_micro_times():
    config = LeaseConfig("l", "ns", "me")
    body = lease_body(config, lease("other"), Step.TAKE, NOW)
    assert body["metadata"]["resourceVersion"] == "9"
    assert body["spec"]["holderIdentity"] == "me"
    assert body["spec"]["leaseTransitions"] == 3
    assert body["spec"]["renewTime"] == body["spec"]["acquireTime"] == \
        "2026-06-01T12:00:00.000000Z"  # exactly six digits even at .0 (RFC3339Micro)
    renewed = lease_body(config, lease("me"), Step.RENEW, NOW)
    assert renewed["spec"]["leaseTransitions"] == 2 and "acquireTime" not in renewed["spec"]
    assert "resourceVersion" not in lease_body(config, None, Step.CREATE, NOW)["metadata"]
    assert micro_time(NOW.replace(microsecond=5)) == "2026-06-01T12:00:00.000005Z"


# --- act guards: no API call may happen in these cases -----------------------------------------
class ExplodingApi:
    """An ApiClient stand-in that fails the test on any use."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"API used: {name}")


def cluster(name: str, managed: bool) -> Cluster:
    return Cluster(ClusterConfig(name, "kubevirt", managed, "test"), ExplodingApi())  # type: ignore[arg-type]


WRITE = CaWrite(cluster="a", namespace="kubevirt", bundle="", fingerprints=("f",), peers=("b",),
                resource_version="1")


def actor(**kwargs: Any) -> tuple[Actor, ReconcilerMetrics]:
    metrics = ReconcilerMetrics()
    options: dict[str, Any] = {"dry_run": False, "timeout": 1.0, "metrics": metrics} | kwargs
    return Actor({"a": cluster("a", True), "ro": cluster("ro", False)}, **options), metrics


def deletion(kind: str = KIND_VMIM, cluster_name: str = "a", uid: str | None = "u") -> Deletion:
    return Deletion(cluster_name, kind, "ns", "n", uid, GcReason.FAILED_TARGET)


def test_losing_the_lease_stops_writes_and_deletions_before_any_api_call():
    act, metrics = actor(may_act=lambda: False)
    assert act.write_ca(WRITE).outcome == "not-leader"
    assert act.delete(deletion(), None).outcome == "not-leader"
    assert metrics.gc_deletions.labels("failed-target")._value.get() == 0


def test_dry_run_decides_but_never_calls_the_api():
    act, metrics = actor(dry_run=True)
    assert act.write_ca(WRITE).outcome == "dry-run"
    assert act.delete(deletion(), None).outcome == "dry-run"
    assert act.delete(deletion(KIND_VM), None).outcome == "dry-run"
    assert metrics.registry.get_sample_value("dlm_guard_ca_sync_total",
                                             {"cluster": "a", "result": "dry-run"}) == 1


def test_act_refuses_what_gc_must_never_delete_and_read_only_clusters():
    act, metrics = actor()
    for bad in (deletion(KIND_VMI), deletion("ConfigMap"), deletion(cluster_name="ro"),
                deletion(cluster_name="unknown"), deletion(uid=None)):
        result = act.delete(bad, None)
        assert not result.ok and result.outcome == "error", bad
    assert metrics.gc_errors._value.get() == 5
    read_only = CaWrite(cluster="ro", namespace="kubevirt", bundle="", fingerprints=(),
                        peers=(), resource_version=None)
    assert act.write_ca(read_only).outcome == "error"
    assert metrics.ca_sync_errors._value.get() == 1


def test_event_body_is_a_legacy_core_v1_event_on_the_object():
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "kubevirt-external-ca", "namespace": "kubevirt", "uid": "u",
                        "resourceVersion": "5"}}
    body = event_body(obj, "CATrustSynced", "m" * 2000, NOW.replace(microsecond=7), "pod-1")
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "ConfigMap",
                                      "name": "kubevirt-external-ca", "namespace": "kubevirt",
                                      "uid": "u", "resourceVersion": "5"}
    assert body["metadata"] == {"generateName": "kubevirt-external-ca.",
                                "namespace": "kubevirt"}
    assert body["firstTimestamp"] == NOW and "eventTime" not in body
    assert len(body["message"]) == 1024


# --- metrics and HTTP ----------------------------------------------------------------------------
def test_gauges_drop_label_sets_that_are_gone():
    metrics = ReconcilerMetrics()
    both = {("a", "b"): NOW, ("a", "c"): NOW + timedelta(days=1)}
    metrics.set_peer_expiry(both)
    metrics.set_peer_latest_expiry(both)
    metrics.set_clusters_up({"a": True, "b": False})
    metrics.set_peer_expiry({("a", "b"): NOW})
    metrics.set_peer_latest_expiry({("a", "b"): NOW + timedelta(days=2)})
    metrics.set_clusters_up({"a": True})
    assert metrics.registry.get_sample_value(
        "dlm_guard_peer_ca_expiry_timestamp_seconds", {"cluster": "a", "peer": "b"}
    ) == NOW.timestamp()
    assert metrics.registry.get_sample_value(
        "dlm_guard_peer_ca_latest_expiry_timestamp_seconds", {"cluster": "a", "peer": "b"}
    ) == (NOW + timedelta(days=2)).timestamp()
    text = metrics.exposition().decode()
    assert 'peer="c"' not in text
    assert 'dlm_guard_cluster_up{cluster="a"} 1.0' in text and 'cluster="b"' not in text


async def test_healthz_and_metrics_endpoints():
    metrics = ReconcilerMetrics()
    metrics.gc_deletions.labels("orphan").inc()
    healthy = [True]
    runner, port = await start_server(make_app(metrics, lambda: healthy[0]), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert 'dlm_guard_gc_deletions_total{reason="orphan"} 1.0' in \
                    await response.text()
            healthy[0] = False
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 503
    finally:
        await runner.cleanup()


# --- the service loop: bursts of changes coalesce into one pass, resync -------------------------
class NoClusters:
    """A Registry stand-in with no clusters: no watches, no API calls."""

    def __init__(self) -> None:
        self.clusters: list[Cluster] = []


@contextlib.asynccontextmanager
async def service_recording(resync: timedelta) -> AsyncIterator[tuple[service.Service,
                                                                       list[str]]]:
    """The service loop with its passes replaced by recording that one ran."""
    settings = Settings(metrics_port=0, resync_period=resync)
    running = service.Service(settings, NoClusters(), ReconcilerMetrics())  # type: ignore[arg-type]
    passes: list[str] = []
    running.reconciler.run_pass = lambda: passes.append("pass")  # type: ignore[assignment,method-assign,return-value]
    task = asyncio.create_task(running.run(host="127.0.0.1"))
    try:
        yield running, passes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_burst_of_changes_runs_one_more_pass(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(service, "DEBOUNCE_SECONDS", 0.05)
    async with service_recording(timedelta(hours=1)) as (running, passes):
        await eventually_async(lambda: passes == ["pass"])  # the first pass
        for _ in range(5):
            running.poke()  # from watch threads: thread-safe, coalesced
        await eventually_async(lambda: len(passes) == 2)
        running.poke()
        await eventually_async(lambda: len(passes) == 3)


async def test_resync_runs_passes_without_changes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(service, "DEBOUNCE_SECONDS", 0.01)
    async with service_recording(timedelta(seconds=0.05)) as (_, passes):
        await eventually_async(lambda: len(passes) >= 3)
