"""`dlm-guard serve`: check the settings, then run the app over TLS until SIGTERM/SIGINT.

Everything that can be wrong with the settings (policy file, certificates, cluster config)
fails here, before binding the port, with exit code 2 and a message naming the problem.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from certs.generate import CertError, generate_pair
from certs.tls import ServingTLS, TLSLoadError, add_sighup_reload, register_expiry_gauge, reload_ctx
from dlm_guard.logs import setup_logging
from dlm_guard.memory import fix_mmap_threshold
from webhook.engine import Context, random_suffix
from webhook.listener import Listener, connection_cap, raise_fd_limit
from webhook.live import VmiLookup, confirming_validate
from webhook.metrics import AdmissionMetrics
from webhook.policy import CLUSTER_RULES, Policy, PolicyError, load_policy
from webhook.server import CONTEXT, DRAINING, IN_FLIGHT, Engine, ReadyCheck, create_app
from webhook.settings import Limits, ServeSettings

if TYPE_CHECKING:  # webhook.cache pulls in the kubernetes client: imported on use only
    from webhook.cache import WebhookCluster

log = logging.getLogger(__name__)

SERVING_TLS = web.AppKey("serving_tls", ServingTLS)
# The API server gives up on a webhook call after 10 s by default (30 s at most) and the
# kubelet kills a pod 30 s after SIGTERM by default: draining connections for up to 20 s
# covers every call still worth answering, and aiohttp's own shutdown after the drain (which
# only has stragglers left) gets 5 s, so the process is gone before the kubelet's SIGKILL.
SHUTDOWN_TIMEOUT = 20.0
RUNNER_SHUTDOWN_TIMEOUT = 5.0
EXIT_USAGE = 2


class StartupError(Exception):
    """A setting that keeps the server from starting; the message says what to change."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: Path
    key: Path
    ca: Path | None = None  # known only for --dev


def run(settings: ServeSettings) -> int:
    setup_logging(settings.log_format, settings.log_level)
    fix_mmap_threshold()  # big bodies' buffers go back to the OS when freed
    try:
        app = build(settings)
    except StartupError as err:
        print(f"dlm-guard serve: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve_until_signalled(app, settings))
    except OSError as err:  # e.g. the port is taken
        log.error("cannot serve on %s:%d: %s", settings.host, settings.port, err)
        return 1
    log.info("stopped")
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (less CPU per request under aiohttp), else
    None: asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def limits_for_this_process(limits: Limits) -> Limits:
    """The connection cap lowered, if need be, to leave file descriptors for the rest."""
    fd_limit = raise_fd_limit()
    cap = connection_cap(limits.max_connections, fd_limit)
    if cap < limits.max_connections:
        log.warning("--max-connections lowered to %d to fit the file descriptor limit of %d",
                    cap, fd_limit)
    return replace(limits, max_connections=cap)


async def serve_until_signalled(app: web.Application, settings: ServeSettings) -> None:
    """Serve until SIGTERM/SIGINT, then drain (see `drain`) and clean up. A second signal
    kills the process the default way."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=RUNNER_SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        listener = Listener(runner, app[SERVING_TLS].context,
                            limits_for_this_process(settings.limits),
                            reuse_port=settings.reuse_port)
        listener.bind(settings.host, settings.port)
        listener.start()
        log.info("serving https://%s:%d", settings.host, listener.port,
                 extra={"offline": app[CONTEXT].cluster is None,
                        "reuse_port": settings.reuse_port})
        received = await _first_signal(signal.SIGTERM, signal.SIGINT)
        log.info("%s: draining", received.name, extra={"in_flight": app[IN_FLIGHT].count,
                                                        "connections": listener.open_connections})
        await drain(app, listener)
    finally:
        await runner.cleanup()


async def drain(app: web.Application, listener: Listener) -> None:
    """Stop accepting (after taking what waits in the backlog); answer everything still
    arriving with `Connection: close`; close keep-alive connections once idle; wait up to
    SHUTDOWN_TIMEOUT for the rest to finish, then close what is left."""
    app[DRAINING].active = True
    await listener.stop_accepting()
    if not await listener.drain(SHUTDOWN_TIMEOUT):
        log.warning("connections still open after %gs, closing", SHUTDOWN_TIMEOUT,
                    extra={"connections": listener.open_connections})
        listener.close_all()


async def _first_signal(*signals: signal.Signals) -> signal.Signals:
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def deliver(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in signals:
        loop.add_signal_handler(sig, deliver, sig)
    try:
        return await received
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def build(settings: ServeSettings) -> web.Application:
    """The configured app; StartupError for anything the operator has to fix."""
    policy = _load_policy(settings.policy_file)
    files = _tls_files(settings)
    tls = _serving_tls(files)
    cache, lookup = (None, None) if settings.offline else _cluster_cache(settings.kubeconfig,
                                                                         settings.stale_after)
    metrics = AdmissionMetrics()
    register_expiry_gauge(metrics.registry, tls)
    checks: list[ReadyCheck] = [_cert_check(tls)]
    if cache is not None:
        checks.append(cache.not_ready_reason)
        _register_watch_health(metrics, cache)
    ctx = Context(policy=policy, cluster=cache, new_id=random_suffix)
    engine = Engine() if lookup is None else Engine(validate=confirming_validate(lookup))
    app = create_app(ctx, engine=engine, metrics=metrics, ready_checks=checks,
                     body_timeout=settings.body_timeout)
    app[SERVING_TLS] = tls
    app.cleanup_ctx.append(_reload_ctx(tls, settings.cert_reload_interval))
    if cache is None:
        log.warning("offline: no cluster state, rules skipped: %s",
                    ", ".join(sorted(CLUSTER_RULES)))
    else:
        app.cleanup_ctx.append(_cache_ctx(cache))
    if files.ca is not None:
        _print_dev_help(files.ca, settings.port)
    return app


# --- Settings -------------------------------------------------------------------------
def _load_policy(path: Path | None) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as err:
        raise StartupError(str(err)) from None


def _tls_files(settings: ServeSettings) -> TLSFiles:
    if settings.dev:
        if settings.tls_cert or settings.tls_key:
            raise StartupError("--dev makes its own certificate: drop --tls-cert/--tls-key")
        return _dev_pair(settings.dev_dir)
    if not (settings.tls_cert and settings.tls_key):
        raise StartupError("--tls-cert and --tls-key are required (or --dev for a throwaway "
                           "localhost certificate)")
    return TLSFiles(settings.tls_cert, settings.tls_key)


def _dev_pair(out_dir: Path) -> TLSFiles:
    try:
        pair = generate_pair(out_dir, dns=("localhost",), ips=("127.0.0.1", "::1"))
    except (CertError, OSError) as err:
        raise StartupError(f"--dev: cannot create certificates in {out_dir}: {err}") from None
    (out_dir / "review.json").write_text(json.dumps(SAMPLE_REVIEW, indent=2) + "\n")
    return TLSFiles(pair.tls_cert, pair.tls_key, pair.ca_cert)


def _serving_tls(files: TLSFiles) -> ServingTLS:
    try:
        return ServingTLS(files.cert, files.key)
    except TLSLoadError as err:
        raise StartupError(str(err)) from None


def _cluster_cache(kubeconfig: str | None, stale_after: float
                   ) -> tuple[WebhookCluster, VmiLookup]:
    # Imported here: the kubernetes client is slow to import and --offline never needs it.
    from dlm_guard.kube.config import ClusterConfigError, load_api_client, resolve_kube_config
    from webhook.cache import WebhookCluster

    try:
        config = resolve_kube_config(kubeconfig, os.environ, Path.home())
        api_client = load_api_client(config)
    except ClusterConfigError as err:
        raise StartupError(str(err)) from None
    log.info("watching cluster %s", api_client.configuration.host, extra={"config": config})
    from webhook.live import KubeVmiLookup

    return WebhookCluster.for_client(api_client, stale_after), KubeVmiLookup(api_client)


def _register_watch_health(metrics: AdmissionMetrics, cache: WebhookCluster) -> None:
    from dlm_guard.kube.metrics import WatchHealthCollector

    metrics.registry.register(WatchHealthCollector(lambda: {"": cache.cache}))


def _cert_check(tls: ServingTLS) -> ReadyCheck:
    def check() -> str | None:
        if tls.expired(datetime.now(UTC)):
            return f"serving certificate expired {tls.not_after:%Y-%m-%dT%H:%M:%SZ}"
        return None
    return check


# --- Background work tied to the app's lifetime ----------------------------------------
def _reload_ctx(tls: ServingTLS, interval: float) -> Callable[[Any], AsyncIterator[None]]:
    if interval > 0:
        return reload_ctx(tls, interval)  # polls the files and reloads on SIGHUP

    async def sighup_only(_app: Any) -> AsyncIterator[None]:
        hooked = add_sighup_reload(tls)
        yield
        if hooked:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    return sighup_only


def _cache_ctx(cache: WebhookCluster) -> Callable[[Any], AsyncIterator[None]]:
    async def lifetime(_app: Any) -> AsyncIterator[None]:
        cache.start()
        try:
            yield
        finally:
            # stop() joins threads: run it off the loop so shutdown stays responsive.
            await asyncio.get_running_loop().run_in_executor(None, cache.stop)
    return lifetime


# --- --dev ----------------------------------------------------------------------------
# A source VMIM that names an https:// URL: the classic mistake, denied by [connect-url].
SAMPLE_REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "00000000-0000-0000-0000-000000000001",
        "kind": {"group": "kubevirt.io", "version": "v1",
                 "kind": "VirtualMachineInstanceMigration"},
        "resource": {"group": "kubevirt.io", "version": "v1",
                     "resource": "virtualmachineinstancemigrations"},
        "operation": "CREATE",
        "namespace": "default",
        "name": "example-source-migration",
        "object": {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "example-source-migration", "namespace": "default"},
            "spec": {"vmiName": "example-decentralized-lm-vm",
                     "sendTo": {"migrationID": "example-decentralized-lm-vm-7f3a9c",
                                "connectURL": "https://10.244.1.17:9185"}},
        },
    },
}


def _print_dev_help(ca: Path, port: int) -> None:
    ca_path = ca.resolve()
    review = ca_path.parent / "review.json"
    base = f"https://127.0.0.1:{port}"
    print(f"dlm-guard serve --dev: throwaway CA and serving certificate for localhost in "
          f"{ca_path.parent} (never use them in production)\n"
          f"  CA certificate: {ca_path}\n"
          f"  try: curl --cacert {ca_path} {base}/healthz\n"
          f"       curl --cacert {ca_path} -H 'Content-Type: application/json' "
          f"-d @{review} {base}/validate", flush=True)
