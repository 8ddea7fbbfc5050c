"""Migration clean-up: which VMIMs and target VMs to delete.

Pure decisions over per-cluster snapshots: no I/O, the clock is passed in. The caller keeps
a GcMemory between passes (what this process has observed over time) and deletes what
decide_gc returns, in that order, with the uid as a precondition.

Rules, in precedence order; a VMIM gets at most one reason:

1. failed-target: a `receive` VMIM that failed (phase Failed, or its VMI reports
   status.migrationState.failed for it, v1.7+) longer than `grace` -> delete the VMIM, and its
   target VM when that VM is still WaitAsReceiver, its VMI is not Running and nothing else
   uses it. Deleting both is the documented manual retry step (docs/kubevirt-facts.md, "Phases and
   failure").
2. failed-source: a `sendTo` VMIM in phase Failed longer than `grace` -> delete the VMIM only;
   the source VM and VMI are never touched (virt-controller already set the VM Halted).
3. orphan: a non-final, non-failed VMIM whose peer (the other role, same migrationID, any
   known cluster and namespace) is being deleted, or has been missing continuously for
   `orphan_ttl` (only `grace` when we saw the peer before: it was deleted). Decided only while
   every known cluster is reachable: an unreachable cluster is never evidence of absence.
4. stuck: a non-final VMIM in WaitingForSync/Synchronizing longer than `stuck_timeout`;
   KubeVirt itself never times out there (kubevirt #17317).

A failed VMIM is only ever handled by rules 1-2, so its grace also protects it from 3-4.

"How long in that state" comes from upstream timestamps when they exist, else from memory:
- Failed: the latest status.phaseTransitionTimestamps entry for Failed (field verified in the
  v1 VMIM CRD). Not creationTimestamp: a VMIM can run for a long time before failing, and
  using it would skip the grace.
- failure reported by the VMI only: status.migrationState.endTimestamp of that VMI.
- WaitingForSync/Synchronizing: the phase's transition timestamp, else creationTimestamp
  (these are the first phases after "", docs/kubevirt-facts.md, so creation is when the wait began).
- otherwise: when this process first saw the VMIM in that state (GcMemory). After a restart,
  or with `--once`, that is "now": memory-based clocks restart, which only delays clean-up.
A peer's absence is only ever measured from memory (continuous observation); neither
creationTimestamp nor a single snapshot proves absence, e.g. a cache that is being relisted.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

from dlm_guard.domain import (
    KIND_VM,
    KIND_VMIM,
    PHASE_FAILED,
    VMI_PHASE_RUNNING,
    WAITING_PHASES,
    Obj,
    Role,
    get_path,
    is_final,
    is_terminating,
    is_wait_as_receiver,
    migration_failed_on_vmi,
    migration_id,
    migration_role,
    name_of,
    namespace_of,
    phase_of,
    vmi_name,
)
from dlm_guard.store import ObjectStore

REASON_FAILED_TARGET = "failed-target"
REASON_FAILED_SOURCE = "failed-source"
REASON_ORPHAN = "orphan"
REASON_STUCK = "stuck"
REASONS = (REASON_FAILED_TARGET, REASON_FAILED_SOURCE, REASON_ORPHAN, REASON_STUCK)

# State label for a target whose VMIM phase is not Failed but whose VMI says it failed.
STATE_VMI_FAILED = "vmi-failed"

VmimKey = tuple[str, str, str, str]  # (cluster, namespace, name, uid)
# "Since" for a state we have no clock for: far future, so no elapsed time ever exceeds a limit.
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class GcSettings:
    grace: timedelta = timedelta(minutes=5)
    orphan_ttl: timedelta = timedelta(minutes=15)
    stuck_timeout: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class Deletion:
    cluster: str
    kind: str
    namespace: str
    name: str
    uid: str | None  # precondition for the DELETE, so a recreated object survives
    reason: str  # one of REASONS
    detail: str = ""

    def sort_key(self) -> tuple[str, int, str, str]:
        # VMIMs before VMs: the user guide's retry deletes the VMIMs, then the target VM.
        return (self.cluster, 0 if self.kind == KIND_VMIM else 1, self.namespace, self.name)


@dataclass
class GcMemory:
    """What this process observed across passes; the caller passes the same one each time."""

    # VMIM -> (state label, when first seen in that state): fallback clock (see module doc).
    state_since: dict[VmimKey, tuple[str, datetime]] = field(default_factory=dict)
    # VMIMs whose peer we have seen at least once: its later absence means it was deleted.
    peer_seen: set[VmimKey] = field(default_factory=set)
    # VMIM -> since when its peer has been missing while every cluster was reachable.
    peer_missing_since: dict[VmimKey, datetime] = field(default_factory=dict)


class Peer(Enum):
    PRESENT = "present"
    TERMINATING = "terminating"  # every peer found is being deleted
    MISSING = "missing"
    UNKNOWN = "unknown"  # no migrationID, or a cluster is unreachable


@dataclass(frozen=True)
class _Item:
    """One decentralized VMIM of a reachable cluster, with what the rules need about it."""

    cluster: str
    obj: Obj
    role: Role
    store: ObjectStore

    @property
    def key(self) -> VmimKey:
        return (self.cluster, namespace_of(self.obj), name_of(self.obj), _uid(self.obj) or "")


# --- Object helpers ---------------------------------------------------------------------
def _uid(obj: Obj) -> str | None:
    value = get_path(obj, "metadata", "uid")
    return value if isinstance(value, str) and value else None


def parse_time(value: object) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, usually `...Z`) as an aware datetime; None if bad."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def phase_since(vmim: Obj, phase: str) -> datetime | None:
    """When the VMIM last entered `phase`, from status.phaseTransitionTimestamps."""
    entries = get_path(vmim, "status", "phaseTransitionTimestamps")
    times = [parse_time(e.get("phaseTransitionTimestamp"))
             for e in entries if isinstance(e, Mapping) and e.get("phase") == phase
             ] if isinstance(entries, list) else []
    return max((t for t in times if t is not None), default=None)


def _vmi_failure(item: _Item) -> Obj | None:
    """The target VMI when it reports this migration failed (v1.7+, docs/kubevirt-facts.md, "Phases
    and failure").

    A VMI remembers its last migration: when migrationState.migrationUid names another
    VMIM, the failure belongs to an earlier attempt and must not condemn this one.
    """
    if item.role is not Role.TARGET:
        return None
    vmi = item.store.vmi(namespace_of(item.obj), vmi_name(item.obj))
    if vmi is None or not migration_failed_on_vmi(vmi):
        return None
    owner = get_path(vmi, "status", "migrationState", "migrationUid")
    if owner and _uid(item.obj) and owner != _uid(item.obj):
        return None
    return vmi


def state_of(item: _Item) -> tuple[str, datetime | None]:
    """(state label, since when according to upstream timestamps, if they tell)."""
    phase = phase_of(item.obj)
    if phase == PHASE_FAILED:
        return phase, phase_since(item.obj, phase)
    if not is_final(item.obj):
        vmi = _vmi_failure(item)
        if vmi is not None:
            return STATE_VMI_FAILED, parse_time(
                get_path(vmi, "status", "migrationState", "endTimestamp"))
    if phase in WAITING_PHASES:
        since = phase_since(item.obj, phase)
        return phase, since or parse_time(get_path(item.obj, "metadata", "creationTimestamp"))
    return phase, None


def is_failed_state(state: str) -> bool:
    return state in (PHASE_FAILED, STATE_VMI_FAILED)


# --- Gathering --------------------------------------------------------------------------
def _items(clusters: Mapping[str, ObjectStore | None]) -> list[_Item]:
    """Decentralized VMIMs of reachable clusters, in a deterministic order.

    A VMIM with both sendTo and receive is an ordinary migration upstream (docs/kubevirt-facts.md,
    "Decentralized VMIMs"):
    migration_role() is None for it, so it is never ours to delete.
    """
    items = []
    for cluster in sorted(clusters):
        store = clusters[cluster]
        if store is None:
            continue
        for obj in store.list(KIND_VMIM):
            role = migration_role(obj)
            if role is not None:
                items.append(_Item(cluster, obj, role, store))
    return sorted(items, key=lambda i: i.key)


def peer_of(item: _Item, clusters: Mapping[str, ObjectStore | None]) -> Peer:
    """Where the other side is; upstream pairs by migrationID cluster-wide (docs/kubevirt-facts.md,
    "migrationID")."""
    mid = migration_id(item.obj)
    if not mid or any(store is None for store in clusters.values()):
        return Peer.UNKNOWN
    other = Role.TARGET if item.role is Role.SOURCE else Role.SOURCE
    peers = [p for store in clusters.values() if store is not None
             for p in store.vmims_with_migration_id(other, mid)]
    if not peers:
        return Peer.MISSING
    return Peer.TERMINATING if all(is_terminating(p) for p in peers) else Peer.PRESENT


# --- Memory -----------------------------------------------------------------------------
def remember(memory: GcMemory, items: Iterable[_Item],
             clusters: Mapping[str, ObjectStore | None], now: datetime) -> None:
    """Record this pass's observations, and forget VMIMs that are gone."""
    if any(store is None for store in clusters.values()):
        # Absence must be observed continuously: any outage, including one of the VMIM's own
        # cluster (whose VMIMs are not in `items`), restarts every absence clock.
        memory.peer_missing_since.clear()
    seen: set[VmimKey] = set()
    for item in items:
        key = item.key
        seen.add(key)
        state = state_of(item)[0]
        previous = memory.state_since.get(key)
        if previous is None or previous[0] != state:
            memory.state_since[key] = (state, now)
        _remember_peer(memory, key, peer_of(item, clusters), now)
    _forget(memory, seen, clusters)


def _remember_peer(memory: GcMemory, key: VmimKey, peer: Peer, now: datetime) -> None:
    if peer in (Peer.PRESENT, Peer.TERMINATING):
        memory.peer_seen.add(key)
    if peer is Peer.MISSING:
        memory.peer_missing_since.setdefault(key, now)
    else:  # present, or unknown this pass: the absence clock restarts
        memory.peer_missing_since.pop(key, None)


def _forget(memory: GcMemory, seen: set[VmimKey],
            clusters: Mapping[str, ObjectStore | None]) -> None:
    # Keep what we know about VMIMs of an unreachable cluster; drop removed clusters.
    def keep(key: VmimKey) -> bool:
        return key in seen or (key[0] in clusters and clusters[key[0]] is None)

    memory.state_since = {k: v for k, v in memory.state_since.items() if keep(k)}
    memory.peer_seen = {k for k in memory.peer_seen if keep(k)}
    memory.peer_missing_since = {k: v for k, v in memory.peer_missing_since.items() if keep(k)}


# --- Rules ------------------------------------------------------------------------------
def _since(item: _Item, memory: GcMemory) -> tuple[str, datetime]:
    """Current state and since when, upstream timestamps first, else first seen by us."""
    state, upstream = state_of(item)
    if upstream is not None:
        return state, upstream
    remembered = memory.state_since.get(item.key)
    # remember() ran first, so the entry exists; a miss must never read as "long ago".
    return state, remembered[1] if remembered and remembered[0] == state else _NEVER


def _vmim_deletion(item: _Item, reason: str, detail: str) -> Deletion:
    return Deletion(item.cluster, KIND_VMIM, namespace_of(item.obj), name_of(item.obj),
                    _uid(item.obj), reason, detail)


def _failed(item: _Item, memory: GcMemory, now: datetime,
            settings: GcSettings) -> list[Deletion] | None:
    """Rules 1-2. None when the VMIM has not failed; [] while it is within the grace."""
    state, since = _since(item, memory)
    if not is_failed_state(state):
        return None
    age = now - since
    if age <= settings.grace:
        return []
    if item.role is Role.SOURCE:  # only a target's VMI reports failure: state is Failed
        return [_vmim_deletion(item, REASON_FAILED_SOURCE,
                               f"source migration Failed for {age}, longer than {settings.grace}")]
    detail = f"target migration failed ({state}) for {age}, longer than {settings.grace}"
    vm = _target_vm_deletion(item, memory, detail)
    return [_vmim_deletion(item, REASON_FAILED_TARGET, detail), *([vm] if vm else [])]


def _target_vm_deletion(item: _Item, memory: GcMemory, detail: str) -> Deletion | None:
    """The target VM of a failed receive VMIM, when deleting it is safe.

    The VM has the VMI's name in the VMIM's namespace (KubeVirt VM->VMI naming). Only a VM
    still WaitAsReceiver (a succeeded one took its restore strategy, docs/kubevirt-facts.md), whose
    VMI
    is not Running, and that no other VMIM still uses.
    """
    namespace, name = namespace_of(item.obj), vmi_name(item.obj)
    vm = item.store.vm(namespace, name)
    if vm is None or not is_wait_as_receiver(vm) or is_terminating(vm):
        return None
    vmi = item.store.vmi(namespace, name)
    if vmi is not None and phase_of(vmi) == VMI_PHASE_RUNNING:
        return None
    if _vm_in_use(item, memory):
        return None
    return Deletion(item.cluster, KIND_VM, namespace, name, _uid(vm), REASON_FAILED_TARGET,
                    f"WaitAsReceiver target VM of {name_of(item.obj)}: {detail}")


def _vm_in_use(item: _Item, memory: GcMemory) -> bool:
    """Another VMIM names this VMI: a retry, an outgoing (source) or ordinary migration.

    Failed or terminating receive VMIMs do not count: they are on their way out too.
    """
    namespace, name = namespace_of(item.obj), vmi_name(item.obj)
    for other in item.store.list(KIND_VMIM):
        if namespace_of(other) != namespace or vmi_name(other) != name:
            continue
        if migration_role(other) is Role.TARGET:
            peer = _Item(item.cluster, other, Role.TARGET, item.store)
            if is_terminating(other) or is_failed_state(state_of(peer)[0]):
                continue
        return True
    return False


def _orphan(item: _Item, peer: Peer, memory: GcMemory, now: datetime,
            settings: GcSettings) -> Deletion | None:
    """Rule 3: cancel a VMIM whose peer was deleted or never showed up (docs/kubevirt-facts.md,
    "Phases and failure")."""
    if peer is Peer.TERMINATING:
        return _vmim_deletion(item, REASON_ORPHAN, "peer migration is being deleted")
    if peer is not Peer.MISSING or item.key not in memory.peer_missing_since:
        return None
    seen_before = item.key in memory.peer_seen
    ttl = settings.grace if seen_before else settings.orphan_ttl
    missing = now - memory.peer_missing_since[item.key]
    if missing <= ttl:
        return None
    what = "peer migration was deleted" if seen_before else "peer migration never appeared"
    return _vmim_deletion(item, REASON_ORPHAN,
                          f"{what}: missing from every known cluster for {missing}")


def _stuck(item: _Item, memory: GcMemory, now: datetime,
           settings: GcSettings) -> Deletion | None:
    """Rule 4: KubeVirt waits forever for a peer that never connects (kubevirt #17317)."""
    state, since = _since(item, memory)
    if state not in WAITING_PHASES or now - since <= settings.stuck_timeout:
        return None
    return _vmim_deletion(item, REASON_STUCK,
                          f"in {state} for {now - since}, longer than {settings.stuck_timeout}")


def _decide_one(item: _Item, clusters: Mapping[str, ObjectStore | None], memory: GcMemory,
                now: datetime, settings: GcSettings) -> list[Deletion]:
    failed = _failed(item, memory, now, settings)
    if failed is not None:
        return failed
    if is_final(item.obj):  # Succeeded: done, never ours to remove
        return []
    orphan = _orphan(item, peer_of(item, clusters), memory, now, settings)
    if orphan is not None:
        return [orphan]
    stuck = _stuck(item, memory, now, settings)
    return [stuck] if stuck is not None else []


def decide_gc(clusters: Mapping[str, ObjectStore | None], managed: Collection[str],
              now: datetime, settings: GcSettings, memory: GcMemory) -> list[Deletion]:
    """What to delete this pass; updates `memory` with this pass's observations.

    `clusters[name]` is None when that cluster is unreachable; only clusters in `managed`
    get deletions, but every known cluster is searched for peers.
    """
    items = _items(clusters)
    remember(memory, items, clusters, now)
    chosen: dict[tuple[str, str, str, str], Deletion] = {}
    for item in items:
        if item.cluster not in managed or is_terminating(item.obj):
            continue
        for deletion in _decide_one(item, clusters, memory, now, settings):
            key = (deletion.cluster, deletion.kind, deletion.namespace, deletion.name)
            chosen.setdefault(key, deletion)  # each object at most once per pass
    return sorted(chosen.values(), key=Deletion.sort_key)
