"""`dlm-guard serve`: check the settings, then run the app over TLS until SIGTERM/SIGINT.

Everything that can be wrong with the settings (policy file, certificates, cluster config)
fails here, before binding the port, with exit code 2 and a message naming the problem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from certs.generate import CertError, generate_pair
from certs.tls import ServingTLS, TLSLoadError, add_sighup_reload, register_expiry_gauge, reload_ctx
from dlm_guard.logs import setup_logging
from webhook.engine import Context, random_suffix
from webhook.live import VmiLookup, confirming_validate
from webhook.metrics import AdmissionMetrics
from webhook.policy import CLUSTER_RULES, Policy, PolicyError, load_policy
from webhook.server import CONTEXT, IN_FLIGHT, Engine, ReadyCheck, create_app

if TYPE_CHECKING:  # webhook.cache pulls in the kubernetes client: imported on use only
    from webhook.cache import ClusterCache

log = logging.getLogger(__name__)

SERVING_TLS = web.AppKey("serving_tls", ServingTLS)
# The API server gives up on a webhook call after 10 s by default (30 s at most) and the
# kubelet kills a pod 30 s after SIGTERM by default: draining calls in flight for up to 20 s
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


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_format, args.log_level)
    try:
        app = build(args)
    except StartupError as err:
        print(f"dlm-guard serve: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve_until_signalled(app, args.host, args.port))
    except OSError as err:  # e.g. the port is taken
        log.error("cannot serve on %s:%d: %s", args.host, args.port, err)
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


async def serve_until_signalled(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, let calls in flight finish (up to
    SHUTDOWN_TIMEOUT) and clean up. A second signal kills the process the default way."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=RUNNER_SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=app[SERVING_TLS].context)
        await site.start()
        log.info("serving https://%s:%d", host, port,
                 extra={"offline": app[CONTEXT].cluster is None})
        received = await _first_signal(signal.SIGTERM, signal.SIGINT)
        log.info("%s: no new connections, finishing calls in flight", received.name,
                 extra={"in_flight": app[IN_FLIGHT].count})
        await site.stop()
        if not await app[IN_FLIGHT].wait_idle(SHUTDOWN_TIMEOUT):
            log.warning("calls still in flight after %gs, closing", SHUTDOWN_TIMEOUT)
    finally:
        await runner.cleanup()


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


def build(args: argparse.Namespace) -> web.Application:
    """The configured app; StartupError for anything the operator has to fix."""
    policy = _load_policy(args.config)
    files = _tls_files(args)
    tls = _serving_tls(files)
    cache, lookup = (None, None) if args.offline else _cluster_cache(args.kubeconfig)
    metrics = AdmissionMetrics()
    register_expiry_gauge(metrics.registry, tls)
    checks: list[ReadyCheck] = [_cert_check(tls)]
    if cache is not None:
        checks.append(cache.not_ready_reason)
    ctx = Context(policy=policy, cluster=cache.store if cache is not None else None,
                  new_id=random_suffix)
    engine = Engine() if lookup is None else Engine(validate=confirming_validate(lookup))
    app = create_app(ctx, engine=engine, metrics=metrics, ready_checks=checks)
    app[SERVING_TLS] = tls
    app.cleanup_ctx.append(_reload_ctx(tls, args.cert_reload_interval))
    if cache is None:
        log.warning("offline: no cluster state, rules skipped: %s",
                    ", ".join(sorted(CLUSTER_RULES)))
    else:
        app.cleanup_ctx.append(_cache_ctx(cache))
    if files.ca is not None:
        _print_dev_help(files.ca, args.port)
    return app


# --- Settings -------------------------------------------------------------------------
def _load_policy(path: str | None) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as err:
        raise StartupError(str(err)) from None


def _tls_files(args: argparse.Namespace) -> TLSFiles:
    if args.dev:
        if args.tls_cert or args.tls_key:
            raise StartupError("--dev makes its own certificate: drop --tls-cert/--tls-key")
        return _dev_pair(Path(args.dev_dir))
    if not (args.tls_cert and args.tls_key):
        raise StartupError("--tls-cert and --tls-key are required (or --dev for a throwaway "
                           "localhost certificate)")
    return TLSFiles(Path(args.tls_cert), Path(args.tls_key))


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


def _cluster_cache(kubeconfig: str | None) -> tuple[ClusterCache, VmiLookup]:
    # Imported here: the kubernetes client is slow to import and --offline never needs it.
    from webhook.cache import (
        ClusterCache,
        ClusterConfigError,
        KubeSource,
        load_api_client,
        resolve_kube_config,
    )

    try:
        config = resolve_kube_config(kubeconfig, os.environ, Path.home())
        api_client = load_api_client(config)
    except ClusterConfigError as err:
        raise StartupError(str(err)) from None
    log.info("watching cluster %s", api_client.configuration.host, extra={"config": config})
    from webhook.live import KubeVmiLookup

    return ClusterCache(KubeSource(api_client)), KubeVmiLookup(api_client)


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


def _cache_ctx(cache: ClusterCache) -> Callable[[Any], AsyncIterator[None]]:
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
