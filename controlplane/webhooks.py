"""dlm-guard's admission webhooks on a test cluster: run `dlm-guard serve`, register, wait.

    with run_webhook_server(cluster.kubeconfig, workdir) as server:
        register_webhooks(cluster, server.url_base, server.ca_pem)   # returns once called
        ...
        unregister_webhooks(cluster)

Registration returns only once the API server really calls both webhooks (envtest's
WaitForWebhooks polls a port; we go further and dry-run objects each webhook must answer),
because the API server picks webhook configurations up asynchronously.
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs.generate import generate_pair
from controlplane.cluster import Cluster
from controlplane.kubectl import kubectl
from controlplane.ports import free_ports
from controlplane.process import Launcher, ManagedProcess

CONFIGURATION_NAME = "dlm-guard"
MUTATE_WEBHOOK, VALIDATE_WEBHOOK = "mutate.dlm-guard.io", "validate.dlm-guard.io"
RESOURCES = ("virtualmachines", "virtualmachineinstancemigrations")
TIMEOUT_SECONDS = 5
REGISTER_TIMEOUT_SECONDS = 30.0
SERVER_START_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.1
PORT_ATTEMPTS = 3
RESTORE_ANNOTATION = "kubevirt.io/restore-run-strategy"
_CERTS_LOCK = threading.Lock()


class WebhookError(RuntimeError):
    """The webhook server did not start, or the API server never called the webhooks."""


# ----------------------------------------------------------------------------- configurations


def _entry(
    name: str,
    url: str,
    ca_pem: bytes,
    failure_policy: str,
    namespace_selector: Mapping[str, Any] | None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
        "rules": [
            {
                "apiGroups": ["kubevirt.io"],
                "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": list(RESOURCES),
                "scope": "Namespaced",
            }
        ],
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": TIMEOUT_SECONDS,
    }
    if namespace_selector is not None:
        entry["namespaceSelector"] = dict(namespace_selector)
    return entry


def webhook_configurations(
    url_base: str,
    ca_pem: bytes,
    *,
    failure_policy_validate: str = "Fail",
    failure_policy_mutate: str = "Ignore",
    namespace_selector: Mapping[str, Any] | None = None,
    name: str = CONFIGURATION_NAME,
) -> list[dict[str, Any]]:
    """The Mutating- and ValidatingWebhookConfiguration for a server at `url_base`.

    Defaults follow the chart: an outage skips the defaults (mutate Ignore) but admits
    nothing unchecked (validate Fail).
    """
    base = url_base.rstrip("/")
    mutate = _entry(
        MUTATE_WEBHOOK, f"{base}/mutate", ca_pem, failure_policy_mutate, namespace_selector
    )
    # A later mutating webhook may change the object: run again so our defaults still hold.
    mutate["reinvocationPolicy"] = "IfNeeded"
    validate = _entry(
        VALIDATE_WEBHOOK, f"{base}/validate", ca_pem, failure_policy_validate, namespace_selector
    )
    group = "admissionregistration.k8s.io/v1"
    return [
        {
            "apiVersion": group,
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [mutate],
        },
        {
            "apiVersion": group,
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [validate],
        },
    ]


def register_webhooks(
    cluster: Cluster,
    url_base: str,
    ca_pem: bytes,
    *,
    failure_policy_validate: str = "Fail",
    failure_policy_mutate: str = "Ignore",
    namespace_selector: Mapping[str, Any] | None = None,
    name: str = CONFIGURATION_NAME,
    wait: bool = True,
    probe_namespace: str = "default",
    timeout: float = REGISTER_TIMEOUT_SECONDS,
) -> None:
    """Create (or update) both configurations; with `wait`, return once both are called.

    The wait dry-runs probe objects in `probe_namespace`, which must exist and match
    `namespace_selector`. Use wait=False when no server is meant to answer.
    """
    configs = webhook_configurations(
        url_base,
        ca_pem,
        failure_policy_validate=failure_policy_validate,
        failure_policy_mutate=failure_policy_mutate,
        namespace_selector=namespace_selector,
        name=name,
    )
    document = {"apiVersion": "v1", "kind": "List", "items": configs}
    # Server-side apply: re-registering with another failurePolicy updates in place.
    kubectl(
        cluster, "apply", "--server-side", "--force-conflicts", "-f", "-",
        input=json.dumps(document),
    )
    if wait:
        wait_for_webhooks(cluster, probe_namespace, timeout)


def unregister_webhooks(cluster: Cluster, name: str = CONFIGURATION_NAME) -> None:
    kubectl(
        cluster,
        "delete",
        f"mutatingwebhookconfiguration/{name}",
        f"validatingwebhookconfiguration/{name}",
        "--ignore-not-found",
    )


# ----------------------------------------------------------------------------- the wait


def _probe_vm(namespace: str) -> dict[str, Any]:
    """A clean WaitAsReceiver VM without the restore annotation: our mutation adds it."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "dlm-guard-probe", "namespace": namespace},
        "spec": {
            "runStrategy": "WaitAsReceiver",
            "template": {"spec": {"domain": {"devices": {}}}},
        },
    }


def _probe_vmim(namespace: str) -> dict[str, Any]:
    """Both roles at once: denied as [both-roles] whatever the cluster state."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "dlm-guard-probe", "namespace": namespace},
        "spec": {
            "vmiName": "dlm-guard-probe",
            "sendTo": {"migrationID": "dlm-guard-probe", "connectURL": "127.0.0.1:9185"},
            "receive": {"migrationID": "dlm-guard-probe"},
        },
    }


def dry_run_create(
    cluster: Cluster, plural: str, obj: Mapping[str, Any]
) -> tuple[int, dict[str, Any]]:
    """POST obj with dryRun=All: (HTTP status, response body). Nothing is stored."""
    namespace = obj["metadata"]["namespace"]
    path = f"/apis/kubevirt.io/v1/namespaces/{namespace}/{plural}?dryRun=All"
    request = urllib.request.Request(
        cluster.server + path,
        data=json.dumps(obj).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, context=cluster.ssl_context(), timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def mutation_answered(cluster: Cluster, namespace: str) -> bool:
    status, body = dry_run_create(cluster, "virtualmachines", _probe_vm(namespace))
    annotations = body.get("metadata", {}).get("annotations") or {}
    return status == 201 and RESTORE_ANNOTATION in annotations


def validation_answered(cluster: Cluster, namespace: str) -> bool:
    status, body = dry_run_create(
        cluster, "virtualmachineinstancemigrations", _probe_vmim(namespace)
    )
    return status == 403 and "[both-roles]" in str(body.get("message", ""))


def wait_for_webhooks(
    cluster: Cluster, namespace: str = "default", timeout: float = REGISTER_TIMEOUT_SECONDS
) -> None:
    """Poll until the API server calls both webhooks; WebhookError after `timeout`."""
    deadline = time.monotonic() + timeout
    for what, answered in (("mutating", mutation_answered), ("validating", validation_answered)):
        while not answered(cluster, namespace):
            if time.monotonic() > deadline:
                raise WebhookError(
                    f"cluster {cluster.name}: the {what} webhook was not called within "
                    f"{timeout:g}s (probe namespace {namespace!r})"
                )
            time.sleep(POLL_SECONDS)


# ----------------------------------------------------------------------------- the server


@dataclass
class WebhookServer:
    """A running `dlm-guard serve` on 127.0.0.1 with certificates made by certs.generate."""

    process: ManagedProcess
    port: int
    ca_cert: Path

    @property
    def url_base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()

    @property
    def log(self) -> Path:
        return self.process.log

    def ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        try:
            with urllib.request.urlopen(
                f"{self.url_base}/readyz", context=context, timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM (the server drains calls in flight), SIGKILL after a grace. Idempotent."""
        self.process.stop()


def serve_argv(
    kubeconfig: Path | None, cert_dir: Path, port: int, extra: Sequence[str] = ()
) -> list[str]:
    cluster = ["--kubeconfig", str(kubeconfig)] if kubeconfig else ["--offline"]
    return [
        sys.executable, "-m", "dlm_guard", "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--tls-cert", str(cert_dir / "tls.crt"), "--tls-key", str(cert_dir / "tls.key"),
        *cluster, *extra,
    ]  # fmt: skip


def start_webhook_server(
    kubeconfig: Path | None,
    workdir: Path,
    *,
    name: str = "dlm-guard",
    extra_args: Sequence[str] = (),
    timeout: float = SERVER_START_TIMEOUT_SECONDS,
    launcher: Launcher | None = None,
) -> WebhookServer:
    """Start `dlm-guard serve` on a free port and wait for /readyz (the cache's first list).

    Certificates (IP SAN 127.0.0.1) go to workdir/certs, reused if already there, so several
    servers can share one CA; the log goes to workdir/<name>.log. kubeconfig None: --offline.
    With a `launcher`, its stop_all() also stops this server, even one still starting in
    another thread, and nothing is spawned once it was called.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cert_dir = workdir / "certs"
    with _CERTS_LOCK:  # servers started in parallel threads share the CA, not make two
        pair = generate_pair(cert_dir, ips=("127.0.0.1",))
    deadline = time.monotonic() + timeout
    for attempt in range(PORT_ATTEMPTS):
        (port,) = free_ports(1)
        argv = serve_argv(kubeconfig, cert_dir, port, extra_args)
        log = workdir / f"{name}.log"
        process = (
            launcher.spawn(name, argv, log, workdir, stop_wave=0)
            if launcher is not None
            else ManagedProcess.spawn(name, argv, log, workdir)
        )
        server = WebhookServer(process=process, port=port, ca_cert=pair.ca_cert)
        try:
            _wait_ready(server, deadline)
            return server
        except WebhookError as err:
            server.stop()
            # The port was free when picked, but another process may bind it first.
            if attempt + 1 == PORT_ATTEMPTS or "address already in use" not in str(err):
                raise
        except BaseException:
            server.stop()
            raise
    raise AssertionError("unreachable")


def _wait_ready(server: WebhookServer, deadline: float) -> None:
    while not server.ready():
        code = server.process.exit_code()
        if code is not None or time.monotonic() > deadline:
            what = f"exited with code {code}" if code is not None else "was not ready in time"
            raise WebhookError(
                f"{server.process.name} {what}; last lines of {server.log}:\n"
                f"{server.process.tail()}"
            )
        time.sleep(POLL_SECONDS)


@contextmanager
def run_webhook_server(
    kubeconfig: Path | None, workdir: Path, **kwargs: Any
) -> Iterator[WebhookServer]:
    """start_webhook_server() as a context manager: always stopped on exit."""
    server = start_webhook_server(kubeconfig, workdir, **kwargs)
    try:
        yield server
    finally:
        server.stop()
