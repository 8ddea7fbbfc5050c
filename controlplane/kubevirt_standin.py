"""A KubeVirt STAND-IN for the test clusters: what KubeVirt's controllers do to the objects of
a decentralized live migration, as far as the upstream code says and nothing more.

The test clusters run no KubeVirt (no virt-operator, virt-controller, virt-handler, no
synchronization controller, no pods), so nothing else would ever move a migration. This
stand-in plays those parts for `dlm-guard migrate`'s tests and the demo. Every behaviour
cites the upstream code it imitates (kubevirt/kubevirt main d923fdb815; v1.7.0 and v1.9.0
for the failure semantics). What it does NOT do: pods, nodes, disks, TLS, the gRPC
synchronization connection, retries, the peer-VMIM deletion on cancel (v1.6.2+), KubeVirt's
own admission webhooks and finalizers. So a real cluster can differ: see README ("migrate").

Runs as a thread polling every watched cluster (bounded: one pass per `poll` seconds, each
pass a few list calls); tests can also call `tick()` directly. Namespaces are watched only
when labelled `NAMESPACE_LABEL=on`, so other tests sharing the clusters are left alone; the
KubeVirt CR is cluster-wide.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dlm_guard.domain import (
    ANNOTATION_CREATE_MIGRATION_TARGET,
    ANNOTATION_RESTORE_RUN_STRATEGY,
    PHASE_FAILED,
    PHASE_SUCCEEDED,
    GateState,
    Obj,
    Role,
    annotations_of,
    feature_gate_state,
    get_path,
    is_final,
    is_receiver_vmi,
    migration_role,
    name_of,
    namespace_of,
    phase_of,
    spec_migration_id,
    vmi_name,
)
from migrate import kube
from migrate.kube import Kube, KubeError

log = logging.getLogger(__name__)

NAMESPACE_LABEL = "kubevirt-standin"
POLL_SECONDS = 0.2
MAX_EVENTS = 500
# The phases each side walks through, one per pass (VirtualMachineInstanceMigrationPhase,
# staging/src/kubevirt.io/api/core/v1/types.go; the order of processMigrationPhase in
# pkg/virt-controller/watch/migration/migration.go).
TARGET_WAITING, SOURCE_WAITING = "WaitingForSync", "Synchronizing"
SHARED_PHASES = ("Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady",
                 "Running")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StandInCluster:
    """One cluster the stand-in plays KubeVirt in, and the synchronization addresses its
    (imaginary) synchronization controller listens on."""

    name: str
    kube: Kube
    addresses: list[str]


@dataclass
class _Snapshot:
    vms: list[dict[str, Any]] = field(default_factory=list)
    vmis: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    vmims: list[dict[str, Any]] = field(default_factory=list)
    kubevirt: dict[str, Any] | None = None


class KubeVirtStandIn:
    def __init__(self, clusters: Sequence[StandInCluster], poll: float = POLL_SECONDS) -> None:
        self.clusters = list(clusters)
        self.poll = poll
        self.errors: list[str] = []  # unexpected API errors seen by the thread
        self.events: list[str] = []  # what it did, for test failure messages
        self.hold_receivers = False  # do not start receiver VMIs (yet)
        self.hold_migrations = False  # matched pairs wait in their current phase
        self._failing: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- control from tests --------------------------------------------------------------------
    def fail(self, migration_id: str) -> None:
        """Make the pair with this migrationID fail when it reaches Running."""
        with self._lock:
            self._failing.add(migration_id)

    def start(self) -> KubeVirtStandIn:
        self._thread = threading.Thread(target=self._loop, name="kubevirt-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> KubeVirtStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.tick()
            except KubeError as err:  # an API hiccup: the next pass tries again
                self._record_error(str(err))

    def _record_error(self, text: str) -> None:
        with self._lock:
            if len(self.errors) < 100:
                self.errors.append(text)

    def _event(self, cluster: StandInCluster, text: str) -> None:
        log.info("stand-in %s: %s", cluster.name, text)
        with self._lock:
            self.events.append(f"{cluster.name}: {text}")
            del self.events[:-MAX_EVENTS]  # the demo may run for hours

    # --- one pass ------------------------------------------------------------------------------
    def tick(self) -> None:
        snapshots = {c.name: self._snapshot(c) for c in self.clusters}
        for cluster in self.clusters:
            snap = snapshots[cluster.name]
            self._publish_addresses(cluster, snap)
            for vm in snap.vms:
                self._sync_vm(cluster, vm, snap)
            for vmim in snap.vmims:
                self._accept_vmim(cluster, vmim, snap)
        for cluster in self.clusters:
            for vmim in snapshots[cluster.name].vmims:
                if migration_role(vmim) is Role.SOURCE and not is_final(vmim):
                    self._advance_pair(cluster, vmim, snapshots)

    def _watched(self, cluster: StandInCluster) -> set[str]:
        return {name_of(ns) for ns in cluster.kube.list(
            kube.NAMESPACE, label_selector=f"{NAMESPACE_LABEL}=on")}

    def _snapshot(self, cluster: StandInCluster) -> _Snapshot:
        namespaces = self._watched(cluster)

        def inside(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
            return [o for o in objects if namespace_of(o) in namespaces]

        kubevirts = cluster.kube.list(kube.KUBEVIRT)
        return _Snapshot(
            vms=inside(cluster.kube.list(kube.VM)) if namespaces else [],
            vmis={(namespace_of(v), name_of(v)): v
                  for v in inside(cluster.kube.list(kube.VMI))} if namespaces else {},
            vmims=inside(cluster.kube.list(kube.VMIM)) if namespaces else [],
            kubevirt=kubevirts[0] if kubevirts else None)

    # --- virt-operator: synchronization addresses ---------------------------------------------
    def _publish_addresses(self, cluster: StandInCluster, snap: _Snapshot) -> None:
        """pkg/virt-operator/resource/apply/core.go updateSynchronizationAddress: the leader
        sync-controller pod's IPs joined with the port; nil while the gate is off."""
        kv = snap.kubevirt
        if kv is None:
            return
        wanted = cluster.addresses if feature_gate_state(kv).state is not GateState.OFF else None
        if get_path(kv, "status", "synchronizationAddresses") != wanted:
            self._patch(cluster, kube.KUBEVIRT, kv, {"status": {"synchronizationAddresses":
                                                                wanted}}, "status")
            self._event(cluster, f"KubeVirt CR synchronizationAddresses {wanted}")

    # --- virt-controller: VMs ------------------------------------------------------------------
    def _sync_vm(self, cluster: StandInCluster, vm: dict[str, Any], snap: _Snapshot) -> None:
        ns, name = namespace_of(vm), name_of(vm)
        vmi = snap.vmis.get((ns, name))
        strategy = get_path(vm, "spec", "runStrategy")
        if strategy == "WaitAsReceiver":
            self._sync_receiver_vm(cluster, vm, vmi)
        elif vmi is not None and is_final(vmi) and _migrated_out(vmi):
            self._halt_migrated_source(cluster, vm, vmi, strategy)

    def _sync_receiver_vm(self, cluster: StandInCluster, vm: dict[str, Any],
                          vmi: dict[str, Any] | None) -> None:
        """pkg/virt-controller/watch/vm/vm.go syncRunStrategy, case RunStrategyWaitAsReceiver:
        no VMI -> startVMI with annotation create-migration-target (the VMI controller,
        watch/vmi/lifecycle.go, puts such an unscheduled VMI in WaitingForSync); a VMI that
        is no longer a receiver and has a completed migration -> spec.runStrategy from the
        restore annotation, copied without validation."""
        if vmi is None:
            if not self.hold_receivers:
                self._create_receiver_vmi(cluster, vm)
            return
        if not is_receiver_vmi(vmi) and get_path(vmi, "status", "migrationState",
                                                 "completed") is True:
            restore = annotations_of(vm).get(ANNOTATION_RESTORE_RUN_STRATEGY)
            if restore is not None:
                self._patch(cluster, kube.VM, vm, {"spec": {"runStrategy": restore}})
                self._event(cluster, f"VM {namespace_of(vm)}/{name_of(vm)} runStrategy "
                                     f"{restore} (restored)")

    def _create_receiver_vmi(self, cluster: StandInCluster, vm: dict[str, Any]) -> None:
        template = get_path(vm, "spec", "template") or {}
        vmi = {
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {
                "name": name_of(vm), "namespace": namespace_of(vm),
                "labels": dict(get_path(template, "metadata", "labels") or {}),
                "annotations": {ANNOTATION_CREATE_MIGRATION_TARGET: "true"},
                "ownerReferences": [{
                    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                    "name": name_of(vm), "uid": get_path(vm, "metadata", "uid"),
                    "controller": True, "blockOwnerDeletion": True}]},
            "spec": dict(get_path(template, "spec") or {}),
            "status": {"phase": TARGET_WAITING},  # the VMI CRD has no status subresource
        }
        try:
            cluster.kube.create(vmi)
        except KubeError as err:
            if err.status != 409:
                raise
            return
        self._event(cluster, f"receiver VMI {namespace_of(vm)}/{name_of(vm)} WaitingForSync")

    def _halt_migrated_source(self, cluster: StandInCluster, vm: dict[str, Any],
                              vmi: dict[str, Any], strategy: Any) -> None:
        """vm.go syncRunStrategy, case RunStrategyAlways: a final VMI whose decentralized
        migration completed -> spec.runStrategy Halted (only that case: Manual, Once and
        RerunOnFailure keep their strategy). A VM still on legacy spec.running also maps to
        Always there, but the update then sets both fields, which the VM admitter
        (vms-admitter.go, "mutually exclusive") refuses: the stand-in records that and
        leaves the VM. Then, Halted: stopVMI deletes the final VMI."""
        where = f"VM {namespace_of(vm)}/{name_of(vm)}"
        running = get_path(vm, "spec", "running")
        if strategy == "Always":
            self._patch(cluster, kube.VM, vm, {"spec": {"runStrategy": "Halted"}})
            self._event(cluster, f"{where} runStrategy Halted (migrated away)")
        elif strategy is None and running is True:
            self._event(cluster, f"{where} uses spec.running: KubeVirt's update to Halted "
                                 "would be refused (running and runStrategy together)")
        elif strategy == "Halted":
            self._delete(cluster, kube.VMI, vmi)
            self._event(cluster, f"VMI {namespace_of(vmi)}/{name_of(vmi)} deleted (Halted)")

    # --- virt-controller: VMIMs ----------------------------------------------------------------
    def _accept_vmim(self, cluster: StandInCluster, vmim: dict[str, Any],
                     snap: _Snapshot) -> None:
        """migration.go: every VMIM gets the KubeVirt CR's synchronizationAddresses
        (setSynchronizationAddressStatus); an unset phase becomes WaitingForSync (receive)
        or Synchronizing (sendTo) once its VMI exists (processMigrationPhase)."""
        role = migration_role(vmim)
        if role is None or is_final(vmim):
            return
        status: dict[str, Any] = {}
        addresses = get_path(snap.kubevirt, "status", "synchronizationAddresses") \
            if snap.kubevirt else None
        if addresses and get_path(vmim, "status", "synchronizationAddresses") != addresses:
            status["synchronizationAddresses"] = addresses
        if not phase_of(vmim) and (namespace_of(vmim), vmi_name(vmim)) in snap.vmis:
            status["phase"] = TARGET_WAITING if role is Role.TARGET else SOURCE_WAITING
        if status:
            self._patch(cluster, kube.VMIM, vmim, {"status": status}, "status")
            vmim.setdefault("status", {}).update(status)

    def _peer(self, vmim: dict[str, Any], snapshots: dict[str, _Snapshot]
              ) -> tuple[StandInCluster, dict[str, Any]] | None:
        """The target VMIM a source VMIM reaches: the cluster whose synchronization address
        is its connectURL, the first receive VMIM there with the same migrationID (upstream
        looks migrationIDs up cluster-wide and takes the first match)."""
        url = get_path(vmim, "spec", "sendTo", "connectURL")
        mid = spec_migration_id(vmim, Role.SOURCE)
        for cluster in self.clusters:
            if url not in cluster.addresses:
                continue
            for other in snapshots[cluster.name].vmims:
                if migration_role(other) is Role.TARGET \
                        and spec_migration_id(other, Role.TARGET) == mid:
                    return cluster, other
        return None

    def _advance_pair(self, cluster: StandInCluster, source: dict[str, Any],
                      snapshots: dict[str, _Snapshot]) -> None:
        peer = self._peer(source, snapshots)
        if peer is None or self.hold_migrations or not phase_of(source):
            return
        target_cluster, target = peer
        if is_final(target) or not phase_of(target):
            return
        mid = str(spec_migration_id(source, Role.SOURCE))
        next_phase = _next_phase(phase_of(target))
        if next_phase is None:  # both Running: the end
            with self._lock:
                failing = mid in self._failing
            ends = self._fail_pair if failing else self._succeed_pair
            ends(cluster, source, target_cluster, target, snapshots)
            return
        for side_cluster, vmim in ((target_cluster, target), (cluster, source)):
            self._patch(side_cluster, kube.VMIM, vmim, {"status": {"phase": next_phase}},
                        "status")
        self._event(cluster, f"migration {mid}: both VMIMs {next_phase}")

    def _succeed_pair(self, source_cluster: StandInCluster, source: dict[str, Any],
                      target_cluster: StandInCluster, target: dict[str, Any],
                      snapshots: dict[str, _Snapshot]) -> None:
        """Success: the target VMI runs the VM (virt-handler migration-target.go finalCleanup
        removes create-migration-target on success), the source VMI is final with a
        completed migration, both VMIMs Succeeded (migration.go, MigrationRunning case)."""
        done = {"completed": True, "endTimestamp": _now()}
        target_vmi = snapshots[target_cluster.name].vmis.get(
            (namespace_of(target), vmi_name(target)))
        if target_vmi is not None:
            self._patch(target_cluster, kube.VMI, target_vmi, {
                "metadata": {"annotations": {ANNOTATION_CREATE_MIGRATION_TARGET: None}},
                "status": {"phase": "Running", "migrationState": {
                    **done, "sourceState": {"syncAddress": None},
                    "targetState": {"syncAddress": target_cluster.addresses[0]}}}})
        source_vmi = snapshots[source_cluster.name].vmis.get(
            (namespace_of(source), vmi_name(source)))
        if source_vmi is not None:
            self._patch(source_cluster, kube.VMI, source_vmi, {"status": {
                "phase": PHASE_SUCCEEDED, "migrationState": {
                    **done, "targetState": {"syncAddress": get_path(
                        source, "spec", "sendTo", "connectURL")}}}})
        for cluster, vmim in ((target_cluster, target), (source_cluster, source)):
            self._patch(cluster, kube.VMIM, vmim, {"status": {"phase": PHASE_SUCCEEDED}},
                        "status")
        self._event(source_cluster, f"migration {spec_migration_id(source, Role.SOURCE)} "
                                    "Succeeded")

    def _fail_pair(self, source_cluster: StandInCluster, source: dict[str, Any],
                   target_cluster: StandInCluster, target: dict[str, Any],
                   snapshots: dict[str, _Snapshot]) -> None:
        """v1.7.0+ failure (pkg/virt-controller/watch/vmi/lifecycle.go, migration target
        whose pod is gone or whose migration failed): the target VMI goes back to
        WaitingForSync with migrationState failed, completed and endTimestamp; both VMIMs
        end Failed; the source VMI keeps running; nothing is retried."""
        target_vmi = snapshots[target_cluster.name].vmis.get(
            (namespace_of(target), vmi_name(target)))
        if target_vmi is not None:
            self._patch(target_cluster, kube.VMI, target_vmi, {"status": {
                "phase": TARGET_WAITING, "migrationState": {
                    "failed": True, "completed": True, "endTimestamp": _now()}}})
        for cluster, vmim in ((target_cluster, target), (source_cluster, source)):
            self._patch(cluster, kube.VMIM, vmim, {"status": {"phase": PHASE_FAILED}},
                        "status")
        self._event(source_cluster, f"migration {spec_migration_id(source, Role.SOURCE)} "
                                    "Failed (as told)")

    # --- writes ----------------------------------------------------------------------------------
    def _patch(self, cluster: StandInCluster, resource: kube.Resource, obj: Obj,
               patch: dict[str, Any], subresource: str = "") -> None:
        try:
            cluster.kube.merge_patch(resource, namespace_of(obj) or None, name_of(obj), patch,
                                     subresource=subresource)
        except KubeError as err:
            if err.status != 404:  # deleted meanwhile (a cancel): nothing left to update
                raise

    def _delete(self, cluster: StandInCluster, resource: kube.Resource, obj: Obj) -> None:
        cluster.kube.delete(resource, namespace_of(obj), name_of(obj),
                            get_path(obj, "metadata", "uid"))


def _next_phase(phase: str) -> str | None:
    if phase in (TARGET_WAITING, SOURCE_WAITING):
        return SHARED_PHASES[0]
    index = SHARED_PHASES.index(phase) if phase in SHARED_PHASES else -1
    return SHARED_PHASES[index + 1] if 0 <= index < len(SHARED_PHASES) - 1 else None


def _migrated_out(vmi: Obj) -> bool:
    """A source VMI whose decentralized migration completed (IsMigrationCompleted, and the
    stand-in's marker of the source side: targetState.syncAddress, IsDecentralizedMigration
    in staging/src/kubevirt.io/api/core/v1/types.go)."""
    state = get_path(vmi, "status", "migrationState")
    return (get_path(state, "completed") is True and get_path(state, "failed") is not True
            and get_path(state, "targetState", "syncAddress") is not None
            and not is_receiver_vmi(vmi))
