"""`make image-test`: the built image, run for real against harness clusters.

Run by tools/image/smoke.sh (which configures podman and removes every container it labelled,
even if this process is killed). Each check prints PASS or FAIL; the last line is
`N passed, M failed` and the exit status is 1 when anything failed.

What runs: two harness clusters (real etcd + kube-apiserver on 127.0.0.1, see controlplane/);
the image's `serve` on the host network with the chart's securityContext turned into engine
flags (read-only root filesystem without any tmpfs, all capabilities dropped, no new
privileges, the image's own non-root user), certificates mounted read-only in the layout of a
Kubernetes Secret volume (`..data` symlink swapped atomically, as the kubelet does), the
kubeconfig and the policy mounted read-only, registered as the cluster's admission webhooks;
then the same image's `reconcile --once` between both clusters.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml
from cryptography import x509

from certs.bundle import parse_bundle
from certs.generate import cert_pem, generate_pair, make_ca
from controlplane import Cluster, install_crds_on, kubectl, start_clusters
from controlplane.binaries import cache_dir, read_versions
from controlplane.ports import free_ports
from controlplane.webhooks import (
    mutation_answered,
    register_webhooks,
    validation_answered,
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "dlm-guard"
# Where the chart mounts them (charts/dlm-guard/templates/*-deployment.yaml).
TLS_DIR, POLICY_DIR, KUBE_DIR = "/etc/dlm-guard/tls", "/etc/dlm-guard/policy", "/etc/dlm-guard/kube"
KUBEVIRT_NAMESPACE = "kubevirt"
RESTORE_ANNOTATION = "kubevirt.io/restore-run-strategy"
DENIED = 'admission webhook "validate.dlm-guard.io" denied the request'
READY_TIMEOUT_SECONDS = 60.0
SWAP_TIMEOUT_SECONDS = 30.0
RECONCILE_TIMEOUT_SECONDS = 120.0
STOP_GRACE_SECONDS = 25
ENGINE_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.2
REQUESTS_AFTER_SWAP = 20
# A PEM private key block with a body. ELF files are not searched: libgnutls embeds the
# well-known keys of its power-on self-tests (gnutls_pk_self_test), public by design.
PRIVATE_KEY_PEM = re.compile(
    rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n:,\-\s]{64,}?-----END"
)
SCAN_LIMIT_BYTES = 8 * 1024 * 1024


class SmokeFailure(AssertionError):
    """A check found the image behaving differently from what the chart relies on."""


# ----------------------------------------------------------------------------- the chart


class ChartSecurityError(ValueError):
    """A securityContext field the smoke test cannot reproduce with a container engine."""


@dataclass(frozen=True)
class ChartSecurity:
    """What the chart's pod and container securityContexts ask of the image."""

    uid: int | None
    gid: int | None
    fs_group: int | None
    read_only_root: bool
    drop_all_capabilities: bool
    no_new_privileges: bool
    # Writable scratch folders the chart mounts (emptyDir): mount path -> tmpfs size.
    scratch: tuple[tuple[str, str], ...] = ()


_POD_KEYS = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
_CONTAINER_KEYS = {
    "runAsNonRoot", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "privileged",
    "capabilities", "seccompProfile",
}  # fmt: skip


def chart_security(pod: Mapping[str, Any], container: Mapping[str, Any]) -> ChartSecurity:
    """Translate a rendered pod + container securityContext; unknown fields are an error,
    so a chart change the smoke test does not reproduce breaks the test instead of passing."""
    unknown = sorted((set(pod) - _POD_KEYS) | (set(container) - _CONTAINER_KEYS))
    if unknown:
        raise ChartSecurityError(f"securityContext fields not reproduced: {', '.join(unknown)}")
    for where, context in (("pod", pod), ("container", container)):
        if context.get("runAsNonRoot") is not True:
            raise ChartSecurityError(f"{where} securityContext lacks runAsNonRoot: true")
        seccomp = context.get("seccompProfile", {"type": "RuntimeDefault"})
        if seccomp != {"type": "RuntimeDefault"}:  # the engines' default profile
            raise ChartSecurityError(f"{where} seccompProfile {seccomp} not reproduced")
    if container.get("privileged", False):
        raise ChartSecurityError("privileged containers are not reproduced")
    capabilities = container.get("capabilities", {})
    if set(capabilities) - {"drop"} or capabilities.get("add"):
        raise ChartSecurityError(f"capabilities {capabilities} not reproduced")
    return ChartSecurity(
        uid=pod.get("runAsUser"),
        gid=pod.get("runAsGroup"),
        fs_group=pod.get("fsGroup"),
        read_only_root=container.get("readOnlyRootFilesystem") is True,
        drop_all_capabilities=capabilities.get("drop") == ["ALL"],
        no_new_privileges=container.get("allowPrivilegeEscalation") is False,
    )


def find_helm() -> Path:
    """$HELM, else the helm tools/testbin/build.sh pinned and cached."""
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    pins = read_versions()
    return cache_dir() / "testbin" / f"helm-{pins['HELM_VERSION']}" / "helm"


def render_chart(helm: Path, values: Sequence[Path] = ()) -> list[dict[str, Any]]:
    kube_version = read_versions().get("K8S_VERSION", "v1.36.3").lstrip("v")
    files = [arg for path in values for arg in ("--values", str(path))]
    result = subprocess.run(
        [str(helm), "template", "guard", str(CHART), "--kube-version", kube_version, *files],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


_SIZE_UNITS = {"Ki": "k", "Mi": "m", "Gi": "g"}


def scratch_mounts(pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[
        tuple[str, str], ...]:
    """The container's emptyDir mounts as (path, tmpfs size): the only writable places."""
    empty_dirs = {v["name"]: v["emptyDir"] or {} for v in pod.get("volumes", []) if "emptyDir" in v}
    mounts: list[tuple[str, str]] = []
    for mount in container.get("volumeMounts", []):
        if mount["name"] not in empty_dirs:
            continue
        if empty_dirs[mount["name"]].get("medium"):
            raise ChartSecurityError(f"emptyDir medium of {mount['name']} not reproduced")
        limit = str(empty_dirs[mount["name"]].get("sizeLimit", "64Mi"))
        number, unit = limit[:-2], limit[-2:]
        if unit not in _SIZE_UNITS or not number.isdigit():
            raise ChartSecurityError(f"emptyDir sizeLimit {limit!r} not reproduced")
        mounts.append((mount["mountPath"], number + _SIZE_UNITS[unit]))
    return tuple(sorted(mounts))


def deployment_security(docs: Sequence[Mapping[str, Any]]) -> dict[str, ChartSecurity]:
    """Deployment name -> the security of its one container, scratch folders included."""
    found: dict[str, ChartSecurity] = {}
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        security = chart_security(
            pod.get("securityContext", {}), container.get("securityContext", {})
        )
        found[doc["metadata"]["name"]] = replace(
            security, scratch=scratch_mounts(pod, container)
        )
    return found


# ----------------------------------------------------------------------------- the engine


@dataclass
class Engine:
    """podman or docker, with every container it starts labelled for the shell's trap."""

    command: str
    label: str
    names: list[str] = field(default_factory=list)

    def run(
        self, *args: str, timeout: float = ENGINE_TIMEOUT_SECONDS, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.command, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise SmokeFailure(
                f"{self.command} {' '.join(args[:2])} exited {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    def security_flags(self, security: ChartSecurity) -> list[str]:
        """The chart's securityContext as run flags. No --user: the image's USER must be it."""
        flags: list[str] = []
        if security.read_only_root:
            # podman would otherwise mount writable tmpfs on /tmp, /var/tmp and /run: only
            # the chart's own emptyDir folders may be writable.
            flags += ["--read-only"]
            if self.command == "podman":
                flags += ["--read-only-tmpfs=false"]
        for path, size in security.scratch:
            flags += [f"--tmpfs={path}:rw,nosuid,nodev,size={size},mode=1777"]
        if security.drop_all_capabilities:
            flags += ["--cap-drop=ALL"]
        if security.no_new_privileges:
            flags += ["--security-opt=no-new-privileges"]
        return flags

    def container_args(
        self, name: str, security: ChartSecurity, mounts: Mapping[Path, str]
    ) -> list[str]:
        self.names.append(name)
        volumes = [f"--volume={host}:{inside}:ro" for host, inside in mounts.items()]
        return [
            f"--name={name}", f"--label={self.label}", "--network=host",
            *self.security_flags(security), *volumes,
        ]  # fmt: skip

    def remove_all(self) -> None:
        if self.names:
            self.run("rm", "--force", *self.names, check=False)
            self.names.clear()

    def logs(self, name: str) -> str:
        result = self.run("logs", "--tail", "30", name, check=False)
        return (result.stdout + result.stderr).strip()


# ----------------------------------------------------------------------------- files


def _share(path: Path, gid: int | None, mode: int) -> None:
    """Readable by the container's user the way a Secret volume with fsGroup is."""
    if gid is not None and os.geteuid() == 0:
        os.chown(path, -1, gid)
    else:
        mode |= (mode & 0o070) >> 3  # no ownership change possible: readable by others too
    path.chmod(mode)


def write_secret_volume(folder: Path, files: Mapping[str, bytes], gid: int | None) -> None:
    """The kubelet's Secret volume layout and update (kubernetes/kubernetes
    pkg/volume/util/atomic_writer.go, AtomicWriter.Write): files in a `..<timestamp>` folder
    (mode 0755), `..data` a symlink to it, each visible name a symlink through `..data`; an
    update writes a new timestamped folder, symlinks `..data_tmp` to it, renames that over
    `..data` (the atomic step) and removes the previous folder."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    stamp = folder / datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    stamp.mkdir()
    for name, content in files.items():
        (stamp / name).write_bytes(content)
        _share(stamp / name, gid, 0o440)
    stamp.chmod(0o755)
    old = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    (folder / "..data_tmp").symlink_to(stamp.name)
    os.replace(folder / "..data_tmp", folder / "..data")
    for name in files:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    if old is not None:
        for child in (folder / old).iterdir():
            child.unlink()
        (folder / old).rmdir()


def write_shared(folder: Path, files: Mapping[str, bytes], gid: int | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    for name, content in files.items():
        (folder / name).write_bytes(content)
        _share(folder / name, gid, 0o440)


def issue_serving_pair(pki: Path) -> dict[str, bytes]:
    """A leaf for 127.0.0.1 from the CA in `pki` (made on first use): the Secret's files."""
    for leaf in ("tls.crt", "tls.key"):
        (pki / leaf).unlink(missing_ok=True)
    pair = generate_pair(pki, ips=("127.0.0.1",))
    return {
        "tls.crt": pair.tls_cert.read_bytes(),
        "tls.key": pair.tls_key.read_bytes(),
        "ca.crt": pair.ca_cert.read_bytes(),
    }


# ----------------------------------------------------------------------------- HTTP


def https_get(port: int, path: str, ca: Path) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}{path}", context=context, timeout=5
        ) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise SmokeFailure("the webhook sent no certificate")
    return x509.load_der_x509_certificate(der).serial_number


def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SmokeFailure(f"{what}: not within {timeout:g}s")
        time.sleep(POLL_SECONDS)


# ----------------------------------------------------------------------------- checks


@dataclass
class Report:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def run(self, name: str, check: Callable[[], None], needs: Sequence[str] = ()) -> bool:
        missing = [n for n in needs if n not in self.passed]
        started = time.monotonic()
        try:
            if missing:
                raise SmokeFailure(f"not run: needs {', '.join(missing)}")
            check()
        except Exception as exc:  # every failure is reported, the next checks still run
            self.failed.append(name)
            print(f"FAIL  {name} ({time.monotonic() - started:.1f}s)\n      {exc}", flush=True)
            if not isinstance(exc, SmokeFailure | subprocess.SubprocessError):
                traceback.print_exc()
            return False
        self.passed.append(name)
        print(f"PASS  {name} ({time.monotonic() - started:.1f}s)", flush=True)
        return True


def _is_pip(path: str) -> bool:
    return bool(
        re.search(r"(^|/)(site|dist)-packages/pip(/|-[^/]*\.dist-info)", path)
        or re.search(r"(^|/)bin/pip[0-9.]*$", path)
        or re.search(r"(^|/)pip-[^/]*\.whl$", path)
    )


def _is_test_file(path: str) -> bool:
    if not re.search(r"(^|/)(site|dist)-packages/", path):
        return False
    return bool(
        re.search(r"/(tests?|testing)/", path)
        or re.search(r"/(test_[^/]*|[^/]*_test|conftest)\.py$", path)
        or re.search(r"(site|dist)-packages/(tests|controlplane|bench)(/|$)", path)
    )


def scan_image(engine: Engine, image: str) -> None:
    """Stream the image's flattened filesystem and look for what must not be there."""
    name = f"dlm-guard-smoke-export-{os.getpid()}"
    engine.run("create", f"--name={name}", f"--label={engine.label}", image)
    engine.names.append(name)
    problems: list[str] = []
    files = 0
    with subprocess.Popen([engine.command, "export", name], stdout=subprocess.PIPE) as export:
        stream: IO[bytes] | None = export.stdout
        assert stream is not None
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                path = member.name.lstrip("./")
                if _is_pip(path):
                    problems.append(f"pip: /{path}")
                if _is_test_file(path):
                    problems.append(f"test file: /{path}")
                if member.isfile() and 0 < member.size <= SCAN_LIMIT_BYTES:
                    files += 1
                    content = tar.extractfile(member)
                    data = content.read() if content is not None else b""
                    if not data.startswith(b"\x7fELF") and PRIVATE_KEY_PEM.search(data):
                        problems.append(f"private key: /{path}")
    if export.returncode != 0:
        raise SmokeFailure(f"{engine.command} export exited {export.returncode}")
    if files < 100:
        raise SmokeFailure(f"only {files} files exported: the scan saw no real image")
    if problems:
        shown = "\n      ".join(problems[:20])
        raise SmokeFailure(f"{len(problems)} unwanted files, e.g.\n      {shown}")


def check_image_user(engine: Engine, image: str, security: ChartSecurity) -> None:
    user = engine.run("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    expected = f"{security.uid}:{security.gid}"
    if user != expected:
        raise SmokeFailure(f"image USER is {user!r}, the chart runs as {expected}")


@dataclass
class Serve:
    """The containerised `dlm-guard serve` and the files mounted into it."""

    engine: Engine
    name: str
    port: int
    ca: Path
    secret: Path
    pki: Path
    gid: int | None

    def running(self) -> bool:
        result = self.engine.run(
            "inspect", "--format", "{{.State.Running}}", self.name, check=False
        )
        return result.stdout.strip() == "true"

    def ready(self) -> bool:
        if not self.running():
            raise SmokeFailure(f"the serve container exited:\n{self.engine.logs(self.name)}")
        try:
            return https_get(self.port, "/readyz", self.ca)[0] == 200
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> str:
        status, body = https_get(self.port, "/metrics", self.ca)
        if status != 200:
            raise SmokeFailure(f"/metrics answered {status}")
        return body


def start_serve(
    engine: Engine, image: str, security: ChartSecurity, cluster: Cluster, work: Path
) -> Serve:
    pki, secret, policy, kube = (work / d for d in ("pki", "tls-secret", "policy", "kube"))
    pki.mkdir(parents=True)
    write_secret_volume(secret, issue_serving_pair(pki), security.fs_group)
    policy_text = yaml.safe_dump({"defaults": {"restoreRunStrategy": "Always"}})
    write_shared(policy, {"policy.yaml": policy_text.encode()}, security.fs_group)
    write_shared(kube, {"kubeconfig": cluster.kubeconfig.read_bytes()}, security.fs_group)
    (port,) = free_ports(1)
    name = f"dlm-guard-smoke-serve-{os.getpid()}"
    mounts = {secret: TLS_DIR, policy: POLICY_DIR, kube: KUBE_DIR}
    engine.run(
        "run", "--detach", *engine.container_args(name, security, mounts), image,
        "serve", "--host=127.0.0.1", f"--port={port}",
        f"--tls-cert={TLS_DIR}/tls.crt", f"--tls-key={TLS_DIR}/tls.key",
        "--cert-reload-interval=1", f"--config={POLICY_DIR}/policy.yaml",
        f"--kubeconfig={KUBE_DIR}/kubeconfig", "--log-format=json",
    )  # fmt: skip
    serve = Serve(engine, name, port, pki / "ca.crt", secret, pki, security.fs_group)
    wait_until("serve /readyz 200", serve.ready, READY_TIMEOUT_SECONDS)
    return serve


def check_endpoints(serve: Serve) -> None:
    for path in ("/healthz", "/readyz"):
        status, _ = https_get(serve.port, path, serve.ca)
        if status != 200:
            raise SmokeFailure(f"{path} answered {status}")
    body = serve.metrics()
    for metric in (
        "dlm_guard_admission_requests_total",
        "dlm_guard_admission_duration_seconds",
        "dlm_guard_certificate_expiry_timestamp_seconds",
    ):
        if f"# TYPE {metric} " not in body:
            raise SmokeFailure(f"/metrics has no {metric}")


_PROBE = """
import errno, json, os
status = dict(line.split(":", 1) for line in open("/proc/1/status").read().splitlines())
writes = {}
for folder in ("/", "/tmp", "/var/tmp", "/run", "/etc/dlm-guard/tls", os.path.dirname(os.__file__)):
    try:
        with open(os.path.join(folder, ".dlm-guard-write-probe"), "w"):
            writes[folder] = "written"
        os.unlink(os.path.join(folder, ".dlm-guard-write-probe"))
    except OSError as err:
        writes[folder] = errno.errorcode.get(err.errno, str(err.errno))
print(json.dumps({"uid": status["Uid"].split(), "gid": status["Gid"].split(),
                  "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
                  "writes": writes}))
"""


def check_process(serve: Serve, security: ChartSecurity) -> None:
    """PID 1 (the serve process) as seen inside, and writes tried as the same user."""
    result = serve.engine.run("exec", serve.name, "python", "-c", _PROBE)
    seen = json.loads(result.stdout)
    expected_uid, expected_gid = str(security.uid), str(security.gid)
    if set(seen["uid"]) != {expected_uid} or set(seen["gid"]) != {expected_gid}:
        raise SmokeFailure(f"serve runs as uid {seen['uid']} gid {seen['gid']}, "
                           f"the chart sets {expected_uid}:{expected_gid}")
    if security.drop_all_capabilities and int(seen["cap_eff"], 16) != 0:
        raise SmokeFailure(f"effective capabilities {seen['cap_eff']}, expected none")
    if security.no_new_privileges and seen["no_new_privs"] != "1":
        raise SmokeFailure("no_new_privs is not set")
    scratch = {path for path, _ in security.scratch}
    unexpected = {folder: outcome for folder, outcome in seen["writes"].items()
                  if (outcome == "written") != (folder in scratch)}
    if unexpected or seen["writes"]["/"] != "EROFS":
        raise SmokeFailure(f"writable only {sorted(scratch)} expected; writes: {seen['writes']}")


def _vm(name: str, *, shareable: bool) -> dict[str, Any]:
    """A WaitAsReceiver VM (the target side of a decentralized migration), no restore
    annotation; with `shareable`, its second disk is `shareable: true`."""
    disks: list[dict[str, Any]] = [{"name": "disk0", "disk": {"bus": "virtio"}}]
    volumes: list[dict[str, Any]] = [{"name": "disk0", "dataVolume": {"name": f"{name}-dv"}}]
    if shareable:
        disks.append({"name": "shared", "shareable": True, "disk": {"bus": "virtio"}})
        volumes.append({"name": "shared", "persistentVolumeClaim": {"claimName": "shared-pvc"}})
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "WaitAsReceiver",
            "template": {"spec": {
                "domain": {"devices": {"disks": disks}, "resources": {
                    "requests": {"memory": "128Mi"}}},
                "volumes": volumes,
            }},
        },
    }  # fmt: skip


def _counter(metrics: str, result: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("dlm_guard_admission_requests_total{") and f'result="{result}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def check_admission(serve: Serve, cluster: Cluster) -> None:
    register_webhooks(cluster, f"https://127.0.0.1:{serve.port}", serve.ca.read_bytes())
    kubectl(cluster, "create", "namespace", "smoke")
    rejected = kubectl(cluster, "apply", "-n", "smoke", "-f", "-", check=False,
                       input=json.dumps(_vm("shared-vm", shareable=True)))
    if rejected.returncode == 0 or DENIED not in rejected.stderr \
            or "[shareable-disk]" not in rejected.stderr:
        raise SmokeFailure(f"shareable-disk VM not rejected: {rejected.stderr or rejected.stdout}")
    kubectl(cluster, "apply", "-n", "smoke", "-f", "-",
            input=json.dumps(_vm("target-vm", shareable=False)))
    stored = json.loads(kubectl(cluster, "get", "vm", "target-vm", "-n", "smoke",
                                "-o", "json").stdout)
    annotation = stored["metadata"].get("annotations", {}).get(RESTORE_ANNOTATION)
    if annotation != "Always":
        raise SmokeFailure(f"stored VM has {RESTORE_ANNOTATION}={annotation!r}, not Always")
    metrics = serve.metrics()
    if _counter(metrics, "denied") < 1 or _counter(metrics, "patched") < 1:
        raise SmokeFailure("the container's counters show no denied and patched reviews")


@dataclass
class Load:
    """Admission calls through the API server in a loop: (seconds, answered as expected)."""

    cluster: Cluster
    outcomes: list[tuple[float, bool, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        checks = (validation_answered, mutation_answered)
        while not self.stop.is_set():
            for check in checks:
                try:
                    ok, why = check(self.cluster, "default"), "unexpected answer"
                except Exception as exc:  # a failed call is what this load counts
                    ok, why = False, repr(exc)
                self.outcomes.append((time.monotonic(), ok, "" if ok else why))


def check_cert_swap(serve: Serve, cluster: Cluster) -> None:
    before = served_serial(serve.port, serve.ca)
    load = Load(cluster)
    worker = threading.Thread(target=load.run, name="admission-load", daemon=True)
    worker.start()
    try:
        wait_until("admission calls before the swap", lambda: len(load.outcomes) >= 10,
                   SWAP_TIMEOUT_SECONDS)
        write_secret_volume(serve.secret, issue_serving_pair(serve.pki), serve.gid)
        swapped = time.monotonic()
        after = x509.load_pem_x509_certificate((serve.pki / "tls.crt").read_bytes())
        wait_until("new certificate served", lambda: served_serial(serve.port, serve.ca)
                   == after.serial_number, SWAP_TIMEOUT_SECONDS)
        picked_up = time.monotonic()
        count = len(load.outcomes)
        wait_until("admission calls after the swap",
                   lambda: len(load.outcomes) >= count + REQUESTS_AFTER_SWAP,
                   SWAP_TIMEOUT_SECONDS)
    finally:
        load.stop.set()
        worker.join(timeout=30)
    failures = [why for _, ok, why in load.outcomes if not ok]
    if before == after.serial_number:
        raise SmokeFailure("the swap did not change the certificate")
    if failures:
        raise SmokeFailure(f"{len(failures)} of {len(load.outcomes)} admission calls failed "
                           f"around the swap, e.g. {failures[0]}")
    print(f"      {len(load.outcomes)} admission calls, none failed; new certificate served "
          f"{picked_up - swapped:.1f}s after the swap")


def check_graceful_stop(serve: Serve) -> None:
    serve.engine.run("stop", f"--time={STOP_GRACE_SECONDS}", serve.name,
                     timeout=STOP_GRACE_SECONDS + 30)
    code = serve.engine.run("inspect", "--format", "{{.State.ExitCode}}", serve.name).stdout
    if code.strip() != "0":
        raise SmokeFailure(f"serve exited {code.strip()} on SIGTERM:\n"
                           f"{serve.engine.logs(serve.name)}")


def _put_ca(cluster: Cluster, name: str, pem: bytes) -> None:
    kubectl(cluster, "create", "namespace", KUBEVIRT_NAMESPACE, check=False)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": name, "namespace": KUBEVIRT_NAMESPACE},
                  "data": {"ca-bundle": pem.decode()}}
    kubectl(cluster, "apply", "-f", "-", input=json.dumps(config_map))


def _external_bundle(cluster: Cluster) -> list[x509.Certificate]:
    result = kubectl(cluster, "get", "configmap", "kubevirt-external-ca", "-n",
                     KUBEVIRT_NAMESPACE, "-o", "json", check=False)
    if result.returncode != 0:
        return []
    text = (json.loads(result.stdout).get("data") or {}).get("ca-bundle", "")
    return list(parse_bundle(text).certificates)


def check_reconcile(engine: Engine, image: str, security: ChartSecurity,
                    clusters: Sequence[Cluster], work: Path) -> None:
    now = datetime.now(UTC)
    cas = {c.name: make_ca(now - timedelta(hours=1), now + timedelta(days=7),
                           common_name=f"kubevirt.io@{c.name}").cert for c in clusters}
    for cluster in clusters:
        _put_ca(cluster, "kubevirt-ca", cert_pem(cas[cluster.name]))
    kube = work / "reconcile-kube"
    write_shared(kube, {c.name: c.kubeconfig.read_bytes() for c in clusters}, security.fs_group)
    (metrics_port,) = free_ports(1)
    name = f"dlm-guard-smoke-reconcile-{os.getpid()}"
    cluster_flags = [f"--cluster={c.name}={KUBE_DIR}/{c.name}" for c in clusters]
    manage_flags = [f"--manage={c.name}" for c in clusters]
    result = engine.run(
        "run", *engine.container_args(name, security, {kube: KUBE_DIR}), image,
        "reconcile", *cluster_flags, *manage_flags, "--once", "--api-timeout=5s",
        f"--metrics-port={metrics_port}", "--log-format=json",
        timeout=RECONCILE_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SmokeFailure(f"reconcile --once exited {result.returncode}:\n"
                           f"{(result.stdout + result.stderr).strip()[-3000:]}")
    for cluster in clusters:
        got = {c.serial_number for c in _external_bundle(cluster)}
        wanted = {ca.serial_number for peer, ca in cas.items() if peer != cluster.name}
        if not wanted <= got:
            raise SmokeFailure(f"{cluster.name}'s kubevirt-external-ca lacks its peer's CA")


# ----------------------------------------------------------------------------- main


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dlm-guard-image-test-") as folder:
        yield Path(folder)


def smoke(image: str, engine: Engine) -> Report:
    report = Report()
    chart: dict[str, ChartSecurity] = {}

    def read_chart() -> None:
        chart.update(deployment_security(render_chart(find_helm())))
        if not {"guard-dlm-guard-webhook", "guard-dlm-guard-reconciler"} <= set(chart):
            raise SmokeFailure(f"deployments rendered: {sorted(chart)}")
        if len(set(chart.values())) != 1:
            raise SmokeFailure(f"the deployments differ in securityContext: {chart}")

    report.run("chart securityContext reproducible with engine flags", read_chart)
    security = next(iter(chart.values()), ChartSecurity(None, None, None, False, False, False))
    chart_ok = ["chart securityContext reproducible with engine flags"]
    print(f"      run flags: {' '.join(engine.security_flags(security))}; "
          f"uid {security.uid} gid {security.gid}")
    report.run("image: no private key, no pip, no test files", lambda: scan_image(engine, image))
    report.run("image: USER is the chart's uid:gid",
               lambda: check_image_user(engine, image, security), needs=chart_ok)
    with ExitStack() as stack:
        work = stack.enter_context(_workdir())
        stack.callback(engine.remove_all)
        clusters: list[Cluster] = []

        def start() -> None:
            clusters.extend(stack.enter_context(
                start_clusters(names=["east", "west"], workdir=work / "clusters")))
            install_crds_on(clusters)

        report.run("two harness clusters (etcd + kube-apiserver) with CRDs", start)
        served: list[Serve] = []
        report.run(
            "serve: non-root, read-only root fs, Secret-layout certs, cluster mode, ready",
            lambda: served.append(start_serve(engine, image, security, clusters[0], work)),
            needs=[*chart_ok, "two harness clusters (etcd + kube-apiserver) with CRDs"],
        )
        up = ["serve: non-root, read-only root fs, Secret-layout certs, cluster mode, ready"]
        report.run("serve answers /healthz, /readyz, /metrics",
                   lambda: check_endpoints(served[0]), needs=up)
        report.run("process: chart's uid, no capabilities, root fs not writable",
                   lambda: check_process(served[0], security), needs=up)
        report.run("kube-apiserver -> container: shareable-disk denied, restore annotation set",
                   lambda: check_admission(served[0], clusters[0]), needs=up)
        report.run("certificate swap in the mounted folder: picked up, no failed request",
                   lambda: check_cert_swap(served[0], clusters[0]),
                   needs=["kube-apiserver -> container: shareable-disk denied, "
                          "restore annotation set"])
        report.run("serve: SIGTERM -> exit 0", lambda: check_graceful_stop(served[0]), needs=up)
        report.run("reconcile --once between two clusters syncs the CAs",
                   lambda: check_reconcile(engine, image, security, clusters, work),
                   needs=[*chart_ok, "two harness clusters (etcd + kube-apiserver) with CRDs"])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/image/smoke.py", description=__doc__)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "dlm-guard:dev"))
    parser.add_argument("--engine", default=os.environ.get("ENGINE", "podman"))
    parser.add_argument("--label", default=f"dlm-guard-smoke={os.getpid()}")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` cleans up like Ctrl-C
    engine = Engine(args.engine, args.label)
    started = time.monotonic()
    try:
        report = smoke(args.image, engine)
    except KeyboardInterrupt:
        print("interrupted; containers and clusters removed\n0 passed, 1 failed")
        return 1
    finally:
        engine.remove_all()
    print(f"image-test of {args.image} took {time.monotonic() - started:.0f}s")
    if report.failed:
        print("failed: " + "; ".join(report.failed))
    print(f"{len(report.passed)} passed, {len(report.failed)} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
