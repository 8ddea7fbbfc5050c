"""Property: for random multi-pass cluster snapshots, every clean-up decision is allowed.

The oracle below re-derives each rule from raw dicts and from the history of passes (not
from GcMemory or the domain helpers), and checks necessary conditions: a deletion is in a
managed, reachable cluster; of a decentralized VMIM or a WaitAsReceiver VM; not terminating;
and justified by its reason. No VMI, and no source VM, is ever deleted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gc_factories import NOW, stamp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dlm_guard.store import ObjectStore
from reconciler.gc import Deletion, GcMemory, GcSettings, decide_gc

SETTINGS = GcSettings()
CLUSTERS = ("a", "b", "c")
NAMESPACES = ("n1", "n1", "n2")
NAMES = ("v1", "v2")
PHASES = ("", "WaitingForSync", "Synchronizing", "Pending", "Running", "Succeeded", "Failed")
WAITING = ("WaitingForSync", "Synchronizing")
VMIM, VM, VMI = "VirtualMachineInstanceMigration", "VirtualMachine", "VirtualMachineInstance"
Raw = dict[str, Any]  # what the strategies build
Obj = Mapping[str, Any]  # what the oracle reads
Stores = dict[str, ObjectStore | None]

minutes = st.integers(min_value=-30, max_value=180).map(lambda m: timedelta(minutes=m))
maybe_stamp = st.one_of(st.none(), st.just("garbage"), minutes.map(stamp))


def _meta(draw: st.DrawFn, kind: str) -> Raw:
    meta: Raw = {"namespace": draw(st.sampled_from(NAMESPACES))}  # weighted to n1
    meta["name"] = draw(st.sampled_from(("m1", "m2", "m3") if kind == VMIM else NAMES))
    if uid := draw(st.sampled_from(("", "u1", "u2", "u3"))):
        meta["uid"] = uid
    if draw(st.integers(0, 4)) == 0:
        meta["deletionTimestamp"] = stamp(timedelta(minutes=1))
    if (created := draw(maybe_stamp)) is not None:
        meta["creationTimestamp"] = created
    if label := draw(st.sampled_from((None, "", "x", "y"))):
        meta["labels"] = {"dlm-guard.io/migration-id": label}
    return meta


@st.composite
def vmims(draw: st.DrawFn) -> Raw:
    spec: Raw = {"vmiName": draw(st.sampled_from(NAMES))}
    mid = draw(st.sampled_from(("x", "y", "", None)))
    roles = ((), ("sendTo",), ("sendTo",), ("receive",), ("receive",), ("sendTo", "receive"))
    for role in draw(st.sampled_from(roles)):
        spec[role] = {"migrationID": mid}
    status: Raw = {"phase": draw(st.sampled_from((*PHASES, "Failed", *WAITING)))}
    transitions = draw(st.lists(st.tuples(st.sampled_from(PHASES), maybe_stamp), max_size=3))
    if transitions:
        status["phaseTransitionTimestamps"] = [
            {"phase": p, "phaseTransitionTimestamp": t} for p, t in transitions]
    return {"kind": VMIM, "metadata": _meta(draw, VMIM), "spec": spec, "status": status}


@st.composite
def vms(draw: st.DrawFn) -> Raw:
    strategy = draw(st.sampled_from(("WaitAsReceiver", "WaitAsReceiver", "Always", None)))
    return {"kind": VM, "metadata": _meta(draw, VM), "spec": {"runStrategy": strategy}}


@st.composite
def vmis(draw: st.DrawFn) -> Raw:
    status: Raw = {"phase": draw(st.sampled_from(("WaitingForSync", "Running", "Failed")))}
    if draw(st.booleans()):
        status["migrationState"] = {
            "failed": draw(st.booleans()), "endTimestamp": draw(maybe_stamp),
            "migrationUid": draw(st.sampled_from((None, "u1", "u2", "u3")))}
    return {"kind": VMI, "metadata": _meta(draw, VMI), "status": status}


@dataclass(frozen=True)
class Pass:
    now: datetime
    snapshot: dict[str, list[Raw] | None]  # None: unreachable this pass
    managed: frozenset[str]


@st.composite
def histories(draw: st.DrawFn) -> list[Pass]:
    """1-4 passes over one random world; objects come and go, clusters go down."""
    world = {c: draw(st.lists(st.one_of(vmims(), vms(), vmis()), max_size=8)) for c in CLUSTERS}
    gaps = draw(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=4))
    start, passes = NOW - timedelta(minutes=sum(gaps)), []
    for gap in gaps:
        start += timedelta(minutes=gap)
        snapshot: dict[str, list[Raw] | None] = {
            c: None if draw(st.integers(0, 5)) == 0
            else [o for o in objs if draw(st.integers(0, 4)) > 0]
            for c, objs in world.items()}
        managed = frozenset(c for c in (*CLUSTERS, "elsewhere") if draw(st.integers(0, 3)))
        passes.append(Pass(start, snapshot, managed))
    return passes


# --- Independent oracle: raw dict access only --------------------------------------------
def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _role(o: Obj) -> str | None:
    spec = o.get("spec") or {}
    send, receive = "sendTo" in spec, "receive" in spec
    return None if send == receive else ("source" if send else "target")


def _mid(o: Obj) -> str | None:
    field = {"source": "sendTo", "target": "receive"}.get(_role(o) or "")
    if field is None:
        return None
    # Upstream pairs by the spec's migrationID; our label (maybe a hash of it) never pairs.
    return _get(o, "spec", field, "migrationID") or None


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _ident(o: Obj) -> tuple[str, str, str]:
    return (_get(o, "metadata", "namespace"), _get(o, "metadata", "name"),
            _get(o, "metadata", "uid") or "")


def _terminating(o: Obj) -> bool:
    return _get(o, "metadata", "deletionTimestamp") is not None


def _vmi_of(stores: Stores, cluster: str, o: Obj) -> Obj | None:
    store = stores[cluster]
    return store.get(VMI, _get(o, "metadata", "namespace"), _get(o, "spec", "vmiName")) \
        if store else None


def _vmi_failure(stores: Stores, cluster: str, o: Obj) -> Obj | None:
    vmi = _vmi_of(stores, cluster, o)
    if _role(o) != "target" or vmi is None or _get(vmi, "status", "migrationState",
                                                   "failed") is not True:
        return None
    owner, uid = _get(vmi, "status", "migrationState", "migrationUid"), _ident(o)[2]
    return None if owner and uid and owner != uid else vmi


def _failed_state(stores: Stores, cluster: str, o: Obj) -> bool:
    phase = _get(o, "status", "phase")
    if phase == "Failed":
        return True
    return phase != "Succeeded" and _vmi_failure(stores, cluster, o) is not None


def _transitions(o: Obj, phase: str) -> list[datetime | None]:
    entries = _get(o, "status", "phaseTransitionTimestamps") or []
    return [_time(e.get("phaseTransitionTimestamp")) for e in entries
            if isinstance(e, Mapping) and e.get("phase") == phase]


def _find(stores: Stores, cluster: str, kind: str, ident: tuple[str, str, str]) -> Obj | None:
    store = stores.get(cluster)
    obj = store.get(kind, ident[0], ident[1]) if store else None
    return obj if obj is not None and _ident(obj) == ident else None


@dataclass
class Oracle:
    passes: list[tuple[Pass, Stores]]  # every pass so far, the current one last

    @property
    def now(self) -> datetime:
        return self.passes[-1][0].now

    @property
    def stores(self) -> Stores:
        return self.passes[-1][1]

    def observed_since(self, cluster: str, ident: tuple[str, str, str], test: Any) -> list:
        """Pass times at which this VMIM was seen with test(stores, obj) true."""
        return [p.now for p, stores in self.passes
                if (o := _find(stores, cluster, VMIM, ident)) is not None and test(stores, o)]

    def lasted(self, evidence: list[datetime | None], limit: timedelta) -> bool:
        return any(t is not None and self.now - t > limit for t in evidence)

    def peers(self, stores: Stores, o: Obj) -> list[Obj] | None:
        if any(s is None for s in stores.values()) or not _mid(o):
            return None
        other = "source" if _role(o) == "target" else "target"
        return [p for s in stores.values() if s for p in s.list(VMIM)
                if _role(p) == other and _mid(p) == _mid(o)]

    def justified_vmim(self, d: Deletion, o: Obj) -> bool:
        phase, ident = _get(o, "status", "phase"), _ident(o)
        failed = _failed_state(self.stores, d.cluster, o)
        if d.reason in ("failed-target", "failed-source"):
            want = "target" if d.reason == "failed-target" else "source"
            vmi = _vmi_failure(self.stores, d.cluster, o) if phase != "Failed" else None
            evidence = [*_transitions(o, "Failed"),
                        _time(_get(vmi, "status", "migrationState", "endTimestamp")),
                        *self.observed_since(d.cluster, ident,
                                             lambda s, x: _failed_state(s, d.cluster, x))]
            return _role(o) == want and failed and self.lasted(evidence, SETTINGS.grace)
        if failed or phase in ("Succeeded", "Failed"):
            return False
        if d.reason == "stuck":
            evidence = [*_transitions(o, phase), _time(_get(o, "metadata", "creationTimestamp")),
                        *self.observed_since(d.cluster, ident,
                                             lambda s, x: _get(x, "status", "phase") == phase)]
            return phase in WAITING and self.lasted(evidence, SETTINGS.stuck_timeout)
        return d.reason == "orphan" and self.justified_orphan(d.cluster, o)

    def justified_orphan(self, cluster: str, o: Obj) -> bool:
        peers = self.peers(self.stores, o)
        if peers is None:
            return False
        if peers:
            return all(_terminating(p) for p in peers)
        # Absence must have been observed on consecutive passes ending now.
        start, seen_before = self.now, False
        for p, stores in reversed(self.passes):
            found = _find(stores, cluster, VMIM, _ident(o))
            earlier = self.peers(stores, found) if found is not None else None
            if earlier is None or earlier:
                seen_before = any(self.peers(s, x) for _, s in self.passes
                                  if (x := _find(s, cluster, VMIM, _ident(o))) is not None)
                break
            start = p.now
        return self.now - start > (SETTINGS.grace if seen_before else SETTINGS.orphan_ttl)

    def justified_vm(self, d: Deletion, vm: Obj, all_deletions: Sequence[Deletion]) -> bool:
        store = self.stores[d.cluster]
        assert store is not None
        vmi = store.get(VMI, d.namespace, d.name)
        sources = [m for m in store.list(VMIM) if "sendTo" in (m.get("spec") or {})
                   and _get(m, "metadata", "namespace") == d.namespace
                   and _get(m, "spec", "vmiName") == d.name]
        owners = [x for x in all_deletions if x.kind == VMIM and x.reason == "failed-target"
                  and x.cluster == d.cluster and x.namespace == d.namespace
                  and _get(store.get(VMIM, x.namespace, x.name), "spec", "vmiName") == d.name]
        return (d.reason == "failed-target" and bool(owners) and not sources
                and _get(vm, "spec", "runStrategy") == "WaitAsReceiver"
                and (vmi is None or _get(vmi, "status", "phase") != "Running"))

    def check(self, d: Deletion, managed: frozenset[str],
              all_deletions: Sequence[Deletion]) -> None:
        store = self.stores.get(d.cluster)
        assert d.cluster in managed and store is not None, d
        assert d.kind in (VMIM, VM), d  # never a VMI, never anything else
        obj = store.get(d.kind, d.namespace, d.name)
        assert obj is not None and not _terminating(obj), d
        assert d.uid == (_get(obj, "metadata", "uid") or None), d
        if d.kind == VMIM:
            assert _role(obj) is not None, d
            assert self.justified_vmim(d, obj), d
        else:
            assert self.justified_vm(d, obj, all_deletions), d


def _stores(snapshot: Mapping[str, list[Raw] | None]) -> Stores:
    return {c: None if objs is None else ObjectStore(copy.deepcopy(objs))
            for c, objs in snapshot.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_every_deletion_is_allowed(passes: list[Pass]) -> None:
    memory, seen = GcMemory(), []
    for p in passes:
        stores = _stores(p.snapshot)
        seen.append((p, stores))
        again = copy.deepcopy(memory)
        deletions = decide_gc(stores, p.managed, p.now, SETTINGS, memory)
        assert deletions == decide_gc(stores, p.managed, p.now, SETTINGS, again)  # deterministic
        assert len({(d.cluster, d.kind, d.namespace, d.name) for d in deletions}) \
            == len(deletions)
        oracle = Oracle(list(seen))
        for deletion in deletions:
            event(f"deletes {deletion.kind} for {deletion.reason}")
            oracle.check(deletion, p.managed, deletions)
