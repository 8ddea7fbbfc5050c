"""Admission modes side by side: VM create latency through one real kube-apiserver with
no admission, dlm-guard's webhooks (`webhook`), the CEL policies plus the VMIM-only webhooks
(`hybrid`), the CEL policies alone (`cel`), and a minimal Go allow-all webhook registered like
dlm-guard's (`go-floor`: the least any webhook costs; bench/gofloor, standard library only,
built with the machine's Go).

Phases rotate in rounds (each round every phase once, in a shifted order) so drift on a busy
machine hits them alike. Creates go through the Python kubernetes client one at a time; half
the VMs lack kubevirt.io/restore-run-strategy, so the mutation (webhook or
MutatingAdmissionPolicy) patches them, and all are valid, so validation allows them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from bench import webhooks
from bench.apiserver import NAMESPACE, RESTORE, _create, create_series, one_cluster, vm_body
from bench.kubeload import ensure_namespace
from bench.servers import Server, ServerSpec, tls_pair
from bench.stats import latency_summary
from controlplane import Cluster, kubectl
from webhook.cel.export import export
from webhook.policy import Policy

PHASES = ("none", "webhook", "hybrid", "cel", "go-floor")
GO_MODULE = Path(__file__).resolve().parent / "gofloor"


@dataclass(frozen=True)
class Settings:
    objects: int = 300  # VMs per phase, over all rounds
    warmup: int = 5  # per phase and round, not timed
    rounds: int = 10  # short rounds: load drift on a shared machine spreads over every phase


def build_go_floor(out: Path) -> Path:
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the go-floor phase needs Go on PATH (it builds bench/gofloor)")
    binary = out / "gofloor"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_MODULE, check=True,
                   env=None, capture_output=True)
    return binary


ADMISSION_STEP = "apiserver_admission_step_admission_duration_seconds"


STEPS = ("admit", "validate")  # the mutating and the validating step


def admission_seconds(cluster: Cluster) -> dict[str, float]:
    """Seconds spent so far in each admission step of creates, and how many creates, from
    kube-apiserver's own histogram: admission cost inside the API server, without the client
    and the network. It has no resource label (k8s.io/apiserver pkg/admission/metrics/
    metrics.go), so it is read around the VM creates only."""
    found = dict.fromkeys((*STEPS, "creates"), 0.0)
    for line in cluster.get("/metrics", timeout=10).decode().splitlines():
        if not line.startswith(ADMISSION_STEP) or 'operation="CREATE"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        for step in STEPS:
            if f'type="{step}"' in line and line.startswith(ADMISSION_STEP + "_sum{"):
                found[step] += value
        if line.startswith(ADMISSION_STEP + "_count{") and 'type="validate"' in line:
            found["creates"] += value
    return found


def hits(server: Server) -> int:
    with urllib.request.urlopen(server.base_url + "/hits", context=server.ssl_context(),
                                timeout=5) as response:
        return int(response.read())


class Phases:
    """Installs and removes each phase's admission set-up, and knows when it is in effect."""

    def __init__(self, cluster: Cluster, api: k8s.ApiClient, dlm: Server, floor: Server,
                 ca_pem: bytes) -> None:
        self.cluster, self.api, self.dlm, self.floor, self.ca_pem = (cluster, api, dlm, floor,
                                                                     ca_pem)
        self.custom = k8s.CustomObjectsApi(api)
        self.policies = {"apiVersion": "v1", "kind": "List", "items": export(Policy())}

    def _probe(self, shareable: bool = False) -> dict[str, Any] | None:
        body = vm_body("probe", annotated=False)
        if shareable:
            body["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["shareable"] = True
        try:
            return _create(self.custom, body, dry_run=True)
        except ApiException:
            return None  # denied, or a webhook registered but not reachable yet

    def mutated(self) -> bool:
        probe = self._probe()
        return probe is not None and RESTORE in (probe["metadata"].get("annotations") or {})

    def policies_enforce(self) -> bool:
        return self.mutated() and self._probe(shareable=True) is None

    def nothing_active(self) -> bool:
        before = hits(self.floor)
        inactive = not self.mutated() and self._probe(shareable=True) is not None
        return inactive and hits(self.floor) == before

    def install(self, phase: str) -> Callable[[], bool]:
        """Set `phase` up; returns the check that says it is in effect."""
        if phase in ("hybrid", "cel"):
            kubectl(self.cluster, "apply", "--server-side", "-f", "-",
                    input=json.dumps(self.policies))
        if phase == "webhook":
            webhooks.register(self.api, self.dlm.base_url, self.ca_pem)
            return self.mutated
        if phase == "hybrid":
            webhooks.register(self.api, self.dlm.base_url, self.ca_pem, resources=("vmim",))
        if phase == "go-floor":
            webhooks.register(self.api, self.floor.base_url, self.ca_pem)
            start = hits(self.floor)
            return lambda: self._probe() is not None and hits(self.floor) > start
        return self.policies_enforce if phase != "none" else self.nothing_active

    def remove(self, phase: str) -> None:
        if phase in ("webhook", "hybrid", "go-floor"):
            webhooks.unregister(self.api)
        if phase in ("hybrid", "cel"):
            kubectl(self.cluster, "delete", "--wait=true", "-f", "-",
                    input=json.dumps(self.policies))
        webhooks.wait_until(self.nothing_active, what=f"{phase} removed")


def run(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    with one_cluster("modes") as (cluster, api, workdir):
        return _measure(cluster, api, workdir, settings)


def _servers(cluster: Cluster, workdir: Path) -> tuple[Server, Server, bytes]:
    pair = tls_pair(workdir / "tls")
    dlm = Server(ServerSpec("dlm-guard-online", (
        sys.executable, "-m", "dlm_guard", "serve", "--host", "127.0.0.1", "--port", "{port}",
        "--tls-cert", str(pair.tls_cert), "--tls-key", str(pair.tls_key),
        "--kubeconfig", str(cluster.kubeconfig))), workdir, pair.ca_cert, core=None,
        ready_path="/readyz")
    floor = Server(ServerSpec("go-floor", (
        str(build_go_floor(workdir)), "-listen", "127.0.0.1:{port}",
        "-tls-cert", str(pair.tls_cert), "-tls-key", str(pair.tls_key))), workdir,
        pair.ca_cert, core=None, ready_path="/healthz")
    return dlm, floor, pair.ca_cert.read_bytes()


def _measure(cluster: Cluster, api: k8s.ApiClient, workdir: Path,
             settings: Settings) -> dict[str, Any]:
    ensure_namespace(api, NAMESPACE)
    dlm, floor, ca_pem = _servers(cluster, workdir)
    phases = Phases(cluster, api, dlm, floor, ca_pem)
    latencies: dict[str, list[float]] = {phase: [] for phase in PHASES}
    patched: dict[str, int] = dict.fromkeys(PHASES, 0)
    inside: dict[str, dict[str, float]] = {
        phase: dict.fromkeys((*STEPS, "creates"), 0.0) for phase in PHASES}
    per_round = max(1, settings.objects // settings.rounds)
    try:
        for round_index in range(settings.rounds):
            shift = round_index % len(PHASES)
            for phase in PHASES[shift:] + PHASES[:shift]:
                webhooks.wait_until(phases.install(phase), what=f"{phase} in effect")
                prefix = f"{phase}-{round_index}"
                create_series(phases.custom, f"{prefix}-warm", settings.warmup)
                before = admission_seconds(cluster)
                times, count = create_series(phases.custom, prefix, per_round)
                after = admission_seconds(cluster)
                for key in inside[phase]:
                    inside[phase][key] += after[key] - before[key]
                latencies[phase].extend(times)
                patched[phase] += count
                phases.remove(phase)
    finally:
        dlm.stop()
        floor.stop()
    result = report(cluster, settings, latencies, patched)
    result["admission_ms_per_create_inside_apiserver"] = {
        phase: {step: round(1000 * sums[step] / sums["creates"], 3) for step in STEPS}
        for phase, sums in inside.items() if sums["creates"]}
    return result


def report(cluster: Cluster, settings: Settings, latencies: dict[str, list[float]],
           patched: dict[str, int]) -> dict[str, Any]:
    summary = {phase: latency_summary(times) for phase, times in latencies.items()}

    def ratio(a: str, b: str, key: str) -> float:
        return round(summary[a][key] / summary[b][key], 3)

    expected = settings.rounds * (max(1, settings.objects // settings.rounds) // 2)
    for phase, count in patched.items():
        wanted = 0 if phase in ("none", "go-floor") else expected
        if count != wanted:
            raise AssertionError(f"{phase}: {count} VMs came back patched, expected {wanted}")
    return {
        "settings": settings.__dict__ | {"client": "kubernetes Python client, sequential"},
        "apiserver": cluster.version().get("gitVersion"),
        "phases": summary,
        "ratios": {f"{a}/{b} {key[:3]}": ratio(a, b, key)
                   for a, b in (("hybrid", "none"), ("cel", "none"), ("webhook", "none"),
                                ("go-floor", "none"), ("webhook", "go-floor"))
                   for key in ("p50_ms", "p99_ms")},
    }
