"""`dlm-guard reconcile`: flags -> Settings -> the service (or one pass with --once)."""

from __future__ import annotations

import argparse
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from dlm_guard.domain import DEFAULT_KUBEVIRT_NAMESPACE
from dlm_guard.logs import add_logging_flags, setup_logging
from reconciler.settings import Settings, parse_cluster_flag, parse_duration, pod_namespace

# The Kubernetes client and aiohttp are imported on use (in main): every `dlm-guard` command,
# `check` and `--help` included, registers this subcommand, and they cost ~0.25 s to import.
if TYPE_CHECKING:
    from reconciler.clusters import Registry
    from reconciler.leader import LeaderElector

log = logging.getLogger(__name__)

EPILOG = """\
clusters:
  --cluster NAME=KUBECONFIG[,context=CTX][,namespace=NS]   (repeatable)
      names a cluster; `namespace=` overrides --kubevirt-namespace for it.
  --manage NAME   (repeatable) clusters this process may write to; the others are read-only.
  Without --cluster (in a pod): the local cluster `local` (in-cluster config, managed unless
  --manage says otherwise) plus one peer per Secret in --namespace labelled dlm-guard.io/peer
  (data key `kubeconfig`, optional `kubevirt-namespace`; cluster name = label value, or the
  Secret name when the value is `true`). Secrets are re-read on every pass.
durations: 30s, 5m, 1h, 1h30m, 0.
exit status with --once: 0 when the pass had no errors, 1 otherwise, 2 on bad flags.
"""


def duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reconcile", help="keep peer CA trust in sync and clean up failed or stuck migrations",
        description="Keep every managed cluster trusting its peers' current KubeVirt CAs and "
                    "clean up what failed, stuck or orphaned decentralized migrations leave.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--cluster", action="append", default=[], metavar="NAME=KUBECONFIG[,OPTS]",
        help="a cluster to reconcile (repeatable)")
    add("--manage", action="append", default=[], metavar="NAME",
        help="a cluster this process may write to (repeatable)")
    add("--kubevirt-namespace", default=DEFAULT_KUBEVIRT_NAMESPACE,
        help="KubeVirt install namespace (default %(default)s)")
    add("--namespace", default=None,
        help="own namespace, for peer Secrets (default: the pod's namespace, else default)")
    add("--resync-period", type=duration, default="5m",
        help="full pass at least this often (default %(default)s)")
    add("--gc-grace", type=duration, default="5m",
        help="failed migrations kept this long (default %(default)s)")
    add("--orphan-ttl", type=duration, default="15m",
        help="a peerless migration kept this long (default %(default)s)")
    add("--stuck-timeout", type=duration, default="1h",
        help="WaitingForSync/Synchronizing kept this long (default %(default)s)")
    add("--api-timeout", type=duration, default="10s", help="per API request (default %(default)s)")
    add("--trust-own-ca-only", action="store_true",
        help="copy only each peer's current CA (the first of its kubevirt-ca), not the CAs it "
             "trusts from its own peers, which would then be trusted too")
    add("--once", action="store_true", help="one full pass, then exit 0 (or 1 on errors)")
    add("--dry-run", action="store_true", help="log the decisions, write nothing")
    add("--leader-elect", action="store_true", help="act only while holding the Lease")
    add("--leader-election-namespace", default=None,
        help="namespace of the Lease (default: --namespace)")
    add("--leader-election-cluster", default=None,
        help="cluster holding the Lease (default: the first managed cluster)")
    add("--metrics-port", type=int, default=9090,
        help="/healthz and /metrics (default %(default)s; 0: any free port)")
    add_logging_flags(parser)
    parser.set_defaults(func=main)


def settings_from_args(args: argparse.Namespace) -> Settings:
    namespace = args.namespace or pod_namespace()
    return Settings(
        clusters=tuple(parse_cluster_flag(value) for value in args.cluster),
        managed=frozenset(args.manage), kubevirt_namespace=args.kubevirt_namespace,
        own_namespace=namespace, resync_period=args.resync_period, gc_grace=args.gc_grace,
        orphan_ttl=args.orphan_ttl, stuck_timeout=args.stuck_timeout, once=args.once,
        dry_run=args.dry_run, leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace or namespace,
        leader_election_cluster=args.leader_election_cluster, metrics_port=args.metrics_port,
        api_timeout=args.api_timeout, trust_own_ca_only=args.trust_own_ca_only)


def make_leader(settings: Settings, registry: Registry) -> LeaderElector | None:
    from reconciler.leader import LeaderConfigError, LeaderElector, LeaseConfig, default_identity

    if not settings.leader_elect:
        return None
    cluster = registry.get(settings.lease_cluster())
    if cluster is None:
        raise LeaderConfigError(f"--leader-election-cluster {settings.lease_cluster()!r} "
                                "is not a known cluster")
    return LeaderElector(cluster.api, LeaseConfig(
        name=settings.lease_name, namespace=settings.leader_election_namespace,
        identity=default_identity()), timeout=settings.api_timeout.total_seconds())


def main(args: argparse.Namespace) -> int:
    from reconciler.clusters import Registry
    from reconciler.leader import LeaderConfigError
    from reconciler.metrics import ReconcilerMetrics
    from reconciler.service import Service, once_exit_code, run_once, run_service

    setup_logging(args.log_format, args.log_level)
    try:
        settings = settings_from_args(args)
        registry = Registry(settings)
        leader = make_leader(settings, registry)
    except (ValueError, ValidationError, LeaderConfigError, OSError) as err:
        log.error("cannot start the reconciler", extra={"error": _first_line(err)})
        return 2
    except Exception as err:  # kubeconfig / in-cluster config problems
        log.error("cannot load cluster configuration", extra={"error": _first_line(err)})
        return 2
    metrics = ReconcilerMetrics()
    try:
        if settings.once:
            return once_exit_code(run_once(settings, registry, metrics, leader))
        return run_service(Service(settings, registry, metrics, leader))
    finally:
        registry.close()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:500]
