"""The differential corpus: every rule table of tests/unit/test_rules.py turned into objects,
plus hypothesis-generated VMs and VMIMs (fixed seed: the same corpus on every run).

Generated objects cover disks with and without shareable/lun, filesystems over each volume
type, annotations present/absent/invalid, connectURLs of every shape, and odd shapes and nulls
the CRD schema rejects (the differential test filters those out by asking the API server).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

UNIT_TESTS = Path(__file__).resolve().parents[1] / "unit"
Obj = dict[str, Any]
RESTORE = "kubevirt.io/restore-run-strategy"
FORKLIFT_ID = "5f0e7a1c-9c9e-4d44-9d3c-4c1b6a2f9e10-2b7d4a36-3f6e-4d2a-9b1e-8f1d2c3b4a5e"  # 73


def base_vm(name: str = "vm") -> Obj:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "annotations": {RESTORE: "Always"}},
            "spec": {"runStrategy": "WaitAsReceiver", "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "disk0", "disk": {"bus": "virtio"}}]},
                           "resources": {"requests": {"memory": "128Mi"}}},
                "volumes": [{"name": "disk0", "dataVolume": {"name": "vm-dv"}}]}}}}


def base_vmim(role: str, name: str = "migration") -> Obj:
    spec: Obj = {"vmiName": "vm"}
    if role == "sendTo":
        spec["sendTo"] = {"connectURL": "10.244.1.17:9185", "migrationID": "vm-7f3a9c"}
    else:
        spec["receive"] = {"migrationID": "vm-7f3a9c"}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": name}, "spec": spec}


# --- The unit tests' tables -----------------------------------------------------------
def _table_values() -> Iterator[Any]:
    """Every value in every @pytest.mark.parametrize table of test_rules.py."""
    sys.path.insert(0, str(UNIT_TESTS))
    import test_rules  # type: ignore[import-not-found]

    for name in dir(test_rules):
        for mark in getattr(getattr(test_rules, name), "pytestmark", []):
            if mark.name == "parametrize":
                for row in mark.args[1]:
                    values = getattr(row, "values", row)
                    yield from values if isinstance(values, (tuple, list)) else (values,)


def _from_value(value: Any) -> Iterator[Obj]:
    """The objects a table value stands for: a whole object, a domain, or a string used in
    every string field the stateless rules read."""
    if isinstance(value, dict) and value.get("kind") in ("VirtualMachine",
                                                         "VirtualMachineInstanceMigration"):
        yield copy.deepcopy(value)
    elif isinstance(value, dict) and "devices" in value:
        vm = base_vm()
        vm["spec"]["template"]["spec"]["domain"] = copy.deepcopy(value)
        yield vm
    elif isinstance(value, dict) and (value.get("sendTo") or value.get("receive")):
        vmim = base_vmim("receive")
        vmim["spec"] = copy.deepcopy(value)
        yield vmim
    elif isinstance(value, str | None):
        source = base_vmim("sendTo")
        source["spec"]["sendTo"]["connectURL"] = value
        yield source
        for role in ("sendTo", "receive"):
            vmim = base_vmim(role)
            vmim["spec"][role]["migrationID"] = value
            yield vmim
        vm = base_vm()
        vm["metadata"]["annotations"] = {} if value is None else {RESTORE: value}
        yield vm
        named = base_vmim("receive")
        named["spec"]["vmiName"] = value
        yield named


def table_corpus() -> list[Obj]:
    return [obj for value in _table_values() for obj in _from_value(value)]


# --- Generated objects ----------------------------------------------------------------
nulls = st.none()
VOLUME_SOURCES = {
    "persistentVolumeClaim": {"claimName": "pvc"}, "dataVolume": {"name": "dv"},
    "configMap": {"name": "cm"}, "secret": {"secretName": "s"}, "serviceAccount": {},
    "downwardAPI": {}, "containerDisk": {"image": "quay.io/x"}, "emptyDisk": {"capacity": "1Gi"},
}
odd_text = st.text(alphabet=st.characters(codec="utf-8"),
                   max_size=12)


def disks() -> st.SearchStrategy[Any]:
    disk = st.fixed_dictionaries(
        {"name": st.sampled_from(["disk0", "disk1", "fs0", "x"])},
        optional={"shareable": st.sampled_from([True, False] * 8 + [None, "yes"]),
                  "lun": st.sampled_from([{}, {"bus": "scsi"}, {"reservation": True}] * 6
                                         + [None]),
                  "disk": st.just({"bus": "virtio"}), "cdrom": st.just({"bus": "sata"})})
    return st.lists(disk, max_size=4)


def filesystems_and_volumes() -> st.SearchStrategy[tuple[Any, Any]]:
    names = st.lists(st.sampled_from(["fs0", "fs1", "disk0", "x"]), max_size=3, unique=True)

    def build(draw_names: list[str], sources: list[str], missing: list[bool]) -> tuple[Any, Any]:
        filesystems = [{"name": n, "virtiofs": {}} for n in draw_names]
        volumes = [{"name": n, s: copy.deepcopy(VOLUME_SOURCES[s])}
                   for n, s, gone in zip(draw_names, sources, missing, strict=False) if not gone]
        return filesystems, volumes

    fs = st.builds(build, names, st.lists(st.sampled_from(sorted(VOLUME_SOURCES)), min_size=3,
                                          max_size=3),
                   st.lists(st.booleans(), min_size=3, max_size=3))
    return fs | st.tuples(st.sampled_from([[], [], [], None]), st.just([]))


def vm_annotations() -> st.SearchStrategy[Any]:
    value = (st.sampled_from(["Always", "Halted", "Manual", "RerunOnFailure", "Once",
                              "WaitAsReceiver", "always", "", " Always", "Never"]) | odd_text)
    return (st.just({}) | st.fixed_dictionaries({RESTORE: value})
            | st.fixed_dictionaries({"other": st.just("x")}, optional={RESTORE: value}))


@st.composite
def vms(draw: st.DrawFn) -> Obj:
    vm = base_vm()
    template_spec = vm["spec"]["template"]["spec"]
    devices = template_spec["domain"]["devices"]
    devices["disks"] = draw(disks())
    filesystems, volumes = draw(filesystems_and_volumes())
    if filesystems is not None or draw(st.booleans()):
        devices["filesystems"] = filesystems
    template_spec["volumes"] = [*template_spec["volumes"], *(volumes or [])]
    tpm_fields: dict[str, st.SearchStrategy[Any]] = {
        "persistent": st.sampled_from([True, False] * 6 + [None]), "enabled": st.booleans()}
    tpm = draw(st.fixed_dictionaries({}, optional=tpm_fields))
    empty_tpm_too = draw(st.booleans())
    if tpm or empty_tpm_too:
        devices["tpm"] = tpm
    efi = draw(st.sampled_from([None, {}, {"persistent": True}, {"persistent": False},
                                {"persistent": True, "secureBoot": False}]))
    if efi is not None:
        template_spec["domain"]["firmware"] = {"bootloader": {"efi": efi}}
    vm["metadata"]["annotations"] = draw(vm_annotations())
    vm["spec"]["runStrategy"] = draw(st.sampled_from(
        ["WaitAsReceiver"] * 6 + ["Always", "Halted", None]))
    if draw(st.integers(0, 20)) == 0:  # nulls and odd shapes the schema rejects or prunes
        vm["metadata"]["annotations"] = None
    if draw(st.integers(0, 20)) == 0:
        devices["disks"] = None
    if draw(st.integers(0, 20)) == 0:
        vm["spec"]["template"]["spec"] = draw(st.sampled_from([None, {}, "x", {"domain": None}]))
    return vm


def connect_urls() -> st.SearchStrategy[Any]:
    hosts = st.sampled_from(["10.1.2.3", "[fd00::5]", "fd00::5", "sync.example.com",
                             "sync.example.com.", "node-1", "999.1.1.1", "-bad", "a b", "",
                             "[::ffff:1.2.3.4]", "[fe80::1%eth0]", "localhost", "1.2.3",
                             "[not-ipv6]", "xn--bcher-kva.example", "UPPER.Example"])
    ports = st.sampled_from(["", ":9185", ":1", ":65535", ":0", ":65536", ":http", ":+80",
                             ":", ":09185", "::9185"])
    schemes = st.sampled_from(["", "", "", "dns:///", "dns://8.8.8.8/", "dns://[::1]:53/",
                               "passthrough:///", "http://", "https://", "grpc://", "unix:",
                               "unix:///run/x.sock", "DNS:///", "dns:"])
    built = st.builds(lambda s, h, p: s + h + p, schemes, hosts, ports)
    return built | odd_text | nulls | st.just(9185)


def migration_ids() -> st.SearchStrategy[Any]:
    return (st.sampled_from(["vm-7f3a9c", "", FORKLIFT_ID, "x" * 64, "has space", "-dash",
                             "ends."]) | odd_text | nulls)


@st.composite
def vmims(draw: st.DrawFn) -> Obj:
    vmim = base_vmim("receive")
    spec: Obj = {}
    vmi = draw(st.sampled_from(["vm", "vm", "", None, "absent"]))
    if vmi != "absent":
        spec["vmiName"] = vmi
    for role in ("sendTo", "receive"):
        choice = draw(st.sampled_from(["absent", "set", "set", "null", "empty"]))
        if choice == "set":
            side: Obj = {}
            mid = draw(migration_ids())
            if mid != "vm-7f3a9c" or draw(st.booleans()):
                side["migrationID"] = mid
            if role == "sendTo":
                side["connectURL"] = draw(connect_urls())
            spec[role] = side
        elif choice != "absent":
            spec[role] = None if choice == "null" else {}
    if draw(st.booleans()):
        spec["priority"] = draw(st.sampled_from(["user-triggered", "system-critical"]))
    if draw(st.integers(0, 5)) == 0:
        spec["addedNodeSelector"] = {"kubernetes.io/hostname": "node-1"}
    vmim["spec"] = spec
    if draw(st.integers(0, 30)) == 0:
        vmim["spec"] = draw(st.sampled_from([None, "x", {}]))
    return vmim


def generated_corpus(count: int, random_seed: int = 20261204) -> list[Obj]:
    """`count` objects (VMs and VMIMs; hypothesis repeats some), the same on every run."""
    found: list[Obj] = []

    @seed(random_seed)
    @settings(max_examples=count, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(vms(), vmims()))
    def collect(obj: Obj) -> None:
        found.append(copy.deepcopy(obj))

    collect()
    return found
