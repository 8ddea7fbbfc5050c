"""Objects and helpers shared by the server tests (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from certs.generate import PairPaths
from certs.tls import ServingTLS
from webhook.engine import Context
from webhook.listener import Listener
from webhook.policy import Policy
from webhook.settings import Limits

Obj = dict[str, Any]

# The documented example (../shared/examples), written here so tests need no outside file.
TARGET_VM: Obj = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
    "metadata": {"name": "example-decentralized-lm-vm", "namespace": "vms"},
    "spec": {"runStrategy": "WaitAsReceiver", "template": {"spec": {
        "architecture": "amd64",
        "domain": {"devices": {"disks": [{"disk": {"bus": "virtio"}, "name": "disk0"}],
                               "interfaces": [{"masquerade": {}, "name": "default"}]},
                   "machine": {"type": "q35"},
                   "resources": {"requests": {"memory": "128Mi"}}},
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [{"dataVolume": {"name": "example-decentralized-lm-vm-dv"},
                     "name": "disk0"}]}}},
}
TARGET_VMIM: Obj = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
    "metadata": {"name": "example-target-migration", "namespace": "vms"},
    "spec": {"receive": {"migrationID": "example-decentralized-lm-vm-7f3a9c"},
             "vmiName": "example-decentralized-lm-vm"},
}
SOURCE_VMIM: Obj = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
    "metadata": {"name": "example-source-migration", "namespace": "vms"},
    "spec": {"sendTo": {"connectURL": "10.244.1.17:9185",
                        "migrationID": "example-decentralized-lm-vm-7f3a9c"},
             "vmiName": "example-decentralized-lm-vm"},
}


def review(obj: Obj, operation: str = "CREATE", uid: str | None = None,
           old: Obj | None = None) -> Obj:
    """An AdmissionReview request as the API server sends it for `obj`."""
    group, _, version = obj["apiVersion"].rpartition("/")
    request: Obj = {
        "uid": uid or str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": obj["kind"]},
        "resource": {"group": group, "version": version,
                     "resource": obj["kind"].lower() + "s"},
        "operation": operation,
        "namespace": obj["metadata"].get("namespace", ""),
        "name": obj["metadata"]["name"],
        "object": obj, "oldObject": old,
        "userInfo": {"username": "system:admin"}, "dryRun": False,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def offline_context(policy: Policy | None = None) -> Context:
    return Context(policy=policy or Policy(), cluster=None, new_id=lambda: "0123456789ab")


# --- Processes ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if process.returncode is not None:
            raise AssertionError(f"serve exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError("serve did not start listening")


# --- In-process servers and raw HTTP/1.1 clients ----------------------------------------
@asynccontextmanager
async def listening(app: web.Application, pki: PairPaths,
                    limits: Limits | None = None) -> AsyncIterator[Listener]:
    """Serve `app` with serve's own listener over real TLS on 127.0.0.1, on a free port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = Listener(runner, ServingTLS(pki.tls_cert, pki.tls_key).context,
                        limits or Limits())
    listener.bind("127.0.0.1", 0)
    listener.start()
    try:
        yield listener
    finally:
        await listener.stop_accepting()
        listener.close_all()
        await runner.cleanup()



async def open_tls(port: int, ca: ssl.SSLContext) -> tuple[asyncio.StreamReader,
                                                        asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=ca, server_hostname="localhost")


def post_head(length: int, path: str = "/validate", *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Content-Type: application/json",
             f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers (lower-case), body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within `within` seconds (EOF or reset)."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    return True


class ServeProcess:
    """`dlm-guard serve --dev --offline` in a child process, its stderr collected."""

    def __init__(self, dev_dir: Any, port: int, *flags: str) -> None:
        self.argv = [sys.executable, "-m", "dlm_guard", "serve", "--dev", "--dev-dir",
                     str(dev_dir), "--offline", "--host", "127.0.0.1", "--port", str(port),
                     "--cert-reload-interval", "0", *flags]
        self.port = port
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._serving = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._signalled = False

    async def start(self, timeout: float = 30) -> ServeProcess:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.ensure_future(self._collect())
        waiter = asyncio.ensure_future(self._serving.wait())
        done, _ = await asyncio.wait([waiter, self._reader], timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            raise AssertionError("serve did not start:\n" + "\n".join(self.lines))
        return self

    async def _collect(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "serving https://" in line:
                self._serving.set()

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code (killed and failed when it takes longer)."""
        self.terminate()
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError("serve did not stop after SIGTERM") from None
        if self._reader is not None:
            await self._reader
        return code

    def terminate(self) -> None:
        """SIGTERM once (a second one kills serve the default way)."""
        assert self.process is not None
        if self.process.returncode is None and not self._signalled:
            self._signalled = True
            self.process.send_signal(signal.SIGTERM)

    async def kill(self) -> None:
        """Kill it if it still runs, and reap it (and its pipe)."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        if self._reader is not None:
            await self._reader
