"""The `dlm-guard` command: one entry point, each subcommand owned by its package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module has register(subparsers) that adds its subcommands and sets `func`.
SUBCOMMAND_MODULES = ("webhook.cli", "webhook.cel.cli", "certs.cli", "reconciler.cli", "doctor.cli",
                      "migrate.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlm-guard",
        description="Make KubeVirt decentralized live migration safe and hands-off.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
