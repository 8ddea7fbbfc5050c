"""`dlm-guard policy export`: the stateless rules as in-apiserver admission policies."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from webhook.cel.export import DEFAULT_PREFIX, MutatingApi, export
from webhook.policy import PolicyError, load_policy


def register(subparsers: Any) -> None:
    policy = subparsers.add_parser(
        "policy", help="the stateless rules as ValidatingAdmissionPolicy / "
                       "MutatingAdmissionPolicy",
        description="Work with the in-apiserver (CEL) form of dlm-guard's stateless rules.")
    commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    parser = commands.add_parser(
        "export", help="print the policies and bindings for a policy file",
        description="Print ValidatingAdmissionPolicies (WaitAsReceiver VM rules, stateless "
                    "VMIM rules), a MutatingAdmissionPolicy injecting "
                    "kubevirt.io/restore-run-strategy, and their bindings. Modes: enforce -> "
                    "Deny, warn -> Warn, off -> left out; exemptNamespaces -> the bindings' "
                    "namespaceSelector. Rules that need cluster state stay in the webhook.")
    parser.add_argument("--config", metavar="PATH", help="policy file (YAML, see DESIGN.md)")
    parser.add_argument("--api", choices=[api.value for api in MutatingApi],
                        default=MutatingApi.V1.value,
                        help="MutatingAdmissionPolicy API version: v1 (Kubernetes >= 1.36) or "
                             "v1beta1 (1.34/1.35 with the beta API enabled); default v1")
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml",
                        help="a YAML stream (default) or a JSON v1 List")
    parser.add_argument("--name-prefix", default=DEFAULT_PREFIX, metavar="PREFIX",
                        help=f"prefix of every object name (default {DEFAULT_PREFIX})")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.config)
    except PolicyError as err:
        print(f"dlm-guard policy export: {err}", file=sys.stderr)
        return 2
    documents = export(policy, mutating_api=MutatingApi(args.api), prefix=args.name_prefix)
    if args.output == "json":
        listing = {"apiVersion": "v1", "kind": "List", "items": documents}
        sys.stdout.write(json.dumps(listing, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump_all(documents, sort_keys=False, width=100))
    return 0
