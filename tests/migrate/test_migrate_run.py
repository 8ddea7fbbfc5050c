"""migrate.run's decisions, migrate.progress, the CLI flags and the stand-in's phase walk:
pure tables, no cluster (the e2e tests run the whole state machine)."""

from __future__ import annotations

import argparse
import io
from typing import Any

import pytest
from migrate_factories import options, state

from controlplane.kubevirt_standin import SHARED_PHASES, _migrated_out, _next_phase
from migrate.cli import cluster_flag, mapping_flag
from migrate.plan import PlannedObject, Step, build_plan
from migrate.progress import Progress, bar, fraction_done
from migrate.run import (
    Action,
    Outcome,
    classify,
    conflicting_migrations,
    outcome_of,
    vmi_not_seen_yet,
)

PLAN = build_plan(state(), options())


def with_phase(phase: str) -> dict[str, Any]:
    return {"status": {"phase": phase}} if phase else {}


@pytest.mark.parametrize(("target", "source", "expected"), [
    ("", "", None),
    ("WaitingForSync", "Synchronizing", None),
    ("Running", "Running", None),
    ("Succeeded", "Running", Outcome.SUCCEEDED),  # a source VMIM may lag (kubevirt #15299)
    ("Succeeded", "Succeeded", Outcome.SUCCEEDED),
    ("Failed", "Running", Outcome.FAILED),
    ("Running", "Failed", Outcome.FAILED),
    ("Succeeded", "Failed", Outcome.FAILED),
])
def test_outcome(target: str, source: str, expected: Outcome | None) -> None:
    assert outcome_of(with_phase(target), with_phase(source)) is expected


def test_outcome_while_a_vmim_is_missing() -> None:
    assert outcome_of(None, with_phase("Failed")) is Outcome.FAILED
    assert outcome_of(None, None) is None


def _planned(step: Step) -> PlannedObject:
    return PLAN.of(step)[0]


def test_classify_existing_objects() -> None:
    dv = _planned(Step.DATA_VOLUME)
    assert classify(dv, None, PLAN.label) is Action.CREATE
    assert classify(dv, dv.obj, PLAN.label) is Action.OURS
    earlier = {**dv.obj, "metadata": {**dv.obj["metadata"],
                                      "labels": {"dlm-guard.io/migration-id": "older"}}}
    assert classify(dv, earlier, PLAN.label) is Action.EARLIER
    resized = {**earlier, "spec": {"source": {"blank": {}}, "storage": {}}}
    assert "already exists and is not part of this migration" in str(
        classify(dv, resized, PLAN.label))
    foreign_vm = {"metadata": {"name": "db"}, "spec": {}}
    assert "target VirtualMachine prod/db already exists" in str(
        classify(_planned(Step.TARGET_VM), foreign_vm, PLAN.label))


def test_a_secret_with_the_same_content_is_kept_one_with_other_content_conflicts() -> None:
    secret = PlannedObject(Step.SECRET, PLAN.objects[0].side, {
        "kind": "Secret", "metadata": {"name": "s", "namespace": "prod"},
        "data": {"k": "dg=="}})
    assert classify(secret, {"data": {"k": "dg=="}, "type": "Opaque"}, "x") is Action.SAME
    assert not isinstance(classify(secret, {"data": {"k": "eA=="}}, "x"), Action)
    assert not isinstance(classify(secret, {"data": {"k": "dg=="},
                                            "type": "kubernetes.io/ssh-auth"}, "x"), Action)


@pytest.mark.parametrize(("step", "message", "expected"), [
    (Step.TARGET_VMIM, "denied the request: [receiver-vmi] spec.vmiName: ... not found", True),
    (Step.SOURCE_VMIM, "denied the request: [source-vmi] spec.vmiName: ... not found", True),
    (Step.TARGET_VMIM, '... denied the request: the VMI "prod/db" does not exist', True),
    (Step.TARGET_VMIM, "[receiver-vmi] x; [shareable-disk] y", False),  # a real problem too
    (Step.TARGET_VMIM, "[duplicate-migration-id] spec.receive.migrationID: ...", False),
    (Step.TARGET_VM, "[receiver-vmi] never for a VM", False),
    (Step.SOURCE_VMIM, "connection refused", False),
])
def test_which_denials_mean_the_vmi_is_not_known_yet(step: Step, message: str,
                                                     expected: bool) -> None:
    assert vmi_not_seen_yet(_planned(step), message) is expected


def test_a_second_pair_is_never_started() -> None:
    def vmim(name: str, phase: str, label: str | None, vmi: str = "db") -> dict[str, Any]:
        labels = {"dlm-guard.io/migration-id": label} if label else {}
        return {"metadata": {"name": name, "namespace": "prod", "labels": labels},
                "spec": {"vmiName": vmi, "sendTo": {}}, "status": {"phase": phase}}
    found = conflicting_migrations([
        vmim("ours", "Running", PLAN.label), vmim("done", "Succeeded", "other"),
        vmim("elsewhere", "Running", "other", vmi="web"), vmim("forklift-x", "Pending", None),
        vmim("stuck", "", "other")], "db", PLAN.label)
    assert found == ["prod/forklift-x (phase Pending)", "prod/stuck (phase unset)"]


# --- progress --------------------------------------------------------------------------------
def test_the_bar_follows_the_slower_side() -> None:
    assert fraction_done("", "") == 0.0
    assert fraction_done("Succeeded", "Succeeded") == 1.0
    assert fraction_done("Succeeded", "Synchronizing") == pytest.approx(1 / 8)
    assert fraction_done("Bogus", "Running") == 0.0
    assert bar(0.5, 10) == "[#####.....]"


def test_plain_output_prints_a_line_only_when_phases_change() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False)
    for elapsed, phases in ((1.0, ("", "")), (1.5, ("", "")), (2.0, ("Pending", "Pending"))):
        progress.phases(elapsed, *phases)
    assert out.getvalue() == ("[   1.0s] target VMIM -, source VMIM -\n"
                              "[   2.0s] target VMIM Pending, source VMIM Pending\n")


def test_a_terminal_gets_one_redrawn_line_with_a_bar() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.phases(1.0, "Running", "Running")
    progress.say("done")
    assert out.getvalue().startswith("\r[#####################...] target VMIM Running")
    assert out.getvalue().endswith("\ndone\n")


# --- flags -------------------------------------------------------------------------------------
def test_cluster_and_mapping_flags() -> None:
    assert cluster_flag("/k/east,context=admin").context == "admin"
    assert cluster_flag("/k/east").kubeconfig == "/k/east"
    assert mapping_flag("ceph=nvme") == ("ceph", "nvme")
    for bad in ("/k,namespace=x", ",context=a", "/k,context="):
        with pytest.raises(argparse.ArgumentTypeError):
            cluster_flag(bad)
    for bad in ("ceph", "=nvme", "ceph="):
        with pytest.raises(argparse.ArgumentTypeError):
            mapping_flag(bad)


# --- the stand-in's walk through the phases ----------------------------------------------------
def test_the_standin_walks_every_shared_phase_then_stops() -> None:
    walked, phase = [], "WaitingForSync"
    while (nxt := _next_phase(phase)) is not None:
        walked.append(nxt)
        phase = nxt
    assert tuple(walked) == SHARED_PHASES
    assert _next_phase("Synchronizing") == "Pending"


def test_only_a_completed_unfailed_source_vmi_counts_as_migrated_away() -> None:
    migration: dict[str, Any] = {"completed": True, "targetState": {"syncAddress": "10.0.0.1:9185"}}
    done = {"status": {"phase": "Succeeded", "migrationState": migration}}
    assert _migrated_out(done)
    failed = {"status": {"migrationState": {**migration, "failed": True}}}
    assert not _migrated_out(failed)
    receiver = {**done, "metadata": {"annotations": {
        "kubevirt.io/create-migration-target": "true"}}}
    assert not _migrated_out(receiver)
