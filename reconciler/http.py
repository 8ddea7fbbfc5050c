"""`/healthz` and `/metrics` for the reconciler (plain HTTP: no secrets are served)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from reconciler.metrics import ReconcilerMetrics

METRICS_KEY = web.AppKey("metrics", ReconcilerMetrics)
HEALTHY_KEY: web.AppKey[Callable[[], bool]] = web.AppKey("healthy")


async def healthz(request: web.Request) -> web.Response:
    if request.app[HEALTHY_KEY]():
        return web.Response(text="ok\n")
    return web.Response(status=503, text="reconcile loop not running\n")


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(registry: ReconcilerMetrics, healthy: Callable[[], bool]) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = registry
    app[HEALTHY_KEY] = healthy
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app`; returns the runner (call cleanup()) and the bound port (useful with 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
