"""`dlm-guard migrate plan|run|status|cancel`: the flags. The work is in migrate.commands,
imported only when a migrate command runs (every other dlm-guard command starts faster).

Exit codes: 0 success (plan printed, migration succeeded, status found, cancel done);
1 the migration failed, timed out or was cancelled (status/cancel: nothing carries the ID);
2 bad input, an unreachable cluster, a plan the rules refuse or a failed preflight.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT = "1h"


# --- Flags ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterFlag:
    kubeconfig: str
    context: str | None


def cluster_flag(value: str) -> ClusterFlag:
    """`KUBECONFIG[,context=CTX]`."""
    path, *options = value.split(",")
    context = None
    for option in options:
        key, sep, val = option.partition("=")
        if key != "context" or not sep or not val:
            raise argparse.ArgumentTypeError(
                f"{value!r}: unknown option {option!r} (known: context=CTX)")
        context = val
    if not path:
        raise argparse.ArgumentTypeError(f"{value!r}: expected KUBECONFIG[,context=CTX]")
    return ClusterFlag(path, context)


def mapping_flag(value: str) -> tuple[str, str]:
    old, sep, new = value.partition("=")
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f"{value!r}: expected OLD=NEW")
    return old, new


def _clusters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, type=cluster_flag,
                        metavar="KUBECONFIG[,context=C]", help="the source cluster")
    parser.add_argument("--to", dest="target", type=cluster_flag,
                        metavar="KUBECONFIG[,context=C]",
                        help="the target cluster (default: the source: cross-namespace)")


def _plan_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vm", metavar="VM", help="the source VirtualMachine")
    parser.add_argument("-n", "--namespace", required=True, help="the source VM's namespace")
    _clusters(parser)
    parser.add_argument("--target-namespace", help="default: the source namespace")
    parser.add_argument("--storage-class", action="append", type=mapping_flag, default=[],
                        metavar="OLD=NEW", help="target storage class per source class")
    parser.add_argument("--network", action="append", type=mapping_flag, default=[],
                        metavar="OLD=NEW", help="target Multus network per source network")
    parser.add_argument("--migration-id", help="default: an earlier run's, else generated")
    parser.add_argument("--config", metavar="PATH", help="policy file, as for serve/check")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate", help="decentralized live migration of one VM, guarded",
        description="The documented orchestrator steps of KubeVirt decentralized live "
                    "migration, each object checked by dlm-guard's rules. Exit 0: success, "
                    "1: migration failed/cancelled, 2: bad input or preflight failure.")
    commands = parser.add_subparsers(dest="migrate_command", required=True, metavar="COMMAND")
    plan = commands.add_parser("plan", help="print every object `run` would create, in order")
    _plan_flags(plan)
    plan.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    plan.set_defaults(func=_lazy("run_plan"))
    run = commands.add_parser("run", help="create the objects, watch, clean up on failure")
    _plan_flags(run)
    run.add_argument("--timeout", default=DEFAULT_TIMEOUT, help="e.g. 30m (default 1h)")
    run.add_argument("--keep-on-failure", action="store_true", help="no clean-up on failure")
    run.add_argument("--cleanup-volumes", action="store_true",
                     help="the clean-up also deletes the target DataVolumes")
    run.add_argument("--yes", action="store_true", help="do not ask before creating")
    run.set_defaults(func=_lazy("run_run"))
    for name, text in (("status", "phases of a migration, both clusters"),
                       ("cancel", "delete both VMIMs and the waiting VM")):
        command = commands.add_parser(name, help=text)
        command.add_argument("migration_id", metavar="MIGRATION_ID")
        _clusters(command)
        if name == "cancel":
            command.add_argument("--cleanup-volumes", action="store_true",
                                 help="also delete the target DataVolumes")
        command.set_defaults(func=_lazy(f"run_{name}"))




def _lazy(name: str) -> Any:
    def call(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module("migrate.commands"), name)(args))
    return call
