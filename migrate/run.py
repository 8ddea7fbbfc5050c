"""`migrate run`: carry out a reviewed plan, watch both VMIMs, clean up or summarise.

States, in order (each one idempotent, so a re-run after an interruption continues):
  preflight   every target object classified (create / ours already / same content / conflict)
              and no other migration in flight for the VM; conflicts stop here (exit 2)
  dry-run     every object to create, server-side (dryRun=All), before the first real create:
              schema and admission errors appear while nothing exists
  create      Secrets, ConfigMaps, DataVolumes, the target VM (the user guide's order)
  receiver    wait for the receiver VMI (annotation create-migration-target, WaitingForSync;
              Forklift's WaitForTargetVMI waits for the same phase)
  target VMIM create it; the connect address comes from the target KubeVirt CR or, without
              it, from the target VMIM's status.synchronizationAddresses (Forklift reads only
              the latter: SynchronizationAddressReady in live.go)
  source VMIM create it with that connectURL
  watch       both VMIMs until one ends; success is the target VMIM Succeeded (as Forklift's
              WaitForStateTransfer: a source VMIM sometimes never gets there, kubevirt #15299),
              failure is either Failed; nothing times out upstream, so --timeout does
Failure (or timeout): both VMIMs, the target VM (and its receiver VMI) are deleted, the
DataVolumes only with --cleanup-volumes, unless --keep-on-failure. Ctrl-C deletes both VMIMs
(KubeVirt's cancel) and nothing else.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dlm_guard.domain import (
    ANNOTATION_RESTORE_RUN_STRATEGY,
    LABEL_MIGRATION_ID,
    PHASE_FAILED,
    PHASE_SUCCEEDED,
    Obj,
    Role,
    annotations_of,
    get_path,
    is_final,
    is_receiver_vmi,
    is_wait_as_receiver,
    labels_of,
    phase_of,
    run_strategy,
    vmi_name,
)
from migrate import kube
from migrate.gather import synchronization_addresses
from migrate.kube import Kube, KubeError
from migrate.plan import Plan, PlannedObject, Step
from migrate.progress import Progress

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# The webhook reads VMIs from a watch cache and KubeVirt's admitter from a live GET: a VMI
# created a moment ago may still be unknown to the first (DESIGN.md), so a create denied only
# for that is tried again for this long.
ADMISSION_RETRY_SECONDS = 15.0
# After the target VMIM succeeded, how long to wait for virt-controller to restore the
# target VM's run strategy and halt the source VM before summarising what is seen.
SETTLE_SECONDS = 30.0
# Upstream's admitter message for a VMIM whose VMI does not exist yet
# (pkg/virt-api/webhooks/validating-webhook/admitters/migration-create-admitter.go).
_KUBEVIRT_NO_VMI = re.compile(r'the VMI "[^"]*" does not exist')
_SLUG = re.compile(r"\[([a-z][a-z-]*)\]")
VMI_RULES = frozenset({"receiver-vmi", "source-vmi"})


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"  # both VMIMs deleted by someone else (`migrate cancel`)


class Aborted(Exception):
    """Stop before the migration started: bad input, conflict or preflight failure."""


class Action(StrEnum):
    CREATE = "create"
    OURS = "exists (this migration)"
    SAME = "exists with the same content (kept, not ours)"
    EARLIER = "exists, blank, left by an earlier attempt (reused)"


@dataclass(frozen=True)
class RunSettings:
    timeout: float
    keep_on_failure: bool = False
    cleanup_volumes: bool = False
    poll_interval: float = 0.5


# --- Pure decisions ------------------------------------------------------------------------
def outcome_of(target_vmim: Obj | None, source_vmim: Obj | None) -> Outcome | None:
    """None while the migration goes on."""
    target, source = phase_of(target_vmim or {}), phase_of(source_vmim or {})
    if PHASE_FAILED in (target, source):
        return Outcome.FAILED
    if target == PHASE_SUCCEEDED:
        return Outcome.SUCCEEDED
    return None


def same_content(existing: Obj, wanted: Obj) -> bool:
    """A Secret or ConfigMap that already holds exactly what we would copy."""
    return (all(existing.get(k) == wanted.get(k) for k in ("data", "binaryData"))
            and existing.get("type", "Opaque") == wanted.get("type", "Opaque"))


def classify(planned: PlannedObject, existing: Obj | None, label: str) -> Action | str:
    """What to do with one planned object; a string says why it conflicts."""
    if existing is None:
        return Action.CREATE
    if labels_of(existing).get(LABEL_MIGRATION_ID) == label:
        return Action.OURS
    if planned.step is Step.SECRET and same_content(existing, planned.obj):
        return Action.SAME
    if planned.step is Step.CONFIG_MAP and same_content(existing, planned.obj):
        return Action.SAME
    if planned.step is Step.DATA_VOLUME and LABEL_MIGRATION_ID in labels_of(existing) \
            and existing.get("spec") == planned.obj.get("spec"):
        # A failed attempt's clean-up keeps the volumes (without --cleanup-volumes) so that
        # the retry can use them: the same blank DataVolume, made by us for this VM.
        return Action.EARLIER
    return (f"{planned.describe()} already exists and is not part of this migration: "
            "remove or rename it, or migrate into another namespace")


def vmi_not_seen_yet(planned: PlannedObject, message: str) -> bool:
    """A VMIM denied only because its VMI is not known (yet): by our rules receiver-vmi /
    source-vmi (the webhook reads a watch cache that can lag) or by KubeVirt's own admitter.
    The plan's review already checked those rules against the live VMI."""
    if planned.step not in (Step.TARGET_VMIM, Step.SOURCE_VMIM):
        return False
    slugs = set(_SLUG.findall(message))
    if slugs:
        return slugs <= VMI_RULES
    return bool(_KUBEVIRT_NO_VMI.search(message))


def conflicting_migrations(vmims: list[dict[str, Any]], vm_name: str, label: str) -> list[str]:
    """Other VMIMs still in flight for the VM: a second pair must never start."""
    return [f"{get_path(v, 'metadata', 'namespace')}/{get_path(v, 'metadata', 'name')} "
            f"(phase {phase_of(v) or 'unset'})"
            for v in vmims if vmi_name(v) == vm_name and not is_final(v)
            and labels_of(v).get(LABEL_MIGRATION_ID) != label]


def conditions_text(obj: Obj | None) -> list[str]:
    conditions = get_path(obj, "status", "conditions") if obj else None
    return [f"{c.get('type')}={c.get('status')} {c.get('reason') or ''} "
            f"{c.get('message') or ''}".rstrip()
            for c in conditions or [] if isinstance(c, dict)]


# --- The runner ------------------------------------------------------------------------------
class Runner:
    def __init__(self, source: Kube, target: Kube, plan: Plan, settings: RunSettings,
                 progress: Progress, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.source, self.target, self.plan = source, target, plan
        self.settings, self.progress, self.clock, self.sleep = settings, progress, clock, sleep
        self.started = clock()
        self.deadline = self.started + settings.timeout
        self.creating = False  # set once the first real create is under way

    def cluster(self, side: Role) -> Kube:
        return self.source if side is Role.SOURCE else self.target

    def say(self, text: str) -> None:
        self.progress.step(self.clock() - self.started, text)

    # --- preflight and dry-run ---------------------------------------------------------------
    def preflight(self) -> dict[Step, list[tuple[PlannedObject, Action]]]:
        """Classify every planned object; Aborted listing every conflict."""
        actions: dict[Step, list[tuple[PlannedObject, Action]]] = {}
        problems = []
        for planned in self.plan.objects:
            existing = self.cluster(planned.side).get(kube.resource_for(planned.obj),
                                                      planned.namespace, planned.name)
            action = classify(planned, existing, self.plan.label)
            if isinstance(action, Action):
                actions.setdefault(planned.step, []).append((planned, action))
            else:
                problems.append(action)
        for cluster, namespace in ((self.source, self.plan.source_namespace),
                                   (self.target, self.plan.target_namespace)):
            others = conflicting_migrations(cluster.list(kube.VMIM, namespace),
                                            self.plan.vm_name, self.plan.label)
            problems.extend(f"{cluster.name}: VMIM {o} is already migrating "
                            f"{self.plan.vm_name}: wait for it or cancel it first"
                            for o in others)
        if problems:
            raise Aborted("\n".join(problems))
        return actions

    def dry_run(self, actions: dict[Step, list[tuple[PlannedObject, Action]]]) -> None:
        """Server-side dry-run of every object still to create; Aborted listing failures.
        The target VMIM's VMI cannot exist yet, so a denial for just that is expected."""
        problems = []
        for entries in actions.values():
            for planned, action in entries:
                if action is not Action.CREATE or self._url_pending(planned):
                    continue
                try:
                    self._admitted(planned, dry_run=True)
                except KubeError as err:
                    if not (planned.step is Step.TARGET_VMIM
                            and vmi_not_seen_yet(planned, str(err))):
                        problems.append(f"{planned.describe()}: {err}")
        if problems:
            raise Aborted("server-side dry-run failed, nothing was created:\n"
                          + "\n".join(problems))
        self.say("server-side dry-run of every object to create: accepted")

    def _admitted(self, planned: PlannedObject, *, dry_run: bool = False) -> None:
        """Create (or dry-run) it; a VMIM denied only for its VMI is tried again, bounded."""
        deadline = self.clock() + ADMISSION_RETRY_SECONDS
        waits = planned.step is not Step.TARGET_VMIM or not dry_run
        while True:
            try:
                self.cluster(planned.side).create(planned.obj, dry_run=dry_run)
                return
            except KubeError as err:
                if not (waits and vmi_not_seen_yet(planned, str(err))) \
                        or self.clock() > deadline:
                    raise
            self.sleep(self.settings.poll_interval)

    @staticmethod
    def _url_pending(planned: PlannedObject) -> bool:
        return (planned.step is Step.SOURCE_VMIM
                and "connectURL" not in planned.obj["spec"]["sendTo"])

    # --- creates -----------------------------------------------------------------------------
    def ensure(self, planned: PlannedObject, action: Action) -> None:
        if action is not Action.CREATE:
            self.say(f"{planned.describe()}: {action.value}")
            return
        try:
            self._admitted(planned)
        except KubeError as err:
            if err.status != 409 or err.reason != "AlreadyExists":
                raise
            self.say(f"{planned.describe()}: exists (made a moment ago)")
            return
        self.say(f"{planned.describe()}: created")

    def _wait(self, what: str, probe: Callable[[], Any]) -> Any:
        """Poll probe() until it returns something truthy; TimeoutError at the deadline."""
        while True:
            value = probe()
            if value:
                return value
            if self.clock() > self.deadline:
                raise TimeoutError(what)
            self.sleep(self.settings.poll_interval)

    def wait_receiver(self) -> None:
        def ready() -> bool:
            vmi = self.target.get(kube.VMI, self.plan.target_namespace, self.plan.vm_name)
            return vmi is not None and is_receiver_vmi(vmi) and phase_of(vmi) == "WaitingForSync"
        self.say("waiting for the receiver VMI (WaitingForSync)")
        self._wait("the receiver VMI", ready)
        self.say(f"target VMI {self.plan.target_namespace}/{self.plan.vm_name}: WaitingForSync")

    def connect_url(self) -> str:
        known = self.plan.one(Step.SOURCE_VMIM).obj["spec"]["sendTo"].get("connectURL")
        if known:
            return str(known)
        vmim = self.plan.one(Step.TARGET_VMIM)
        self.say("waiting for the target VMIM's status.synchronizationAddresses")
        addresses = self._wait("the target VMIM's synchronizationAddresses", lambda: (
            synchronization_addresses(self.target.get(kube.VMIM, vmim.namespace, vmim.name))))
        return str(addresses[0])

    # --- watching ------------------------------------------------------------------------------
    def vmims(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        target, source = self.plan.one(Step.TARGET_VMIM), self.plan.one(Step.SOURCE_VMIM)
        return (self.target.get(kube.VMIM, target.namespace, target.name),
                self.source.get(kube.VMIM, source.namespace, source.name))

    def watch(self) -> tuple[Outcome, Obj | None, Obj | None]:
        while True:
            target, source = self.vmims()
            self.progress.phases(self.clock() - self.started, phase_of(target or {}),
                                 phase_of(source or {}))
            outcome = outcome_of(target, source)
            if outcome is not None:
                return outcome, target, source
            if target is None and source is None:
                return Outcome.CANCELLED, target, source
            if self.clock() > self.deadline:
                return Outcome.TIMED_OUT, target, source
            self.sleep(self.settings.poll_interval)

    # --- endings -------------------------------------------------------------------------------
    def delete_vmims(self) -> list[str]:
        deleted = []
        for planned in (self.plan.one(Step.TARGET_VMIM), self.plan.one(Step.SOURCE_VMIM)):
            cluster = self.cluster(planned.side)
            if cluster.delete(kube.VMIM, planned.namespace, planned.name):
                deleted.append(f"{planned.side.value} VMIM {planned.namespace}/{planned.name}")
        return deleted

    def clean_up(self) -> list[str]:
        """The documented retry clean-up: both VMIMs, the target VM while it still waits
        (with its receiver VMI), the DataVolumes only when asked."""
        deleted = self.delete_vmims()
        ns, name = self.plan.target_namespace, self.plan.vm_name
        vm = self.target.get(kube.VM, ns, name)
        if vm is not None and is_wait_as_receiver(vm) \
                and labels_of(vm).get(LABEL_MIGRATION_ID) == self.plan.label:
            if self.target.delete(kube.VM, ns, name, get_path(vm, "metadata", "uid")):
                deleted.append(f"target VM {ns}/{name}")
            vmi = self.target.get(kube.VMI, ns, name)
            if vmi is not None and is_receiver_vmi(vmi) and self.target.delete(
                    kube.VMI, ns, name, get_path(vmi, "metadata", "uid")):
                deleted.append(f"target VMI {ns}/{name}")
        if self.settings.cleanup_volumes:
            for planned in self.plan.of(Step.DATA_VOLUME):
                if self.target.delete(kube.DATA_VOLUME, planned.namespace, planned.name):
                    deleted.append(f"target DataVolume {planned.namespace}/{planned.name}")
        return deleted

    def settle(self) -> tuple[Obj | None, Obj | None]:
        """Both VMs once virt-controller has finished with them (bounded): the target's
        strategy restored, and a source on runStrategy Always set to Halted (the only case
        upstream halts: syncRunStrategy in pkg/virt-controller/watch/vm/vm.go)."""
        ns, name = self.plan.target_namespace, self.plan.vm_name
        deadline = min(self.deadline, self.clock() + SETTLE_SECONDS)
        while True:
            target_vm = self.target.get(kube.VM, ns, name)
            source_vm = self.source.get(kube.VM, self.plan.source_namespace, name)
            pending = (target_vm is not None and is_wait_as_receiver(target_vm)) or (
                source_vm is not None and run_strategy(source_vm) == "Always")
            if not pending or self.clock() > deadline:
                return target_vm, source_vm
            self.sleep(self.settings.poll_interval)

    def success_summary(self) -> None:
        target_vm, source_vm = self.settle()
        restore = annotations_of(target_vm or {}).get(ANNOTATION_RESTORE_RUN_STRATEGY)
        strategy = run_strategy(target_vm or {}) or "unknown"
        self.say(f"SUCCEEDED: target VM {self.plan.target_namespace}/{self.plan.vm_name} "
                 f"runStrategy {strategy}" + ("" if strategy == restore else
                                              f" (restore strategy {restore} not applied yet)"))
        source_strategy = run_strategy(source_vm or {}) or (
            f"spec.running={get_path(source_vm, 'spec', 'running')}" if source_vm else "gone")
        self.say(f"source VM {self.plan.source_namespace}/{self.plan.vm_name} "
                 f"runStrategy {source_strategy}")

    def failure_summary(self, outcome: Outcome, target: Obj | None, source: Obj | None) -> None:
        self.say(f"{outcome.value.upper()}: target VMIM phase {phase_of(target or {}) or '-'}, "
                 f"source VMIM phase {phase_of(source or {}) or '-'}")
        for side, vmim in (("target", target), ("source", source)):
            for line in conditions_text(vmim):
                self.say(f"  {side} VMIM condition: {line}")
        vmi = self.target.get(kube.VMI, self.plan.target_namespace, self.plan.vm_name)
        if vmi is not None and get_path(vmi, "status", "migrationState", "failed") is True:
            self.say(f"  target VMI back in phase {phase_of(vmi)} with migrationState.failed")

    # --- the whole run ---------------------------------------------------------------------------
    def execute(self) -> int:
        """Exit code; Aborted (nothing created) and KubeError before the first create
        propagate to the caller (exit 2)."""
        try:
            return self._execute()
        except KubeError as err:
            if not self.creating:
                raise
            self.say(f"stopped: {err}\nwhat exists stays: run again to continue, or "
                     f"`dlm-guard migrate cancel {self.plan.migration_id}` to clean up")
            return EXIT_FAILED
        except KeyboardInterrupt:
            with sigint_ignored():
                deleted = self.delete_vmims()
                self.say("cancelled (Ctrl-C): deleted " + (", ".join(deleted) or "no VMIM")
                         + "; KubeVirt cancels a migration when its VMIMs are deleted")
            return EXIT_FAILED

    def _execute(self) -> int:
        actions = self.preflight()
        target_vmim, source_vmim = self.vmims()
        if outcome_of(target_vmim, source_vmim) is Outcome.SUCCEEDED:
            self.say("this migration already succeeded")
            self.success_summary()
            return EXIT_OK
        if outcome_of(target_vmim, source_vmim) is Outcome.FAILED:
            raise Aborted(f"migration {self.plan.migration_id} failed earlier and was kept: "
                          "run `dlm-guard migrate cancel` for it, then run again")
        self.dry_run(actions)
        self.creating = True
        for step in (Step.SECRET, Step.CONFIG_MAP, Step.DATA_VOLUME, Step.TARGET_VM):
            for planned, action in actions.get(step, []):
                self.ensure(planned, action)
        try:
            outcome, target, source = self._migrate(actions)
        except TimeoutError as err:
            self.say(f"timed out waiting for {err}")
            outcome, (target, source) = Outcome.TIMED_OUT, self.vmims()
        if outcome is Outcome.SUCCEEDED:
            self.success_summary()
            return EXIT_OK
        self.failure_summary(outcome, target, source)
        if outcome is Outcome.CANCELLED:
            self.say("both VMIMs were deleted elsewhere (`dlm-guard migrate cancel`?): "
                     "nothing more to clean up here")
        elif self.settings.keep_on_failure:
            self.say("kept everything (--keep-on-failure)")
        else:
            deleted = self.clean_up()
            self.say("cleaned up: deleted " + (", ".join(deleted) or "nothing"))
        return EXIT_FAILED

    def _migrate(self, actions: dict[Step, list[tuple[PlannedObject, Action]]]
                 ) -> tuple[Outcome, Obj | None, Obj | None]:
        (target_entry,), (source_entry,) = actions[Step.TARGET_VMIM], actions[Step.SOURCE_VMIM]
        if target_entry[1] is Action.CREATE:
            self.wait_receiver()
        self.ensure(*target_entry)
        url = self.connect_url()
        self.plan = self.plan.with_connect_url(url)
        source_planned = self.plan.one(Step.SOURCE_VMIM)
        self.say(f"connect address {url}")
        self.ensure(source_planned, source_entry[1])
        return self.watch()


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut the cancel short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

