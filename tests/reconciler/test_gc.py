"""Tables for the migration clean-up decisions (reconciler/gc.py).

Each case is a set of cluster snapshots at a fixed clock NOW, optionally preceded by earlier
passes (`history`) that feed GcMemory, and the exact deletions expected. Clusters: "src"
holds the source side (sendTo VMIM, source VM/VMI), "dst" the target side (receive VMIM,
WaitAsReceiver VM and its VMI); both are managed unless a case says otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from gc_factories import MIN, NOW, stamp, vm, vmi, vmim

from dlm_guard.store import ObjectStore
from reconciler.gc import (
    REASONS,
    Deletion,
    GcMemory,
    GcSettings,
    decide_gc,
    parse_time,
    phase_since,
)

Snapshot = Mapping[str, Sequence[dict[str, Any]] | None]  # cluster -> objects, None = down
Expected = set[tuple[str, str, str, str]]  # (cluster, "vmim" | "vm", name, reason)

SETTINGS = GcSettings()
MANAGED = ("src", "dst")


@dataclass(frozen=True)
class Case:
    id: str
    now: Snapshot
    expected: Expected
    history: tuple[tuple[timedelta, Snapshot], ...] = ()  # (how long before NOW, snapshot)
    managed: tuple[str, ...] = field(default=MANAGED)


def stores(snapshot: Snapshot) -> dict[str, ObjectStore | None]:
    return {name: None if objs is None else ObjectStore(copy.deepcopy(list(objs)))
            for name, objs in snapshot.items()}


def run(case: Case) -> list[Deletion]:
    memory = GcMemory()
    for ago, snapshot in case.history:
        decide_gc(stores(snapshot), case.managed, NOW - ago, SETTINGS, memory)
    return decide_gc(stores(case.now), case.managed, NOW, SETTINGS, memory)


def summary(deletions: Sequence[Deletion]) -> Expected:
    kinds = {"VirtualMachineInstanceMigration": "vmim", "VirtualMachine": "vm"}
    return {(d.cluster, kinds[d.kind], d.name, d.reason) for d in deletions}


# --- Building blocks ----------------------------------------------------------------------
def target(phase: str = "WaitingForSync", ago: timedelta | None = MIN, name: str = "t",
           **kw: Any) -> dict[str, Any]:
    return vmim(name, role="target", phase=phase, phase_ago=ago, **kw)


def source(phase: str = "Synchronizing", ago: timedelta | None = MIN, name: str = "s",
           **kw: Any) -> dict[str, Any]:
    return vmim(name, role="source", phase=phase, phase_ago=ago, **kw)


SOURCE_VM = [vm("vm1", run_strategy="Always"), vmi("vm1", phase="Running")]
TARGET_VM = [vm("vm1"), vmi("vm1")]  # WaitAsReceiver VM, its VMI waiting for a source


def pair(dst: Sequence[dict[str, Any]], src: Sequence[dict[str, Any]] = (),
         **extra: Sequence[dict[str, Any]] | None) -> dict[str, Sequence[dict[str, Any]] | None]:
    return {"src": [*src, *SOURCE_VM], "dst": [*dst], **extra}


def same(snapshot: Snapshot, *agos: timedelta) -> tuple[tuple[timedelta, Snapshot], ...]:
    """The same snapshot observed at earlier passes."""
    return tuple((ago, snapshot) for ago in agos)


FAILED_PAIR = pair([target("Failed", 6 * MIN), vm("vm1"),
                    vmi("vm1", failed=True, migration_uid="uid-t")],
                   [source("Failed", 6 * MIN)])
NO_TIMESTAMPS_FAILED = pair([target("Failed", None), *TARGET_VM], [source()])
ORPHAN_TARGET = pair([target(ago=16 * MIN), *TARGET_VM])
STUCK_BY_MEMORY = pair([target(ago=None), *TARGET_VM], [source(ago=None)])
OUTAGE = {"dst": [target(ago=30 * MIN)], "src": []}
# Pairing keys on the spec's migrationID, never on our label (which may be a hash of it).
LABEL_PAIR = pair([target(ago=20 * MIN, label_mid="x"), *TARGET_VM], [source(label_mid="y")])
LABEL_ONLY_PAIR = pair([target(ago=20 * MIN, label_mid="x"), *TARGET_VM],
                       [source(mid="x")])
FORKLIFT_ID = "3f9a1c2e-6b7d-4e8f-9a0b-1c2d3e4f5a6b-d41d8cd9-8f00-4b20-9e98-0998ecf8427e"
FORKLIFT_PAIR = pair([target(ago=20 * MIN, mid=FORKLIFT_ID), *TARGET_VM],
                     [source(mid=FORKLIFT_ID)])
NO_ID = pair([target(ago=20 * MIN, mid=""), *TARGET_VM])

GC_CASES = [
    Case("failed pair: target VMIM and WaitAsReceiver VM, source VMIM only", FAILED_PAIR,
         {("dst", "vmim", "t", "failed-target"), ("dst", "vm", "vm1", "failed-target"),
          ("src", "vmim", "s", "failed-source")}),
    Case("failed target v1.6: target VMI Failed too",
         pair([target("Failed", 6 * MIN), vm("vm1"), vmi("vm1", phase="Failed")], [source()]),
         {("dst", "vmim", "t", "failed-target"), ("dst", "vm", "vm1", "failed-target")}),
    Case("failed target reported by the VMI only (v1.7+), endTimestamp beyond grace",
         pair([target("Running"), vm("vm1"),
               vmi("vm1", failed=True, migration_uid="uid-t", end_ago=6 * MIN)], [source()]),
         {("dst", "vmim", "t", "failed-target"), ("dst", "vm", "vm1", "failed-target")}),
    Case("VMI failure without migrationUid still counts",
         pair([target("Running"), vm("vm1"), vmi("vm1", failed=True, end_ago=6 * MIN)],
              [source()]),
         {("dst", "vmim", "t", "failed-target"), ("dst", "vm", "vm1", "failed-target")}),
    Case("failed target without its VM: the VMIM alone",
         pair([target("Failed", 6 * MIN)], [source()]),
         {("dst", "vmim", "t", "failed-target")}),
    Case("failed target without phaseTransitionTimestamps: first seen by us 6 min ago",
         NO_TIMESTAMPS_FAILED,
         {("dst", "vmim", "t", "failed-target"), ("dst", "vm", "vm1", "failed-target")},
         history=same(NO_TIMESTAMPS_FAILED, 6 * MIN)),
    Case("failed source: VMIM only, source VM and VMI untouched",
         pair([target(), *TARGET_VM], [source("Failed", 6 * MIN)]),
         {("src", "vmim", "s", "failed-source")}),
    Case("orphan: peer never appeared in 16 min", ORPHAN_TARGET,
         {("dst", "vmim", "t", "orphan")}, history=same(ORPHAN_TARGET, 16 * MIN)),
    Case("orphan: a peer whose migrationID only equals our label is no peer", LABEL_ONLY_PAIR,
         {("dst", "vmim", "t", "orphan"), ("src", "vmim", "s", "orphan")},
         history=same(LABEL_ONLY_PAIR, 20 * MIN)),
    Case("orphan: peer is being deleted (v1.6.0 does not cascade)",
         pair([target(), *TARGET_VM], [source(terminating=True)]),
         {("dst", "vmim", "t", "orphan")}),
    Case("orphan: peer seen, then gone for longer than grace",
         ORPHAN_TARGET, {("dst", "vmim", "t", "orphan")},
         history=((10 * MIN, pair([target(), *TARGET_VM], [source()])),
                  (6 * MIN, ORPHAN_TARGET))),
    Case("orphan source: target side never appeared",
         pair([], [source(ago=None)]), {("src", "vmim", "s", "orphan")},
         history=same(pair([], [source(ago=None)]), 20 * MIN)),
    Case("orphan in the same cluster, other namespace: peer terminating",
         {"one": [target(ns="a"), source(ns="b", terminating=True)]},
         {("one", "vmim", "t", "orphan")}, managed=("one",)),
    Case("stuck: both sides waiting for 61 min (phaseTransitionTimestamps)",
         pair([target(ago=61 * MIN), *TARGET_VM], [source(ago=61 * MIN)]),
         {("dst", "vmim", "t", "stuck"), ("src", "vmim", "s", "stuck")}),
    Case("stuck: Synchronizing since creation 61 min ago, no transition timestamps",
         pair([target(ago=10 * MIN), *TARGET_VM], [source(ago=None, created_ago=61 * MIN)]),
         {("src", "vmim", "s", "stuck")}),
    Case("stuck: no timestamps at all, waiting since first seen 61 min ago",
         STUCK_BY_MEMORY, {("dst", "vmim", "t", "stuck"), ("src", "vmim", "s", "stuck")},
         history=same(STUCK_BY_MEMORY, 61 * MIN)),
    Case("precedence: failed-target over orphan and stuck",
         pair([target(ago=2 * 60 * MIN), vm("vm1"),
               vmi("vm1", failed=True, migration_uid="uid-t", end_ago=6 * MIN)],
              [source(terminating=True)]),
         {("dst", "vmim", "t", "failed-target"), ("dst", "vm", "vm1", "failed-target")}),
    Case("precedence: orphan over stuck",
         pair([target(ago=2 * 60 * MIN), *TARGET_VM], [source(terminating=True)]),
         {("dst", "vmim", "t", "orphan")}),
    Case("two failed receive VMIMs on one VMI: the VM once",
         pair([target("Failed", 6 * MIN, name="t1"), target("Failed", 7 * MIN, name="t2"),
               *TARGET_VM], [source()]),
         {("dst", "vmim", "t1", "failed-target"), ("dst", "vmim", "t2", "failed-target"),
          ("dst", "vm", "vm1", "failed-target")}),
    Case("unmanaged target cluster: the managed source side is still cleaned",
         FAILED_PAIR, {("src", "vmim", "s", "failed-source")}, managed=("src",)),
]

NEVER_CASES = [
    Case("ordinary VMIM, Failed long ago",
         {"dst": [vmim("t", role=None, phase="Failed", phase_ago=60 * MIN), *TARGET_VM]},
         set()),
    Case("both-roles VMIM (ordinary upstream), Failed long ago",
         {"dst": [vmim("t", role="both", phase="Failed", phase_ago=60 * MIN), *TARGET_VM]},
         set()),
    Case("succeeded target with its peer gone for 20 min",
         {"dst": [target("Succeeded", 60 * MIN), vm("vm1", run_strategy="Always")], "src": []},
         set(), history=same({"dst": [target("Succeeded", 60 * MIN)], "src": []}, 20 * MIN)),
    Case("failed target within grace, peer terminating",
         pair([target("Failed", 4 * MIN), *TARGET_VM], [source(terminating=True)]), set()),
    Case("failure reported by the VMI within grace: no orphan/stuck either",
         pair([target(ago=2 * 60 * MIN), vm("vm1"),
               vmi("vm1", failed=True, migration_uid="uid-t", end_ago=4 * MIN)],
              [source(terminating=True)]),
         set()),
    Case("one of two peers terminating: the other still pairs",
         pair([target(), *TARGET_VM], [source(terminating=True), source(name="s2")]), set()),
    Case("failed target exactly at grace",
         pair([target("Failed", 5 * MIN), *TARGET_VM], [source()]), set()),
    Case("failed target seen first now, no timestamps",
         NO_TIMESTAMPS_FAILED, set()),
    Case("failed target without transition timestamps: creationTimestamp is not failure time",
         pair([target("Failed", None, created_ago=2 * 60 * MIN), *TARGET_VM], [source()]),
         set()),
    Case("VMI failure belongs to an earlier migration (other migrationUid)",
         pair([target(), vm("vm1"),
               vmi("vm1", failed=True, migration_uid="uid-old", end_ago=60 * MIN)],
              [source()]),
         set()),
    Case("VM not WaitAsReceiver: VMIM only",
         pair([target("Failed", 6 * MIN), vm("vm1", run_strategy="Always"), vmi("vm1")],
              [source()]),
         {("dst", "vmim", "t", "failed-target")}),
    Case("target VMI Running: VMIM only",
         pair([target("Failed", 6 * MIN), vm("vm1"), vmi("vm1", phase="Running")],
              [source()]),
         {("dst", "vmim", "t", "failed-target")}),
    Case("target VM terminating: VMIM only",
         pair([target("Failed", 6 * MIN), vm("vm1", terminating=True), vmi("vm1")],
              [source()]),
         {("dst", "vmim", "t", "failed-target")}),
    Case("target VM used by a live retry VMIM: old VMIM only",
         pair([target("Failed", 6 * MIN, name="t-old"), target(name="t-new"), *TARGET_VM],
              [source()]),
         {("dst", "vmim", "t-old", "failed-target")}),
    Case("VM named by a sendTo VMIM in its namespace is a source VM: VMIM only",
         pair([target("Failed", 6 * MIN), source(name="out", mid="m9"), *TARGET_VM],
              [source(mid="m9")]),
         {("dst", "vmim", "t", "failed-target")}),
    Case("source VM never deleted, even WaitAsReceiver and not Running",
         {"src": [source("Failed", 6 * MIN), vm("vm1"), vmi("vm1", phase="Failed")],
          "dst": [target()]},
         {("src", "vmim", "s", "failed-source")}),
    Case("terminating failed VMIMs",
         pair([target("Failed", 6 * MIN, terminating=True), *TARGET_VM],
              [source("Failed", 6 * MIN, terminating=True)]),
         set()),
    Case("unmanaged clusters", FAILED_PAIR, set(), managed=("elsewhere",)),
    Case("unreachable cluster blocks orphan decisions (peer terminating elsewhere)",
         {"dst": [target(ago=30 * MIN)], "src": None, "other": [source(terminating=True)]},
         set(), history=same({"dst": [target(ago=30 * MIN)], "src": None}, 20 * MIN)),
    Case("unreachable target cluster: nothing decided there",
         {"dst": None, "src": [source("Failed", 6 * MIN)]},
         {("src", "vmim", "s", "failed-source")}),
    Case("an outage restarts the absence clock", OUTAGE, set(),
         history=((20 * MIN, OUTAGE), (10 * MIN, {"dst": OUTAGE["dst"], "src": None}))),
    Case("an outage of the VMIM's own cluster restarts the absence clock", OUTAGE, set(),
         history=((20 * MIN, OUTAGE), (10 * MIN, {"dst": None, "src": []}))),
    Case("peer missing for 14 min only", ORPHAN_TARGET, set(),
         history=same(ORPHAN_TARGET, 14 * MIN)),
    Case("peer seen, gone for 4 min only", ORPHAN_TARGET, set(),
         history=((10 * MIN, pair([target(), *TARGET_VM], [source()])),
                  (4 * MIN, ORPHAN_TARGET))),
    Case("peer in a reachable unmanaged cluster counts",
         {"dst": [target(ago=20 * MIN), *TARGET_VM], "peer": [source()]}, set(),
         history=same({"dst": [target(ago=20 * MIN)], "peer": [source()]}, 20 * MIN),
         managed=("dst",)),
    Case("peer in another namespace of the same cluster",
         {"one": [target(ns="a"), source(ns="b")]}, set(),
         history=same({"one": [target(ns="a"), source(ns="b")]}, 20 * MIN), managed=("one",)),
    Case("pairing by the spec's migrationID, whatever our labels say", LABEL_PAIR, set(),
         history=same(LABEL_PAIR, 20 * MIN)),
    Case("a 73-character Forklift migrationID pairs", FORKLIFT_PAIR, set(),
         history=same(FORKLIFT_PAIR, 20 * MIN)),
    Case("a failed peer within grace is still a peer",
         pair([target(ago=20 * MIN), *TARGET_VM], [source("Failed", 4 * MIN)]), set(),
         history=same(pair([target(ago=20 * MIN)], [source("Failed", 4 * MIN)]), 20 * MIN)),
    Case("no migrationID: nothing to pair, not an orphan", NO_ID, set(),
         history=same(NO_ID, 20 * MIN)),
    Case("waiting 59 min is not stuck",
         pair([target(ago=59 * MIN), *TARGET_VM], [source(ago=59 * MIN)]), set()),
    Case("Pending for 2 h is not a waiting phase",
         pair([target("Pending", 2 * 60 * MIN), *TARGET_VM], [source("Pending", 2 * 60 * MIN)]),
         set()),
]


@pytest.mark.parametrize("case", GC_CASES, ids=lambda c: c.id)
def test_gc_cases(case: Case) -> None:
    assert summary(run(case)) == case.expected


@pytest.mark.parametrize("case", NEVER_CASES, ids=lambda c: c.id)
def test_never_delete_cases(case: Case) -> None:
    assert summary(run(case)) == case.expected


@pytest.mark.parametrize("case", GC_CASES + NEVER_CASES, ids=lambda c: c.id)
def test_output_is_sorted_unique_and_carries_uids(case: Case) -> None:
    deletions = run(case)
    assert deletions == sorted(deletions, key=Deletion.sort_key)
    assert len({(d.cluster, d.kind, d.namespace, d.name) for d in deletions}) == len(deletions)
    assert all(d.reason in REASONS and d.uid and d.detail for d in deletions)


def test_vmim_before_its_vm_and_clusters_in_order() -> None:
    deletions = run(GC_CASES[0])
    assert [(d.cluster, d.kind, d.name) for d in deletions] == [
        ("dst", "VirtualMachineInstanceMigration", "t"),
        ("dst", "VirtualMachine", "vm1"),
        ("src", "VirtualMachineInstanceMigration", "s"),
    ]
    assert deletions[0].uid == "uid-t" and deletions[1].uid == "uid-vm-vm1"


def test_missing_uid_is_none() -> None:
    snapshot = pair([target("Failed", 6 * MIN, uid="")], [source()])
    assert [d.uid for d in run(Case("", snapshot, set()))] == [None]


def test_settings_are_honoured() -> None:
    snapshot = pair([target("Failed", 2 * MIN)], [source(ago=20 * MIN)])
    short = GcSettings(grace=timedelta(minutes=1), stuck_timeout=timedelta(minutes=10))
    got = decide_gc(stores(snapshot), MANAGED, NOW, short, GcMemory())
    assert summary(got) == {("dst", "vmim", "t", "failed-target"), ("src", "vmim", "s", "stuck")}


def test_defaults() -> None:
    assert GcSettings() == GcSettings(timedelta(minutes=5), timedelta(minutes=15),
                                      timedelta(hours=1))


def test_memory_forgets_gone_vmims_but_keeps_unreachable_clusters() -> None:
    memory = GcMemory()
    decide_gc(stores(ORPHAN_TARGET), MANAGED, NOW, SETTINGS, memory)
    assert ("dst", "ns", "t", "uid-t") in memory.peer_missing_since
    decide_gc(stores({"dst": None, "src": []}), MANAGED, NOW, SETTINGS, memory)
    assert ("dst", "ns", "t", "uid-t") in memory.state_since
    decide_gc(stores({"dst": [], "src": []}), MANAGED, NOW, SETTINGS, memory)
    assert memory == GcMemory()


def test_recreated_vmim_starts_with_fresh_memory() -> None:
    memory = GcMemory()
    decide_gc(stores(ORPHAN_TARGET), MANAGED, NOW - 20 * MIN, SETTINGS, memory)
    recreated = pair([target(ago=16 * MIN, uid="uid-new"), *TARGET_VM])
    assert decide_gc(stores(recreated), MANAGED, NOW, SETTINGS, memory) == []


def test_decisions_do_not_mutate_snapshots() -> None:
    snapshot = stores(FAILED_PAIR)
    before = {name: copy.deepcopy(s.list("VirtualMachineInstanceMigration"))
              for name, s in snapshot.items() if s}
    decide_gc(snapshot, MANAGED, NOW, SETTINGS, GcMemory())
    assert before == {name: s.list("VirtualMachineInstanceMigration")
                      for name, s in snapshot.items() if s}


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-08-01T12:00:00Z", datetime(2026, 8, 1, 12, tzinfo=UTC)),
    ("2026-08-01T14:00:00+02:00", datetime(2026, 8, 1, 12, tzinfo=UTC)),
    ("2026-08-01T12:00:00", datetime(2026, 8, 1, 12, tzinfo=UTC)),
    ("yesterday", None),
    ("", None),
    (None, None),
    (1234, None),
])
def test_parse_time(text: object, expected: datetime | None) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(("entries", "expected"), [
    ([{"phase": "Failed", "phaseTransitionTimestamp": stamp(3 * MIN)}], NOW - 3 * MIN),
    ([{"phase": "Failed", "phaseTransitionTimestamp": stamp(9 * MIN)},
      {"phase": "Failed", "phaseTransitionTimestamp": stamp(3 * MIN)}], NOW - 3 * MIN),
    ([{"phase": "Running", "phaseTransitionTimestamp": stamp(3 * MIN)}], None),
    ([{"phase": "Failed", "phaseTransitionTimestamp": "garbage"}], None),
    (["not a dict"], None),
    ("not a list", None),
])
def test_phase_since(entries: object, expected: datetime | None) -> None:
    obj = {"status": {"phase": "Failed", "phaseTransitionTimestamps": entries}}
    assert phase_since(obj, "Failed") == expected
