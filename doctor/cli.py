"""`dlm-guard doctor --cluster a=KUBECONFIG[,context=CTX][,namespace=NS] --cluster b=...`."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dlm_guard.domain import DEFAULT_KUBEVIRT_NAMESPACE
from doctor.report import EXIT_INPUT, as_json, exit_code, text
from reconciler.settings import ClusterSpec, parse_cluster_flag

if TYPE_CHECKING:  # doctor.gather pulls in the kubernetes client: imported on use only, so
    # building the CLI parser (every dlm-guard command) stays light.
    from doctor.model import ClusterSnapshot

DEFAULT_RECONCILER_NAMESPACE = "dlm-guard-system"  # the chart README's install namespace


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor", help="read-only preflight of a cluster pair before the first migration",
        description="Checks, read-only, what a decentralized live migration between the named "
                    "clusters needs: feature gate, KubeVirt version, CA rotation settings, "
                    "mutual CA trust, synchronization addresses, dlm-guard's webhooks and the "
                    "reconciler's peers. Exit 0: no FAIL; 1: a FAIL; 2: bad input or a cluster "
                    "that cannot be read.")
    parser.add_argument("--cluster", action="append", default=[], metavar="NAME=KUBECONFIG",
                        help="NAME=KUBECONFIG[,context=CTX][,namespace=KUBEVIRT_NS]; twice or "
                             "more")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument("--reconciler-namespace", default=DEFAULT_RECONCILER_NAMESPACE,
                        help="where the in-cluster reconciler's peer Secrets live "
                             f"(default {DEFAULT_RECONCILER_NAMESPACE})")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds per API call and webhook probe (default 5)")
    parser.set_defaults(func=main)


def _specs(values: list[str]) -> list[ClusterSpec]:
    specs = [parse_cluster_flag(v) for v in values]
    names = [s.name for s in specs]
    if len(specs) < 2:
        raise ValueError("--cluster: name at least two clusters")
    if len(set(names)) != len(names):
        raise ValueError(f"--cluster: duplicate names in {', '.join(names)}")
    return specs


def _gather(spec: ClusterSpec, args: argparse.Namespace) -> ClusterSnapshot:
    from doctor.gather import client_for, gather_cluster

    api = client_for(str(spec.kubeconfig), spec.context)
    try:
        return gather_cluster(spec.name, api, spec.kubevirt_namespace or
                              DEFAULT_KUBEVIRT_NAMESPACE, args.reconciler_namespace,
                              args.timeout)
    finally:
        api.close()


def main(args: argparse.Namespace) -> int:
    from doctor.checks import run_checks
    from doctor.gather import Unreachable

    try:
        specs = _specs(args.cluster)
    except ValueError as err:
        print(f"dlm-guard doctor: {err}", file=sys.stderr)
        return EXIT_INPUT
    with ThreadPoolExecutor(max_workers=min(4, len(specs))) as pool:
        futures = [(s.name, pool.submit(_gather, s, args)) for s in specs]
    snapshots = []
    for name, future in futures:
        try:
            snapshots.append(future.result())
        except Unreachable as err:
            print(f"dlm-guard doctor: cluster {name}: {err}", file=sys.stderr)
            return EXIT_INPUT
    results = run_checks(snapshots, datetime.now(UTC))
    sys.stdout.write(as_json(results) if args.output == "json" else text(results))
    return exit_code(results)
