"""Webhook throughput and latency: dlm-guard side by side with its baselines, in one run.

Servers (each one process, pinned to core 1 when the machine has it; the load generator pins
itself to core 0):
  bare-aiohttp        bench/bare_server.py: a fixed "allowed" answer (the ceiling of the stack)
  dlm-guard-rules-off `dlm-guard serve --offline` with every rule off (mutations still run)
  dlm-guard           `dlm-guard serve --offline` with the default policy

Saturated runs (closed loop) alternate between the servers round by round, so drift on a noisy
machine hits them all alike; each server's figure is the median of its rounds. Then open-loop
runs at a fraction (default 50%) of dlm-guard's saturated throughput give the latency at load.
Ratios are dlm-guard / bare: throughput, and server CPU per request (the capacity ratio, which
stays meaningful when the load generator rather than the server is the bottleneck).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import loadgen, micro
from bench.mix import MUTATE, Item, build_mix
from bench.servers import (
    Server,
    ServerSpec,
    bare_spec,
    dlm_guard_spec,
    pin_self,
    pinning_available,
    tls_pair,
    write_rules_off_policy,
)
from bench.stats import median
from webhook import engine

BARE, RULES_OFF, DEFAULT = "bare-aiohttp", "dlm-guard-rules-off", "dlm-guard"
LOADGEN_CORE, SERVER_CORE = 0, 1
P99_TARGET_MS = 5.0
THROUGHPUT_TARGET_RATIO = 0.8


@dataclass(frozen=True)
class Settings:
    seconds: float = 10.0  # per saturated run
    warmup: float = 2.0
    concurrency: int = 16
    rounds: int = 3
    latency_seconds: float = 10.0  # per open-loop round
    latency_rounds: int = 3
    latency_fraction: float = 0.5
    extra_server_args: tuple[str, ...] = ()  # e.g. ("--log-level", "warning") to compare


# --- correctness first: every server answers every review of the mix ---------------------
def expected_allowed(items: list[Item], rules_off: bool) -> list[bool]:
    ctx = micro.context(micro.all_off_policy() if rules_off else None)
    return [(engine.mutate if i.path == MUTATE else engine.validate)(i.request, ctx).allowed
            for i in items]


async def _answers(server: Server, ca: str, items: list[Item]) -> list[dict[str, Any]]:
    async with loadgen.session(ca, 1) as client:
        answers = []
        for item in items:
            async with client.post(server.base_url + item.path, data=item.body,
                                   headers=loadgen.HEADERS) as resp:
                if resp.status != 200:
                    raise AssertionError(f"{server.spec.name}: HTTP {resp.status} for "
                                         f"{item.name}{item.path}")
                answers.append(json.loads(await resp.read()))
        return answers


def check_answers(server: Server, ca: str, items: list[Item]) -> dict[str, Any]:
    """Send the mix once; dlm-guard must echo uids and decide as the engine does."""
    answers = loadgen.run_sync(lambda: _answers(server, ca, items))
    if server.spec.name == BARE:
        return {"checked": len(answers), "denied": 0}
    expected = expected_allowed(items, server.spec.name == RULES_OFF)
    for item, answer, allowed in zip(items, answers, expected, strict=True):
        response = answer["response"]
        if response["uid"] != item.request["uid"] or response["allowed"] != allowed:
            raise AssertionError(f"{server.spec.name}: wrong answer for {item.name}{item.path}: "
                                 f"{response}")
    return {"checked": len(answers), "denied": sum(1 for a in expected if not a),
            "patched": sum(1 for a in answers if "patch" in a["response"])}


# --- runs ---------------------------------------------------------------------------------
def measured(server: Server, ca: str, run: Any, connections: int,
             warmup: float) -> dict[str, Any]:
    """Warm up, then run `run(client)` while sampling the server's CPU."""
    async def go() -> tuple[loadgen.RunResult, float, float]:
        async with loadgen.session(ca, connections) as client:
            if warmup > 0:
                await run(client, warmup, False)
            cpu0, t0 = server.cpu().total, time.perf_counter()
            result: loadgen.RunResult = await run(client, None, True)
            return result, server.cpu().total - cpu0, time.perf_counter() - t0

    result, cpu_seconds, wall = loadgen.run_sync(go)
    summary = result.summary()
    done = max(summary["requests"], 1)
    summary["server_cpu_percent"] = round(100 * cpu_seconds / wall, 1)
    summary["server_cpu_us_per_request"] = round(cpu_seconds / done * 1e6, 1)
    summary.update(server.memory())
    return summary


def saturated(server: Server, ca: str, items: list[Item], settings: Settings) -> dict[str, Any]:
    async def run(client: aiohttp.ClientSession, seconds: float | None,
                  record: bool) -> loadgen.RunResult:
        return await loadgen.closed_loop(client, server.base_url, items, settings.concurrency,
                                         seconds or settings.seconds, record)
    return measured(server, ca, run, settings.concurrency, settings.warmup)


def at_rate(server: Server, ca: str, items: list[Item], rate: float,
            settings: Settings) -> dict[str, Any]:
    async def run(client: aiohttp.ClientSession, seconds: float | None,
                  record: bool) -> loadgen.RunResult:
        return await loadgen.open_loop(client, server.base_url, items, rate,
                                       seconds or settings.latency_seconds, record=record)
    return measured(server, ca, run, 64, settings.warmup)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput, plus every round's throughput."""
    ordered = sorted(runs, key=lambda r: r["requests_per_second"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds_requests_per_second"] = [r["requests_per_second"] for r in runs]
    return chosen


def _median_p99_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median p99, plus every round's p99."""
    ordered = sorted(runs, key=lambda r: r["latency"].get("p99_ms", float("inf")))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds_p99_ms"] = [r["latency"].get("p99_ms") for r in runs]
    return chosen


def ratios(by_name: dict[str, dict[str, Any]], of: str) -> dict[str, float]:
    bare, ours = by_name[BARE], by_name[of]
    return {"throughput": round(ours["requests_per_second"] / bare["requests_per_second"], 3),
            "capacity_by_cpu": round(bare["server_cpu_us_per_request"]
                                     / ours["server_cpu_us_per_request"], 3)}


# --- the whole comparison -------------------------------------------------------------------
def start_servers(workdir: Path, settings: Settings, core: int | None,
                  ) -> tuple[list[Server], str]:
    pair = tls_pair(workdir / "tls")
    off = write_rules_off_policy(workdir / "rules-off.yaml")
    specs: list[ServerSpec] = [
        bare_spec(pair),
        dlm_guard_spec(RULES_OFF, pair, off, settings.extra_server_args),
        dlm_guard_spec(DEFAULT, pair, None, settings.extra_server_args),
    ]
    servers: list[Server] = []
    try:
        for spec in specs:
            servers.append(Server(spec, workdir, pair.ca_cert, core))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers, str(pair.ca_cert)


def run(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    items = build_mix()
    pinned = pinning_available([LOADGEN_CORE, SERVER_CORE])
    if pinned:
        pin_self(LOADGEN_CORE)
    with tempfile.TemporaryDirectory(prefix="dlm-guard-bench-") as tmp:
        servers, ca = start_servers(Path(tmp), settings, SERVER_CORE if pinned else None)
        try:
            return _compare(servers, ca, items, settings, pinned)
        finally:
            codes = {s.spec.name: s.stop() for s in servers}
            errors = [s.tail() for s in servers if "Traceback" in s.tail(200)]
            if errors:
                raise RuntimeError("a server logged a traceback:\n" + "\n".join(errors))
            del codes


def _compare(servers: list[Server], ca: str, items: list[Item], settings: Settings,
             pinned: bool) -> dict[str, Any]:
    by_name = {s.spec.name: s for s in servers}
    checks = {s.spec.name: check_answers(s, ca, items) for s in servers}
    rounds: dict[str, list[dict[str, Any]]] = {s.spec.name: [] for s in servers}
    for _ in range(settings.rounds):
        for server in servers:
            rounds[server.spec.name].append(saturated(server, ca, items, settings))
    results = {name: _median_run(runs) for name, runs in rounds.items()}
    rate = settings.latency_fraction * results[DEFAULT]["requests_per_second"]
    # Rounds here too: one stall of the shared machine (another process) can move a p99.
    latency_rounds: dict[str, list[dict[str, Any]]] = {DEFAULT: [], BARE: []}
    for _ in range(settings.latency_rounds):
        for name in (DEFAULT, BARE):
            latency_rounds[name].append(at_rate(by_name[name], ca, items, rate, settings))
    latency = {name: _median_p99_run(runs) for name, runs in latency_rounds.items()}
    p99 = latency[DEFAULT]["latency"].get("p99_ms", float("inf"))
    ratio = ratios(results, DEFAULT)
    return {
        "settings": {**settings.__dict__, "pinned": pinned,
                     "loadgen_core": LOADGEN_CORE if pinned else None,
                     "server_core": SERVER_CORE if pinned else None,
                     "reviews_in_mix": len(items), "client_loop": _client_loop()},
        "servers": {s.spec.name: " ".join(s.argv) for s in servers},
        "answer_checks": checks,
        "saturated": results,
        "ratios_vs_bare": {RULES_OFF: ratios(results, RULES_OFF), DEFAULT: ratio},
        "latency_at_fraction": latency,
        "targets": {
            "throughput_ratio": {"target": THROUGHPUT_TARGET_RATIO,
                                 "measured": ratio["throughput"],
                                 "met": ratio["throughput"] >= THROUGHPUT_TARGET_RATIO},
            "p99_ms_at_fraction": {"target": P99_TARGET_MS, "measured": p99,
                                   "met": p99 < P99_TARGET_MS},
        },
    }


def _client_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def median_of(values: list[float]) -> float:
    return median(values)
