"""`python -m controlplane up --clusters 2`: local clusters with CRDs until Ctrl-C.

`python -m controlplane demo`: two clusters guarded by dlm-guard, the examples applied with
kubectl (see controlplane.demo), until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from controlplane import demo
from controlplane.binaries import Binaries, binaries_or_reason, build_binaries
from controlplane.cluster import Cluster, ClusterStartError, start_clusters
from controlplane.crds import crds_dir, install_crds_on


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m controlplane")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start clusters, install CRDs, wait for Ctrl-C")
    up.add_argument("--clusters", type=int, default=2, metavar="N")
    up.add_argument("--workdir", type=Path, help="keep logs/kubeconfigs here (default: temp)")
    up.add_argument(
        "--crds-dir", type=Path, help="CRD YAMLs (default: $DLM_GUARD_CRDS_DIR or ours)"
    )
    up.add_argument("--no-crds", action="store_true", help="do not install any CRD")
    up.add_argument("--env-file", type=Path, help="write KUBECONFIG=... lines here once ready")
    up.add_argument("--no-build", action="store_true", help="fail instead of running build.sh")
    commands.add_parser("binaries", help="print the binary directory, or why there is none")
    demo.add_arguments(
        commands.add_parser(
            "demo", help="two clusters guarded by dlm-guard, examples applied, until Ctrl-C"
        )
    )
    return parser


def _binaries(build: bool) -> Binaries:
    found = binaries_or_reason()
    if isinstance(found, str) and build:
        print(f"{found}\nbuilding them now (minutes when cold)...", file=sys.stderr)
        found = build_binaries()
    if isinstance(found, str):
        raise SystemExit(f"error: {found}")
    return found


def _env_lines(clusters: list[Cluster]) -> list[str]:
    lines = [f"KUBECONFIG_{c.name.upper()}={c.kubeconfig}" for c in clusters]
    return [*lines, "KUBECONFIG=" + ":".join(str(c.kubeconfig) for c in clusters)]


def _report(clusters: list[Cluster], elapsed: float, env_file: Path | None) -> None:
    for c in clusters:
        print(f"{c.name}: {c.server}  kubeconfig: {c.kubeconfig}  logs: {c.workdir}")
    lines = _env_lines(clusters)
    print(f"export {lines[-1]}   # contexts: {', '.join(c.name for c in clusters)}")
    if env_file is not None:
        env_file.write_text("\n".join(lines) + "\n")
    print(f"{len(clusters)} cluster(s) ready in {elapsed:.1f}s; Ctrl-C to stop", flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def up(args: argparse.Namespace) -> int:
    binaries = _binaries(build=not args.no_build)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` tears down like Ctrl-C
    started = time.monotonic()
    try:
        with start_clusters(args.clusters, args.workdir, binaries=binaries) as clusters:
            if not args.no_crds:
                install_crds_on(clusters, args.crds_dir or crds_dir())
            _report(clusters, time.monotonic() - started, args.env_file)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopped; clusters torn down", file=sys.stderr)
        return 0
    except ClusterStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "binaries":
        found = binaries_or_reason()
        print(found.kube_apiserver.parent if isinstance(found, Binaries) else found)
        return 0 if isinstance(found, Binaries) else 1
    if args.command == "demo":
        binaries = _binaries(build=not args.no_build)
        signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` tears down like Ctrl-C
        return demo.demo(args, binaries)
    return up(args)


if __name__ == "__main__":
    sys.exit(main())
