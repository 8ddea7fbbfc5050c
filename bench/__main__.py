"""`python -m bench COMMAND`: run benchmarks, print a table, keep the raw JSON.

  all         every benchmark at full size; writes bench/results/<date>-<name>.json
  smoke       a tiny version of each part (seconds each): checks that they work, no figures
              (--parts micro,webhook,variants needs no control plane)
  micro       the pure engine micro-benchmark
  webhook     webhook throughput/latency vs the bare aiohttp and rules-off baselines
  variants    proposed hot-path changes (bench/variants.py), each measured in a server
  apiserver   VM create latency through a real kube-apiserver, with vs without webhooks
  livelookup  the validating webhook's cache-miss path (one live VMI GET) on a real API server
  reconciler  reconciler scale on harness clusters
  cache       the watch cache at scale: webhook and reconciler over 10,000 VMs + 10,000 VMIs
              + 5,000 VMIMs in one harness cluster (bench/cache.py)
  modes       VM create latency per admission mode: none, webhook, hybrid, cel, Go floor
  profile     dlm-guard serve under pyinstrument with the load (not part of all; needs it)

Run the real thing on a quiet machine: the figures are only as good as the machine is idle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report

PARTS = ("micro", "webhook", "variants", "apiserver", "livelookup", "reconciler", "cache",
         "modes")
QUIET_LOAD = 1.5


def run_part(part: str, smoke: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One part, full size or smoke size. Imported lazily: each pulls in different things."""
    if part == "micro":
        from bench import micro
        return micro.run(seconds=0.2 if smoke else args.micro_seconds)
    if part == "webhook":
        from bench import admission
        if smoke:
            return admission.run(admission.Settings(
                seconds=1.0, warmup=0.3, concurrency=4, rounds=1, latency_seconds=1.0,
                latency_rounds=1))
        return admission.run(admission.Settings(
            seconds=args.seconds, warmup=args.warmup, concurrency=args.concurrency,
            rounds=args.rounds, latency_seconds=args.latency_seconds,
            latency_fraction=args.latency_fraction))
    if part == "variants":
        from bench import variants
        if smoke:
            return variants.run(variants.Settings(seconds=0.5, warmup=0.2, concurrency=4,
                                                  rounds=1, variants=("fastpatch,readall",)))
        return variants.run(variants.Settings(seconds=args.seconds * 0.8, warmup=args.warmup,
                                              concurrency=args.concurrency, rounds=args.rounds))
    if part == "apiserver":
        from bench import apiserver
        if smoke:
            return apiserver.run(apiserver.Settings(objects=6, warmup=1, kubectl_sample=1,
                                                    blocks=1))
        return apiserver.run(apiserver.Settings(objects=args.objects))
    if part == "modes":
        from bench import modes
        if smoke:
            return modes.run(modes.Settings(objects=4, warmup=1, rounds=1))
        return modes.run(modes.Settings(objects=args.objects))
    if part == "livelookup":
        from bench import livelookup
        if smoke:
            return livelookup.run(livelookup.Settings(calls=5, warmup=1))
        return livelookup.run(livelookup.Settings(calls=args.lookups))
    if part == "cache":
        from bench import cache
        if smoke:
            return cache.run(cache.Settings(vms=40, vmis=40, vmims=20, namespaces=2, threads=8,
                                            rate=20, latency_seconds=1.0, status_rate=20,
                                            resync=1.0, window=3.0, settle=0.5))
        return cache.run(cache.Settings(vms=args.cache_vms, vmis=args.cache_vms,
                                        vmims=args.cache_vmims))
    from bench import reconcile
    if smoke:
        return reconcile.run(reconcile.Settings(vmims=40, vms=20, namespaces=2, peers=2,
                                                first_stage=0.5, threads=4, rotations=1,
                                                gc_trials=1, timeout=60, variant_debounce=0.2))
    return reconcile.run(reconcile.Settings(vmims=args.vmims, vms=args.vms,
                                            namespaces=args.namespaces, peers=args.peers))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    prof = commands.add_parser("profile")
    prof.add_argument("--seconds", type=float, default=8.0)
    prof.add_argument("--variant", default="", help="bench.variants names, comma-separated")
    for name in ("all", "smoke", *PARTS):
        sub = commands.add_parser(name)
        sub.add_argument("--name", help="result name (default: the command)")
        sub.add_argument("--save", action=argparse.BooleanOptionalAction, default=None,
                         help="write bench/results/<date>-<name>.json (default: only for all)")
        sub.add_argument("--out", type=Path, help="write the JSON document here instead")
        if name in ("all", "smoke"):
            sub.add_argument("--parts", default=",".join(PARTS),
                             help=f"comma-separated subset of {','.join(PARTS)}")
        sub.add_argument("--micro-seconds", type=float, default=2.0)
        sub.add_argument("--seconds", type=float, default=10.0, help="per saturated run")
        sub.add_argument("--warmup", type=float, default=2.0)
        sub.add_argument("--concurrency", type=int, default=16)
        sub.add_argument("--rounds", type=int, default=3)
        sub.add_argument("--latency-seconds", type=float, default=10.0,
                         help="per open-loop round (3 rounds)")
        sub.add_argument("--latency-fraction", type=float, default=0.5)
        sub.add_argument("--objects", type=int, default=300, help="VMs per phase (apiserver)")
        sub.add_argument("--lookups", type=int, default=300,
                         help="calls per case (livelookup)")
        sub.add_argument("--vmims", type=int, default=5000)
        sub.add_argument("--vms", type=int, default=2000)
        sub.add_argument("--namespaces", type=int, default=50)
        sub.add_argument("--peers", type=int, default=10)
        sub.add_argument("--cache-vms", type=int, default=10_000,
                         help="cache: VMs and as many VMIs in the big cluster")
        sub.add_argument("--cache-vmims", type=int, default=5_000)
    return top


def parts_of(args: argparse.Namespace) -> list[str]:
    if args.command not in ("all", "smoke"):
        return [args.command]
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s): {', '.join(unknown)} (known: {', '.join(PARTS)})")
    return chosen


def run(args: argparse.Namespace, log: Callable[[str], None],
        command: str = "python -m bench") -> dict[str, Any]:
    """Every chosen part; the result document (not yet saved)."""
    started = datetime.now(UTC)
    load_before = round(os.getloadavg()[0], 2)
    if load_before > QUIET_LOAD:
        log(f"[bench] warning: load average {load_before} > {QUIET_LOAD}: the machine is busy, "
            "figures will be noisy (ratios and CPU per request hold up best)")
    results: dict[str, Any] = {}
    smoke = args.command == "smoke"
    for part in parts_of(args):
        log(f"[bench] {part}{' (smoke)' if smoke else ''} ...")
        began = time.monotonic()
        results[part] = run_part(part, smoke, args)
        results[part]["bench_seconds"] = round(time.monotonic() - began, 1)
    doc = report.document(args.name or args.command, command, results, started)
    doc["machine"]["loadavg_1m_at_start"] = load_before
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(words)
    if args.command == "profile":
        from bench import profile
        print(profile.render(profile.run(args.seconds, args.variant)))
        return 0

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)
    doc = run(args, log, " ".join(["python -m bench", *words]))
    print(report.table(doc["results"]))
    save = args.save if args.save is not None else args.command == "all"
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"[bench] raw results: {args.out}")
    elif save:
        log(f"[bench] raw results: {report.save(doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
