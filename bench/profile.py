"""Profile `dlm-guard serve` under the benchmark load with pyinstrument (optional dependency).

    python -m bench profile [--seconds 8] [--variant fastpatch,readall]

Runs the server under `pyinstrument -m` (pinned like the benchmark), drives the mix at it in a
closed loop, stops it, and prints the functions with the most inclusive time (each function
counted once per stack), so where the CPU goes per request can be read at a glance.
"""

from __future__ import annotations

import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import admission
from bench.mix import build_mix
from bench.servers import Server, ServerSpec, pin_self, pinning_available, tls_pair

# Frames that only wrap the server: not interesting in the summary.
_WRAPPERS = ("runpy", "asyncio/", "selectors", "cli.py", "__main__", "serve.py", "web_runner",
             "<module>", "importlib")


def inclusive(session_file: Path, top: int) -> list[tuple[float, float, str]]:
    """(seconds, percent, 'function file:line') by inclusive time, recursion counted once."""
    from pyinstrument.session import Session

    root = Session.load(str(session_file)).root_frame()
    if root is None:
        return []
    totals: dict[str, float] = defaultdict(float)

    def walk(frame: Any, active: frozenset[str]) -> None:
        key = f"{frame.function}  {frame.file_path_short}:{frame.line_no}"
        fresh = key not in active
        if fresh:
            totals[key] += frame.time
        for child in frame.children:
            walk(child, active | {key} if fresh else active)

    walk(root, frozenset())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    kept = [(t, 100 * t / root.time, k) for k, t in ranked
            if not any(w in k for w in _WRAPPERS)]
    return kept[:top]


def run(seconds: float = 8.0, variant: str = "", top: int = 40) -> dict[str, Any]:
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        raise SystemExit("pip install pyinstrument to profile") from None
    items = build_mix()
    pinned = pinning_available([admission.LOADGEN_CORE, admission.SERVER_CORE])
    if pinned:
        pin_self(admission.LOADGEN_CORE)
    with tempfile.TemporaryDirectory(prefix="dlm-guard-bench-prof-") as tmp:
        workdir = Path(tmp)
        pair, out = tls_pair(workdir / "tls"), workdir / "serve.pyisession"
        target = (["-m", "bench.variants", "--variant", variant, "--"] if variant
                  else ["-m", "dlm_guard"])
        argv = (sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(out),
                *target, "serve", "--offline", "--host", "127.0.0.1", "--port", "{port}",
                "--tls-cert", str(pair.tls_cert), "--tls-key", str(pair.tls_key))
        server = Server(ServerSpec("profiled", argv), workdir, pair.ca_cert,
                        admission.SERVER_CORE if pinned else None)
        try:
            load = admission.saturated(server, str(pair.ca_cert), items, admission.Settings(
                seconds=seconds, warmup=1.0))
        finally:
            server.stop()
        rows = inclusive(out, top)
    return {"variant": variant or "unchanged", "load": load,
            "top_inclusive": [{"seconds": round(t, 3), "percent": round(p, 1), "where": k}
                              for t, p, k in rows]}


def render(result: dict[str, Any]) -> str:
    lines = [f"profile of dlm-guard serve ({result['variant']}), "
             f"{result['load']['requests_per_second']} req/s under pyinstrument:"]
    lines += [f"{r['seconds']:7.3f} s {r['percent']:5.1f}%  {r['where']}"
              for r in result["top_inclusive"]]
    return "\n".join(lines)
