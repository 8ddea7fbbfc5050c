"""The admission engine: AdmissionReview request dict in, Decision out. No HTTP, no I/O.

`mutate` and `validate` are total: whatever shape the request has, they return a Decision
(allow when the object is not ours) and never raise on a malformed object. `evaluate` and
`mutation_patch` are the structured layer below them, shared with `dlm-guard check`.

A watch cache lags: a VMI created a moment ago may not be in it yet. So an Evaluation that
would report a VMI as missing names it in `vmi_to_confirm`, and the async shell
(webhook/live.py) confirms with one live GET and evaluates again with what it found
(`LiveVmi`). The engine itself never does I/O.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from dlm_guard.domain import (
    KIND_VM,
    KIND_VMIM,
    KUBEVIRT_GROUP,
    Finding,
    Obj,
    Role,
    Rule,
    Severity,
    is_decentralized,
    is_terminating,
    is_wait_as_receiver,
    migration_role,
    namespace_of,
    vmi_name,
)
from dlm_guard.store import ObjectStore
from webhook import rules
from webhook.decision import Decision, JsonPatch
from webhook.mutations import json_patch, mutate_vm, mutate_vmim
from webhook.policy import Mode, Policy

CREATE, UPDATE = "CREATE", "UPDATE"


class ClusterSource(Protocol):
    """Where a review's cluster state comes from: an ObjectStore (tests, a frozen state) or
    the webhook's cache (webhook/cache.py), which gives a fresh consistent view per call."""

    def view(self) -> ObjectStore: ...


@dataclass(frozen=True)
class Context:
    """Everything a review depends on besides the request itself."""

    policy: Policy
    cluster: ClusterSource | None  # None = offline: rules needing cluster state are skipped
    new_id: Callable[[], str]  # random suffix for generated migrationIDs (>= 48 bits)


def random_suffix() -> str:
    """The production `Context.new_id`: 48 random bits as 12 hex digits."""
    return secrets.token_hex(6)


# --- The request, read tolerantly -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class Request:
    """The fields of an AdmissionReview request the engine uses, each with a safe default."""

    group: str
    kind: str
    operation: str
    namespace: str
    sub_resource: str
    object: Obj | None
    old_object: Obj | None


# The server's decoder builds the Request once (webhook.review); tests and `check` may pass
# the request dict instead.
RequestLike = Request | Mapping[str, Any]


def parse_request(raw: Any) -> Request:
    if isinstance(raw, Request):
        return raw
    raw = raw if isinstance(raw, Mapping) else {}
    obj, old = _mapping(raw.get("object")), _mapping(raw.get("oldObject"))
    kind_info = _mapping(raw.get("kind"))
    if kind_info is not None:
        group, kind = _text(kind_info.get("group")), _text(kind_info.get("kind"))
    else:  # no GroupVersionKind in the request: fall back on the object's own
        group, kind = _api_group(obj or {}), _text((obj or {}).get("kind"))
    namespace = _text(raw.get("namespace")) or namespace_of(obj or old or {})
    return Request(group=group, kind=kind, operation=_text(raw.get("operation")),
                   namespace=namespace, sub_resource=_text(raw.get("subResource")),
                   object=obj, old_object=old)


def _mapping(value: Any) -> Obj | None:
    return value if isinstance(value, Mapping) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _api_group(obj: Obj) -> str:
    group, _, _version = _text(obj.get("apiVersion")).rpartition("/")
    return group


def in_scope(request: Request, policy: Policy) -> bool:
    """A KubeVirt object written through its main resource, outside exempt namespaces.

    Subresources (status) cannot change spec or metadata, so they are never ours.
    """
    return (request.group == KUBEVIRT_GROUP and request.kind in (KIND_VM, KIND_VMIM)
            and not request.sub_resource and request.object is not None
            and request.namespace not in policy.exempt_namespaces)


# --- Findings rated by the policy -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class RatedFinding:
    finding: Finding
    mode: Mode

    def __str__(self) -> str:
        return str(self.finding)


VmiKey = tuple[str, str]  # (namespace, name)
# The rules that report a VMI missing: the only findings a live GET can overturn.
MISSING_VMI_RULES = (Rule.RECEIVER_VMI, Rule.SOURCE_VMI)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Every finding of one review that the policy does not turn off, in rule order.

    `vmi_to_confirm`: the VMI that the findings call missing because the cache lacks it;
    a live GET should confirm it before the verdict stands (None: nothing to confirm).
    """

    findings: tuple[RatedFinding, ...] = ()
    vmi_to_confirm: VmiKey | None = None
    notices: tuple[str, ...] = ()  # warnings that are no rule's finding (stale cluster state)

    def in_mode(self, mode: Mode) -> list[RatedFinding]:
        return [rated for rated in self.findings if rated.mode is mode]

    @property
    def verdict(self) -> str:
        if self.in_mode(Mode.ENFORCE):
            return "DENY"
        return "WARN" if self.findings else "ALLOW"

    def decision(self) -> Decision:
        warnings = [*self.notices, *(str(rated) for rated in self.in_mode(Mode.WARN))]
        denials = self.in_mode(Mode.ENFORCE)
        return Decision.deny(denials, warnings) if denials else Decision.allow(warnings)


def rate(findings: list[Finding], policy: Policy) -> Evaluation:
    rated = (RatedFinding(finding, mode_for(finding, policy)) for finding in capped(findings))
    return Evaluation(tuple(r for r in rated if r.mode is not Mode.OFF))


def mode_for(finding: Finding, policy: Policy) -> Mode:
    """The policy's mode for the finding's rule; an advisory finding never denies."""
    mode = policy.mode(finding.rule)
    if finding.severity is Severity.ADVISORY and mode is Mode.ENFORCE:
        return Mode.WARN
    return mode


# One review's answer stays small whatever the object holds (a VM may list 100,000 disks):
# each rule reports its first MAX_FINDINGS_PER_RULE findings and then how many more there
# are, and no path or message is longer than MAX_FINDING_CHARS. The answer is then bounded
# by the number of rules, not by the object.
MAX_FINDINGS_PER_RULE = 20
MAX_FINDING_CHARS = 512


def capped(findings: list[Finding]) -> list[Finding]:
    """Findings with at most MAX_FINDINGS_PER_RULE per rule, then "and N more" for it."""
    totals = Counter(finding.rule for finding in findings)
    kept: list[Finding] = []
    shown: Counter[str] = Counter()
    for finding in findings:
        shown[finding.rule] += 1
        if shown[finding.rule] <= MAX_FINDINGS_PER_RULE:
            kept.append(Finding(finding.rule, _clip(finding.path), _clip(finding.message),
                                finding.severity))
        elif shown[finding.rule] == MAX_FINDINGS_PER_RULE + 1:
            more = totals[finding.rule] - MAX_FINDINGS_PER_RULE
            kept.append(Finding(finding.rule, "(more)", f"and {more} more like the above",
                                finding.severity))
    return kept


def _clip(text: str) -> str:
    return text if len(text) <= MAX_FINDING_CHARS else text[: MAX_FINDING_CHARS - 3] + "..."


# --- Validation -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LiveVmi:
    """What one live GET said about a VMI missing from the cache."""

    namespace: str
    name: str
    obj: Obj | None = None  # None and no error: the API server says it does not exist
    error: str = ""  # the GET failed or timed out: nobody can tell

    @property
    def key(self) -> VmiKey:
        return (self.namespace, self.name)


class WithVmi:
    """A cluster view: the cache, with one VMI fetched live laid over it."""

    def __init__(self, cluster: rules.ClusterView, vmi: Obj, key: VmiKey) -> None:
        self._cluster, self._vmi, self._key = cluster, vmi, key

    def vmi(self, namespace: str, name: str) -> Obj | None:
        if (namespace, name) == self._key:
            return self._vmi
        return self._cluster.vmi(namespace, name)

    def vm(self, namespace: str, name: str) -> Obj | None:
        return self._cluster.vm(namespace, name)

    def vmims_with_migration_id(self, role: Role, mid: str) -> Sequence[Obj]:
        return self._cluster.vmims_with_migration_id(role, mid)

    def kubevirt(self) -> Obj | None:
        return self._cluster.kubevirt()


def evaluate(request: RequestLike, ctx: Context, live: LiveVmi | None = None) -> Evaluation:
    """The validating webhook's findings for a request, rated by the policy.

    `live`: the answer of the live GET for `vmi_to_confirm` of an earlier evaluation.
    """
    parsed = parse_request(request)
    if not in_scope(parsed, ctx.policy):
        return Evaluation()
    # One view for the whole evaluation: every lookup of its rules sees the same cluster state.
    view = ctx.cluster.view() if ctx.cluster is not None else None
    if view is not None and view.stale is not None:
        evaluation = rate(findings_for(parsed, None), ctx.policy)
        if needs_cluster(parsed):
            notice = f"{view.stale}: cluster-state rules were skipped for this request"
            evaluation = Evaluation(evaluation.findings, notices=(notice,))
        return evaluation
    cluster: rules.ClusterView | None = view
    if cluster is not None and live is not None and live.obj is not None:
        cluster = WithVmi(cluster, live.obj, live.key)
    findings = findings_for(parsed, cluster)
    if live is not None and live.error:
        findings = [_unconfirmed(f, live) if f.rule in MISSING_VMI_RULES else f
                    for f in findings]
    evaluation = rate(findings, ctx.policy)
    if live is None and cluster is not None:
        evaluation = replace(evaluation, vmi_to_confirm=_vmi_to_confirm(parsed, cluster,
                                                                        evaluation))
    return evaluation


def needs_cluster(request: Request) -> bool:
    """Whether the cluster-state rules look at this request (see findings_for)."""
    return (request.kind == KIND_VMIM and request.operation == CREATE
            and is_decentralized(request.object or {}))


def _vmi_to_confirm(request: Request, cluster: rules.ClusterView,
                    evaluation: Evaluation) -> VmiKey | None:
    obj = request.object or {}
    name = vmi_name(obj)
    if request.operation != CREATE or migration_role(obj) is None or not name \
            or cluster.vmi(request.namespace, name) is not None:
        return None
    if not any(r.finding.rule in MISSING_VMI_RULES for r in evaluation.findings):
        return None
    return (request.namespace, name)


def _unconfirmed(finding: Finding, live: LiveVmi) -> Finding:
    # A failed GET never turns into a denial: KubeVirt's own admitter reads the VMI live.
    return Finding(finding.rule, finding.path, (
        f"VirtualMachineInstance {live.namespace}/{live.name} is not in dlm-guard's cache and "
        f"the live check failed ({live.error}): allowed unchecked; KubeVirt's own admitter "
        "still requires the VMI"), Severity.ADVISORY)


def findings_for(request: Request, cluster: rules.ClusterView | None) -> list[Finding]:
    obj, old = request.object or {}, request.old_object
    if request.kind == KIND_VM:
        return vm_findings(request)
    if request.operation == CREATE and is_decentralized(obj):
        findings = rules.vmim_offline_findings(obj)
        if cluster is not None:
            findings.extend(rules.vmim_cluster_findings(obj, request.namespace, cluster))
        return findings
    if request.operation == UPDATE and old is not None and (
            is_decentralized(obj) or is_decentralized(old)):
        return rules.immutable_spec_findings(obj, old)
    return []  # DELETE, CONNECT and ordinary migrations are none of our business


# CEL: webhook/cel/vm.py VM_KIND (matchConditions, the `ratchet` variable).
def vm_findings(request: Request) -> list[Finding]:
    """WaitAsReceiver VM rules on CREATE and UPDATE, ratcheted on UPDATE.

    An UPDATE is denied only for findings its old object did not already have, and an
    object being deleted is not checked: otherwise a VM admitted before dlm-guard (or
    before a policy change) could never lose its finalizers and would hang in deletion.
    """
    obj, old = request.object or {}, request.old_object
    if request.operation not in (CREATE, UPDATE) or not is_wait_as_receiver(obj) \
            or is_terminating(obj):
        return []
    findings = rules.wait_as_receiver_vm_findings(obj)
    if request.operation == UPDATE and old is not None and is_wait_as_receiver(old):
        existing = set(rules.wait_as_receiver_vm_findings(old))
        findings = [finding for finding in findings if finding not in existing]
    return findings


def validate(request: RequestLike, ctx: Context) -> Decision:
    return evaluate(request, ctx).decision()


# --- Mutation -------------------------------------------------------------------------
def mutation_patch(request: RequestLike, ctx: Context) -> JsonPatch:
    """The JSON patch the mutating webhook returns for a request ([] for none)."""
    parsed = parse_request(request)
    if not in_scope(parsed, ctx.policy) or parsed.operation not in (CREATE, UPDATE):
        return []
    obj = parsed.object or {}
    if parsed.kind == KIND_VM:
        mutated = mutate_vm(obj, ctx.policy.defaults.restore_run_strategy)
    else:
        mutated = mutate_vmim(obj, ctx.new_id, creating=parsed.operation == CREATE)
    return json_patch(obj, mutated)


def mutate(request: RequestLike, ctx: Context) -> Decision:
    patch = mutation_patch(request, ctx)
    return Decision.patched(patch) if patch else Decision.allow()
