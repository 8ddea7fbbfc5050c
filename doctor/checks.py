"""The preflight checks: pure functions of the gathered snapshots and a clock.

Each returns one CheckResult (per cluster, or per ordered pair for trust). Something doctor
could not read is a WARN ("cannot tell"), never a FAIL on its own. Upstream facts behind each
check: docs/kubevirt-facts.md ("Feature gate", "CA trust that flaps").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from certs.bundle import fingerprint, is_ca, parse_bundle
from dlm_guard.domain import FEATURE_GATE, GateState, feature_gate_state, get_path
from dlm_guard.rotation import FIX, SETTINGS_PATH, CaRotation, ca_rotation, format_duration
from doctor.model import CheckResult, ClusterSnapshot, Obj, Status, Unknown

WEBHOOK_SUFFIX = "dlm-guard.io"  # every dlm-guard webhook entry is named *.dlm-guard.io
POLICY_PREFIX = "dlm-guard-"
VMIMS, VMS = "virtualmachineinstancemigrations", "virtualmachines"
_RELEASE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-rc\.\d+)?$")
CANCEL_PROPAGATION = (1, 6, 2)  # deleting one side deletes the peer VMIM (CancelMigration RPC)
FAILED_FLAG = (1, 7, 0)  # status.migrationState.failed on the target VMI after a failure
FIRST_RELEASE = (1, 6, 0)


def _kubevirt(check: str, snap: ClusterSnapshot) -> Obj | CheckResult:
    """The KubeVirt CR, or the check's answer when it is missing or unreadable."""
    if isinstance(snap.kubevirt, Unknown):
        return CheckResult(check, snap.name, Status.WARN,
                           f"cannot tell: {snap.kubevirt.reason}",
                           "grant get/list on kubevirts.kubevirt.io to the kubeconfig's user")
    if snap.kubevirt is None:
        return CheckResult(check, snap.name, Status.FAIL,
                           f"no KubeVirt CR in namespace {snap.kubevirt_namespace}",
                           "install KubeVirt, or name its namespace: --cluster NAME=KUBECONFIG,"
                           "namespace=NS")
    return snap.kubevirt


# --- KubeVirt ------------------------------------------------------------------------------
def check_feature_gate(snap: ClusterSnapshot) -> CheckResult:
    kubevirt = _kubevirt("feature-gate", snap)
    if isinstance(kubevirt, CheckResult):
        return kubevirt
    reading = feature_gate_state(kubevirt)
    enable = (f"add {FEATURE_GATE} to spec.configuration.developerConfiguration.featureGates "
              "of the KubeVirt CR")
    if reading.state is GateState.ON:
        return CheckResult("feature-gate", snap.name, Status.OK, f"{FEATURE_GATE} on: "
                           f"{reading.reason}")
    if reading.state is GateState.OFF:
        return CheckResult("feature-gate", snap.name, Status.FAIL, f"{FEATURE_GATE} off: "
                           f"{reading.reason}", enable)
    return CheckResult("feature-gate", snap.name, Status.WARN,
                       f"cannot tell whether {FEATURE_GATE} is on: {reading.reason}",
                       f"to be sure, {enable}")


def release(version: str) -> tuple[int, int, int] | None:
    """A release or rc tag as (major, minor, patch); None for `latest`, git-describe strings of
    other builds and anything else."""
    match = _RELEASE.match(version)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def check_version(snap: ClusterSnapshot) -> CheckResult:
    kubevirt = _kubevirt("kubevirt-version", snap)
    if isinstance(kubevirt, CheckResult):
        return kubevirt
    raw = get_path(kubevirt, "status", "observedKubeVirtVersion")
    version = raw if isinstance(raw, str) else ""
    needs = "cancel propagation needs v1.6.2+, the failed flag v1.7+"
    parsed = release(version)
    if parsed is None:
        return CheckResult("kubevirt-version", snap.name, Status.WARN,
                           f"cannot tell what {version or 'an unset version'!r} supports "
                           f"(not a release tag): {needs}", "run a KubeVirt release")
    if parsed < FIRST_RELEASE:
        return CheckResult("kubevirt-version", snap.name, Status.FAIL,
                           f"{version}: decentralized live migration arrived in v1.6.0",
                           "upgrade KubeVirt to v1.7 or later")
    if parsed < CANCEL_PROPAGATION:
        return CheckResult("kubevirt-version", snap.name, Status.WARN,
                           f"{version}: deleting one VMIM does not cancel its peer (v1.6.2+), "
                           "and a failed target VMI ends Failed", "delete both VMIMs to cancel; "
                           "upgrade to v1.7 or later")
    if parsed < FAILED_FLAG:
        return CheckResult("kubevirt-version", snap.name, Status.WARN,
                           f"{version}: cancel propagates, but a failed target VMI goes back "
                           "to WaitingForSync without status.migrationState.failed (v1.7+)",
                           "upgrade to v1.7 or later")
    return CheckResult("kubevirt-version", snap.name, Status.OK,
                       f"{version}: cancel propagation (v1.6.2+) and the failed flag (v1.7+)")


def check_sync_addresses(snap: ClusterSnapshot) -> CheckResult:
    kubevirt = _kubevirt("sync-addresses", snap)
    if isinstance(kubevirt, CheckResult):
        return kubevirt
    raw = get_path(kubevirt, "status", "synchronizationAddresses")
    addresses = [a for a in raw if isinstance(a, str) and a] if isinstance(raw, list) else []
    if addresses:
        return CheckResult("sync-addresses", snap.name, Status.OK,
                           f"status.synchronizationAddresses: {', '.join(addresses)}")
    return CheckResult("sync-addresses", snap.name, Status.FAIL,
                       "status.synchronizationAddresses is empty: peers have nowhere to connect "
                       "(virt-operator publishes it only with the gate on and a "
                       "virt-synchronization-controller leader pod)",
                       "turn the feature gate on and check the virt-synchronization-controller "
                       f"pods in {snap.kubevirt_namespace}")


def check_ca_rotation(snap: ClusterSnapshot, peers: Sequence[ClusterSnapshot]) -> CheckResult:
    """Settings under which virt-operator drops merged peer CAs (MergeCABundle's overlap)."""
    kubevirt = _kubevirt("ca-rotation", snap)
    if isinstance(kubevirt, CheckResult):
        return kubevirt
    fix = (f"set {FIX} in the KubeVirt CR {SETTINGS_PATH} on every cluster, e.g. "
           "duration: 168h, renewBefore: 84h")
    own = ca_rotation(kubevirt)
    if not isinstance(own, CaRotation):
        return CheckResult("ca-rotation", snap.name, Status.FAIL,
                           f"{own}: virt-operator cannot use it", fix)
    if own.flaps:
        return CheckResult("ca-rotation", snap.name, Status.FAIL,
                           f"{own.describe()}: virt-operator drops merged peer CAs whenever its "
                           f"CA is older than {format_duration(own.renew_before)}, "
                           f"{format_duration(own.duration - 2 * own.renew_before)} of every "
                           f"{format_duration(own.rotation_period)}, so trust flaps", fix)
    too_old = [(p.name, r) for p in peers if isinstance(r := _rotation_of(p), CaRotation)
               and r.rotation_period > own.renew_before]
    if too_old:
        name, other = too_old[0]
        return CheckResult("ca-rotation", snap.name, Status.FAIL,
                           f"{own.describe()}, but {name} renews its CA only at age "
                           f"{format_duration(other.rotation_period)}: {snap.name} drops "
                           f"{name}'s CA once it is older than "
                           f"{format_duration(own.renew_before)}", fix)
    return CheckResult("ca-rotation", snap.name, Status.OK,
                       f"{own.describe()}: merged peer CAs are kept")


def _rotation_of(snap: ClusterSnapshot) -> CaRotation | None:
    if snap.kubevirt is None or isinstance(snap.kubevirt, Unknown):
        return None
    rotation = ca_rotation(snap.kubevirt)
    return rotation if isinstance(rotation, CaRotation) else None


def check_ca_trust(truster: ClusterSnapshot, peer: ClusterSnapshot, now: datetime,
                   ) -> CheckResult:
    """Does `truster`'s kubevirt-ca hold the CA `peer` signs with now (the first of its own)?"""
    scope = f"{truster.name}->{peer.name}"
    for side in (truster, peer):
        if isinstance(side.kubevirt_ca, Unknown):
            return CheckResult("ca-trust", scope, Status.WARN,
                               f"cannot tell: {side.name}: {side.kubevirt_ca.reason}")
        if side.kubevirt_ca is None:
            return CheckResult("ca-trust", scope, Status.FAIL,
                               f"{side.name} has no kubevirt-ca in {side.kubevirt_namespace}",
                               "install KubeVirt (virt-operator creates it), or name its "
                               "namespace: --cluster NAME=KUBECONFIG,namespace=NS")
    assert isinstance(truster.kubevirt_ca, str) and isinstance(peer.kubevirt_ca, str)
    current = next((c for c in parse_bundle(peer.kubevirt_ca).certificates if is_ca(c)), None)
    if current is None:
        return CheckResult("ca-trust", scope, Status.FAIL,
                           f"{peer.name}'s kubevirt-ca holds no CA certificate",
                           f"check virt-operator on {peer.name}")
    label = f"{peer.name}'s current CA ({fingerprint(current)[:16]}, expires " \
            f"{current.not_valid_after_utc:%Y-%m-%dT%H:%MZ})"
    if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
        return CheckResult("ca-trust", scope, Status.FAIL, f"{label} is not valid now",
                           f"check virt-operator's CA rotation on {peer.name}")
    present = {fingerprint(c) for c in parse_bundle(truster.kubevirt_ca).certificates}
    if fingerprint(current) in present:
        return CheckResult("ca-trust", scope, Status.OK,
                           f"{truster.name}'s kubevirt-ca holds {label}")
    return CheckResult("ca-trust", scope, Status.FAIL,
                       f"{truster.name}'s kubevirt-ca lacks {label}: migrations between them "
                       "fail TLS",
                       f"run the dlm-guard reconciler managing {truster.name}, which puts it "
                       f"into {truster.name}'s kubevirt-external-ca for virt-operator to merge")


# --- dlm-guard itself ----------------------------------------------------------------------
def our_entries(configurations: Iterable[Obj]) -> list[Obj]:
    return [entry for conf in configurations for entry in (conf.get("webhooks") or [])
            if isinstance(entry, dict) and str(entry.get("name", "")).endswith(WEBHOOK_SUFFIX)]


def check_webhooks_registered(snap: ClusterSnapshot) -> CheckResult:
    if isinstance(snap.mutating, Unknown) or isinstance(snap.validating, Unknown):
        reason = (snap.mutating if isinstance(snap.mutating, Unknown) else snap.validating)
        assert isinstance(reason, Unknown)
        return CheckResult("webhooks", snap.name, Status.WARN, f"cannot tell: {reason.reason}",
                           "grant list on admissionregistration.k8s.io webhook configurations")
    mutating, validating = our_entries(snap.mutating), our_entries(snap.validating)
    if mutating and validating:
        names = ", ".join(sorted({str(get_path(c, "metadata", "name"))
                                  for c in (*snap.mutating, *snap.validating)}))
        return CheckResult("webhooks", snap.name, Status.OK,
                           f"{len(mutating)} mutating and {len(validating)} validating "
                           f"dlm-guard webhooks registered ({names})")
    absent = [kind for kind, found in (("MutatingWebhookConfiguration", mutating),
                                       ("ValidatingWebhookConfiguration", validating))
              if not found]
    if not validating and isinstance(snap.policies, tuple) and snap.policies:
        return CheckResult("webhooks", snap.name, Status.WARN,
                           f"no dlm-guard webhooks in any {' or '.join(absent)}, only the CEL "
                           "policies: the rules that need cluster state and the mutations "
                           "do not run", "install the webhooks too (the chart does)")
    return CheckResult("webhooks", snap.name, Status.FAIL,
                       f"no dlm-guard webhooks (*.{WEBHOOK_SUFFIX}) in any "
                       f"{' or '.join(absent)}",
                       "helm install dlm-guard charts/dlm-guard -n dlm-guard-system "
                       "--create-namespace")


def _conditions(entry: Obj) -> str:
    return " ".join(str(c.get("expression", "")) for c in entry.get("matchConditions") or []
                    if isinstance(c, dict))


def _resources(entry: Obj) -> set[str]:
    return {str(r) for rule in entry.get("rules") or [] if isinstance(rule, dict)
            for r in rule.get("resources") or []}


def unscoped(entry: Obj) -> list[str]:
    """The resources an entry sees beyond dlm-guard's scope (decentralized VMIMs,
    WaitAsReceiver VMs): its matchConditions do not narrow them."""
    expressions, resources = _conditions(entry), _resources(entry)
    wide = []
    if VMIMS in resources and not ("sendTo" in expressions or "receive" in expressions):
        wide.append(VMIMS)
    if VMS in resources and "WaitAsReceiver" not in expressions:
        wide.append(VMS)
    if "*" in resources:
        wide.append("*")
    return wide


def check_webhook_scope(snap: ClusterSnapshot) -> CheckResult:
    if isinstance(snap.mutating, Unknown) or isinstance(snap.validating, Unknown):
        return CheckResult("webhook-scope", snap.name, Status.WARN,
                           "cannot tell: the webhook configurations are unreadable")
    entries = our_entries((*snap.mutating, *snap.validating))
    if not entries:
        return CheckResult("webhook-scope", snap.name, Status.WARN,
                           "no dlm-guard webhooks to check")
    wide = [(str(e.get("name")), str(e.get("failurePolicy", "Fail")), unscoped(e))
            for e in entries]
    wide = [w for w in wide if w[2]]
    if not wide:
        return CheckResult("webhook-scope", snap.name, Status.OK,
                           f"all {len(entries)} entries limited by matchConditions to "
                           "decentralized VMIMs and WaitAsReceiver VMs")
    failing = [f"{name} ({policy}) sees every {'/'.join(res)}" for name, policy, res in wide]
    status = Status.FAIL if any(policy == "Fail" for _, policy, _ in wide) else Status.WARN
    return CheckResult("webhook-scope", snap.name, status,
                       "; ".join(failing) + ": an outage of dlm-guard then blocks (Fail) or "
                       "slows ordinary VM operations",
                       "install the webhooks with the chart, whose matchConditions call "
                       "dlm-guard only for decentralized VMIMs and WaitAsReceiver VMs")


def check_webhooks_reachable(snap: ClusterSnapshot) -> CheckResult:
    if isinstance(snap.mutating, Unknown) or isinstance(snap.validating, Unknown):
        return CheckResult("webhooks-reachable", snap.name, Status.WARN,
                           "cannot tell: the webhook configurations are unreadable")
    entries = our_entries((*snap.mutating, *snap.validating))
    if not entries:
        return CheckResult("webhooks-reachable", snap.name, Status.WARN,
                           "no dlm-guard webhooks to check")
    problems: list[str] = []
    unknown: list[str] = []
    seen: list[str] = []
    for entry in entries:
        verdict = _endpoint(entry, snap)
        target = [problems, unknown, seen][verdict[0]]
        target.append(f"{entry.get('name')}: {verdict[1]}")
    if problems:
        return CheckResult("webhooks-reachable", snap.name, Status.FAIL, "; ".join(problems),
                           "check the dlm-guard webhook pods, their Service and the "
                           "caBundle of the webhook configurations")
    if unknown:
        return CheckResult("webhooks-reachable", snap.name, Status.WARN,
                           "cannot tell: " + "; ".join(unknown))
    return CheckResult("webhooks-reachable", snap.name, Status.OK,
                       "; ".join(sorted(set(s.partition(": ")[2] for s in seen))))


def _endpoint(entry: Obj, snap: ClusterSnapshot) -> tuple[int, str]:
    """(0 problem | 1 unknown | 2 fine, what was found) for one entry's clientConfig."""
    config = entry.get("clientConfig") or {}
    service = config.get("service") if isinstance(config, dict) else None
    if isinstance(service, dict):
        key = (str(service.get("namespace", "")), str(service.get("name", "")))
        where = f"Service {key[0]}/{key[1]}"
        state = snap.services.get(key)
        if state is None:
            return 1, f"{where}: not read"
        if isinstance(state.exists, Unknown):
            return 1, f"{where}: {state.exists.reason}"
        if not state.exists:
            return 0, f"{where} not found"
        if isinstance(state.ready_endpoints, Unknown):
            return 1, f"{where} endpoints: {state.ready_endpoints.reason}"
        if state.ready_endpoints == 0:
            return 0, f"{where} has no ready endpoints (webhook pods not running or not ready)"
        return 2, f"{where} ({state.ready_endpoints} ready endpoint(s))"
    url = str(config.get("url", "")) if isinstance(config, dict) else ""
    if not url:
        return 0, "clientConfig has neither service nor url"
    probe = snap.probes.get(url)
    if probe is None:
        return 1, f"{url} not probed"
    return (2, f"{url} answers /healthz") if probe.ok else (0, f"{url}: {probe.detail}")


def check_policies(snap: ClusterSnapshot) -> CheckResult:
    """The CEL mode: ValidatingAdmissionPolicies dlm-guard-*, each needs a binding to act."""
    if isinstance(snap.policies, Unknown):
        return CheckResult("admission-policies", snap.name, Status.WARN,
                           f"cannot tell: {snap.policies.reason}")
    if not snap.policies:
        return CheckResult("admission-policies", snap.name, Status.OK,
                           f"no ValidatingAdmissionPolicies {POLICY_PREFIX}* (CEL mode not "
                           "installed)")
    names = sorted(str(get_path(p, "metadata", "name")) for p in snap.policies)
    bound = ({str(get_path(b, "spec", "policyName")) for b in snap.policy_bindings}
             if not isinstance(snap.policy_bindings, Unknown) else None)
    if bound is None:
        return CheckResult("admission-policies", snap.name, Status.WARN,
                           f"{', '.join(names)}; bindings unreadable")
    unbound = [n for n in names if n not in bound]
    if unbound:
        return CheckResult("admission-policies", snap.name, Status.WARN,
                           f"without a ValidatingAdmissionPolicyBinding (enforce nothing): "
                           f"{', '.join(unbound)}", "install the policies with their bindings")
    return CheckResult("admission-policies", snap.name, Status.OK,
                       f"{len(names)} bound: {', '.join(names)}")


def check_peers(snap: ClusterSnapshot, peers: Sequence[ClusterSnapshot]) -> CheckResult:
    """Peer Secrets of an in-cluster reconciler, matched to the other clusters by API server."""
    where = f"namespace {snap.reconciler_namespace}"
    if isinstance(snap.peer_secrets, Unknown):
        return CheckResult("reconciler-peers", snap.name, Status.WARN,
                           f"cannot tell without access to Secrets in {where}: "
                           f"{snap.peer_secrets.reason}")
    servers = {_norm(s.server): s for s in snap.peer_secrets if s.server}
    found = {p.name: servers.get(_norm(p.server)) for p in peers}
    missing = [name for name, secret in found.items() if secret is None]
    if not missing:
        return CheckResult("reconciler-peers", snap.name, Status.OK, "; ".join(
            f"Secret {s.name} (peer {s.label}) reaches {n}" for n, s in found.items() if s))
    fix = (f"in {where}, add a Secret labelled dlm-guard.io/peer=<name> with key kubeconfig "
           "for " + ", ".join(missing) + " (or run the reconciler elsewhere with --cluster for "
           "both)")
    if not snap.peer_secrets:
        return CheckResult("reconciler-peers", snap.name, Status.WARN,
                           f"no Secrets labelled dlm-guard.io/peer in {where}", fix)
    return CheckResult("reconciler-peers", snap.name, Status.WARN,
                       f"no peer Secret in {where} points at the API server of "
                       f"{', '.join(missing)}", fix)


def _norm(server: str) -> str:
    return server.rstrip("/").lower()


# --- all of them ---------------------------------------------------------------------------
PER_CLUSTER: tuple[Callable[[ClusterSnapshot], CheckResult], ...] = (
    check_feature_gate, check_version, check_sync_addresses)
DLM_GUARD: tuple[Callable[[ClusterSnapshot], CheckResult], ...] = (
    check_webhooks_registered, check_webhook_scope, check_webhooks_reachable, check_policies)


def run_checks(snapshots: Sequence[ClusterSnapshot], now: datetime) -> list[CheckResult]:
    results: list[CheckResult] = []
    for snap in snapshots:
        others = [s for s in snapshots if s is not snap]
        results += [check(snap) for check in PER_CLUSTER]
        results.append(check_ca_rotation(snap, others))
        results += [check_ca_trust(snap, other, now) for other in others]
        results += [check(snap) for check in DLM_GUARD]
        results.append(check_peers(snap, others))
    return results
