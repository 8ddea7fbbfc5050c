"""The engine without HTTP: which requests are checked, modes, exemptions, Decisions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jsonpatch
import pytest
from factories import (
    CONFIG_MAP_FS_VOLUME,
    DV_FS_VOLUME,
    FS,
    NAMESPACE,
    PVC_FS_VOLUME,
    cluster,
    context,
    domain,
    healthy_source_cluster,
    healthy_target_cluster,
    kubevirt,
    request,
    source_vmim,
    target_vmim,
    vm,
    vmi,
    vmim,
)

from dlm_guard.domain import Rule
from dlm_guard.store import ObjectStore
from webhook.engine import evaluate, mutate, mutation_patch, parse_request, validate
from webhook.policy import CLUSTER_RULES, RULES, Mode


@dataclass(frozen=True)
class Case:
    """A request that triggers `slug` (bad) and its corrected twin (good)."""

    slug: str
    path: str
    bad: dict[str, Any]
    good: dict[str, Any]
    store: ObjectStore | None = None
    good_store: ObjectStore | None = None  # when the fix is in the cluster, not the object

    @property
    def store_for_good(self) -> ObjectStore | None:
        return self.good_store or self.store


def _update(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return request(new, operation="UPDATE", old=old)


def _dom(**devices: Any) -> dict[str, Any]:
    return domain(**devices)


CASES = [
    Case("both-roles", "spec",
         request(vmim(send_to={"migrationID": "a", "connectURL": "h:1"},
                      receive={"migrationID": "a"})),
         request(source_vmim())),
    Case("vmi-name", "spec.vmiName", request(target_vmim(vmi=None)), request(target_vmim())),
    Case("migration-id", "spec.sendTo.migrationID", request(source_vmim(migration_id="")),
         request(source_vmim())),
    Case("connect-url", "spec.sendTo.connectURL",
         request(source_vmim(connect_url="https://10.1.2.3:9185")), request(source_vmim())),
    Case("immutable-spec", "spec.sendTo.connectURL",
         _update(source_vmim(), source_vmim(connect_url="10.9.9.9:9185")),
         _update(source_vmim(), source_vmim(labels={"any": "label"}))),
    Case("shareable-disk", "spec.template.spec.domain.devices.disks[0].shareable",
         request(vm(dom=_dom(disks=[{"name": "d", "shareable": True}]))), request(vm())),
    Case("lun-disk", "spec.template.spec.domain.devices.disks[0].lun",
         request(vm(dom=_dom(disks=[{"name": "d", "lun": {}}]))), request(vm())),
    Case("filesystem", "spec.template.spec.domain.devices.filesystems[0]",
         request(vm(dom=_dom(filesystems=[FS]), volumes=[PVC_FS_VOLUME])),
         request(vm(dom=_dom(filesystems=[FS]), volumes=[CONFIG_MAP_FS_VOLUME]))),
    Case("persistent-state", "spec.template.spec.domain.devices.tpm.persistent",
         request(vm(dom=_dom(tpm={"persistent": True}))), request(vm(dom=_dom(tpm={})))),
    Case("restore-run-strategy", 'metadata.annotations["kubevirt.io/restore-run-strategy"]',
         request(vm(restore="WaitAsReceiver")), request(vm(restore="Halted"))),
    Case("duplicate-migration-id", "spec.receive.migrationID",
         request(target_vmim()), request(target_vmim(migration_id="fresh-id")),
         healthy_target_cluster(target_vmim(name="old", namespace="other", phase="Succeeded"))),
    Case("receiver-vmi", "spec.vmiName",
         request(target_vmim(vmi="not-there")), request(target_vmim()),
         healthy_target_cluster()),
    Case("source-vmi", "spec.vmiName",
         request(source_vmim(vmi="not-there")), request(source_vmim()),
         healthy_source_cluster()),
    Case("legacy-running", "spec.running",
         request(source_vmim()), request(source_vmim()),
         cluster(kubevirt(), vmi(), vm(running=True, restore=None)),
         cluster(kubevirt(), vmi(), vm(run_strategy="Always", restore=None))),
    Case("feature-gate", "spec.configuration.developerConfiguration.featureGates",
         request(source_vmim()), request(source_vmim()),
         cluster(kubevirt(gates=(), version="v1.9.0"), vmi()), healthy_source_cluster()),
]


def test_every_rule_has_a_case() -> None:
    assert {case.slug for case in CASES} == set(RULES)


def slugs_of(req: dict[str, Any], store: ObjectStore | None = None,
             policy: dict[str, Any] | None = None) -> list[str]:
    return [rated.finding.rule for rated in evaluate(req, context(policy, store)).findings]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.slug)
def test_rule_fires_with_its_path_in_the_message(case: Case) -> None:
    decision = validate(case.bad, context({"rules": {case.slug: "enforce"}}, case.store))
    assert not decision.allowed and decision.code == 403
    assert f"[{case.slug}] {case.path}: " in decision.message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.slug)
def test_rule_quiet_on_the_corrected_object(case: Case) -> None:
    assert case.slug not in slugs_of(case.good, case.store_for_good)
    assert validate(case.good, context({}, case.store_for_good)).allowed


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.slug)
def test_rule_in_warn_mode_allows_with_a_warning(case: Case) -> None:
    decision = validate(case.bad, context({"rules": {case.slug: "warn"}}, case.store))
    assert any(w.startswith(f"[{case.slug}] {case.path}: ") for w in decision.warnings)
    assert case.slug not in decision.message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.slug)
def test_rule_off_is_dropped(case: Case) -> None:
    assert case.slug not in slugs_of(case.bad, case.store, {"rules": {case.slug: "off"}})


@pytest.mark.parametrize("case", [c for c in CASES if c.slug in CLUSTER_RULES],
                         ids=lambda c: c.slug)
def test_cluster_rules_skipped_offline(case: Case) -> None:
    assert case.slug not in slugs_of(case.bad, store=None)


def test_default_modes_come_from_the_rule_table() -> None:
    for case in CASES:
        modes = {r.mode for r in evaluate(case.bad, context({}, case.store)).findings
                 if r.finding.rule == case.slug}
        assert modes == {RULES[Rule(case.slug)][0]}, case.slug


# --- all findings at once, modes side by side -----------------------------------------
BAD_VM = vm(restore="bogus", dom=domain(disks=[{"name": "d", "shareable": True, "lun": {}}],
                                        filesystems=[FS], tpm={"persistent": True}),
            volumes=[PVC_FS_VOLUME])


def rule_tags(message: str) -> list[str]:
    """The `[slug]` that starts each "; "-joined finding (messages may contain "; " too)."""
    return re.findall(r"(?:^|; )(\[[a-z-]+\]) ", message)


def test_denial_lists_every_enforced_finding_joined() -> None:
    decision = validate(request(BAD_VM), context())
    assert rule_tags(decision.message) == [
        "[shareable-disk]", "[lun-disk]", "[filesystem]", "[restore-run-strategy]"]
    assert decision.message.startswith(
        "[shareable-disk] spec.template.spec.domain.devices.disks[0].shareable: disk 'd' is ")
    assert '; [restore-run-strategy] metadata.annotations["kubevirt.io/restore-run-strategy"]: ' \
        "'bogus' is not one of Always, Halted, Manual, RerunOnFailure, Once" in decision.message
    assert decision.warnings == (
        "[persistent-state] spec.template.spec.domain.devices.tpm.persistent: persistent vTPM: "
        "persistent VM state needs domain.firmware.uuid equal on both VMs, and is not copied "
        "when its PVC is ReadWriteMany on both sides",)
    review = decision.review("0f1e2d3c")["response"]
    assert review["status"] == {"code": 403, "reason": "Forbidden", "status": "Failure",
                                "message": decision.message}


@pytest.mark.parametrize("mode", list(Mode))
def test_one_mode_for_every_rule(mode: Mode) -> None:
    policy = {"rules": dict.fromkeys(RULES, mode.value)}
    decision = validate(request(BAD_VM), context(policy))
    assert decision.allowed is (mode is not Mode.ENFORCE)
    assert len(decision.warnings) == (5 if mode is Mode.WARN else 0)
    assert len(rule_tags(decision.message)) == (5 if mode is Mode.ENFORCE else 0)


def test_cluster_vmim_reports_offline_and_cluster_findings_together() -> None:
    bad = request(source_vmim(connect_url="http://x:1", vmi="ghost"))
    store = cluster(kubevirt(gates=(), disabled=("DecentralizedLiveMigration",)))
    assert slugs_of(bad, store) == ["connect-url", "source-vmi", "feature-gate"]


def test_named_vmi_volume_rules_through_the_engine() -> None:
    store = cluster(kubevirt(), vmi(dom=domain(filesystems=[FS]), volumes=[DV_FS_VOLUME]))
    decision = validate(request(source_vmim()), context({}, store))
    assert "[filesystem] spec.domain.devices.filesystems[0]: VirtualMachineInstance vms/db-1" \
        in decision.message


# --- scope: what is never checked -----------------------------------------------------
def _renamed(req: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**req, **changes}


BAD_SOURCE = request(source_vmim(connect_url="https://x:1"))
NOT_OURS = {
    "delete": _renamed(request(None, old=BAD_VM, operation="DELETE"), object=None),
    "connect": _renamed(BAD_SOURCE, operation="CONNECT"),
    "ordinary migration": request(vmim()),
    "status subresource": _renamed(BAD_SOURCE, subResource="status"),
    "other group": _renamed(BAD_SOURCE, kind={"group": "example.com", "version": "v1",
                                              "kind": "VirtualMachineInstanceMigration"}),
    "pod": request({**BAD_VM, "apiVersion": "v1", "kind": "Pod"}),
    "vmi": request({**BAD_VM, "kind": "VirtualMachineInstance"}),
    "running vm": request({**BAD_VM, "spec": {**BAD_VM["spec"], "runStrategy": "Always"}}),
}


@pytest.mark.parametrize("req", NOT_OURS.values(), ids=NOT_OURS.keys())
def test_not_ours_is_allowed_untouched(req: dict[str, Any]) -> None:
    ctx = context({}, cluster())
    assert validate(req, ctx) == validate({}, ctx)
    assert validate(req, ctx).allowed and not validate(req, ctx).warnings
    assert mutation_patch(req, ctx) == []


def test_kind_falls_back_on_the_object() -> None:
    req = {key: value for key, value in request(BAD_VM).items() if key != "kind"}
    assert parse_request(req).kind == "VirtualMachine"
    assert not validate(req, context()).allowed


def test_namespace_falls_back_on_the_object() -> None:
    req = {**request(BAD_VM), "namespace": None}
    assert parse_request(req).namespace == NAMESPACE


def test_exempt_namespace_skips_checks_and_mutations() -> None:
    policy = {"exemptNamespaces": [NAMESPACE]}
    unmutated = vm(restore=None, dom=BAD_VM["spec"]["template"]["spec"]["domain"])
    assert validate(request(unmutated), context(policy)) == validate({}, context())
    assert mutate(request(unmutated), context(policy)).patch == []
    assert not validate(request(unmutated, namespace="other"), context(policy)).allowed


def test_wait_as_receiver_vm_update_is_checked_too() -> None:
    assert not validate(_update(vm(), BAD_VM), context()).allowed


def test_vm_update_ratchets_on_findings_the_old_object_had() -> None:
    # A VM admitted before dlm-guard keeps its old findings; only new ones are denied.
    old = vm(dom=domain(disks=[{"name": "a", "lun": {}}]))
    same = {**old, "metadata": {**old["metadata"], "labels": {"touched": "yes"}}}
    assert validate(_update(old, same), context()).allowed
    worse = vm(dom=domain(disks=[{"name": "a", "lun": {}}], filesystems=[FS]),
               volumes=[PVC_FS_VOLUME])
    decision = validate(_update(old, worse), context())
    assert rule_tags(decision.message) == ["[filesystem]"]


def test_vm_becoming_a_receiver_gets_every_finding() -> None:
    old = vm(run_strategy="Always", dom=domain(disks=[{"name": "a", "lun": {}}]))
    new = vm(dom=domain(disks=[{"name": "a", "lun": {}}]))
    assert rule_tags(validate(_update(old, new), context()).message) == ["[lun-disk]"]


def test_terminating_vm_is_not_checked() -> None:
    # Finalizer removal on a VM being deleted must never be blocked.
    deleting = {**BAD_VM["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}
    bad = {**BAD_VM, "metadata": deleting}
    assert validate(_update(vm(), bad), context()).allowed


def test_vmim_update_only_checks_immutability() -> None:
    # Findings that CREATE would deny do not block later metadata/status updates.
    bad = source_vmim(connect_url="https://x:1")
    assert validate(_update(bad, {**bad, "metadata": {"labels": {"a": "b"}}}), context()).allowed


# --- mutate, then validate, as the API server chains them -----------------------------
def apply_mutation(req: dict[str, Any], ctx: Any) -> dict[str, Any]:
    decision = mutate(req, ctx)
    assert decision.allowed
    return {**req, "object": jsonpatch.apply_patch(req["object"], decision.patch)}


@pytest.mark.parametrize("obj", [vm(restore=None), target_vmim(migration_id=""),
                                 source_vmim(), target_vmim(migration_id=None)])
def test_mutated_request_passes_validation_and_mutates_no_further(obj: dict[str, Any]) -> None:
    ctx = context({}, healthy_target_cluster(vmi(name="db-1", namespace="x")))
    if obj["kind"] == "VirtualMachineInstanceMigration" and "sendTo" in obj["spec"]:
        ctx = context({}, healthy_source_cluster())
    once = apply_mutation(request(obj), ctx)
    assert once["object"] != obj
    assert validate(once, ctx).allowed, validate(once, ctx).message
    assert mutate(once, ctx).patch == []


def test_missing_annotation_is_denied_when_the_mutating_webhook_is_off() -> None:
    decision = validate(request(vm(restore=None)), context())
    assert "[restore-run-strategy]" in decision.message and "missing: add it" in decision.message


def test_restore_annotation_injected_even_when_its_rule_is_off() -> None:
    ctx = context({"rules": {"restore-run-strategy": "off"},
                   "defaults": {"restoreRunStrategy": "Manual"}})
    mutated = apply_mutation(request(vm(restore=None)), ctx)
    assert mutated["object"]["metadata"]["annotations"] == {
        "kubevirt.io/restore-run-strategy": "Manual"}


def test_generated_ids_are_unique_per_request() -> None:
    ctx = context()
    ids = {apply_mutation(request(target_vmim(migration_id="")), ctx)["object"]["spec"]
           ["receive"]["migrationID"] for _ in range(5)}
    assert len(ids) == 5


def test_migration_id_not_generated_on_update() -> None:
    old = target_vmim(migration_id="")
    patch = mutation_patch(_update(old, old), context())
    assert [op["path"] for op in patch] == ["/metadata/labels"]


def test_mutate_returns_a_json_patch_response() -> None:
    response = mutate(request(vm(restore=None)), context()).review("abc")["response"]
    assert response["patchType"] == "JSONPatch" and response["uid"] == "abc"
    clean = mutate(request(vm()), context()).review("abc")["response"]
    assert "patch" not in clean and "patchType" not in clean


@pytest.mark.parametrize("version", ["latest", "v1.9.0-beta.0-1264-gd923fdb815", "", "v1.10.0"])
def test_unknown_feature_gate_state_warns_even_under_enforce(version: str) -> None:
    store = cluster(kubevirt(gates=(), version=version), vmi())
    decision = validate(request(source_vmim()), context({"rules": {"feature-gate": "enforce"}},
                                                        store))
    assert decision.allowed
    [warning] = decision.warnings
    assert warning.startswith("[feature-gate] ") and "cannot tell" in warning
    assert (repr(version) if version else "not set") in warning


def test_unknown_feature_gate_state_is_dropped_when_off() -> None:
    store = cluster(kubevirt(gates=(), version="latest"), vmi())
    assert "feature-gate" not in slugs_of(request(source_vmim()), store,
                                          {"rules": {"feature-gate": "off"}})
