"""Start the servers under test as subprocesses (optionally pinned to one core) and stop them.

Every server runs as one process with one event loop, bound to 127.0.0.1 on a free port, over
TLS with a certificate from certs.generate_pair (the load generator trusts its CA). Output goes
to a log file in the work directory, never to a pipe nobody reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.procstat import CpuSample, cpu_times, memory_kib
from certs.generate import PairPaths, generate_pair
from webhook.policy import RULES

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tls_pair(directory: Path) -> PairPaths:
    return generate_pair(directory, dns=("localhost",), ips=("127.0.0.1",))


def write_rules_off_policy(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"rules": {slug.value: "off" for slug in RULES}}))
    return path


def pinning_available(cores: Sequence[int]) -> bool:
    """Pin only when every core asked for exists and taskset is there."""
    available = os.sched_getaffinity(0)
    return shutil.which("taskset") is not None and all(c in available for c in cores)


def pin_self(core: int) -> bool:
    if core not in os.sched_getaffinity(0):
        return False
    os.sched_setaffinity(0, {core})
    return True


@dataclass(frozen=True)
class ServerSpec:
    """A server to start; `{port}` in argv is replaced by the port picked for it."""

    name: str
    argv: tuple[str, ...]


def dlm_guard_spec(name: str, pair: PairPaths, config: Path | None = None,
                   extra: Sequence[str] = ()) -> ServerSpec:
    argv = [sys.executable, "-m", "dlm_guard", "serve", "--offline", "--host", "127.0.0.1",
            "--port", "{port}", "--tls-cert", str(pair.tls_cert), "--tls-key", str(pair.tls_key)]
    if config is not None:
        argv += ["--config", str(config)]
    return ServerSpec(name, (*argv, *extra))


def bare_spec(pair: PairPaths) -> ServerSpec:
    return ServerSpec("bare-aiohttp", (
        sys.executable, "-m", "bench.bare_server", "--port", "{port}",
        "--tls-cert", str(pair.tls_cert), "--tls-key", str(pair.tls_key)))


def subprocess_env() -> dict[str, str]:
    """Our environment, with the repository importable (bench/ is not an installed package)."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


class Server:
    """A running server process: its URL, CPU and memory from /proc, and a clean stop."""

    def __init__(self, spec: ServerSpec, workdir: Path, ca_file: Path,
                 core: int | None, ready_path: str = "/healthz") -> None:
        self.spec = spec
        self.ready_path = ready_path
        self.port = free_port()
        self.base_url = f"https://127.0.0.1:{self.port}"
        self.log = workdir / f"{spec.name}.log"
        argv = [part.replace("{port}", str(self.port)) for part in spec.argv]
        if core is not None:
            argv = ["taskset", "-c", str(core), *argv]  # taskset execs: same pid
        self.argv = argv
        self.core = core
        self._ca = ssl.create_default_context(cafile=str(ca_file))
        env = subprocess_env()
        with open(self.log, "wb") as sink:
            self.process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            cwd=str(workdir), start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the server's CA."""
        return self._ca

    @property
    def pid(self) -> int:
        return self.process.pid

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + self.ready_path, context=self._ca,
                                        timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self._healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.process.returncode}: "
                                   f"{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.spec.name} not ready in {READY_TIMEOUT_SECONDS}s: "
                                   f"{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cpu(self) -> CpuSample:
        return cpu_times(self.pid)

    def memory(self) -> dict[str, Any]:
        kib = memory_kib(self.pid)
        return {"rss_mib": round(kib.get("VmRSS", 0) / 1024, 1),
                "peak_rss_mib": round(kib.get("VmHWM", 0) / 1024, 1)}

    def stop(self) -> int | None:
        """SIGTERM (graceful), then SIGKILL after a while; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_SECONDS)
        return self.process.returncode
