"""The webhook's subcommands: `serve` (here) and `check` (webhook.check)."""

from __future__ import annotations

import argparse
from typing import Any

from certs.tls import DEFAULT_RELOAD_INTERVAL
from dlm_guard.logs import add_logging_flags
from webhook.check import register_check


def register(subparsers: Any) -> None:
    _register_serve(subparsers)
    register_check(subparsers)


def _register_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the admission webhooks over HTTPS",
        description="Serve POST /mutate and /validate (AdmissionReview admission.k8s.io/v1), "
                    "GET /healthz, /readyz and /metrics over TLS.")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8443, help="port to bind (default 8443)")
    parser.add_argument("--tls-cert", metavar="PATH", help="serving certificate (PEM chain)")
    parser.add_argument("--tls-key", metavar="PATH", help="its private key (PEM)")
    parser.add_argument("--cert-reload-interval", type=float, default=DEFAULT_RELOAD_INTERVAL,
                        metavar="SECONDS",
                        help="re-read the certificate files this often; 0: only on SIGHUP "
                             f"(default {DEFAULT_RELOAD_INTERVAL:g})")
    parser.add_argument("--config", metavar="PATH", help="policy file (YAML, see DESIGN.md)")
    parser.add_argument("--kubeconfig", metavar="PATH",
                        help="cluster to watch (default: $KUBECONFIG, ~/.kube/config, "
                             "then the pod's service account)")
    parser.add_argument("--stale-after", type=float, default=120.0, metavar="SECONDS",
                        help="once a cluster watch has failed this long, the cluster-state "
                             "rules are skipped with a warning instead of reading old data "
                             "(default 120)")
    parser.add_argument("--offline", action="store_true",
                        help="never contact a cluster; rules needing cluster state are skipped")
    parser.add_argument("--dev", action="store_true",
                        help="generate a throwaway CA and a localhost certificate into "
                             "--dev-dir and serve with them")
    parser.add_argument("--dev-dir", default="certs/dev", metavar="DIR",
                        help="where --dev keeps its certificates, relative to the current "
                             "directory (default certs/dev: git-ignored at the repo root)")
    add_logging_flags(parser)
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    # Imported on use: `dlm-guard check` and `--help` need none of the server's imports.
    from webhook.serve import run

    return run(args)
