"""The `dlm-guard migrate` commands: gather, plan, review, report, run, status, cancel.

Exit codes as documented in migrate.cli.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from dlm_guard.domain import (
    PHASE_SUCCEEDED,
    GateState,
    Obj,
    Role,
    feature_gate_state,
    get_path,
    is_receiver_vmi,
    is_wait_as_receiver,
    name_of,
    namespace_of,
    phase_of,
    run_strategy,
)
from migrate import gather, kube
from migrate.kube import Kube, KubeError
from migrate.plan import Options, Plan, PlanError, build_plan
from migrate.progress import Progress
from migrate.review import ClusterView, Review, review_plan
from migrate.run import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Aborted, Runner, RunSettings
from reconciler.settings import parse_duration
from webhook.engine import random_suffix
from webhook.mutations import generated_migration_id
from webhook.policy import PolicyError, load_policy


# --- Shared steps ----------------------------------------------------------------------------
def fail(text: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"dlm-guard migrate: {text}", file=sys.stderr)
    return code


def connect(args: argparse.Namespace) -> tuple[Kube, Kube]:
    source = Kube("source", kube.api_client(args.source.kubeconfig, args.source.context))
    if args.target is None:
        return source, Kube("target", source.client)
    return source, Kube("target", kube.api_client(args.target.kubeconfig, args.target.context))


def _migration_id(args: argparse.Namespace, source: Kube, target: Kube, target_ns: str) -> str:
    if args.migration_id is not None:
        return str(args.migration_id)
    earlier = gather.resumable_migration_id(source, target, args.vm, args.namespace, target_ns)
    return earlier or generated_migration_id(args.vm, random_suffix())


def connect_url_from(kubevirt: Obj | None) -> str | None:
    addresses = gather.synchronization_addresses(kubevirt)
    return addresses[0] if addresses else None


def reviewed_plan(args: argparse.Namespace, source: Kube, target: Kube) -> Review:
    """Gather, build and review; PlanError/Aborted for what stops it."""
    target_ns = args.target_namespace or args.namespace
    if args.target is None and target_ns == args.namespace:
        raise PlanError(["without --to the migration stays in one cluster: pass a "
                         "--target-namespace other than the source namespace"])
    state = gather.source_state(source, args.namespace, args.vm)
    migration_id = _migration_id(args, source, target, target_ns)
    source_view = gather.cluster_view(source, migration_id, [state.vmi] if state.vmi else [])
    target_view = gather.cluster_view(target, migration_id)
    _preflight_clusters(source_view, target_view, target, target_ns)
    options = Options(target_namespace=target_ns, migration_id=migration_id,
                      storage_classes=dict(args.storage_class), networks=dict(args.network),
                      connect_url=connect_url_from(target_view.kubevirt))
    plan = build_plan(state, options)
    return review_plan(plan, load_policy(args.config), source_view, target_view)


def _preflight_clusters(source: ClusterView, target_view: ClusterView, target: Kube,
                        target_ns: str) -> None:
    problems = []
    for side, view in (("source", source), ("target", target_view)):
        if not view.kubevirt_readable:
            print(f"note: {side}: may not read KubeVirt CRs: the feature gate is left to the "
                  "webhook, the connect address comes from the target VMIM", file=sys.stderr)
        elif view.kubevirt is None:
            problems.append(f"{side}: no KubeVirt CR found: is KubeVirt installed?")
        elif feature_gate_state(view.kubevirt).state is GateState.OFF:
            problems.append(f"{side}: feature gate DecentralizedLiveMigration is off")
    if not _namespace_exists(target, target_ns):
        problems.append(f"target: namespace {target_ns} does not exist")
    if problems:
        raise PlanError(problems)


def _namespace_exists(cluster: Kube, name: str) -> bool:
    try:
        return cluster.get(kube.NAMESPACE, None, name) is not None
    except KubeError as err:
        if err.status == 403:  # may not read namespaces: the first create will tell
            return True
        raise


def report_review(review: Review) -> bool:
    """Print notes, warnings and denials to stderr; True when the plan may be carried out."""
    for note in review.plan.notes:
        print(f"note: {note}", file=sys.stderr)
    for planned, finding in review.warnings:
        print(f"WARN {planned.describe()}: {finding}", file=sys.stderr)
    for planned, finding in review.denied:
        print(f"DENY {planned.describe()}: {finding}", file=sys.stderr)
    if review.denied:
        print("dlm-guard migrate: the plan is refused: the webhook would deny it; nothing was "
              "created", file=sys.stderr)
    return not review.denied


def plan_documents(plan: Plan) -> list[dict[str, Any]]:
    return [{"step": p.step.value, "cluster": p.side.value, "object": p.obj}
            for p in plan.objects]


def format_plan(plan: Plan, output: str) -> str:
    if output == "json":
        return json.dumps({"migrationID": plan.migration_id,
                           "restoreRunStrategy": plan.restore_run_strategy,
                           "objects": plan_documents(plan), "notes": list(plan.notes)},
                          indent=2) + "\n"
    parts = [f"# migrationID: {plan.migration_id}\n"]
    for index, planned in enumerate(plan.objects, 1):
        body = yaml.safe_dump(planned.obj, sort_keys=False)
        parts.append(f"---\n# {index}. {planned.describe()}\n{body}")
    return "".join(parts)


# --- Commands --------------------------------------------------------------------------------
def _guarded(func: Any, args: argparse.Namespace) -> int:
    """Run a command; the errors that mean bad input or unreachable clusters exit 2."""
    try:
        return int(func(args))
    except PlanError as err:
        for problem in err.problems:
            print(f"dlm-guard migrate: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Aborted, KubeError, PolicyError) as err:
        return fail(str(err))
    except KeyboardInterrupt:  # before `run` created anything (it handles Ctrl-C itself)
        return fail("interrupted: nothing was created", EXIT_FAILED)


def run_plan(args: argparse.Namespace) -> int:
    return _guarded(_plan, args)


def _plan(args: argparse.Namespace) -> int:
    source, target = connect(args)
    review = reviewed_plan(args, source, target)
    if not report_review(review):
        return EXIT_BAD_INPUT
    sys.stdout.write(format_plan(review.plan, args.output))
    return EXIT_OK


def run_run(args: argparse.Namespace) -> int:
    return _guarded(_run, args)


def _confirmed(args: argparse.Namespace, plan: Plan) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise Aborted("not a terminal: pass --yes to create the objects without asking")
    answer = input(f"create {len(plan.objects)} objects for migration {plan.migration_id}? "
                   "[y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _run(args: argparse.Namespace) -> int:
    try:
        timeout = parse_duration(args.timeout).total_seconds()
    except ValueError as err:
        return fail(f"--timeout: {err}")
    source, target = connect(args)
    review = reviewed_plan(args, source, target)
    if not report_review(review):
        return EXIT_BAD_INPUT
    plan = review.plan
    print(f"migration {plan.migration_id}: {plan.source_namespace}/{plan.vm_name} -> "
          f"{plan.target_namespace}/{plan.vm_name} ({len(plan.objects)} objects)", flush=True)
    if not _confirmed(args, plan):
        return fail("not confirmed: nothing was created")
    settings = RunSettings(timeout=timeout or float("inf"), keep_on_failure=args.keep_on_failure,
                           cleanup_volumes=args.cleanup_volumes)
    progress = Progress(sys.stdout, tty=sys.stdout.isatty())
    return Runner(source, target, plan, settings, progress).execute()


def run_status(args: argparse.Namespace) -> int:
    return _guarded(_status, args)


def _rows(found: gather.Found) -> list[str]:
    rows = []
    for side, vmims in (("source", found.source_vmims), ("target", found.target_vmims)):
        for vmim in vmims:
            rows.append(f"{side:6} VMIM {namespace_of(vmim)}/{name_of(vmim)}  phase "
                        f"{phase_of(vmim) or '-'}")
    for vm in found.target_vms:
        rows.append(f"target VM   {namespace_of(vm)}/{name_of(vm)}  runStrategy "
                    f"{run_strategy(vm) or '-'}")
    return rows


def _status(args: argparse.Namespace) -> int:
    source, target = connect(args)
    found = gather.find_migration(source, target, args.migration_id)
    rows = _rows(found)
    if not rows:
        return fail(f"nothing in either cluster carries migration {args.migration_id}",
                    EXIT_FAILED)
    print(f"migration {args.migration_id}")
    print("\n".join(f"  {row}" for row in rows))
    return EXIT_OK


def run_cancel(args: argparse.Namespace) -> int:
    return _guarded(_cancel, args)


def _cancel(args: argparse.Namespace) -> int:
    source, target = connect(args)
    found = gather.find_migration(source, target, args.migration_id)
    if any(phase_of(v) == PHASE_SUCCEEDED for v in found.target_vmims):
        return fail(f"migration {args.migration_id} already succeeded: nothing to cancel",
                    EXIT_FAILED)
    deleted = []
    for cluster, role, vmims in ((target, Role.TARGET, found.target_vmims),
                                 (source, Role.SOURCE, found.source_vmims)):
        for vmim in vmims:
            if cluster.delete(kube.VMIM, namespace_of(vmim), name_of(vmim),
                              get_path(vmim, "metadata", "uid")):
                deleted.append(f"{role.value} VMIM {namespace_of(vmim)}/{name_of(vmim)}")
    for vm in found.target_vms:
        deleted.extend(_delete_waiting_vm(target, vm))
    if args.cleanup_volumes:
        for dv in found.data_volumes:
            if target.delete(kube.DATA_VOLUME, namespace_of(dv), name_of(dv)):
                deleted.append(f"target DataVolume {namespace_of(dv)}/{name_of(dv)}")
    if not deleted:
        return fail(f"nothing in either cluster carries migration {args.migration_id}",
                    EXIT_FAILED)
    print(f"cancelled migration {args.migration_id}: deleted " + ", ".join(deleted))
    return EXIT_OK



def _delete_waiting_vm(target: Kube, vm: dict[str, Any]) -> list[str]:
    """A target VM still waiting to receive, and its receiver VMI (no garbage collector
    needs to be running for the VMI to go)."""
    ns, name = namespace_of(vm), name_of(vm)
    if not is_wait_as_receiver(vm) or not target.delete(kube.VM, ns, name,
                                                        get_path(vm, "metadata", "uid")):
        return []
    deleted = [f"target VM {ns}/{name}"]
    vmi = target.get(kube.VMI, ns, name)
    if vmi is not None and is_receiver_vmi(vmi) \
            and target.delete(kube.VMI, ns, name, get_path(vmi, "metadata", "uid")):
        deleted.append(f"target VMI {ns}/{name}")
    return deleted
