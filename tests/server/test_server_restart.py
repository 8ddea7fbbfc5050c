"""Real `serve` processes stopped and restarted under keep-alive load: SIGTERM loses no
request, idle connections go first, SO_REUSEPORT shares a port, the fd limit is respected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from server_support import (
    ServeProcess,
    closed_by_peer,
    free_port,
    open_tls,
    post_head,
    read_answer,
)


@dataclass
class Client:
    """A keep-alive client sending one call after another on one connection at a time."""

    answered: int = 0
    lost: int = 0  # sent, then the connection closed without an answer
    closes: int = 0  # answers with `Connection: close`
    refused: int = 0  # new connections that could not be made (nothing sent on them)
    errors: list[str] = field(default_factory=list)


def review_body(dev: Path) -> bytes:
    return (dev / "review.json").read_bytes()


async def keep_alive_client(port: int, ca: ssl.SSLContext, body: bytes, client: Client,
                            stop: asyncio.Event, *, reconnect: bool) -> None:
    while not stop.is_set():
        try:
            reader, writer = await open_tls(port, ca)
        except OSError:
            client.refused += 1
            if not reconnect:
                return
            await asyncio.sleep(0.01)  # a busy loop of refused connects would starve others
            continue
        try:
            while not stop.is_set():
                writer.write(post_head(len(body)) + body)
                try:
                    status, headers, answer = await asyncio.wait_for(read_answer(reader), 20)
                except (asyncio.IncompleteReadError, OSError, TimeoutError) as err:
                    client.lost += 1
                    client.errors.append(repr(err))
                    break
                if status != 200 or b'"allowed"' not in answer:
                    client.errors.append(f"HTTP {status}: {answer[:200]!r}")
                client.answered += 1
                if headers.get("connection") == "close":
                    client.closes += 1
                    break
        finally:
            await close(writer)
        if not reconnect:
            return


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5)


async def until(predicate: object, timeout: float = 30) -> None:
    """Poll `predicate()` until true, failing after `timeout` seconds."""
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_sigterm_loses_no_request_and_closes_idle_connections_first(
        tmp_path: Path) -> None:
    server = await ServeProcess(tmp_path / "dev", free_port()).start()
    ca = ssl.create_default_context(cafile=str(tmp_path / "dev" / "ca.crt"))
    body = review_body(tmp_path / "dev")
    stop = asyncio.Event()
    try:
        clients = [Client() for _ in range(16)]
        load = [asyncio.ensure_future(keep_alive_client(server.port, ca, body, c, stop,
                                                        reconnect=False)) for c in clients]
        idle_reader, idle = await open_tls(server.port, ca)
        idle.write(post_head(len(body)) + body)
        assert (await read_answer(idle_reader))[0] == 200  # now an idle keep-alive connection
        slow_reader, slow = await open_tls(server.port, ca)
        slow.write(post_head(len(body)) + body[:50])  # a call in flight: body half sent
        await until(lambda: all(c.answered >= 5 for c in clients))

        server.terminate()
        assert await closed_by_peer(idle_reader, 10)  # the idle one is closed first ...
        slow.write(body[50:])  # ... while the call in flight is still answered
        status, headers, _ = await asyncio.wait_for(read_answer(slow_reader), 10)
        await asyncio.gather(close(idle), close(slow))
        await asyncio.wait_for(asyncio.gather(*load), 30)
        assert await server.stop() == 0
    finally:
        stop.set()
        await server.kill()
    assert status == 200 and headers["connection"] == "close"
    assert [c.lost for c in clients] == [0] * 16, [c.errors for c in clients]
    assert [c.closes for c in clients] == [1] * 16  # told to go elsewhere, on an answer
    assert not any(c.errors for c in clients)


async def test_two_processes_share_a_port_through_a_rolling_restart(tmp_path: Path) -> None:
    """SO_REUSEPORT: restart A, then B, under keep-alive load; every call is answered."""
    port, dev = free_port(), tmp_path / "dev"
    first = await ServeProcess(dev, port, "--reuse-port").start()
    second = await ServeProcess(dev, port, "--reuse-port").start()
    ca = ssl.create_default_context(cafile=str(dev / "ca.crt"))
    body, stop = review_body(dev), asyncio.Event()
    clients = [Client() for _ in range(8)]
    load = [asyncio.ensure_future(keep_alive_client(port, ca, body, c, stop, reconnect=True))
            for c in clients]
    running = [first, second]
    try:
        for index in range(2):
            before = sum(c.answered for c in clients)
            await until(lambda before=before: sum(c.answered for c in clients) > before + 50)
            assert await running[index].stop() == 0
            running[index] = await ServeProcess(dev, port, "--reuse-port").start()
        before = sum(c.answered for c in clients)
        await until(lambda: sum(c.answered for c in clients) > before + 50)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 30)
    finally:
        stop.set()
        for server in running:
            await server.kill()
    # No call is lost. A *new* connection may still be reset in the instant a listener closes
    # (Linux resets what waits in a closed SO_REUSEPORT socket's accept queue unless
    # net.ipv4.tcp_migrate_req=1): nothing was sent on it, the client connects again.
    assert sum(c.lost for c in clients) == 0, [c.errors for c in clients]
    assert not any(c.errors for c in clients)
    assert sum(c.closes for c in clients) >= 2  # each stop told its clients to reconnect


async def test_without_reuse_port_a_second_process_cannot_bind(tmp_path: Path) -> None:
    port, dev = free_port(), tmp_path / "dev"
    first = await ServeProcess(dev, port).start()
    second = ServeProcess(dev, port)
    try:
        second.process = await asyncio.create_subprocess_exec(
            *second.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(second.process.communicate(), 30)
        assert second.process.returncode == 1
        assert b"cannot serve on 127.0.0.1" in err and b"in use" in err
    finally:
        await first.stop()
        await second.kill()


async def test_the_cap_leaves_file_descriptors_for_the_rest(tmp_path: Path) -> None:
    """With 256 descriptors in all (hard limit), --max-connections 1000 becomes 192; 300
    clients do not starve the process: once they leave, calls are answered again."""
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    server = ServeProcess(tmp_path / "dev", free_port(), "--idle-timeout", "60")
    server.process = await asyncio.create_subprocess_exec(
        *server.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        preexec_fn=low_limit)
    server._reader = asyncio.ensure_future(server._collect())
    await until(lambda: any("serving https://" in line for line in server.lines))
    ca = ssl.create_default_context(cafile=str(tmp_path / "dev" / "ca.crt"))
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(300):  # TCP connects all succeed: the extra ones wait in the backlog
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            held.append(writer)
        await until(lambda: any("connection cap reached: 192" in line
                                for line in server.lines))
        await asyncio.gather(*(close(writer) for writer in held))
        body = review_body(tmp_path / "dev")
        reader, writer = await open_tls(server.port, ca)
        writer.write(post_head(len(body)) + body)
        status, _, answer = await asyncio.wait_for(read_answer(reader), 30)
        await close(writer)
        assert status == 200 and json.loads(answer)["response"]["allowed"] is False
        assert await server.stop() == 0
    finally:
        await server.kill()
    assert any("--max-connections lowered to 192" in line for line in server.lines)
    assert not any("Too many open files" in line for line in server.lines)
