"""ValidatingAdmissionPolicy, MutatingAdmissionPolicy and their bindings for a policy file.

The policy file's modes become bindings: `enforce` rules go into the `<prefix>-<kind>-enforce`
policy bound with validationActions [Deny], `warn` rules into `<prefix>-<kind>-warn` bound
with [Warn], `off` rules are left out (and a policy left without rules is not emitted).
One validation per policy joins all its findings, because kube-apiserver reports only the
first failed validation of a denial: like the webhook, a denial lists every problem.
`exemptNamespaces` become the bindings' namespaceSelector.

The chart assembles the same manifests from files/admission-policies.json (chart_parts());
tests/chart keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from dlm_guard.domain import KUBEVIRT_GROUP, RESTORABLE_RUN_STRATEGIES
from webhook.cel.cel import Manifest, PolicyKind
from webhook.cel.vm import MUTATION_CONDITIONS, VM_KIND, restore_mutation
from webhook.cel.vmim import VMIM_KIND
from webhook.policy import RULES, Mode, Policy

GROUP_VERSION = "admissionregistration.k8s.io/v1"
KINDS = (VM_KIND, VMIM_KIND)
ENFORCED_MODES = {Mode.ENFORCE: "Deny", Mode.WARN: "Warn"}
DEFAULT_PREFIX = "dlm-guard"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class MutatingApi(StrEnum):
    """The MutatingAdmissionPolicy API version: v1 (GA, served by default from Kubernetes
    1.36) or v1beta1 (1.34 and 1.35, only with --runtime-config
    admissionregistration.k8s.io/v1beta1=true)."""

    V1 = "v1"
    V1BETA1 = "v1beta1"


def export(policy: Policy, *, mutating_api: MutatingApi = MutatingApi.V1,
           prefix: str = DEFAULT_PREFIX) -> list[Manifest]:
    """Every manifest, policies before their bindings, in a stable order."""
    documents: list[Manifest] = []
    for kind in KINDS:
        for mode, action in ENFORCED_MODES.items():
            variables = variables_in_mode(kind, mode, policy)
            if variables:
                name = f"{prefix}-{kind.name}-{mode.value}"
                documents.append(validating_policy(name, kind, variables))
                documents.append(validating_binding(name, action, policy.exempt_namespaces))
    name = f"{prefix}-vm-defaults"
    documents.append(mutating_policy(name, policy.defaults.restore_run_strategy, mutating_api))
    documents.append(mutating_binding(name, policy.exempt_namespaces, mutating_api))
    return documents


def match_constraints(kind: PolicyKind | str, operations: Iterable[str]) -> Manifest:
    resource = kind.resource if isinstance(kind, PolicyKind) else kind
    return {"resourceRules": [{"apiGroups": [KUBEVIRT_GROUP], "apiVersions": ["v1"],
                               "operations": list(operations), "resources": [resource]}],
            "matchPolicy": "Equivalent"}


def variables_in_mode(kind: PolicyKind, mode: Mode, policy: Policy) -> list[str]:
    """The finding variables of kind's policy for mode, in rule order (engine.mode_for)."""
    found = []
    for rule in kind.rules:
        rule_mode = policy.mode(rule.slug)
        if rule_mode is mode:
            found.append(rule.variable)
        if rule.advisory and mode is Mode.WARN and rule_mode is not Mode.OFF:
            found.append(rule.advisory)
    return found


def validation(names: Iterable[str]) -> Manifest:
    variables = [f"variables.{name}" for name in names]
    return {"expression": " && ".join(f"{v}.size() == 0" for v in variables),
            "messageExpression": f"({' + '.join(variables)}).join('; ')",
            "message": "dlm-guard: the object breaks a decentralized live migration rule",
            "reason": "Forbidden"}


def validating_policy(name: str, kind: PolicyKind, variables: Iterable[str]) -> Manifest:
    return {"apiVersion": GROUP_VERSION, "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {"failurePolicy": "Fail",
                     "matchConstraints": match_constraints(kind, kind.operations),
                     "matchConditions": [dict(c) for c in kind.match_conditions],
                     "variables": [dict(v) for v in kind.variables],
                     "validations": [validation(variables)]}}


def match_resources(exempt: Iterable[str]) -> Manifest:
    names = sorted(exempt)
    if not names:
        return {}
    return {"matchResources": {"namespaceSelector": {"matchExpressions": [
        {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": names}]}}}


def validating_binding(name: str, action: str, exempt: Iterable[str]) -> Manifest:
    return {"apiVersion": GROUP_VERSION, "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": [action],
                     **match_resources(exempt)}}


def mutating_policy(name: str, restore_run_strategy: str, api: MutatingApi) -> Manifest:
    # failurePolicy Ignore, like the mutating webhook: a skipped default is still caught by
    # the restore-run-strategy validation, and an object the CRD schema will reject anyway
    # gets the schema's error, not ours.
    return {"apiVersion": f"admissionregistration.k8s.io/{api.value}",
            "kind": "MutatingAdmissionPolicy", "metadata": {"name": name},
            "spec": {"failurePolicy": "Ignore",
                     "matchConstraints": match_constraints(VM_KIND, VM_KIND.operations),
                     "matchConditions": [dict(c) for c in MUTATION_CONDITIONS],
                     "reinvocationPolicy": "IfNeeded",
                     "mutations": [{"patchType": "JSONPatch", "jsonPatch": {
                         "expression": restore_mutation(restore_run_strategy)}}]}}


def mutating_binding(name: str, exempt: Iterable[str], api: MutatingApi) -> Manifest:
    return {"apiVersion": f"admissionregistration.k8s.io/{api.value}",
            "kind": "MutatingAdmissionPolicyBinding", "metadata": {"name": name},
            "spec": {"policyName": name, **match_resources(exempt)}}


def chart_parts() -> dict[str, Any]:
    """What the chart needs to assemble export()'s manifests from its values."""
    return {
        "comment": "Generated from webhook/cel by `python -m webhook.cel.chart`: do not edit.",
        "defaultModes": {slug: mode.value for slug, (mode, _) in RULES.items()},
        "kinds": [kind.parts() for kind in KINDS],
        "validation": {"message": validation([])["message"], "reason": "Forbidden"},
        "mutation": {"matchConditions": [dict(c) for c in MUTATION_CONDITIONS],
                     "expressions": {strategy: restore_mutation(strategy)
                                     for strategy in RESTORABLE_RUN_STRATEGIES}},
    }
