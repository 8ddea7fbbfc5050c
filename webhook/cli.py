"""The webhook's subcommands: `serve` (here) and `check` (webhook.check)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from certs.tls import DEFAULT_RELOAD_INTERVAL
from dlm_guard import flags
from dlm_guard.logs import add_logging_flags
from webhook.check import register_check
from webhook.settings import Limits, ServeSettings

DEFAULTS = ServeSettings()


def register(subparsers: Any) -> None:
    _register_serve(subparsers)
    register_check(subparsers)


def _register_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the admission webhooks over HTTPS",
        description="Serve POST /mutate and /validate (AdmissionReview admission.k8s.io/v1), "
                    "GET /healthz, /readyz and /metrics over TLS.")
    add = parser.add_argument
    add("--host", default=DEFAULTS.host, help="address to bind (default %(default)s)")
    add("--port", type=flags.port, default=DEFAULTS.port, help="port to bind (default %(default)s)")
    add("--reuse-port", action="store_true",
        help="SO_REUSEPORT: several serve processes share the port (one per core; rolling "
             "restarts without a gap)")
    add("--tls-cert", metavar="PATH", help="serving certificate (PEM chain)")
    add("--tls-key", metavar="PATH", help="its private key (PEM)")
    add("--cert-reload-interval", type=flags.seconds(1, zero=True),
        default=DEFAULT_RELOAD_INTERVAL, metavar="SECONDS",
        help="re-read the certificate files this often (1-86400); 0: only on SIGHUP "
             f"(default {DEFAULT_RELOAD_INTERVAL:g})")
    add("--max-connections", type=flags.int_range(1, 1_000_000),
        default=DEFAULTS.limits.max_connections, metavar="N",
        help="open connections at most (lowered to fit the file descriptor limit; "
             "default %(default)s)")
    add("--idle-timeout", type=flags.seconds(0.1, 300), default=DEFAULTS.limits.idle_timeout,
        metavar="SECONDS", help="close a connection that has not sent a request's headers "
                                "this long after opening or after its last answer; also the "
                                "TLS handshake deadline (default %(default)g)")
    add("--body-timeout", type=flags.seconds(0.1, 300), default=DEFAULTS.body_timeout,
        metavar="SECONDS", help="answer 408 and close when a request body has not arrived "
                                "this long after its headers (default %(default)g)")
    add("--config", metavar="PATH", help="policy file (YAML, see DESIGN.md)")
    add("--kubeconfig", metavar="PATH",
        help="cluster to watch (default: $KUBECONFIG, ~/.kube/config, then the pod's "
             "service account)")
    add("--stale-after", type=flags.seconds(1, 86400), default=DEFAULTS.stale_after,
        metavar="SECONDS",
        help="once a cluster watch has failed this long, the cluster-state rules are skipped "
             "with a warning instead of reading old data (default %(default)g)")
    add("--offline", action="store_true",
        help="never contact a cluster; rules needing cluster state are skipped")
    add("--dev", action="store_true",
        help="generate a throwaway CA and a localhost certificate into --dev-dir and serve "
             "with them")
    add("--dev-dir", default=str(DEFAULTS.dev_dir), metavar="DIR",
        help="where --dev keeps its certificates, relative to the current directory "
             "(default certs/dev: git-ignored at the repo root)")
    add_logging_flags(parser)
    parser.set_defaults(func=_serve)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(
        host=args.host, port=args.port, reuse_port=args.reuse_port,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        cert_reload_interval=args.cert_reload_interval,
        policy_file=Path(args.config) if args.config else None,
        kubeconfig=args.kubeconfig, stale_after=args.stale_after, offline=args.offline,
        dev=args.dev,
        dev_dir=Path(args.dev_dir),
        limits=Limits(max_connections=args.max_connections,
                      handshake_timeout=args.idle_timeout, idle_timeout=args.idle_timeout),
        body_timeout=args.body_timeout, log_format=args.log_format, log_level=args.log_level)


def _serve(args: argparse.Namespace) -> int:
    # Imported on use: `dlm-guard check` and `--help` need none of the server's imports.
    from webhook.serve import run

    return run(settings_from_args(args))
