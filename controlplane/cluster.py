"""Start N independent local clusters (etcd + kube-apiserver each) and always tear them down.

The envtest pattern: real etcd and kube-apiserver processes on 127.0.0.1, no kubelet, no
controller-manager (so no garbage collection, no default service accounts, no status updates).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from certs.generate import cert_pem, key_pem
from controlplane import kubeconfig, pki
from controlplane.binaries import Binaries, binaries_or_reason
from controlplane.ports import free_ports
from controlplane.process import Launcher, ManagedProcess, StartCancelled

START_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.1
PORT_ATTEMPTS = 3
T = TypeVar("T")


class ClusterStartError(RuntimeError):
    """A cluster did not come up; the message carries the tail of the failing process's log."""


@dataclass
class Cluster:
    """One running test cluster. `kubeconfig` authenticates as an admin in system:masters."""

    name: str
    workdir: Path
    server: str
    kubeconfig: Path
    ca_cert: Path
    client_cert: Path
    client_key: Path
    etcd_url: str
    binaries: Binaries
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        """HTTPS GET on the API server as the admin, e.g. get('/version')."""
        with urllib.request.urlopen(
            self.server + path, context=self.ssl_context(), timeout=timeout
        ) as resp:
            data: bytes = resp.read()
            return data

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.get("/version"))
        return result

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` for this cluster (the caller closes it)."""
        from kubernetes import config  # lazily: only tests that use the client import it

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def stop(self) -> None:
        """Stop this cluster's processes (API server first). start_clusters() also does it."""
        for process in reversed(self.processes):
            process.stop()


# ------------------------------------------------------------------------------- one cluster


@dataclass(frozen=True)
class _Layout:
    """Where a cluster's files live inside its work directory."""

    root: Path
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    client_cert: Path
    client_key: Path
    sa_key: Path
    sa_pub: Path
    kubeconfig: Path
    etcd_data: Path
    etcd_log: Path
    apiserver_log: Path

    @classmethod
    def under(cls, root: Path) -> _Layout:
        pki_dir = root / "pki"
        return cls(
            root=root,
            ca_cert=pki_dir / "ca.crt",
            ca_key=pki_dir / "ca.key",
            serving_cert=pki_dir / "apiserver.crt",
            serving_key=pki_dir / "apiserver.key",
            client_cert=pki_dir / "admin.crt",
            client_key=pki_dir / "admin.key",
            sa_key=pki_dir / "sa.key",
            sa_pub=pki_dir / "sa.pub",
            kubeconfig=root / "kubeconfig",
            etcd_data=root / "etcd-data",
            etcd_log=root / "etcd.log",
            apiserver_log=root / "kube-apiserver.log",
        )


def _write_pki(layout: _Layout, name: str) -> tuple[pki.Issued, pki.Issued]:
    """CA, serving cert (IP SAN 127.0.0.1), admin client cert, service-account key pair."""
    (layout.root / "pki").mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca(f"{name}-ca")
    pki.write_pair(ca, layout.ca_cert, layout.ca_key)
    serving = pki.serving_cert(
        ca, "kube-apiserver", dns=("localhost", "kubernetes", "kubernetes.default")
    )
    pki.write_pair(serving, layout.serving_cert, layout.serving_key)
    admin = pki.client_cert(ca, "admin", groups=("system:masters",))
    pki.write_pair(admin, layout.client_cert, layout.client_key)
    sa_key = pki.new_key()
    pki.write_key(sa_key, layout.sa_key)
    pki.write_public_key(sa_key, layout.sa_pub)
    return ca, admin


@functools.cache
def etcd_version(etcd: Path) -> tuple[int, int]:
    """(major, minor) from `etcd --version` ("etcd Version: 3.6.16"); (0, 0) if unreadable."""
    result = subprocess.run([str(etcd), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"etcd Version: (\d+)\.(\d+)", result.stdout)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _etcd_argv(binaries: Binaries, layout: _Layout, name: str, client: int, peer: int) -> list[str]:
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    return [
        str(binaries.etcd),
        f"--name={name}",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={name}={peer_url}",
        "--log-level=warn",
        # Test data is thrown away anyway. The flag exists since 3.5; Debian's 3.4 lacks it.
        *(["--unsafe-no-fsync"] if etcd_version(binaries.etcd) >= (3, 5) else []),
    ]


def _apiserver_argv(
    binaries: Binaries, layout: _Layout, etcd_url: str, port: int, extra: Sequence[str]
) -> list[str]:
    # No --advertise-address: a loopback one is rejected (since 1.21); the default route's
    # interface supplies one. ServiceAccount admission is off: no controller makes the accounts.
    return [
        str(binaries.kube_apiserver),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={layout.root / 'pki'}",
        f"--tls-cert-file={layout.serving_cert}",
        f"--tls-private-key-file={layout.serving_key}",
        f"--client-ca-file={layout.ca_cert}",
        "--authorization-mode=RBAC",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        "--disable-admission-plugins=ServiceAccount",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={layout.sa_pub}",
        f"--service-account-signing-key-file={layout.sa_key}",
        *extra,
    ]


def _failure(name: str, process: ManagedProcess, what: str) -> ClusterStartError:
    return ClusterStartError(
        f"cluster {name}: {process.name} {what}; last lines of {process.log}:\n{process.tail()}"
    )


def _wait_until(
    probe: Callable[[], bool],
    process: ManagedProcess,
    launcher: Launcher,
    cluster: str,
    deadline: float,
) -> None:
    """Poll probe() until it returns True; fail fast if the process dies or start is cancelled."""
    while not probe():
        if launcher.cancelled:
            raise StartCancelled(cluster)
        code = process.exit_code()
        if code is not None:
            raise _failure(cluster, process, f"exited with code {code}")
        if time.monotonic() > deadline:
            raise _failure(cluster, process, "was not ready in time")
        time.sleep(POLL_SECONDS)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class _Run:
    """What every cluster of one start_clusters() call shares."""

    binaries: Binaries
    deadline: float
    apiserver_args: tuple[str, ...]


def _retry_port_clash(start: Callable[[], T]) -> T:
    """Run start(); again with fresh ports if a port we picked was taken before the bind."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            return start()
        except ClusterStartError as exc:
            if attempt + 1 == PORT_ATTEMPTS or "address already in use" not in str(exc):
                raise
    raise AssertionError("unreachable")


def _start_etcd(
    name: str, layout: _Layout, binaries: Binaries, launcher: Launcher, deadline: float
) -> tuple[ManagedProcess, str]:
    client, peer = free_ports(2)
    shutil.rmtree(layout.etcd_data, ignore_errors=True)  # a retry must not reuse old member data
    etcd = launcher.spawn(
        f"etcd[{name}]",
        _etcd_argv(binaries, layout, name, client, peer),
        layout.etcd_log,
        layout.root,
        stop_wave=1,
    )
    url = f"http://127.0.0.1:{client}"
    _wait_until(functools.partial(_http_ok, f"{url}/health"), etcd, launcher, name, deadline)
    return etcd, url


def _admin_context(layout: _Layout) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(layout.ca_cert))
    ctx.load_cert_chain(str(layout.client_cert), str(layout.client_key))
    return ctx


def _start_apiserver(
    name: str, layout: _Layout, etcd_url: str, launcher: Launcher, run: _Run
) -> tuple[ManagedProcess, str]:
    (port,) = free_ports(1)
    apiserver = launcher.spawn(
        f"kube-apiserver[{name}]",
        _apiserver_argv(run.binaries, layout, etcd_url, port, run.apiserver_args),
        layout.apiserver_log,
        layout.root,
        stop_wave=0,
    )
    server = f"https://127.0.0.1:{port}"
    context = _admin_context(layout)
    probe = functools.partial(_http_ok, f"{server}/readyz", context)
    _wait_until(probe, apiserver, launcher, name, run.deadline)
    return apiserver, server


def _start_one(name: str, root: Path, launcher: Launcher, run: _Run) -> Cluster:
    """PKI, etcd (waited for), kube-apiserver (waited for on /readyz), then the kubeconfig."""
    layout = _Layout.under(root / name)
    ca, admin = _write_pki(layout, name)
    etcd, etcd_url = _retry_port_clash(
        lambda: _start_etcd(name, layout, run.binaries, launcher, run.deadline)
    )
    apiserver, server = _retry_port_clash(
        lambda: _start_apiserver(name, layout, etcd_url, launcher, run)
    )
    kubeconfig.write(
        layout.kubeconfig,
        kubeconfig.render(
            name, server, cert_pem(ca.cert), cert_pem(admin.cert), key_pem(admin.key)
        ),
    )
    return Cluster(
        name=name,
        workdir=layout.root,
        server=server,
        kubeconfig=layout.kubeconfig,
        ca_cert=layout.ca_cert,
        client_cert=layout.client_cert,
        client_key=layout.client_key,
        etcd_url=etcd_url,
        binaries=run.binaries,
        processes=[etcd, apiserver],
    )


# ------------------------------------------------------------------------------- N clusters


def _resolve_binaries(binaries: Binaries | None) -> Binaries:
    if binaries is not None:
        return binaries
    found = binaries_or_reason()
    if isinstance(found, str):
        raise ClusterStartError(found)
    return found


def _first_real_error(futures: list[Future[Cluster]]) -> BaseException | None:
    """The error to report: a sibling's StartCancelled is only a consequence of another failure."""
    errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
    real = [e for e in errors if not isinstance(e, StartCancelled)]
    return (real or errors or [None])[0]


def _start_parallel(
    names: Sequence[str], root: Path, launcher: Launcher, run: _Run
) -> list[Cluster]:
    pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="cluster-start")
    futures = [pool.submit(_start_one, n, root, launcher, run) for n in names]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            launcher.stop_all()  # siblings stop waiting at their next poll
            wait(futures)
        error = _first_real_error(futures)
        if error is not None:
            raise error
        return [f.result() for f in futures]
    finally:
        # On KeyboardInterrupt too: stop everything before waiting for the threads.
        if any(not f.done() or f.exception() for f in futures):
            launcher.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)


def _make_root(workdir: Path | None) -> tuple[Path, bool]:
    """(directory, whether we own it and must delete it)."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="dlm-guard-cp-")), True
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, False


def _cleanup(root: Path, owned: bool, names: Sequence[str]) -> None:
    if owned:
        shutil.rmtree(root, ignore_errors=True)
        return
    for name in names:  # keep logs, certs and kubeconfigs for the caller; drop the databases
        shutil.rmtree(_Layout.under(root / name).etcd_data, ignore_errors=True)


@contextmanager
def start_clusters(
    n: int = 2,
    workdir: Path | None = None,
    *,
    names: Sequence[str] | None = None,
    binaries: Binaries | None = None,
    timeout: float = START_TIMEOUT_SECONDS,
    apiserver_args: Sequence[str] = (),
) -> Iterator[list[Cluster]]:
    """Start `n` clusters in parallel; yield them ready (/readyz ok); tear all down on exit.

    Clusters are named cluster1..clusterN unless `names` is given (then `n` is ignored); the
    name is also the kubeconfig's context. `apiserver_args` are appended to kube-apiserver's.

    Without `workdir` a temporary directory is used and removed. With one, each cluster gets a
    sub-directory (logs, certs, kubeconfig) that is kept; only etcd's data is removed.
    """
    cluster_names = list(names) if names is not None else [f"cluster{i + 1}" for i in range(n)]
    run = _Run(
        binaries=_resolve_binaries(binaries),
        deadline=time.monotonic() + timeout,
        apiserver_args=tuple(apiserver_args),
    )
    root, owned = _make_root(workdir)
    launcher = Launcher()
    try:
        yield _start_parallel(cluster_names, root, launcher, run)
    finally:
        with _sigint_ignored():
            launcher.stop_all()
            _cleanup(root, owned, cluster_names)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut teardown short (that would leak servers); it takes ~1 s."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
