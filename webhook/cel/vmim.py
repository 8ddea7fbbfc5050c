"""CEL for the stateless decentralized-VMIM rules.

Mirrors webhook.engine.findings_for for VMIMs: on CREATE of a decentralized VMIM
rules.vmim_offline_findings (both-roles, vmi-name, migration-id, connect-url); on UPDATE
rules.immutable_spec_findings. The rules needing cluster state and the generated migrationID
stay in the webhook. Each expression names the Python function it mirrors: change both.
"""

from __future__ import annotations

from dlm_guard.domain import Rule
from webhook.cel.cel import (
    Manifest,
    PolicyKind,
    RuleCel,
    condition,
    finding,
    lit,
    path_segment,
    variable,
)
from webhook.cel.grpc_target import connect_url_variables


def decentralized(root: str) -> str:
    """domain.is_decentralized: sendTo or receive set and not null."""
    return (f"({root} != null && ({root}.?spec.?sendTo.orValue(null) != null || "
            f"{root}.?spec.?receive.orValue(null) != null))")


MATCH = (f"request.operation == 'CREATE' ? {decentralized('object')} : "
         f"(oldObject != null && ({decentralized('object')} || {decentralized('oldObject')}))")


def both_roles() -> str:
    """rules.vmim_offline_findings: both-roles."""
    return ("variables.creating && variables.sendTo != null && variables.receive != null ? ["
            + finding("both-roles", "'spec'",
                      lit("both spec.sendTo and spec.receive are set, and KubeVirt then silently "
                          "runs an ordinary in-cluster migration: put sendTo on the source "
                          "cluster's VMIM and receive on the target cluster's VMIM"))
            + "] : []")


def vmi_name() -> str:
    """rules.vmim_offline_findings: vmi-name (domain.vmi_name is '' unless a string)."""
    return ("variables.creating && variables.spec.?vmiName.orValue('') == '' ? ["
            + finding("vmi-name", "'spec.vmiName'",
                      lit("missing: name the VMI to migrate (on the source the running VMI, on "
                          "the target the VMI of the WaitAsReceiver VM)"))
            + "] : []")


def _migration_id(field: str) -> str:
    # rules.roles_present: the key counts even when its value is null
    value = f"(variables.{field} == null ? '' : variables.{field}.?migrationID.orValue(''))"
    return (f"variables.creating && ({lit(field)} in variables.spec) && {value} == '' ? ["
            + finding("migration-id", lit(f"spec.{field}.migrationID"),
                      lit("missing or empty: set the same migrationID on the source and target "
                          "VMIMs"))
            + "] : []")


def migration_id() -> str:
    """rules.migration_id_findings, for each role present."""
    return f"({_migration_id('sendTo')}) + ({_migration_id('receive')})"


def _connect_url(severity: str) -> str:
    """rules.connect_url_findings, the violations ('V') or the advisories ('A')."""
    return (f"variables.creating && ('sendTo' in variables.spec) && "
            f"variables.urlProblem.size() > 0 && variables.urlProblem[1] == '{severity}' ? ["
            + finding("connect-url", "'spec.sendTo.connectURL'", "variables.urlProblem[0]")
            + "] : []")


def connect_url() -> str:
    return _connect_url("V")


def connect_url_advisory() -> str:
    return _connect_url("A")


def _union_keys(old: str, new: str, var: str) -> str:
    """The keys of old, then those only new has (`var`: the comprehension variable, which
    must not shadow one the maps are indexed with)."""
    return f"({old}.map({var}, {var}) + {new}.filter({var}, !({var} in {old})))"


def _get(mapping: str, key: str) -> str:
    """Python's mapping.get(key): the value, or null when the key is absent."""
    return f"({key} in {mapping} ? {mapping}[{key}] : null)"


def immutable_spec() -> str:
    """rules.immutable_spec_findings / changed_paths, two levels deep: the VMIM schema has no
    deeper spec field (sendTo/receive hold strings, addedNodeSelector a string map)."""
    old, new = "variables.oldSpec", "variables.newSpec"
    a, b = _get(old, "k"), _get(new, "k")
    sub = (f"{_union_keys(f'{old}[k]', f'{new}[k]', 's')}.filter(s, "
           f"{_get(f'{old}[k]', 's')} != {_get(f'{new}[k]', 's')}).map(s, 'spec' + "
           f"{path_segment('k')} + {path_segment('s')})")
    paths = (f"{_union_keys(old, new, 'k')}.filter(k, {a} != {b}).map(k, "
             f"type({a}) == map && type({b}) == map ? {sub} : ['spec' + {path_segment('k')}])"
             ".flatten()")
    message = lit("the spec of a decentralized VMIM cannot change after creation (KubeVirt's "
                  "own update admitter forbids it too): delete the VMIMs and create new ones")
    whole = finding("immutable-spec", lit("spec"), message)
    return (f"request.operation != 'UPDATE' || {old} == {new} ? [] : "
            f"type({old}) != map || type({new}) != map ? [{whole}] : "
            f"{paths}.map(p, {finding('immutable-spec', 'p', message)})")


RULES = (
    (RuleCel(Rule.BOTH_ROLES, "bothRoles"), both_roles),
    (RuleCel(Rule.VMI_NAME, "vmiName"), vmi_name),
    (RuleCel(Rule.MIGRATION_ID, "migrationId"), migration_id),
    (RuleCel(Rule.CONNECT_URL, "connectUrl", advisory="connectUrlAdvisory"), connect_url),
    (RuleCel(Rule.IMMUTABLE_SPEC, "immutableSpec"), immutable_spec),
)


def _variables() -> tuple[Manifest, ...]:
    views = [
        variable("creating", "request.operation == 'CREATE'"),
        variable("spec", "object.?spec.orValue({})"),
        variable("sendTo", "variables.spec.?sendTo.orValue(null)"),
        variable("receive", "variables.spec.?receive.orValue(null)"),
        variable("connectURL",
                 "variables.sendTo == null ? '' : variables.sendTo.?connectURL.orValue('')"),
        variable("newSpec", "object.?spec.orValue(null)"),
        variable("oldSpec", "oldObject == null ? null : oldObject.?spec.orValue(null)"),
        *connect_url_variables(),
    ]
    rules = [variable(rule.variable, expression()) for rule, expression in RULES]
    return (*views, *rules, variable("connectUrlAdvisory", connect_url_advisory()))


VMIM_KIND = PolicyKind(
    name="vmim",
    resource="virtualmachineinstancemigrations",
    operations=("CREATE", "UPDATE"),
    match_conditions=(condition("decentralized-migration", MATCH),),
    variables=_variables(),
    rules=tuple(rule for rule, _ in RULES),
)
