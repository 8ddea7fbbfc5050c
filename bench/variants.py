"""Measured proposals for the webhook hot path, without touching webhook/ itself.

`python -m bench.variants --variant fastpatch,orjson -- serve --offline ...` runs
`dlm-guard serve` with the named changes monkeypatched in (and `--debounce S -- reconcile ...`
the reconciler with another watch-event debounce); `run()` measures each variant against
the unchanged server (and the bare baseline) under the same load, in one run, round by round.

Variants (each is what we propose to change in webhook/, written here as a drop-in):
  fastpatch     mutations.json_patch: a direct recursive dict diff with an equality short-cut,
                instead of jsonpatch.make_patch (not applied: DESIGN.md prefers jsonpatch)
  readall       server.read_body: `await request.read()` under client_max_size instead of a
                Python loop over chunks (not applied: read() raises the stream's buffer limit to
                2 x client_max_size, so an oversize chunked body is buffered well past the cap
                before the 413)
  gctune        gc.freeze() after start-up and a gen-0 threshold of 50,000 allocations
  quietlog      `--log-level warning`: no info line per denied request (measures logging only)

Applied in webhook/ since, so now part of the unchanged server (the names are accepted and do
nothing, so older command lines still run): narrowcopy (mutations copy only the dicts they
write), orjson (review._parse_json, server.encode_answer), metricscache
(AdmissionMetrics.observe), uvloop (`dlm-guard serve` uses it when installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JsonPatch = list[dict[str, Any]]
_ABSENT = object()


# --- the drop-ins -------------------------------------------------------------------------
def pointer(path: str, key: str) -> str:
    return f"{path}/{key.replace('~', '~0').replace('/', '~1')}"


def fast_json_patch(before: Any, after: Any) -> JsonPatch:
    """A minimal RFC 6902 patch from before to after for dict changes ([] when equal);
    anything that is not a dict on both sides is replaced whole."""
    patch: JsonPatch = []
    _diff(before, after, "", patch)
    return patch


def _diff(old: Any, new: Any, path: str, out: JsonPatch) -> None:
    if old is new or old == new:
        return
    if not (isinstance(old, dict) and isinstance(new, dict)):
        out.append({"op": "replace", "path": path, "value": new})
        return
    for key, value in old.items():
        if key not in new:
            out.append({"op": "remove", "path": pointer(path, str(key))})
        else:
            _diff(value, new[key], pointer(path, str(key)), out)
    for key, value in new.items():
        if key not in old:
            out.append({"op": "add", "path": pointer(path, str(key)), "value": value})


def _patch_fastpatch() -> None:
    from webhook import engine, mutations

    def json_patch(before: Any, after: Any) -> JsonPatch:
        return [] if before == after else fast_json_patch(dict(before), dict(after))
    mutations.json_patch = json_patch  # type: ignore[assignment]
    engine.json_patch = json_patch  # type: ignore[assignment]


def _patch_readall() -> None:
    from aiohttp import hdrs, web

    from webhook import review, server

    async def read_body(request: web.Request, limit: int, timeout: float = 5.0) -> bytes:
        declared = request.headers.get(hdrs.CONTENT_TYPE)
        review.check_content_type(request.content_type if declared else "")
        review.check_declared_length(request.content_length, limit)
        try:
            return await request.read()  # capped at the app's client_max_size (= limit)
        except web.HTTPRequestEntityTooLarge:
            raise review.ReviewError(413, f"body exceeds the {limit} byte limit") from None
    server.read_body = read_body


def _patch_gctune() -> None:
    # Move everything allocated at start-up out of the collector's sight and collect the
    # young generation less often: an admission request allocates a few hundred short-lived
    # containers (the decoded AdmissionReview), which triggers gen-0 passes constantly.
    import gc

    from aiohttp import web

    from webhook import serve
    build = serve.build

    def build_then_freeze(settings: serve.ServeSettings) -> web.Application:
        app = build(settings)
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        return app
    serve.build = build_then_freeze


PATCHES: dict[str, Callable[[], None]] = {
    "fastpatch": _patch_fastpatch, "readall": _patch_readall, "gctune": _patch_gctune,
}
FLAGS = {"quietlog": ("--log-level", "warning")}
APPLIED = frozenset({"narrowcopy", "orjson", "metricscache", "uvloop"})  # now the baseline
ALL_CODE = ("fastpatch", "readall")


# Variants that need a package the project does not depend on.
NEEDS: dict[str, str] = {}


def available(variant: str) -> bool:
    """Every package the variant's names need is installed."""
    return all(importlib.util.find_spec(NEEDS[name]) is not None
               for name in variant.split(",") if name in NEEDS)


def apply(names: Sequence[str]) -> None:
    for name in names:
        if name in PATCHES:
            PATCHES[name]()
        elif name not in FLAGS and name not in APPLIED:
            raise SystemExit(f"unknown variant {name!r}: known {sorted([*PATCHES, *FLAGS])}")


# --- the launcher ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.variants")
    parser.add_argument("--variant", default="", help="comma-separated variant names")
    parser.add_argument("--debounce", type=float, default=None,
                        help="reconciler: seconds to coalesce watch events (default: as is)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- dlm-guard arguments")
    args = parser.parse_args(argv)
    names = [n for n in args.variant.split(",") if n]
    apply(names)
    if args.debounce is not None:
        from reconciler import service as loop
        loop.DEBOUNCE_SECONDS = args.debounce
    rest = [a for a in args.rest if a != "--"]
    for name in names:
        rest += list(FLAGS.get(name, ()))
    from dlm_guard.cli import main as dlm_guard_main
    return dlm_guard_main(rest)


# --- measuring them ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    seconds: float = 8.0
    warmup: float = 1.5
    concurrency: int = 16
    rounds: int = 3
    variants: tuple[str, ...] = ("fastpatch", "readall", "gctune", "quietlog", ",".join(ALL_CODE))


def variant_spec(name: str, pair: Any) -> Any:
    from bench.servers import ServerSpec
    argv = [sys.executable, "-m", "bench.variants", "--variant", name, "--", "serve",
            "--offline", "--host", "127.0.0.1", "--port", "{port}",
            "--tls-cert", str(pair.tls_cert), "--tls-key", str(pair.tls_key)]
    return ServerSpec(name or "dlm-guard", tuple(argv))


def run(settings: Settings | None = None) -> dict[str, Any]:
    """Saturated runs of bare, unchanged dlm-guard and every variant, round-robin."""
    from bench import admission
    from bench.mix import build_mix
    from bench.servers import Server, bare_spec, pin_self, pinning_available, tls_pair

    settings = settings or Settings()
    items = build_mix()
    pinned = pinning_available([admission.LOADGEN_CORE, admission.SERVER_CORE])
    if pinned:
        pin_self(admission.LOADGEN_CORE)
    core = admission.SERVER_CORE if pinned else None
    sat = admission.Settings(seconds=settings.seconds, warmup=settings.warmup,
                             concurrency=settings.concurrency)
    with tempfile.TemporaryDirectory(prefix="dlm-guard-bench-var-") as tmp:
        pair = tls_pair(Path(tmp) / "tls")
        specs = [bare_spec(pair), variant_spec("", pair),
                 *(variant_spec(v, pair) for v in settings.variants if available(v))]
        servers = []
        try:
            for spec in specs:
                servers.append(Server(spec, Path(tmp), pair.ca_cert, core))
            ca = str(pair.ca_cert)
            for server in servers[1:]:
                admission.check_answers(server, ca, items)  # same decisions as the engine
            rounds: dict[str, list[dict[str, Any]]] = {s.spec.name: [] for s in servers}
            for index in range(settings.rounds):
                # Each round starts one server later: no server always runs first or last.
                shift = index % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    rounds[server.spec.name].append(admission.saturated(server, ca, items, sat))
        finally:
            for server in servers:
                server.stop()
    result = summarize(rounds, settings, pinned)
    result["skipped_missing_packages"] = [v for v in settings.variants if not available(v)]
    return result


def summarize(rounds: dict[str, list[dict[str, Any]]], settings: Settings,
              pinned: bool) -> dict[str, Any]:
    from bench.stats import median
    cpu = {name: median([r["server_cpu_us_per_request"] for r in runs])
           for name, runs in rounds.items()}
    rps = {name: median([r["requests_per_second"] for r in runs])
           for name, runs in rounds.items()}
    bare = cpu["bare-aiohttp"]
    # Saved CPU is taken round by round against the unchanged server of the same round
    # (measured seconds apart), then the median: drift of a shared machine cancels out.
    unchanged = [r["server_cpu_us_per_request"] for r in rounds["dlm-guard"]]
    saved = {name: median([100 * (b - r["server_cpu_us_per_request"]) / b
                           for b, r in zip(unchanged, runs, strict=True)])
             for name, runs in rounds.items() if name != "bare-aiohttp"}
    return {
        "settings": {**settings.__dict__, "pinned": pinned},
        "server_cpu_us_per_request": {n: round(v, 1) for n, v in cpu.items()},
        "requests_per_second": {n: round(v, 1) for n, v in rps.items()},
        "cpu_saved_vs_unchanged_percent": {n: round(v, 1) for n, v in saved.items()},
        "cpu_saved_each_round_percent": {
            name: [round(100 * (b - r["server_cpu_us_per_request"]) / b, 1)
                   for b, r in zip(unchanged, runs, strict=True)]
            for name, runs in rounds.items() if name != "bare-aiohttp"},
        "capacity_vs_bare": {n: round(bare / v, 3) for n, v in cpu.items()},
        "rounds": rounds,
    }


if __name__ == "__main__":
    sys.exit(main())
