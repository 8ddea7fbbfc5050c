"""Pure rule functions, as tables: each slug fires where it should, and only there."""

from __future__ import annotations

from typing import Any

import pytest
from factories import (
    CONFIG_MAP_FS_VOLUME,
    DV_FS_VOLUME,
    FORKLIFT_MIGRATION_ID,
    FS,
    MIGRATION_ID,
    NAMESPACE,
    PVC_FS_VOLUME,
    VM_NAME,
    cluster,
    domain,
    kubevirt,
    source_vmim,
    target_vmim,
    vm,
    vmi,
    vmim,
)

from dlm_guard.domain import Role, Severity
from webhook import rules


def slugs(findings: list[Any]) -> list[str]:
    return [f.rule for f in findings]


# --- paths ----------------------------------------------------------------------------
@pytest.mark.parametrize(("parts", "expected"), [
    (("spec", "sendTo", "connectURL"), "spec.sendTo.connectURL"),
    (("spec", "template", "spec", "domain", "devices", "disks", 2, "lun"),
     "spec.template.spec.domain.devices.disks[2].lun"),
    (("metadata", "annotations", "kubevirt.io/restore-run-strategy"),
     'metadata.annotations["kubevirt.io/restore-run-strategy"]'),
    (("items", 0), "items[0]"),
])
def test_field_path_notation(parts: tuple[Any, ...], expected: str) -> None:
    assert rules.field_path(*parts) == expected


# --- connect-url ----------------------------------------------------------------------
# Forms grpc-go v1.79 (what KubeVirt main vendors) dials to a TCP address with a port.
@pytest.mark.parametrize("url", [
    "10.1.2.3:9185", "[fd00::5]:9185", "node-1:1",  # what KubeVirt publishes, and hosts
    "sync.kubevirt.svc.cluster.local.:65535", "sync-a-ns.kubevirt.svc.clusterset.local:9185",
    "dns:///sync.example.com:9185", "dns:///[fd00::5]:9185", "dns:///10.0.0.1:80",
    "dns://10.96.0.10/sync.example.com:9185", "dns://10.96.0.10:53/10.1.2.3:9185",
    "dns:sync.example.com:9185",  # scheme:opaque: grpc-go takes the opaque part as endpoint
    "DNS:///sync.example.com:9185",  # url.Parse lowercases the scheme
    "passthrough:///10.1.2.3:9185", "passthrough:///sync.example.com:9185",
    "passthrough:10.1.2.3:9185", "passthrough:///[fd00::5]:9185",
])
def test_connect_url_accepts_grpc_dial_targets(url: str) -> None:
    assert rules.connect_url_findings(url) == []


@pytest.mark.parametrize(("url", "says"), [
    (None, "missing"),
    ("", "missing"),
    (9185, "missing"),
    ("https://10.1.2.3:9185", "http(s) URL"),
    ("http://sync.example.com:9185", "wants host:port"),
    ("HTTPS://10.1.2.3:9185", "http(s) URL"),
    ("grpc://10.1.2.3:9185", "'grpc' is not a gRPC resolver scheme"),
    ("ipv4:10.1.2.3:9185", "ipv4: is a target scheme of gRPC's C core only"),
    ("ipv6:[fd00::5]:9185", "ipv6: is a target scheme of gRPC's C core only"),
    ("10.1.2.3:0", "1 to 65535"),
    ("10.1.2.3:65536", "1 to 65535"),
    ("10.1.2.3:http", "1 to 65535"),
    ("10.1.2.3:+80", "1 to 65535"),
    ("10.1.2.3:\u0663", "1 to 65535"),  # a non-ASCII digit
    ("10.1.2.3:", "ends with ':'"),
    ("[fd00::5]:", "ends with ':'"),
    (":9185", "no host"),
    ("999.1.1.1:9185", "not a valid IPv4 address or DNS name"),
    ("bad host:9185", "whitespace"),
    ("10.1.2.3:9185 ", "whitespace"),
    ("10.1.2.3:\t9185", "whitespace"),
    ("-leading.dash:9185", "not a valid IPv4 address or DNS name"),
    ("fd00::5:9185", "grpc-go reads 'fd00::5:9185' as one address and dials port 443"),
    ("fd00::5", "needs brackets"),
    ("[not-ipv6]:9185", "[ipv6]:port"),
    ("[fd00::5]x9185", "[ipv6]:port"),
    ("dns:///", "no address"),
    ("dns:///fd00::5:9185", "needs brackets"),
    ("dns://bad host/10.1.2.3:9185", "whitespace"),
    ("dns://999.1.1.1/10.1.2.3:9185", "not a valid IPv4 address or DNS name"),
    ("passthrough:///10.1.2.3", "passthrough hands the address to the dialer"),
    ("passthrough:///", "no address"),
])
def test_connect_url_denies_what_can_never_connect(url: Any, says: str) -> None:
    [finding] = rules.connect_url_findings(url)
    assert finding.severity is Severity.VIOLATION
    assert says in finding.message, finding.message


@pytest.mark.parametrize(("url", "says"), [
    ("10.1.2.3", "gRPC dials port 443"),
    ("sync.example.com", "gRPC dials port 443"),
    ("[fd00::5]", "gRPC dials port 443"),
    ("dns:///sync.example.com", "gRPC dials port 443"),
    ("dns://10.96.0.10/10.1.2.3", "gRPC dials port 443"),
    ("unix:///var/run/sync.sock", "Unix socket"),
    ("unix:relative.sock", "Unix socket"),
    ("unix-abstract:sync", "Unix socket"),
])
def test_connect_url_that_may_connect_is_only_advisory(url: str, says: str) -> None:
    [finding] = rules.connect_url_findings(url)
    assert finding.severity is Severity.ADVISORY and says in finding.message


def test_ipv4_scheme_gets_no_ipv6_message() -> None:
    [finding] = rules.connect_url_findings("ipv4:10.1.2.3:9185")
    assert "IPv6" not in finding.message and "brackets" not in finding.message


def test_connect_url_finding_points_at_the_field() -> None:
    [finding] = rules.connect_url_findings("https://10.1.2.3:9185")
    assert (finding.rule, finding.path) == ("connect-url", "spec.sendTo.connectURL")
    assert "gRPC" in finding.message and "host:port" in finding.message


@pytest.mark.parametrize("url", ["https://" + "a" * 5000, "a" * 5000 + ":9185",
                                 "dns:///" + "a." * 3000 + ":1", "[" + "f" * 5000 + "]:1"])
def test_long_values_are_cut_short_in_messages(url: str) -> None:
    [finding] = rules.connect_url_findings(url)
    assert len(finding.message) < 400


# --- migration-id, vmi-name, both-roles -----------------------------------------------
@pytest.mark.parametrize("value", [
    MIGRATION_ID, "a", "A.b_c-9", "x" * 63,
    FORKLIFT_MIGRATION_ID,  # kubev2v/forklift live.go kubevirtMigrationID: 73 characters
    "x" * 64, "-starts-with-dash", "has space", "ends.", "ümlaut/ß", "x" * 10_000,
])
@pytest.mark.parametrize("role", list(Role))
def test_migration_id_accepts_any_non_empty_string(value: str, role: Role) -> None:
    # Upstream sets no length or charset limit on migrationID.
    build = source_vmim if role is Role.SOURCE else target_vmim
    assert rules.migration_id_findings(build(migration_id=value), role) == []


@pytest.mark.parametrize(("value", "says"), [
    (None, "missing"), ("", "empty"), (42, "must be a string"),
])
@pytest.mark.parametrize("role", list(Role))
def test_migration_id_rejects(value: Any, says: str, role: Role) -> None:
    build = source_vmim if role is Role.SOURCE else target_vmim
    obj = build(migration_id=value)
    [finding] = rules.migration_id_findings(obj, role)
    field = "sendTo" if role is Role.SOURCE else "receive"
    assert finding.path == f"spec.{field}.migrationID" and says in finding.message


@pytest.mark.parametrize("name", [None, ""])
def test_vmi_name_required(name: str | None) -> None:
    obj = target_vmim(vmi=name)
    assert slugs(rules.vmim_offline_findings(obj)) == ["vmi-name"]


def test_both_roles_reports_every_side_at_once() -> None:
    obj = vmim(vmi=None, send_to={"migrationID": "", "connectURL": "https://x:1"},
               receive={"migrationID": "ok"})
    found = rules.vmim_offline_findings(obj)
    assert slugs(found) == ["both-roles", "vmi-name", "migration-id", "connect-url"]
    assert found[0].path == "spec"


@pytest.mark.parametrize("obj", [source_vmim(), target_vmim()])
def test_clean_decentralized_vmims_have_no_offline_findings(obj: dict[str, Any]) -> None:
    assert rules.vmim_offline_findings(obj) == []


# --- cluster rules --------------------------------------------------------------------
def test_receiver_vmi_missing_and_not_a_receiver() -> None:
    [missing] = rules.vmim_cluster_findings(target_vmim(), NAMESPACE, cluster(kubevirt()))
    assert missing.rule == "receiver-vmi" and "not found" in missing.message
    assert f"{NAMESPACE}/{VM_NAME}" in missing.message and missing.path == "spec.vmiName"
    [plain] = rules.vmim_cluster_findings(target_vmim(), NAMESPACE, cluster(kubevirt(), vmi()))
    assert plain.rule == "receiver-vmi" and "WaitAsReceiver" in plain.message


def test_receiver_vmi_is_looked_up_in_the_request_namespace() -> None:
    store = cluster(kubevirt(), vmi(namespace="elsewhere", receiver=True))
    assert slugs(rules.vmim_cluster_findings(target_vmim(), NAMESPACE, store)) == ["receiver-vmi"]


@pytest.mark.parametrize(("the_vmi", "says"), [
    (None, "not found"),
    (vmi(phase="Scheduling"), "'Scheduling', not Running"),
    (vmi(phase="WaitingForSync", receiver=True), "itself a migration target"),
])
def test_source_vmi(the_vmi: dict[str, Any] | None, says: str) -> None:
    store = cluster(kubevirt(), *([the_vmi] if the_vmi else []))
    [finding] = rules.vmim_cluster_findings(source_vmim(), NAMESPACE, store)
    assert finding.rule == "source-vmi" and says in finding.message


def test_healthy_clusters_have_no_findings() -> None:
    target = cluster(kubevirt(), vmi(receiver=True, phase="WaitingForSync"))
    source = cluster(kubevirt(), vmi())
    assert rules.vmim_cluster_findings(target_vmim(), NAMESPACE, target) == []
    assert rules.vmim_cluster_findings(source_vmim(), NAMESPACE, source) == []


@pytest.mark.parametrize(("other", "duplicate"), [
    (target_vmim(name="old", namespace="team-b", phase="Succeeded"), True),  # any ns, finished
    (target_vmim(name="old", phase="Failed"), True),
    (target_vmim(name="migration"), False),  # the object itself (same namespace/name)
    (source_vmim(name="peer"), False),  # the other role may and must share the ID
    (target_vmim(name="old", migration_id="another-id"), False),
])
def test_duplicate_migration_id(other: dict[str, Any], duplicate: bool) -> None:
    store = cluster(kubevirt(), vmi(receiver=True), other)
    found = rules.vmim_cluster_findings(target_vmim(), NAMESPACE, store)
    assert ("duplicate-migration-id" in slugs(found)) is duplicate
    if duplicate:
        [finding] = [f for f in found if f.rule == "duplicate-migration-id"]
        assert finding.path == "spec.receive.migrationID"
        assert f"{other['metadata']['namespace']}/old" in finding.message


def test_duplicate_forklift_id_found_by_the_id_not_the_label() -> None:
    # A stored VMIM whose label disagrees with its spec (hand-edited, or labelled before the
    # hash form) is still found by its spec ID; one whose label alone matches is not.
    mine = target_vmim(migration_id=FORKLIFT_MIGRATION_ID)
    same_id = target_vmim(name="old", namespace="b", migration_id=FORKLIFT_MIGRATION_ID,
                          labels={"dlm-guard.io/migration-id": "something-else"})
    label_only = target_vmim(name="decoy", namespace="c", migration_id="other",
                             labels={"dlm-guard.io/migration-id": FORKLIFT_MIGRATION_ID[:63]})
    store = cluster(kubevirt(), vmi(receiver=True), same_id, label_only)
    [finding] = [f for f in rules.vmim_cluster_findings(mine, NAMESPACE, store)
                 if f.rule == "duplicate-migration-id"]
    assert "b/old" in finding.message and "c/decoy" not in finding.message


@pytest.mark.parametrize(("source_vm", "owned", "fires"), [
    (vm(running=True, restore=None), True, True),
    (vm(running=False, restore=None), True, False),  # false maps to Halted: no update loop
    (vm(run_strategy="Always", restore=None), True, False),
    (vm(running=True, restore=None), False, False),  # a VMI without an owner VM
    (vm(name="someone-else", running=True, restore=None), True, False),  # owner not cached
])
def test_legacy_running(source_vm: dict[str, Any], owned: bool, fires: bool) -> None:
    store = cluster(kubevirt(), vmi(owned=owned), source_vm)
    found = rules.vmim_cluster_findings(source_vmim(), NAMESPACE, store)
    assert ("legacy-running" in slugs(found)) is fires
    if fires:
        [finding] = found
        assert finding.path == "spec.running"
        assert finding.message.startswith(f"VirtualMachine {NAMESPACE}/{VM_NAME} (owner")
        assert "spec.runStrategy: Always" in finding.message


def test_legacy_running_only_on_the_source_side() -> None:
    store = cluster(kubevirt(), vmi(receiver=True, phase="WaitingForSync"),
                    vm(running=True, restore=None))
    assert "legacy-running" not in slugs(rules.vmim_cluster_findings(target_vmim(), NAMESPACE,
                                                                     store))


def test_named_vmi_volume_findings_name_the_vmi() -> None:
    bad = vmi(dom=domain(disks=[{"name": "d0", "disk": {}}, {"name": "d1", "lun": {}}]))
    [finding] = rules.vmim_cluster_findings(source_vmim(), NAMESPACE, cluster(kubevirt(), bad))
    assert finding.rule == "lun-disk" and finding.path == "spec.domain.devices.disks[1].lun"
    assert finding.message.startswith(f"VirtualMachineInstance {NAMESPACE}/{VM_NAME}")


@pytest.mark.parametrize(("cr", "says"), [
    (None, "no KubeVirt CR found"),
    (kubevirt(gates=(), disabled=("DecentralizedLiveMigration",), version="v1.10.0"),
     "remove it from spec.configuration.developerConfiguration.disabledFeatureGates"),
    (kubevirt(gates=(), version="v1.9.2"), "add DecentralizedLiveMigration to"),
    (kubevirt(gates=(), version="v1.6.0-rc.1"), "'v1.6.0-rc.1' is a release where"),
])
def test_feature_gate_known_off_is_a_violation(cr: dict[str, Any] | None, says: str) -> None:
    [finding] = rules.feature_gate_findings(cr)
    assert finding.rule == "feature-gate" and says in finding.message
    assert finding.severity is Severity.VIOLATION


@pytest.mark.parametrize("version", [
    None, "", "latest", "garbage", "v1.9.0-beta.0-1264-gd923fdb815", "v1.10.0", "v2.0.1"])
def test_feature_gate_cannot_tell_is_an_advisory_naming_the_version(version: str | None) -> None:
    [finding] = rules.feature_gate_findings(kubevirt(gates=(), version=version))
    assert finding.severity is Severity.ADVISORY
    assert "cannot tell" in finding.message
    assert (repr(version) if version else "observedKubeVirtVersion is not set") in finding.message


@pytest.mark.parametrize("cr", [
    kubevirt(), kubevirt(version="latest"), kubevirt(version="v1.9.0-beta.0-1264-gd923fdb815"),
    kubevirt(disabled=("DecentralizedLiveMigration",)),  # an explicit enable wins
])
def test_feature_gate_on(cr: dict[str, Any]) -> None:
    assert rules.feature_gate_findings(cr) == []


def test_feature_gate_survives_a_malformed_kubevirt_cr() -> None:
    cr = {"kind": "KubeVirt", "spec": {"configuration": {"developerConfiguration": ["x"]}}}
    [finding] = rules.feature_gate_findings(cr)
    assert finding.rule == "feature-gate" and finding.severity is Severity.ADVISORY


# --- immutable-spec -------------------------------------------------------------------
def test_immutable_spec_lists_each_changed_field() -> None:
    old = source_vmim()
    new = source_vmim(connect_url="10.0.0.9:9185", migration_id="other")
    found = rules.immutable_spec_findings(new, old)
    assert [f.path for f in found] == ["spec.sendTo.connectURL", "spec.sendTo.migrationID"]
    assert {f.rule for f in found} == {"immutable-spec"}


def test_immutable_spec_ignores_metadata_and_status() -> None:
    old = source_vmim()
    new = source_vmim(labels={"x": "y"}, phase="Running")
    assert rules.immutable_spec_findings(new, old) == []


@pytest.mark.parametrize(("old_spec", "new_spec", "paths"), [
    ({"a": [1, 2]}, {"a": [1, 3]}, ["spec.a[1]"]),
    ({"a": [1, 2]}, {"a": [1]}, ["spec.a"]),
    ({"a": 1}, "scalar", ["spec"]),
    (None, {"a": 1}, ["spec"]),
    ({"x/y": 1}, {"x/y": 2}, ['spec["x/y"]']),
])
def test_changed_paths(old_spec: Any, new_spec: Any, paths: list[str]) -> None:
    assert [f.path for f in rules.immutable_spec_findings({"spec": new_spec},
                                                          {"spec": old_spec})] == paths


# --- WaitAsReceiver VM ----------------------------------------------------------------
@pytest.mark.parametrize(("dom", "slug", "path"), [
    (domain(disks=[{"name": "a"}, {"name": "b", "shareable": True}]), "shareable-disk",
     "spec.template.spec.domain.devices.disks[1].shareable"),
    (domain(disks=[{"name": "a"}, {"name": "b"}, {"name": "c", "lun": {}}]), "lun-disk",
     "spec.template.spec.domain.devices.disks[2].lun"),
    (domain(tpm={"persistent": True}), "persistent-state",
     "spec.template.spec.domain.devices.tpm.persistent"),
    ({**domain(), "firmware": {"bootloader": {"efi": {"persistent": True}}}},
     "persistent-state", "spec.template.spec.domain.firmware.bootloader.efi.persistent"),
])
def test_vm_volume_rules(dom: dict[str, Any], slug: str, path: str) -> None:
    [finding] = rules.wait_as_receiver_vm_findings(vm(dom=dom))
    assert (finding.rule, finding.path) == (slug, path)


@pytest.mark.parametrize("volume", [PVC_FS_VOLUME, DV_FS_VOLUME])
def test_filesystem_sharing_a_pvc_or_data_volume_is_denied(volume: dict[str, Any]) -> None:
    other = {"name": "cfg", "virtiofs": {}}
    dom = domain(filesystems=[other, FS])
    [finding] = rules.wait_as_receiver_vm_findings(vm(dom=dom, volumes=[volume]))
    assert (finding.rule, finding.path) == (
        "filesystem", "spec.template.spec.domain.devices.filesystems[1]")
    source = next(key for key in volume if key != "name")
    assert f"'fs' shares a {source} volume" in finding.message
    assert "cannot be live-migrated across clusters" not in finding.message


@pytest.mark.parametrize("volume", [
    CONFIG_MAP_FS_VOLUME,
    {"name": "fs", "secret": {"secretName": "app-secret"}},
    {"name": "fs", "serviceAccount": {"serviceAccountName": "default"}},
    {"name": "fs", "downwardAPI": {"fields": []}},
    {"name": "other", "persistentVolumeClaim": {"claimName": "x"}},  # not the shared volume
])
def test_filesystem_sharing_what_virt_handler_allows_is_not_a_finding(
        volume: dict[str, Any]) -> None:
    # pkg/virt-handler/vm.go checkVolumesForMigration: a volume shared with virtiofs that is
    # not a PVC, DataVolume or hostDisk does not block migration (since v1.5.0).
    assert rules.wait_as_receiver_vm_findings(vm(dom=domain(filesystems=[FS]),
                                                 volumes=[volume])) == []


@pytest.mark.parametrize("dom", [
    domain(disks=[{"name": "a", "shareable": False}]), domain(filesystems=[]),
    domain(tpm={}), domain(tpm={"persistent": False}),
])
def test_vm_volume_rules_negative(dom: dict[str, Any]) -> None:
    assert rules.wait_as_receiver_vm_findings(vm(dom=dom)) == []


@pytest.mark.parametrize("value", ["Always", "Halted", "Manual", "RerunOnFailure", "Once"])
def test_restore_run_strategy_accepts_ordinary_strategies(value: str) -> None:
    assert rules.restore_run_strategy_findings(vm(restore=value)) == []


@pytest.mark.parametrize(("value", "says"), [
    (None, "missing: add it"), ("WaitAsReceiver", "not one of"), ("always", "not one of"),
    ("", "not one of"),
])
def test_restore_run_strategy_rejects(value: str | None, says: str) -> None:
    [finding] = rules.restore_run_strategy_findings(vm(restore=value))
    assert finding.path == 'metadata.annotations["kubevirt.io/restore-run-strategy"]'
    assert says in finding.message


def test_vm_findings_come_all_at_once() -> None:
    dom = domain(disks=[{"name": "a", "shareable": True, "lun": {}}],
                 filesystems=[FS], tpm={"persistent": True})
    found = rules.wait_as_receiver_vm_findings(vm(dom=dom, restore=None, volumes=[PVC_FS_VOLUME]))
    assert slugs(found) == ["shareable-disk", "lun-disk", "filesystem", "persistent-state",
                            "restore-run-strategy"]
