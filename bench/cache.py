"""The watch cache at scale: the webhook and the reconciler over one big harness cluster.

One cluster ("big") gets `vms` VMs and `vmis` VMIs of realistic size (several disks, cloud-init
user data, labels, annotations, a Running status: ~3.5 KB of JSON each) and `vmims` finished
VMIMs; a second, empty cluster ("small") is the reconciler's peer. Measured:

- webhook (`dlm-guard serve --kubeconfig`): seconds from start to /readyz, steady RSS, and the
  RSS per 1,000 VM+VMI pairs above the same server on the empty cluster; admission latency
  (open loop, decentralized source VMIMs whose rules look the VMI and the VMIMs up) without and
  with `status_rate` VMI status updates per second streaming through the watch.
- reconciler (`dlm-guard reconcile`, resync every `resync` seconds so passes keep running):
  pass seconds from its log (a pass reads the cache), RSS, and the API requests it makes, from
  the API server's own counter, while idle for `window` seconds, once with only the small
  cluster's objects and once with the big one: list and watch only, flat in the object count.

Objects are created through a thread pool (`threads` calls at a time), never one kubectl each.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client as k8s

from bench import kubeload
from bench.loadgen import open_loop, run_sync, session
from bench.mix import Item
from bench.procstat import memory_kib
from bench.servers import Server, ServerSpec, free_port, subprocess_env, tls_pair
from controlplane import Cluster, install_crds_on, start_clusters

GROUP, VERSION = "kubevirt.io", "v1"
VMIS = "virtualmachineinstances"
READY_TARGET_S, PER_1000_TARGET_MIB = 5.0, 2.0
PASS_TARGET_S, RECONCILER_RSS_TARGET_MIB = 0.5, 150.0


@dataclass(frozen=True)
class Settings:
    vms: int = 10_000
    vmis: int = 10_000
    vmims: int = 5_000
    namespaces: int = 20
    threads: int = 32
    rate: float = 100.0  # admission requests per second (open loop)
    latency_seconds: float = 10.0
    status_rate: float = 200.0  # VMI status updates per second while measuring
    resync: float = 2.0  # reconciler resync period: a pass every so often
    window: float = 30.0  # seconds of reconciler idling counted
    settle: float = 5.0  # seconds after ready before RSS is read


# --- realistic objects (pure) -------------------------------------------------------------
USER_DATA = "#cloud-config\n" + "".join(
    f"write_files:\n- path: /etc/app/conf-{i}.yaml\n  content: |\n    key: value-{i}\n"
    for i in range(12))


def domain(index: int) -> dict[str, Any]:
    disks = [{"name": name, "disk": {"bus": "virtio"}, "bootOrder": order}
             for order, name in enumerate(("rootdisk", "datadisk", "logdisk"), start=1)]
    disks.append({"name": "cloudinitdisk", "disk": {"bus": "virtio"}})
    return {"cpu": {"cores": 2, "sockets": 1, "threads": 1},
            "memory": {"guest": "4Gi"},
            "devices": {"disks": disks,
                        "interfaces": [{"name": "default", "masquerade": {}}],
                        "rng": {}},
            "firmware": {"uuid": f"5d307ca9-b3ef-428c-8861-{index:012d}"},
            "machine": {"type": "q35"},
            "resources": {"requests": {"memory": "4Gi", "cpu": "2"}}}


def volumes(name: str) -> list[dict[str, Any]]:
    return [{"name": "rootdisk", "dataVolume": {"name": f"{name}-root"}},
            {"name": "datadisk", "persistentVolumeClaim": {"claimName": f"{name}-data"}},
            {"name": "logdisk", "persistentVolumeClaim": {"claimName": f"{name}-log"}},
            {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": USER_DATA}}]


def metadata(name: str, namespace: str, index: int) -> dict[str, Any]:
    return {"name": name, "namespace": namespace,
            "labels": {"app": f"app-{index % 50}", "tier": "backend", "team": f"t{index % 7}",
                       "kubevirt.io/domain": name, "vm.kubevirt.io/name": name},
            "annotations": {"description": f"bench workload {index} " + "x" * 600,
                            "kubevirt.io/latest-observed-api-version": "v1"}}


def vm_body(index: int, namespace: str) -> dict[str, Any]:
    name = f"vm-{index}"
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
            "metadata": metadata(name, namespace, index),
            "spec": {"runStrategy": "Always", "template": {
                "metadata": {"labels": {"kubevirt.io/domain": name}},
                "spec": {"domain": domain(index), "volumes": volumes(name),
                         "networks": [{"name": "default", "pod": {}}]}}}}


def vmi_body(index: int, namespace: str) -> dict[str, Any]:
    name = f"vm-{index}"
    meta = metadata(name, namespace, index)
    meta["ownerReferences"] = [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                                "name": name, "uid": f"00000000-0000-0000-0000-{index:012d}",
                                "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineInstance",
            "metadata": meta,
            "spec": {"domain": domain(index), "volumes": volumes(name),
                     "networks": [{"name": "default", "pod": {}}]}}


def vmi_status(index: int, tick: int = 0) -> dict[str, Any]:
    """What virt-handler keeps writing: conditions, interfaces, guest info (ours ignore it)."""
    return {"phase": "Running", "nodeName": f"node-{index % 20}",
            "conditions": [{"type": "Ready", "status": "True",
                            "lastProbeTime": None, "lastTransitionTime": "2026-12-01T10:00:00Z"},
                           {"type": "AgentConnected", "status": "True",
                            "lastProbeTime": f"2026-12-04T10:{tick // 60 % 60:02d}:"
                                             f"{tick % 60:02d}Z"}],
            "interfaces": [{"name": "default", "ipAddress": f"10.244.{index // 250}.{index % 250}",
                            "mac": "02:00:00:00:00:01", "interfaceName": "eth0"}],
            "guestOSInfo": {"id": "fedora", "name": "Fedora Linux", "version": "41"},
            "migrationMethod": "LiveMigration", "qosClass": "Burstable",
            "volumeStatus": [{"name": v, "target": f"vd{c}"}
                             for v, c in (("rootdisk", "a"), ("datadisk", "b"),
                                          ("logdisk", "c"), ("cloudinitdisk", "d"))]}


def vmim_body(index: int, namespace: str) -> dict[str, Any]:
    mid = f"bench-{index}"
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": f"mig-{index}", "namespace": namespace,
                         "labels": {"dlm-guard.io/migration-id": mid, "dlm-guard.io/role":
                                    "source"}},
            "spec": {"vmiName": f"vm-{index}",
                     "sendTo": {"migrationID": mid, "connectURL": "10.0.0.1:9185"}}}


def namespace_of(index: int, settings: Settings) -> str:
    return f"ns-{index % settings.namespaces:02d}"


# --- loading the cluster ------------------------------------------------------------------
def _create(api: k8s.ApiClient, plural: str, body: dict[str, Any],
            status: dict[str, Any] | None) -> None:
    custom = k8s.CustomObjectsApi(api)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body,
                                           _preload_content=False)
    if status is not None:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, {"status": status},
            _content_type="application/merge-patch+json", _preload_content=False)


def load(api: k8s.ApiClient, settings: Settings) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    jobs: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    jobs += [("virtualmachines", vm_body(i, namespace_of(i, settings)), None)
             for i in range(settings.vms)]
    # The VMI CRD has no status subresource (virt-handler writes the whole object; see the
    # upstream CRD): the status goes in with the create.
    jobs += [(VMIS, {**vmi_body(i, namespace_of(i, settings)), "status": vmi_status(i)}, None)
             for i in range(settings.vmis)]
    jobs += [("virtualmachineinstancemigrations", vmim_body(i, namespace_of(i, settings)),
              {"phase": "Succeeded", "phaseTransitionTimestamps": [
                  {"phase": "Succeeded", "phaseTransitionTimestamp": "2026-12-01T10:00:00Z"}]})
             for i in range(settings.vmims)]
    with ThreadPoolExecutor(max_workers=settings.threads) as pool:
        for future in [pool.submit(_create, api, *job) for job in jobs]:
            future.result()
    sizes = {"vm": len(orjson.dumps(vm_body(0, "ns-00"))),
             "vmi": len(orjson.dumps({**vmi_body(0, "ns-00"), "status": vmi_status(0)}))}
    return {"objects": len(jobs), "seconds": round(time.perf_counter() - started, 1),
            "json_bytes_each": sizes}


class StatusStream:
    """VMI status updates at `rate` per second from a thread pool, until stopped. At most
    MAX_BACKLOG updates wait at once (the rest are skipped and counted): when the API server
    cannot keep up, stopping the stream must stop its traffic too."""

    MAX_BACKLOG = 32

    def __init__(self, api: k8s.ApiClient, settings: Settings) -> None:
        self._api, self._settings = api, settings
        self._stop = threading.Event()
        self.sent = self.errors = self.skipped = 0
        self._pending = threading.Semaphore(self.MAX_BACKLOG)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusStream:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.seconds = time.perf_counter() - self._started

    def _run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        custom = k8s.CustomObjectsApi(self._api)
        interval, tick, start = 1.0 / self._settings.status_rate, 0, time.perf_counter()
        rng = random.Random(7)
        with ThreadPoolExecutor(max_workers=16) as pool:
            while not self._stop.is_set():
                delay = start + tick * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                index = rng.randrange(self._settings.vmis)
                tick += 1
                if not self._pending.acquire(blocking=False):
                    self.skipped += 1
                    continue
                pool.submit(self._one, custom, index, tick)

    def _one(self, custom: k8s.CustomObjectsApi, index: int, tick: int) -> None:
        try:
            custom.patch_namespaced_custom_object(  # no status subresource on VMIs
                GROUP, VERSION, namespace_of(index, self._settings), VMIS, f"vm-{index}",
                {"status": vmi_status(index, tick)},
                _content_type="application/merge-patch+json", _preload_content=False)
            self.sent += 1
        except Exception:
            self.errors += 1
        finally:
            self._pending.release()


# --- the webhook ----------------------------------------------------------------------------
@contextlib.contextmanager
def webhook(cluster: Cluster, workdir: Path, name: str) -> Iterator[tuple[Server, float]]:
    pair = tls_pair(workdir / f"tls-{name}")
    spec = ServerSpec(name, (sys.executable, "-m", "dlm_guard", "serve", "--host", "127.0.0.1",
                             "--port", "{port}", "--tls-cert", str(pair.tls_cert),
                             "--tls-key", str(pair.tls_key),
                             "--kubeconfig", str(cluster.kubeconfig)))
    started = time.perf_counter()
    # A generous limit: on a busy machine the first list of 10,000 VMIs takes a while, and
    # this is what is measured, not a pass/fail.
    server = Server(spec, workdir, pair.ca_cert, None, ready_path="/readyz", ready_timeout=300)
    ready = time.perf_counter() - started
    try:
        yield server, ready
    finally:
        server.stop()


def reviews(settings: Settings, count: int = 200) -> list[Item]:
    """Decentralized source VMIMs naming existing VMIs: every cluster rule looks up."""
    rng = random.Random(11)
    items = []
    for n in range(count):
        index = rng.randrange(settings.vmis)
        namespace = namespace_of(index, settings)
        obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineInstanceMigration",
               "metadata": {"name": f"probe-{n}", "namespace": namespace},
               "spec": {"vmiName": f"vm-{index}",
                        "sendTo": {"migrationID": f"probe-{n}", "connectURL": "10.0.0.2:9185"}}}
        request = {"uid": f"00000000-0000-0000-0000-{n:012d}",
                   "kind": {"group": GROUP, "version": VERSION,
                            "kind": "VirtualMachineInstanceMigration"},
                   "resource": {"group": GROUP, "version": VERSION,
                                "resource": "virtualmachineinstancemigrations"},
                   "namespace": namespace, "operation": "CREATE", "object": obj,
                   "userInfo": {"username": "bench"}}
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": request}
        items.append(Item("source-vmim", "/validate", request, orjson.dumps(review)))
    return items


def latency(server: Server, ca: Path, items: list[Item], settings: Settings) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with session(str(ca), 64) as client:
            await open_loop(client, server.base_url, items, settings.rate, 2.0, record=False)
            result = await open_loop(client, server.base_url, items, settings.rate,
                                     settings.latency_seconds)
        return result.summary()
    summary: dict[str, Any] = run_sync(go)
    return summary


def measure_webhook(cluster: Cluster, workdir: Path, settings: Settings,
                    label: str) -> dict[str, Any]:
    with webhook(cluster, workdir, f"webhook-{label}") as (server, ready):
        time.sleep(settings.settle)  # steady state: the first lists' garbage is gone
        figures: dict[str, Any] = {"ready_seconds": round(ready, 2), **server.memory()}
        if label == "loaded":
            items = reviews(settings)
            ca = workdir / f"tls-webhook-{label}" / "ca.crt"
            figures["latency_quiet"] = latency(server, ca, items, settings)
            api = kubeload.api_client(cluster, 32)
            try:
                with StatusStream(api, settings) as stream:
                    figures["latency_with_status_stream"] = latency(server, ca, items,
                                                                    settings)
                figures["status_updates"] = {
                    "sent": stream.sent, "errors": stream.errors, "skipped": stream.skipped,
                    "target_rate": settings.status_rate,
                    "achieved_rate": round(stream.sent / stream.seconds, 1)}
            finally:
                api.close()
            figures["rss_after_stream_mib"] = server.memory()["rss_mib"]
        figures["log_warnings"] = warnings(server.log)
        return figures


# --- the reconciler ---------------------------------------------------------------------------
def measure_reconciler(clusters: dict[str, Cluster], workdir: Path, settings: Settings,
                       label: str) -> dict[str, Any]:
    log = workdir / f"reconciler-{label}.log"
    argv = [sys.executable, "-m", "dlm_guard", "reconcile", "--log-format", "json",
            "--metrics-port", str(free_port()), "--resync-period", f"{settings.resync:g}s"]
    for name, cluster in clusters.items():
        argv += ["--cluster", f"{name}={cluster.kubeconfig}", "--manage", name]
    at_start = {n: kubeload.request_counts(c) for n, c in clusters.items()}
    started = time.perf_counter()
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=subprocess_env())
    try:
        _wait_listed(log, 5 * len(clusters), 300.0, process)  # 5 informers per cluster
        first_pass_after = time.perf_counter() - started
        first = _wait_passes(log, len(_passes(log)) + 1, 300.0, process)
        before = {n: kubeload.request_counts(c) for n, c in clusters.items()}
        time.sleep(settings.window)  # idle: only resync passes run, from the cache
        after = {n: kubeload.request_counts(c) for n, c in clusters.items()}
        rss = memory_kib(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    passes = _passes(log)[first:]
    requests = {n: kubeload.difference(after[n], before[n]) for n in clusters}
    total = sum(sum(r.values()) for r in requests.values())
    seconds = [p["seconds"] for p in passes if isinstance(p.get("seconds"), float | int)]
    startup = {n: kubeload.difference(before[n], at_start[n]) for n in clusters}
    return {"log_warnings": warnings(log),
            "synced_after_start_seconds": round(first_pass_after, 2),
            "startup_requests": startup,
            "startup_requests_total": sum(sum(r.values()) for r in startup.values()),
            "passes_in_window": len(passes),
            "pass_seconds_median": round(statistics.median(seconds), 4) if seconds else None,
            "pass_seconds_max": round(max(seconds), 4) if seconds else None,
            "requests_in_window": requests,
            "requests_per_hour": round(total * 3600 / settings.window, 1),
            "rss_mib": round(rss.get("VmRSS", 0) / 1024, 1),
            "peak_rss_mib": round(rss.get("VmHWM", 0) / 1024, 1)}


def warnings(log: Path, keep: int = 20) -> list[str]:
    """The first warning and error lines of a server's log (why a watch relisted)."""
    found = [line[:300] for line in log.read_text(errors="replace").splitlines()
             if any(level in line for level in ("WARNING", "ERROR", '"warning"', '"error"',
                                                "relisting"))]
    return found[:keep]


def _wait_listed(log: Path, informers: int, timeout: float,
                 process: subprocess.Popen[bytes]) -> None:
    """Until every informer logged its first list: the idle window starts after that."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count('"msg": "listed ') < informers:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"reconciler caches not synced: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def _passes(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(errors="replace").splitlines()
            if line.startswith("{") and '"reconcile pass done"' in line]


def _wait_passes(log: Path, count: int, timeout: float, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + timeout
    while len(_passes(log)) < count:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"reconciler made no pass: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return len(_passes(log))


# --- the whole run ----------------------------------------------------------------------------
def run(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="dlm-guard-bench-cache-") as tmp, \
            start_clusters(names=["big", "small"], workdir=Path(tmp) / "clusters") as started:
        install_crds_on(started)
        clusters = {c.name: c for c in started}
        workdir = Path(tmp)
        api = kubeload.api_client(clusters["big"], settings.threads * 2)
        try:
            for index in range(settings.namespaces):
                kubeload.ensure_namespace(api, f"ns-{index:02d}")
            for cluster in started:
                small_api = kubeload.api_client(cluster, 4)
                kubeload.ensure_namespace(small_api, "kubevirt")
                small_api.close()
            empty = measure_webhook(clusters["big"], workdir, settings, "empty")
            reconciler_empty = measure_reconciler(clusters, workdir, settings, "empty")
            loading = load(api, settings)
            loaded = measure_webhook(clusters["big"], workdir, settings, "loaded")
            reconciler_loaded = measure_reconciler(clusters, workdir, settings, "loaded")
        finally:
            api.close()
    return summarize(settings, loading, empty, loaded, reconciler_empty, reconciler_loaded)


def summarize(settings: Settings, loading: dict[str, Any], empty: dict[str, Any],
              loaded: dict[str, Any], rec_empty: dict[str, Any],
              rec_loaded: dict[str, Any]) -> dict[str, Any]:
    pairs = min(settings.vms, settings.vmis) / 1000
    per_1000 = round((loaded["rss_mib"] - empty["rss_mib"]) / pairs, 2) if pairs else math.nan
    quiet = loaded["latency_quiet"]["latency"]
    streaming = loaded["latency_with_status_stream"]["latency"]
    pass_max = rec_loaded["pass_seconds_max"] or math.inf
    return {
        "settings": asdict(settings), "loading": loading,
        "webhook": {"empty": empty, "loaded": loaded, "rss_mib_per_1000_pairs": per_1000},
        "reconciler": {"empty": rec_empty, "loaded": rec_loaded},
        "targets": {
            "webhook_ready_seconds": {"target": READY_TARGET_S,
                                      "measured": loaded["ready_seconds"],
                                      "met": loaded["ready_seconds"] < READY_TARGET_S},
            "webhook_rss_mib_per_1000_pairs": {"target": PER_1000_TARGET_MIB,
                                               "measured": per_1000,
                                               "met": per_1000 < PER_1000_TARGET_MIB},
            "admission_p99_ms_quiet_vs_streaming": {
                "measured": [quiet.get("p99_ms"), streaming.get("p99_ms")]},
            "reconciler_pass_seconds": {"target": PASS_TARGET_S, "measured": pass_max,
                                        "met": pass_max < PASS_TARGET_S},
            "reconciler_rss_mib": {"target": RECONCILER_RSS_TARGET_MIB,
                                   "measured": rec_loaded["peak_rss_mib"],
                                   "met": rec_loaded["peak_rss_mib"]
                                   < RECONCILER_RSS_TARGET_MIB},
            "reconciler_requests_per_hour_empty_vs_loaded": {
                "measured": [rec_empty["requests_per_hour"], rec_loaded["requests_per_hour"]],
                "met": rec_loaded["requests_per_hour"] <= rec_empty["requests_per_hour"]},
        },
    }

