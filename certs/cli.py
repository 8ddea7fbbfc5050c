"""`dlm-guard certs generate | inspect | ca-bundle`: thin shells over certs.generate/report/bundle.

Exit codes: 0 fine, 1 the certificates are not usable (expired, not yet valid, unparsable,
missing), 2 bad arguments or unreadable files.
"""

from __future__ import annotations

import argparse
import base64
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from certs import generate
from certs.bundle import is_ca, is_valid_at, parse_bundle, to_pem
from certs.report import inspect_pem
from dlm_guard import flags

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "certs", help="create and check the webhook's certificates",
        description="Create, inspect and encode the certificates dlm-guard serves with.")
    commands = parser.add_subparsers(dest="certs_command", required=True, metavar="SUBCOMMAND")
    _add_generate(commands)
    _add_inspect(commands)
    _add_ca_bundle(commands)


def _add_generate(commands: Any) -> None:
    parser = commands.add_parser(
        "generate", help="write ca.crt, ca.key, tls.crt, tls.key (ECDSA P-256)",
        description="Create a private CA and a serving certificate. An existing valid CA in DIR "
                    "is reused and a still-fitting serving certificate is kept, so re-running "
                    "with the same arguments changes nothing.")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR")
    parser.add_argument("--dns", action="append", default=[], metavar="NAME",
                        help="DNS SAN (repeatable)")
    parser.add_argument("--ip", action="append", default=[], metavar="ADDR",
                        help="IP SAN (repeatable)")
    parser.add_argument("--service", metavar="NAME",
                        help="webhook Service: adds NAME.NS.svc and NAME.NS.svc.cluster.local")
    parser.add_argument("--namespace", metavar="NS", help="namespace of --service")
    parser.add_argument("--ca-days", type=flags.int_range(1, 36500),
                        default=generate.DEFAULT_CA_DAYS,
                        help="CA lifetime when a CA is created (default %(default)s)")
    parser.add_argument("--days", type=flags.int_range(1, 36500),
                        default=generate.DEFAULT_LEAF_DAYS,
                        help="serving certificate lifetime (default %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="create a new CA and serving certificate even if usable ones exist")
    parser.set_defaults(func=run_generate)


def _add_inspect(commands: Any) -> None:
    parser = commands.add_parser(
        "inspect", help="describe every certificate in a PEM file",
        description="Print subject, SANs, validity and SHA-256 fingerprint of every certificate "
                    "in FILE ('-' for stdin). Exits 1 when any is expired or not yet valid.")
    parser.add_argument("file", metavar="FILE")
    parser.set_defaults(func=run_inspect)


def _add_ca_bundle(commands: Any) -> None:
    parser = commands.add_parser(
        "ca-bundle", help="print the base64 caBundle for webhook configurations",
        description="Print the CA certificates, base64-encoded, for the caBundle field of a "
                    "MutatingWebhookConfiguration / ValidatingWebhookConfiguration.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ca", type=Path, metavar="FILE", help="CA PEM file")
    source.add_argument("--dir", type=Path, metavar="DIR", default=Path("."),
                        help="directory holding ca.crt (default: current directory)")
    parser.set_defaults(func=run_ca_bundle)


def _error(message: str) -> None:
    print(f"dlm-guard certs: {message}", file=sys.stderr)


def generate_dns(args: argparse.Namespace) -> list[str]:
    """--dns names plus the in-cluster names of --service/--namespace."""
    if bool(args.service) != bool(args.namespace):
        raise ValueError("--service and --namespace go together")
    extra = generate.service_dns_names(args.service, args.namespace) if args.service else []
    return [*args.dns, *extra]


def run_generate(args: argparse.Namespace) -> int:
    try:
        paths = generate.generate_pair(
            args.out, dns=generate_dns(args), ips=args.ip, ca_days=args.ca_days,
            days=args.days, force=args.force)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except (generate.CertError, OSError) as exc:
        _error(str(exc))
        return EXIT_INVALID
    ca_word = "created" if paths.ca_created else "reused"
    leaf_word = "issued" if paths.leaf_issued else "kept (still valid, same names)"
    print(f"CA {ca_word}: {paths.ca_cert}")
    print(f"serving certificate {leaf_word}: {paths.tls_cert}")
    return EXIT_OK


def _read(name: str, stdin: TextIO) -> str:
    if name == "-":
        return stdin.read()
    return Path(name).read_text(encoding="ascii", errors="replace")


def run_inspect(args: argparse.Namespace) -> int:
    try:
        text = _read(args.file, sys.stdin)
    except OSError as exc:
        _error(f"cannot read {args.file}: {exc.strerror}")
        return EXIT_USAGE
    report = inspect_pem(text, datetime.now(UTC))
    print("\n".join(report.lines))
    for problem in report.problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    if not report.certificates:
        _error(f"{args.file}: no certificate found")
    return EXIT_OK if report.ok else EXIT_INVALID


def run_ca_bundle(args: argparse.Namespace) -> int:
    path: Path = args.ca or args.dir / generate.CA_CERT
    try:
        parsed = parse_bundle(path.read_text(encoding="ascii", errors="replace"))
    except OSError as exc:
        _error(f"cannot read {path}: {exc.strerror}")
        return EXIT_USAGE
    # caBundle is trust: refuse anything but clean certificates rather than guess.
    for problem in parsed.problems:
        _error(f"{path}: {problem}")
    if parsed.problems or not parsed.certificates:
        _error(f"{path}: refusing to encode" + ("" if parsed.certificates else ": no certificate"))
        return EXIT_INVALID
    now = datetime.now(UTC)
    for cert in parsed.certificates:
        if not is_ca(cert) or not is_valid_at(cert, now):
            _error(f"warning: {cert.subject.rfc4514_string()} is not a currently valid CA")
    print(base64.b64encode(to_pem(parsed.certificates).encode("ascii")).decode("ascii"))
    return EXIT_OK
