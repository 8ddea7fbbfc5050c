"""HTTP load generator for the admission endpoints: aiohttp client, keep-alive, TLS.

Two modes, both bounded in time (every loop checks its deadline, every request has a timeout):
- closed loop: `concurrency` workers, each sends its next review as soon as the last answer
  arrived. Finds the saturated throughput.
- open loop: requests start on a fixed schedule (`rate` per second) whatever the answers do,
  and latency counts from the scheduled start, so a stalled server cannot hide its queue
  (no coordinated omission). Finds the latency at a given load.

Only https://127.0.0.1 targets are accepted: this tool is for the local benchmark.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.mix import Item
from bench.procstat import self_cpu
from bench.stats import latency_summary

REQUEST_TIMEOUT_SECONDS = 10.0
HEADERS = {"Content-Type": "application/json"}


class NotLocal(ValueError):
    """The benchmark only ever sends load to 127.0.0.1."""


def check_local(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme != "https" or parts.hostname != "127.0.0.1":
        raise NotLocal(f"{base_url}: the load generator only targets https://127.0.0.1")


@dataclass
class Tally:
    """What one run observed (latencies in seconds)."""

    latencies: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)  # open loop: from the actual send
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    dropped: int = 0  # open loop: not started because max_in_flight was reached

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


@dataclass(frozen=True)
class RunResult:
    mode: str
    seconds: float
    tally: Tally
    client_cpu_seconds: float
    target_rate: float | None = None

    def summary(self) -> dict[str, Any]:
        done = len(self.tally.latencies)
        result: dict[str, Any] = {
            "mode": self.mode, "seconds": round(self.seconds, 3), "requests": done,
            "errors": self.tally.errors, "requests_per_second": round(done / self.seconds, 1),
            "latency": latency_summary(self.tally.latencies),
            "client_cpu_percent": round(100 * self.client_cpu_seconds / self.seconds, 1)}
        if self.tally.error_samples:
            result["error_samples"] = self.tally.error_samples
        if self.target_rate is not None:
            result["target_rate"] = round(self.target_rate, 1)
            result["dropped"] = self.tally.dropped
            result["service_latency"] = latency_summary(self.tally.service)
        return result


def client_ssl_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def session(ca_file: str, connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(ca_file), limit=connections,
                                     force_close=False, enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS))


async def _send(client: aiohttp.ClientSession, base_url: str, item: Item, tally: Tally,
                started: float, record: bool) -> None:
    sent = time.perf_counter()
    try:
        async with client.post(base_url + item.path, data=item.body, headers=HEADERS) as resp:
            body = await resp.read()
            ok = resp.status == 200 and body[:1] == b"{"
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        if record:
            tally.error(f"{type(err).__name__}: {err}"[:200])
        return
    done = time.perf_counter()
    if not record:
        return
    if not ok:
        tally.error(f"HTTP {status}")
        return
    tally.latencies.append(done - started)
    tally.service.append(done - sent)


async def closed_loop(client: aiohttp.ClientSession, base_url: str, items: Sequence[Item],
                      concurrency: int, seconds: float, record: bool = True) -> RunResult:
    """`concurrency` workers back to back for `seconds`."""
    check_local(base_url)
    tally = Tally()
    cpu0, start = self_cpu().total, time.perf_counter()
    deadline = start + seconds

    async def worker(offset: int) -> None:
        index = offset
        while time.perf_counter() < deadline:
            item = items[index % len(items)]
            index += concurrency
            now = time.perf_counter()
            await _send(client, base_url, item, tally, now, record)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    return RunResult("closed", elapsed, tally, self_cpu().total - cpu0)


async def open_loop(client: aiohttp.ClientSession, base_url: str, items: Sequence[Item],
                    rate: float, seconds: float, max_in_flight: int = 256,
                    record: bool = True) -> RunResult:
    """Start `rate` requests per second on a fixed schedule for `seconds`."""
    check_local(base_url)
    if rate <= 0:
        raise ValueError("rate must be positive")
    tally = Tally()
    in_flight: set[asyncio.Task[None]] = set()
    cpu0, start = self_cpu().total, time.perf_counter()
    interval, index = 1.0 / rate, 0
    while True:
        scheduled = start + index * interval
        if scheduled >= start + seconds:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            tally.dropped += 1
        else:
            task = asyncio.create_task(
                _send(client, base_url, items[index % len(items)], tally, scheduled, record))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        index += 1
    if in_flight:  # each is bounded by the request timeout
        await asyncio.gather(*in_flight)
    elapsed = time.perf_counter() - start
    return RunResult("open", elapsed, tally, self_cpu().total - cpu0, target_rate=rate)


def run_sync(coro_factory: Callable[[], Any]) -> Any:
    """Run a coroutine on a fresh event loop (uvloop's when installed: a cheaper client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro_factory())
    return uvloop.run(coro_factory())
