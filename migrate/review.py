"""A plan through the admission rules: the same mutate+validate engine `dlm-guard check` runs.

Each KubeVirt object of the plan is reviewed as a CREATE by webhook.check.check_object. With
the cluster objects the webhook would see (the KubeVirt CRs, the VMIs, the VMIMs that share
the migrationID), the rules that need cluster state run too. The target VMIM is reviewed
against the receiver VMI KubeVirt will start for the target VM, since that VMI cannot exist
before the plan is carried out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jsonpatch

from dlm_guard.domain import Obj
from dlm_guard.store import ObjectStore
from migrate.plan import Plan, PlannedObject, Step, receiver_vmi_preview
from webhook.check import Document, check_object
from webhook.engine import Context, RatedFinding, random_suffix
from webhook.policy import Mode, Policy

REVIEWED_STEPS = (Step.TARGET_VM, Step.TARGET_VMIM, Step.SOURCE_VMIM)


@dataclass(frozen=True)
class ClusterView:
    """The objects one cluster's webhook would read for this migration."""

    kubevirt: Obj | None = None
    vmis: Sequence[Obj] = ()
    vmims: Sequence[Obj] = ()
    # False when we may not read KubeVirt CRs: the feature-gate rule is then left to the
    # webhook (which can read it) instead of denying for a CR we cannot see.
    kubevirt_readable: bool = True

    def store(self, *extra: Obj) -> ObjectStore:
        objects = [*self.vmis, *self.vmims, *extra]
        return ObjectStore([*objects, self.kubevirt] if self.kubevirt else objects)


@dataclass(frozen=True)
class ReviewedObject:
    planned: PlannedObject
    findings: tuple[RatedFinding, ...]

    @property
    def denied(self) -> list[RatedFinding]:
        return [f for f in self.findings if f.mode is Mode.ENFORCE]

    @property
    def warnings(self) -> list[RatedFinding]:
        return [f for f in self.findings if f.mode is Mode.WARN]


@dataclass(frozen=True)
class Review:
    plan: Plan  # with every object as the mutating webhook would store it
    objects: tuple[ReviewedObject, ...]

    @property
    def denied(self) -> list[tuple[PlannedObject, RatedFinding]]:
        return [(r.planned, f) for r in self.objects for f in r.denied]

    @property
    def warnings(self) -> list[tuple[PlannedObject, RatedFinding]]:
        return [(r.planned, f) for r in self.objects for f in r.warnings]


def _review_one(planned: PlannedObject, index: int, policy: Policy,
                view: ClusterView, cluster: ObjectStore
                ) -> tuple[PlannedObject, tuple[RatedFinding, ...]]:
    ctx = Context(policy=policy, cluster=cluster, new_id=random_suffix)
    result = check_object(planned.obj, Document("plan", index, planned.obj), ctx)
    mutated = jsonpatch.apply_patch(planned.obj, result.patch) if result.patch else planned.obj
    findings = result.evaluation.findings
    if planned.step is Step.SOURCE_VMIM and "connectURL" not in planned.obj["spec"]["sendTo"]:
        # Not known yet (see plan.CONNECT_PENDING): `run` reviews it again once it is.
        findings = tuple(f for f in findings if f.finding.rule != "connect-url")
    if not view.kubevirt_readable:
        findings = tuple(f for f in findings if f.finding.rule != "feature-gate")
    return PlannedObject(planned.step, planned.side, dict(mutated)), findings


def review_plan(plan: Plan, policy: Policy, source: ClusterView, target: ClusterView
                ) -> Review:
    """Mutate and validate every KubeVirt object of the plan, as each cluster would."""
    target_vm = plan.one(Step.TARGET_VM).obj
    stores = {Step.TARGET_VM: (target, target.store()),
              Step.TARGET_VMIM: (target, target.store(receiver_vmi_preview(target_vm))),
              Step.SOURCE_VMIM: (source, source.store())}
    objects, reviewed = [], []
    for index, planned in enumerate(plan.objects, 1):
        if planned.step in REVIEWED_STEPS:
            planned, findings = _review_one(planned, index, policy, *stores[planned.step])
            reviewed.append(ReviewedObject(planned, findings))
        objects.append(planned)
    mutated = Plan(plan.migration_id, plan.vm_name, plan.source_namespace,
                   plan.target_namespace, plan.restore_run_strategy, tuple(objects), plan.notes)
    return Review(mutated, tuple(reviewed))

