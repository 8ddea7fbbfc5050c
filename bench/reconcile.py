"""Reconciler at scale on harness clusters: full `--once` passes, CA rotation, failed clean-up.

The model (what runs, honestly):
- two managed clusters `east` and `west` (etcd + kube-apiserver each) holding the VMs and VMIMs
  across `namespaces` namespaces, each with its own `kubevirt-ca`;
- `peers` read-only peer clusters. Ten more control planes would not fit on a 2-core machine,
  so the peers share a third API server: peer i is `--cluster peer-i=<that kubeconfig>,
  namespace=peer-i`, i.e. its own KubeVirt namespace with its own `kubevirt-ca` (two CAs). Each
  peer is still a separate cluster entry to the reconciler (own client, own list calls, own
  watches); the peers hold no VMs or VMIMs, as only their CA bundles are asked for.

Measured (the reconciler runs as the real `dlm-guard reconcile` command, in a subprocess):
1. `--once` passes at a small stage (`first_stage` of the objects) and at full size: wall time
   of the command, its peak RSS and CPU (wait4), and the API requests each API server counted
   (apiserver_request_total before/after), which must not grow with the objects.
2. The service with watches (`--gc-grace 0`, resync 1h): time from a peer CA rotation (a new
   certificate in one peer's `kubevirt-ca`) to both managed inboxes holding it, and from a
   target VMIM turning Failed to its deletion.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from bench import kubeload
from bench.procstat import memory_kib
from bench.servers import free_port, subprocess_env
from bench.stats import median
from certs.bundle import to_pem
from certs.generate import make_ca
from controlplane import Cluster, install_crds_on, start_clusters
from dlm_guard.domain import EXTERNAL_CA_CONFIGMAP, KUBEVIRT_CA_CONFIGMAP
from dlm_guard.kube.api import PAGE_SIZE

MANAGED = ("east", "west")
KUBEVIRT_NS = "kubevirt"
PASS_TARGET_S, RSS_TARGET_MIB, ROTATION_TARGET_S = 10.0, 200.0, 2.0
SERVICE_QUIET_SECONDS = 3.0


@dataclass(frozen=True)
class Settings:
    vmims: int = 5000
    vms: int = 2000
    namespaces: int = 50
    peers: int = 10
    first_stage: float = 0.1  # fraction of the objects for the small stage
    threads: int = 16
    rotations: int = 3
    gc_trials: int = 3
    # The proposal measured alongside: the service with a shorter watch-event debounce.
    variant_debounce: float | None = 0.2
    timeout: float = 120.0  # any single wait


# --- CAs --------------------------------------------------------------------------------------
def ca_pem(name: str, now: datetime) -> str:
    return to_pem([make_ca(now - timedelta(hours=1), now + timedelta(days=7),
                           common_name=f"kubevirt.io@{name}").cert])


def install_cas(apis: dict[str, k8s.ApiClient], peers: int, now: datetime) -> dict[str, str]:
    """kubevirt-ca of each managed cluster and each peer (two CAs each: current + previous)."""
    bundles: dict[str, str] = {}
    for name in MANAGED:
        kubeload.ensure_namespace(apis[name], KUBEVIRT_NS)
        bundles[name] = ca_pem(f"{name}-1", now) + ca_pem(f"{name}-0", now)
        kubeload.put_configmap(apis[name], KUBEVIRT_NS, KUBEVIRT_CA_CONFIGMAP,
                               {"ca-bundle": bundles[name]})
    for peer in peer_names(peers):
        kubeload.ensure_namespace(apis["peers"], peer)
        bundles[peer] = ca_pem(f"{peer}-1", now) + ca_pem(f"{peer}-0", now)
        kubeload.put_configmap(apis["peers"], peer, KUBEVIRT_CA_CONFIGMAP,
                               {"ca-bundle": bundles[peer]})
    return bundles


def peer_names(count: int) -> list[str]:
    return [f"peer-{i + 1:02d}" for i in range(count)]


# --- the reconciler command --------------------------------------------------------------------
def reconcile_argv(clusters: dict[str, Cluster], peers: int, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "dlm_guard", "reconcile", "--log-format", "json"]
    for name in MANAGED:
        argv += ["--cluster", f"{name}={clusters[name].kubeconfig}", "--manage", name]
    for peer in peer_names(peers):
        argv += ["--cluster", f"{peer}={clusters['peers'].kubeconfig},namespace={peer}"]
    return [*argv, *extra]


def pass_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for text in log.read_text(errors="replace").splitlines():
        if text.startswith("{") and '"reconcile pass done"' in text:
            entry = json.loads(text)
            lines.append({k: entry.get(k) for k in ("clusters", "ca_writes", "deletions",
                                                   "errors")})
    return lines


def once(clusters: dict[str, Cluster], peers: int, workdir: Path, label: str,
         timeout: float) -> dict[str, Any]:
    """One `dlm-guard reconcile --once`: wall time, rusage, requests per API server."""
    log = workdir / f"once-{label}.log"
    before = {name: kubeload.request_counts(c) for name, c in clusters.items()}
    argv = reconcile_argv(clusters, peers, "--once", "--metrics-port", "0")
    started = time.perf_counter()
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=subprocess_env())
    code, usage, peak_mib = _wait4(process, timeout)
    wall = time.perf_counter() - started
    requests = {name: kubeload.difference(kubeload.request_counts(c), before[name])
                for name, c in clusters.items()}
    return {"seconds": round(wall, 3), "exit_code": code,
            "peak_rss_mib": peak_mib,
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "pass": (pass_lines(log) or [{}])[-1],
            "requests": requests,
            "requests_total": sum(sum(r.values()) for r in requests.values())}


def _wait4(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any, float]:
    """Wait for the process; (exit code, rusage, peak RSS in MiB).

    The peak comes from /proc/PID/status VmHWM sampled while it runs: wait4's ru_maxrss
    would start from this (much bigger) parent's RSS, which Linux carries over fork + exec.
    """
    deadline, peak_kib = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        peak_kib = max(peak_kib, memory_kib_or_zero(process.pid))
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage, round(peak_kib / 1024, 1)
        time.sleep(0.01)
    process.kill()
    os.wait4(process.pid, 0)
    raise TimeoutError(f"reconcile --once took longer than {timeout}s")


def memory_kib_or_zero(pid: int) -> int:
    try:
        return memory_kib(pid).get("VmHWM", 0)
    except (OSError, ValueError):  # exited, or a zombie without memory figures
        return 0


def startup_seconds() -> float:
    """What Python start-up and imports cost the command (`reconcile --help`)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dlm_guard", "reconcile", "--help"], check=True,
                   capture_output=True, env=subprocess_env())
    return round(time.perf_counter() - started, 3)


# --- the service: rotation and clean-up latency ----------------------------------------------
class ServiceRun:
    """`dlm-guard reconcile` (watches, resync 1h, --gc-grace 0) as a subprocess."""

    def __init__(self, clusters: dict[str, Cluster], peers: int, workdir: Path,
                 debounce: float | None = None) -> None:
        self.log = workdir / f"service-{debounce}.log"
        argv = reconcile_argv(clusters, peers, "--gc-grace", "0", "--resync-period", "1h",
                              "--metrics-port", str(free_port()))
        if debounce is not None:  # bench.variants patches reconciler.loop.DEBOUNCE_SECONDS
            argv = [sys.executable, "-m", "bench.variants", "--debounce", str(debounce),
                    "--", *argv[3:]]
        with open(self.log, "wb") as sink:
            self.process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=subprocess_env(),
                                            start_new_session=True)

    def passes(self) -> int:
        return len(pass_lines(self.log))

    def wait_quiet(self, timeout: float, quiet: float = SERVICE_QUIET_SECONDS) -> int:
        """Until at least one pass finished and none finished for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"reconciler exited: {self.log.read_text()[-2000:]}")
            count = self.passes()
            if count != last:
                last, since = count, time.monotonic()
            elif count > 0 and time.monotonic() - since >= quiet:
                return count
            time.sleep(0.1)
        raise TimeoutError("the reconciler did not settle")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def poll_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Seconds until check() is true (polled every `interval`), TimeoutError after `timeout`."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(interval)
    return time.perf_counter() - started


def rotate(apis: dict[str, k8s.ApiClient], service: ServiceRun, peer: str, round_: int,
           bundles: dict[str, str], timeout: float) -> dict[str, Any]:
    new = ca_pem(f"{peer}-rotated-{round_}", datetime.now(UTC))
    bundles[peer] = new + bundles[peer]
    passes = service.passes()

    def arrived(cluster: str) -> Callable[[], bool]:
        def check() -> bool:
            data = kubeload.configmap_data(apis[cluster], KUBEVIRT_NS, EXTERNAL_CA_CONFIGMAP)
            return new.strip() in (data or {}).get("ca-bundle", "")
        return check

    started = time.perf_counter()
    kubeload.put_configmap(apis["peers"], peer, KUBEVIRT_CA_CONFIGMAP,
                           {"ca-bundle": bundles[peer]})
    first = poll_until(arrived(MANAGED[0]), timeout)
    both = max(first, poll_until(arrived(MANAGED[1]), timeout))
    del started
    return {"peer": peer, "seconds_to_first_inbox": round(first, 3),
            "seconds_to_both_inboxes": round(both, 3),
            "passes_during": service.passes() - passes}


def gc_trial(apis: dict[str, k8s.ApiClient], service: ServiceRun, index: int,
             timeout: float) -> dict[str, Any]:
    """A fresh pair (target on east, source on west), then the target VMIM fails."""
    namespace, vm, mid = "ns-00", f"gc-{index}", f"gc-{index}-mid"
    now = datetime.now(UTC)
    target = kubeload.vmim_object(f"{vm}-in", namespace, vm, mid, "target")
    source = kubeload.vmim_object(f"{vm}-out", namespace, vm, mid, "source")
    waiting = kubeload.vmim_status("WaitingForSync", now)
    kubeload.create_all(apis, [
        kubeload.Planned("east", kubeload.VMS, kubeload.vm_object(vm, namespace,
                                                                  "WaitAsReceiver")),
        kubeload.Planned("east", kubeload.VMIMS, target, waiting),
        kubeload.Planned("west", kubeload.VMIMS, source, waiting)], threads=3)
    service.wait_quiet(timeout)
    custom = k8s.CustomObjectsApi(apis["east"])
    failed = {"phase": "Failed", "phaseTransitionTimestamps": [
        *waiting["phaseTransitionTimestamps"],
        {"phase": "Failed", "phaseTransitionTimestamp": kubeload.stamp(datetime.now(UTC))}]}

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(kubeload.GROUP, kubeload.VERSION, namespace,
                                                kubeload.VMIMS, f"{vm}-in",
                                                _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return True
            raise
        return False

    passes = service.passes()
    started = time.perf_counter()
    custom.patch_namespaced_custom_object_status(
        kubeload.GROUP, kubeload.VERSION, namespace, kubeload.VMIMS, f"{vm}-in",
        {"status": failed}, _content_type="application/merge-patch+json")
    seconds = poll_until(gone, timeout)
    del started
    return {"seconds_to_deleted": round(seconds, 3), "passes_during": service.passes() - passes}


# --- the whole benchmark ---------------------------------------------------------------------
def run(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="dlm-guard-bench-rec-") as tmp, \
            start_clusters(names=[*MANAGED, "peers"], workdir=Path(tmp) / "clusters") as started:
        install_crds_on(started)
        clusters = {c.name: c for c in started}
        apis = {name: kubeload.api_client(c, settings.threads * 2)
                for name, c in clusters.items()}
        try:
            return _measure(clusters, apis, Path(tmp), settings)
        finally:
            for api in apis.values():
                api.close()


def _measure(clusters: dict[str, Cluster], apis: dict[str, k8s.ApiClient], workdir: Path,
             settings: Settings) -> dict[str, Any]:
    now = datetime.now(UTC)
    bundles = install_cas(apis, settings.peers, now)
    for name in MANAGED:
        for index in range(settings.namespaces):
            kubeload.ensure_namespace(apis[name], f"ns-{index:02d}")
    plan = kubeload.dataset(MANAGED, settings.vms, settings.vmims, settings.namespaces, now)
    small = _stage_subset(plan, settings.first_stage)
    in_small = {id(p) for p in small}
    stages: list[dict[str, Any]] = []
    created: list[dict[str, Any]] = []
    for label, subset in (("small", small), ("full", [p for p in plan if id(p) not in in_small])):
        started = time.perf_counter()
        count = kubeload.create_all(apis, subset, settings.threads)
        created.append({"objects": count, "seconds": round(time.perf_counter() - started, 2)})
        present = plan if label == "full" else small
        totals = {**_counts(present), "list_pages": list_pages(present)}
        first = once(clusters, settings.peers, workdir, f"{label}-1", settings.timeout)
        second = once(clusters, settings.peers, workdir, f"{label}-2", settings.timeout)
        stages.append({"stage": label, **totals, "first_pass": first, "second_pass": second})
    service = _service_figures(clusters, apis, workdir, settings, bundles)
    if settings.variant_debounce is not None:
        service["variant"] = _service_figures(clusters, apis, workdir, settings, bundles,
                                              settings.variant_debounce, offset=100)
    full = stages[-1]
    worst = max(full["first_pass"]["seconds"], full["second_pass"]["seconds"])
    rss = max(full["first_pass"]["peak_rss_mib"], full["second_pass"]["peak_rss_mib"])
    rotation = service.get("rotation_median_seconds_to_both", float("inf"))
    return {
        "settings": settings.__dict__,
        "model": (f"2 managed clusters (east, west: etcd + kube-apiserver each) + {settings.peers}"
                  " read-only peers as --cluster entries on a third kube-apiserver, one KubeVirt"
                  " namespace (own kubevirt-ca) per peer"),
        "creation": created, "python_startup_seconds": startup_seconds(),
        "stages": stages, "service": service,
        "requests_small_vs_full": {s["stage"]: s["second_pass"]["requests_total"]
                                   for s in stages},
        "requests_growth_beyond_paging": (
            stages[-1]["second_pass"]["requests_total"] - stages[0]["second_pass"]["requests_total"]
            - (stages[-1]["list_pages"] - stages[0]["list_pages"])),
        "targets": {
            "full_pass_seconds": {"target": PASS_TARGET_S, "measured": worst,
                                  "met": worst < PASS_TARGET_S},
            "peak_rss_mib": {"target": RSS_TARGET_MIB, "measured": rss,
                             "met": rss < RSS_TARGET_MIB},
            "ca_rotation_seconds": {"target": ROTATION_TARGET_S, "measured": rotation,
                                    "met": rotation < ROTATION_TARGET_S},
        },
    }


def _stage_subset(plan: Sequence[kubeload.Planned], fraction: float) -> list[kubeload.Planned]:
    """Every VM and VMIM whose logical VM index falls in the first `fraction`: whole pairs."""
    vms = [p for p in plan if p.plural == kubeload.VMS]
    logical = max(1, len(vms) // 2)
    keep = max(1, int(logical * fraction))

    def index(item: kubeload.Planned) -> int:
        name = item.body["spec"].get("vmiName") or item.body["metadata"]["name"]
        return int(name.removeprefix("vm-"))
    return [p for p in plan if index(p) < keep]


def list_pages(items: Sequence[kubeload.Planned]) -> int:
    """How many list pages a pass needs for these objects (PAGE_SIZE per page, one at least
    per cluster and kind): the only way request counts may grow with the objects."""
    sizes: dict[tuple[str, str], int] = {(c, p): 0 for c in MANAGED
                                         for p in (kubeload.VMS, kubeload.VMIMS)}
    for item in items:
        sizes[(item.cluster, item.plural)] += 1
    return sum(max(1, math.ceil(n / PAGE_SIZE)) for n in sizes.values())


def _counts(items: Sequence[kubeload.Planned]) -> dict[str, int]:
    return {"vms": sum(1 for i in items if i.plural == kubeload.VMS),
            "vmims": sum(1 for i in items if i.plural == kubeload.VMIMS)}


def _service_figures(clusters: dict[str, Cluster], apis: dict[str, k8s.ApiClient],
                     workdir: Path, settings: Settings, bundles: dict[str, str],
                     debounce: float | None = None, offset: int = 0) -> dict[str, Any]:
    service = ServiceRun(clusters, settings.peers, workdir, debounce)
    try:
        service.wait_quiet(settings.timeout)
        peers = peer_names(settings.peers)
        rotations = [rotate(apis, service, peers[i % len(peers)], offset + i, bundles,
                            settings.timeout) for i in range(settings.rotations)]
        service.wait_quiet(settings.timeout)
        trials = [gc_trial(apis, service, offset + i, settings.timeout)
                  for i in range(settings.gc_trials)]
        rss = service.peak_rss_mib()
    finally:
        service.stop()
    return {
        "debounce_seconds": debounce if debounce is not None else "default",
        "rotations": rotations,
        "rotation_median_seconds_to_both": round(median(
            [r["seconds_to_both_inboxes"] for r in rotations]), 3),
        "failed_target_cleanup": trials,
        "cleanup_median_seconds": round(median([t["seconds_to_deleted"] for t in trials]), 3),
        "service_peak_rss_mib": rss,
    }
